"""``captum-vit evaluate``: model x methods x dataset -> the papers' metrics table.

    captum-vit evaluate --model synthetic-vit --methods gae,rollout --num-images 256 --format json
    captum-vit evaluate --model timm:vit_base_patch16_224 --pretrained --dataset imagenet-seg --data-root gtsegs_ijcv.mat
    torchrun --nproc-per-node 2 -m captum_vit.cli evaluate --model synthetic-vit

Any model of :mod:`captum_vit.models.spec` on any dataset of :mod:`captum_vit.data.datasets`.

Under ``torchrun`` every rank evaluates its shard and rank 0 writes the table
(:func:`captum_vit.evaluate.evaluate`). Everything a user can get wrong (model, methods,
metric groups, dataset folder, output paths) is checked by :func:`check`, before the
evaluation starts.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from captum_vit._cli_common import CLIError, name_list, non_negative_int, output_file, positive_int, wrote
from captum_vit._io import atomic_write
from captum_vit.attr import list_methods
from captum_vit.data.datasets import add_data_arguments, dataset_from_args, first, labels_of
from captum_vit.data.splits import BENCHMARK_SEED
from captum_vit.distributed import init_distributed, shutdown
from captum_vit.evaluate import ORACLES, build_methods, evaluate, model_kind
from captum_vit.explainers import UntrainedExplainerWarning
from captum_vit.hardware import add_hardware_arguments, apply_threads, check_hardware
from captum_vit.metrics.baselines import BASELINES
from captum_vit.metrics.report import METRIC_GROUPS
from captum_vit.models.fingerprint import model_fingerprint
from captum_vit.models.preprocess import num_classes_of
from captum_vit.models.spec import add_model_arguments, model_from_args

#: Two-object synthetic images for class sensitivity, by default.
DEFAULT_PAIRS = 32
#: Datasets with per-pixel ground truth (the segmentation metrics).
MASKED_DATASETS = ("synthetic", "imagenet-seg", "voc", "coco")
#: Metric groups that score the probability of the image's labelled class.
LABELLED_GROUPS = ("perturbation", "rise", "adp_pic")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--methods", default=None, help="comma-separated method names (default: all for the model)")
    p.add_argument(
        "--num-images",
        type=positive_int,
        default=None,
        help="synthetic images (default 64), or the first N of a real dataset (default all)",
    )
    p.add_argument(
        "--pairs", type=non_negative_int, default=None,
        help=f"two-object synthetic images for class sensitivity (default {DEFAULT_PAIRS}; synthetic dataset only)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=BENCHMARK_SEED, help="synthetic dataset seed (not a training seed)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="images per attribution batch")
    p.add_argument(
        "--metrics", default=None,
        help=f"metric groups among {METRIC_GROUPS} (default: every group the dataset supports)",
    )  # fmt: skip
    p.add_argument("--explain", choices=("predicted", "target"), default="predicted")
    p.add_argument("--baseline", choices=BASELINES, default="black", help="removal baseline (default black)")
    p.add_argument("--format", choices=("markdown", "csv", "json"), default="markdown")
    p.add_argument("--out", type=Path, default=None, help="write the table to this file instead of standard output")
    p.add_argument("--plot", type=Path, default=None, help="PNG of every method's perturbation curves")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_data_arguments(p)
    add_hardware_arguments(p)


def build_dataset(args: argparse.Namespace, model: nn.Module) -> Dataset[Any]:
    """The evaluation images: ``--num-images`` synthetic ones, or the first ``--num-images``
    of the dataset (its unreadable files reported first, :func:`~captum_vit.data.datasets.check_images`)."""
    n = args.num_images
    if args.dataset == "synthetic":
        return dataset_from_args(args, model, synthetic_images=64 if n is None else n, seed=args.seed)
    return first(dataset_from_args(args, model), n)


@dataclass
class Plan:
    """What :func:`check` resolved from the command line, for :func:`run`."""

    model: nn.Module
    methods: list[str]
    groups: list[str]
    dataset: Dataset[Any]
    pairs: Dataset[Any] | None


def check(args: argparse.Namespace) -> None:
    """Resolve and check every argument before the evaluation; sets ``args.plan``.

    Raises
    ------
    CLIError, ValueError, FileNotFoundError
        An unwritable ``--out``/``--plot``, unknown metric groups, an unknown model or
        method (or one the model does not support), a missing dataset, unreadable images
        (with ``--on-bad-image fail``), a device this machine lacks. Without ``--methods``,
        the methods that cannot be built for the model are skipped with a note.
    """
    if args.out is not None:
        output_file(args.out, "--out")
    groups = _metric_groups(args)
    if args.plot is not None:
        output_file(args.plot, "--plot", (".png", ".pdf", ".svg"))
        if not {"perturbation", "rise"} & set(groups):
            raise CLIError("--plot draws perturbation curves: add 'perturbation' or 'rise' to --metrics")
    check_hardware(args)
    if args.dataset != "synthetic" and args.data_root is None:
        raise CLIError(f"--data-root is required for --dataset {args.dataset}")
    model = model_from_args(args)
    dataset = build_dataset(args, model)
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise CLIError("--data-root: no image left to evaluate (--on-bad-image skip left out every file)")
    if set(LABELLED_GROUPS) & set(groups):
        _check_labels(dataset, model)
    pairs = None  # two-object images exist in the synthetic benchmark only
    n_pairs = DEFAULT_PAIRS if args.pairs is None else args.pairs
    if "class_sensitivity" in groups and n_pairs > 0:
        pairs = dataset_from_args(args, model, synthetic_images=n_pairs, seed=args.seed + 1, objects=2)
    if args.methods is not None:
        methods = name_list(args.methods, "--methods", [*list_methods(), *ORACLES], "method")
        try:  # builds (and drops) each method now, so a bad one fails before compute
            _build_trained(model, methods)
        except UntrainedExplainerWarning:
            raise CLIError(
                f"--methods: no trained LTX explainer is registered for this model (weights fingerprint "
                f"{model_fingerprint(model)}); pretrain one with `captum-vit pretrain-ltx --register NAME`"
            ) from None
    else:
        methods = []
        for name in list_methods(model_kind(model)):
            try:
                _build_trained(model, [name])
                methods.append(name)
            except UntrainedExplainerWarning:
                print(f"captum-vit evaluate: skipping {name}: no trained explainer for this model", file=sys.stderr)
            except (ValueError, TypeError) as e:  # e.g. a learned explainer with no weights for this model
                print(f"captum-vit evaluate: skipping {name}: {e}", file=sys.stderr)
    args.plan = Plan(model, methods, groups, dataset, pairs)


def _build_trained(model: nn.Module, names: list[str]) -> None:
    """Build ``names`` for ``model``; an LTX without a trained explainer raises
    :class:`~captum_vit.explainers.UntrainedExplainerWarning` (a table would score random masks)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UntrainedExplainerWarning)
        build_methods(model, names)


def _metric_groups(args: argparse.Namespace) -> list[str]:
    """``--metrics``, checked against what the dataset has: masks for segmentation, the
    synthetic two-object images for class sensitivity. The default is every group it supports."""
    synthetic = args.dataset == "synthetic"
    if args.pairs is not None and not synthetic:
        raise CLIError(f"--pairs: two-object images exist in the synthetic dataset only, not --dataset {args.dataset}")
    supported = [
        g for g in METRIC_GROUPS
        if (g != "segmentation" or args.dataset in MASKED_DATASETS)
        and (g != "class_sensitivity" or (synthetic and args.pairs != 0))
    ]  # fmt: skip
    if args.metrics is None:
        return supported
    groups = name_list(args.metrics, "--metrics", METRIC_GROUPS, "metric group")
    for g in groups:
        if g == "segmentation" and g not in supported:
            raise CLIError(
                f"--metrics segmentation needs per-pixel ground truth: --dataset {args.dataset} has none "
                f"(datasets with masks: {', '.join(MASKED_DATASETS)})"
            )
        if g == "class_sensitivity" and g not in supported:
            why = "--pairs 0" if synthetic else f"--dataset {args.dataset}"
            raise CLIError(f"--metrics class_sensitivity needs the synthetic two-object images, not {why}")
    return groups


def _check_labels(dataset: Dataset[Any], model: nn.Module) -> None:
    """Refuse labels the model has no class for: the perturbation metrics score the
    probability of each image's labelled class."""
    labels = labels_of(dataset)
    if labels.numel() == 0 or labels.dim() != 1:
        return
    classes = num_classes_of(model)
    if int(labels.max()) >= classes:
        raise CLIError(
            f"--data-root: the images have labels up to {int(labels.max())} but the model has {classes} classes; "
            "the perturbation metrics score each image's labelled class: use a folder whose sorted class "
            "subfolders are the model's classes"
        )


def run(args: argparse.Namespace) -> int:
    if getattr(args, "plan", None) is None:
        check(args)
    plan: Plan = args.plan
    apply_threads(args)
    ctx = init_distributed(args.device)  # default: a CUDA device when there is one (cuda:LOCAL_RANK under torchrun)
    try:
        result = evaluate(
            plan.model.to(ctx.device), plan.methods, plan.dataset, plan.pairs, args.batch_size, plan.groups,
            args.explain, args.baseline, progress=not args.no_progress, num_workers=args.workers,
        )  # fmt: skip
    finally:
        shutdown(ctx)
    if result is None:  # a non-zero rank
        return 0
    text = {"markdown": result.to_markdown, "csv": result.to_csv, "json": result.to_json}[args.format]()
    if args.out is not None:
        atomic_write(args.out, lambda tmp: tmp.write_text(text))
        wrote(args.out, f"{args.format} table")
    else:
        print(text)
    if args.plot is not None:
        wrote(result.plot(args.plot), "perturbation curves")
    return 0
