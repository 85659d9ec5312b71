"""The demo: explain built-in synthetic images with every registered method.

Writes ``figure.png`` (each image with its ground-truth mask and one map per method) and
``metrics.md`` (per-method latency as a ratio to one forward pass of the model, and the
faithfulness/localisation metrics) to ``--out``, and prints the table.

    captum-vit demo --out out/demo
    captum-vit demo --model timm:vit_small_patch16_224 --weights mine.safetensors --num-classes 5 --img-size 64

The images are the synthetic benchmark's (:mod:`captum_vit.data.synthetic`) at the model's
input size: meaningful for a model trained on them; any ``--model`` of
:mod:`captum_vit.models.spec` runs.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from captum.attr import Attribution
from torch import Tensor, nn

from captum_vit._cli_common import name_list, output_dir, positive_int, wrote
from captum_vit._io import atomic_write
from captum_vit.attr import get_method, list_methods
from captum_vit.data.splits import BENCHMARK_SEED
from captum_vit.hardware import add_hardware_arguments, apply_threads, check_hardware
from captum_vit.models.preprocess import model_logits, normalize_for
from captum_vit.models.spec import add_model_arguments, model_from_args
from captum_vit.models.vit import is_vit


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder (default out/demo)")
    add_model_arguments(p)
    p.add_argument("--num-images", type=positive_int, default=4, help="images in the figure (default 4)")
    p.add_argument("--num-eval", type=positive_int, default=16, help="images for the metrics (default 16)")
    p.add_argument("--seed", type=int, default=BENCHMARK_SEED, help="seed of the generated images")
    p.add_argument("--methods", default=None, help="comma-separated registered methods (default: all for the model)")
    p.add_argument("--repeats", type=positive_int, default=3, help="timing repeats; the median is reported")
    add_hardware_arguments(p, workers=None)


def check(args: argparse.Namespace) -> None:
    """Check the output folder, the model and the methods before any computation.

    Sets ``args.loaded_model`` and ``args.built_methods`` (``name -> Attribution``). With
    ``--methods`` every named method must build for the model; without it, methods that
    cannot (e.g. a learned explainer with no weights for this model) are skipped with a warning.
    """
    output_dir(args.out)
    check_hardware(args)
    model = model_from_args(args)
    kind = "vit" if is_vit(model) else "cnn"
    if args.methods:
        names = name_list(args.methods, "--methods", list_methods(kind), f"method for a {kind} model")
        args.built_methods = {name: get_method(name)(model) for name in names}
    else:
        args.built_methods = {}
        for name in list_methods(kind):
            try:
                args.built_methods[name] = get_method(name)(model)
            except (ValueError, TypeError) as e:
                warnings.warn(f"skipping {name}: {e}", stacklevel=1)
    args.loaded_model = model


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up (lazy state, allocator)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def write_figure(path: Path, images: Tensor, masks: Tensor, maps: dict[str, Tensor], labels: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(maps)
    rows, cols = images.shape[0], len(names) + 2
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.7 * rows), squeeze=False)
    for i in range(rows):
        axes[i][0].imshow(images[i].permute(1, 2, 0).numpy())
        axes[i][0].set_title(labels[i], fontsize=6)
        axes[i][1].imshow(masks[i].numpy(), cmap="gray")
        axes[i][1].set_title("ground truth", fontsize=7)
        for j, name in enumerate(names):
            m = maps[name][i, 0]
            m = (m - m.min()) / (m.max() - m.min() + 1e-12)
            axes[i][j + 2].imshow(images[i].permute(1, 2, 0).numpy())
            axes[i][j + 2].imshow(m.numpy(), cmap="jet", alpha=0.55)
            axes[i][j + 2].set_title(name.replace("_", " "), fontsize=6)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    from captum_vit.data.synthetic import CLASS_NAMES, generate
    from captum_vit.distributed import init_distributed

    if getattr(args, "loaded_model", None) is None:
        check(args)
    apply_threads(args)
    device = init_distributed(args.device).device
    torch.manual_seed(0)
    model: nn.Module = args.loaded_model.to(device)
    cfg: dict[str, Any] = model.pretrained_cfg  # type: ignore[assignment]
    size = int(cfg["input_size"][-1])
    data = generate(max(args.num_images, args.num_eval), seed=args.seed, image_size=size)
    pixels, labels, masks = data.images.to(device), data.labels.to(device), data.masks.to(device)
    x = normalize_for(model, pixels)

    shown = x[: args.num_images]
    with torch.no_grad():
        forward_s = median_seconds(lambda: model(shown), args.repeats)
        pred = model_logits(model(x)).argmax(1)
    rows = []
    maps: dict[str, Tensor] = {}
    for name, method in args.built_methods.items():

        def explain(m: Attribution = method, t: Tensor = labels[: args.num_images]) -> Tensor:
            return m.attribute(shown, target=t)

        seconds = median_seconds(explain, args.repeats)
        maps[name] = explain().detach().cpu()
        row = {"method": name, "latency_ms": 1000 * seconds, "x_forward": seconds / forward_s}
        n = args.num_eval
        row.update(demo_metrics(model, method, pixels[:n], x[:n], labels[:n], masks[:n]))
        rows.append(row)

    names = list(cfg.get("label_names") or ())
    captions = [
        f"{CLASS_NAMES[int(t)]}\n(pred {names[int(p)] if int(p) < len(names) else int(p)})"
        for t, p in zip(labels[: args.num_images], pred[: args.num_images])
    ]
    figure, metrics = args.out / "figure.png", args.out / "metrics.md"
    shown_masks = masks[: args.num_images].cpu()
    write_figure(figure, pixels[: args.num_images].cpu(), shown_masks, maps, captions)
    table = format_table(rows, forward_ms=1000 * forward_s, batch=int(shown.shape[0]), model_name=args.model)
    atomic_write(metrics, lambda tmp: tmp.write_text(table))
    print(table)
    wrote(figure, "images, ground truth and one map per method")
    wrote(metrics, "latency and metrics per method")
    return 0


def demo_metrics(
    model: nn.Module, method: Attribution, pixels: Tensor, x: Tensor, labels: Tensor, masks: Tensor
) -> dict[str, float]:
    """Positive/negative perturbation AUC (Chefer, Gur & Wolf, CVPR 2021, §4) and the
    segmentation mIoU against the ground-truth object masks on the evaluation images,
    explaining the ground-truth class."""
    from captum_vit.metrics import (
        negative_perturbation_auc,
        positive_perturbation_auc,
        segmentation_scores,
        segmentation_stats,
    )

    attr = torch.cat([method.attribute(x[i : i + 8], target=labels[i : i + 8]).detach() for i in range(0, len(x), 8)])
    return {
        "pos_auc (lower better)": float(positive_perturbation_auc(model, pixels, attr, labels).mean()),
        "neg_auc (higher better)": float(negative_perturbation_auc(model, pixels, attr, labels).mean()),
        "mIoU": segmentation_scores(segmentation_stats(attr.cpu(), masks.cpu()))["miou"],
    }


def format_table(rows: list[dict[str, float | str]], forward_ms: float, batch: int, model_name: str) -> str:
    if not rows:
        return "no method could be run\n"
    keys = list(rows[0])
    lines = [
        f"Model `{model_name}`; latency of one attribute() call on a batch of {batch} images "
        f"(median); one forward pass of the batch: {forward_ms:.2f} ms.",
        "",
        "| " + " | ".join(keys) + " |",
        "|" + "|".join("---" for _ in keys) + "|",
    ]
    for r in rows:
        cells = [f"{v:.2f}" if isinstance(v, float) else str(v) for v in r.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
