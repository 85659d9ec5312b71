"""Model x methods x dataset -> the papers' metrics, single-process or sharded under torchrun.

The command line over :func:`evaluate` is ``captum-vit evaluate``
(:mod:`captum_vit.evaluate_cli`).

Each rank evaluates the examples ``rank, rank + world, ...`` and rank 0 gathers the
per-example values (gloo on CPU, nccl on GPU), orders them by dataset index and computes the
table, so the result equals the single-process run. Dataset-level ratios (pixel accuracy,
mIoU) are computed from gathered per-image sums, never by averaging shard means.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from captum_vit.attr import get_method, list_methods, method_info
from captum_vit.distributed import init_distributed, shutdown
from captum_vit.metrics import adp_pic, class_sensitivity, perturbation_curves, rise_curves, segmentation_stats
from captum_vit.metrics.report import METRIC_GROUPS, EvaluationResult
from captum_vit.models.preprocess import model_logits, model_normalization, normalize
from captum_vit.models.vit import is_vit

#: Reference maps computed from the ground truth, usable wherever a method name is:
#: the object mask, its inverse and a per-image seeded uniform random map.
ORACLES = ("oracle:gt", "oracle:inverse", "oracle:random")


class OracleMap:
    """A ground-truth "explanation": the reference rows of the table (not an attribution method)."""

    def __init__(self, kind: str) -> None:
        if kind not in ORACLES:
            raise ValueError(f"unknown oracle {kind!r}; expected one of {ORACLES}")
        self.kind = kind

    def __call__(self, masks: Tensor, indices: Tensor) -> Tensor:
        fg = (masks == 1).float()
        if self.kind == "oracle:gt":
            return fg
        if self.kind == "oracle:inverse":
            return 1.0 - fg
        maps = [torch.rand(masks.shape[-2:], generator=torch.Generator().manual_seed(int(i))) for i in indices]
        return torch.stack(maps).to(masks.device)


def model_kind(model: nn.Module) -> str:
    return "vit" if is_vit(model) else "cnn"


def _device_of(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def build_methods(
    model: nn.Module, names: Sequence[str], options: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """``name -> method`` (or :class:`OracleMap`) for ``model``.

    Raises
    ------
    ValueError
        An unknown method, one that does not support the model's kind, or one that cannot be
        built for this model (e.g. a learned explainer with no trained weights for it).
    """
    kind = model_kind(model)
    for name in names:
        if name not in ORACLES and kind not in method_info(name).model_kinds:
            raise ValueError(
                f"method {name!r} does not support {kind} models (supports {method_info(name).model_kinds})"
            )
    opts = options or {}
    return {n: OracleMap(n) if n in ORACLES else get_method(n)(model, **opts.get(n, {})) for n in names}


def _collate(items: list[Any]) -> tuple[Tensor, Tensor, Tensor]:
    images, labels, masks = zip(*items, strict=True)
    return torch.stack(images), torch.stack([torch.as_tensor(x) for x in labels]), torch.stack(masks)


def _evaluate_batch(
    model: nn.Module,
    methods: dict[str, Any],
    images: Tensor,
    labels: Tensor,
    masks: Tensor,
    indices: Tensor,
    groups: Sequence[str],
    explain: str,
    baseline: str,
    mean: Tensor,
    std: Tensor,
) -> dict[str, list[dict[str, Any]]]:
    """Per-method lists of per-example records for one batch."""
    x = normalize(images, mean, std)
    two_objects = labels.dim() == 2
    with torch.no_grad():
        predicted = model_logits(model(x)).argmax(1).to(labels.device) if not two_objects else None
    out: dict[str, list[dict[str, Any]]] = {}
    for name, method in methods.items():
        recs: list[dict[str, Any]] = [{"index": int(i), "values": {}, "curves": {}} for i in indices]
        if two_objects:  # class sensitivity: explain each object's class in turn
            shares = []
            for k in range(2):
                if isinstance(method, OracleMap):
                    attr = method(masks[:, k], indices)
                else:
                    attr = method.attribute(x, target=labels[:, k].tolist()).detach()
                shares.append(class_sensitivity(attr.cpu(), masks[:, k] > 0, masks[:, 1 - k] > 0))
            for r, s in zip(recs, torch.stack(shares, 1).nanmean(1), strict=True):
                r["values"]["class_sensitivity"] = float(s)
            out[name] = recs
            continue
        assert predicted is not None
        known = labels >= 0
        target = torch.where(known, labels, predicted) if explain == "target" else predicted
        if isinstance(method, OracleMap):
            attr = method(masks, indices)
        else:
            attr = method.attribute(x, target=target.tolist()).detach()
        kw: dict[str, Any] = dict(mean=mean, std=std, indices=indices)
        if known.any() and "perturbation" in groups:
            sel = known.nonzero().flatten()
            for order, key in ((True, "pos"), (False, "neg")):
                c = perturbation_curves(model, images[sel], attr[sel], labels[sel], order, baseline=baseline, **kw)
                hit_auc, prob_auc = c.auc("hit"), c.auc("probability")
                prob_name = "deletion_auc" if order else "insertion_auc"
                for j, i in enumerate(sel.tolist()):
                    recs[i]["values"][f"{key}_auc"] = float(hit_auc[j])
                    recs[i]["values"][prob_name] = float(prob_auc[j])
                    recs[i]["curves"][key] = c.hit[j].tolist()
        if known.any() and "rise" in groups:
            sel = known.nonzero().flatten()
            for mode in ("deletion", "insertion"):
                rc = rise_curves(model, images[sel], attr[sel], labels[sel], mode, **kw)
                rise_auc = rc.auc()
                for j, i in enumerate(sel.tolist()):
                    recs[i]["values"][f"rise_{mode}"] = float(rise_auc[j])
                    recs[i]["curves"][f"rise_{mode}"] = rc.probability[j].tolist()
        if known.any() and "adp_pic" in groups:
            sel = known.nonzero().flatten()
            adp, pic = adp_pic(model, images[sel], attr[sel], labels[sel], baseline=baseline, **kw)
            for j, i in enumerate(sel.tolist()):
                recs[i]["values"].update(adp=float(adp[j]), pic=float(pic[j]))
        if "segmentation" in groups:
            valid = ((masks == 0) | (masks == 1)).flatten(1).any(1)
            if valid.any():
                sel = valid.nonzero().flatten()
                st = segmentation_stats(attr[sel].cpu(), masks[sel].long().cpu())
                rows = torch.cat([st.correct[:, None], st.labelled[:, None], st.intersection, st.union], 1)
                for j, i in enumerate(sel.tolist()):
                    recs[i]["seg"] = [*rows[j].tolist(), float(st.ap[j]), float(st.f1[j])]
        out[name] = recs
    return out


def evaluate(
    model: nn.Module,
    methods: Sequence[str] | None,
    dataset: Dataset[Any],
    pairs: Dataset[Any] | None = None,
    batch_size: int = 16,
    groups: Sequence[str] = METRIC_GROUPS,
    explain: str = "predicted",
    baseline: str = "black",
    method_options: dict[str, dict[str, Any]] | None = None,
    progress: bool = True,
    num_workers: int = 0,
) -> EvaluationResult | None:
    """Evaluate attribution methods on a dataset; sharded when running under torch.distributed.

    Parameters
    ----------
    model : nn.Module
        The explainee (used as is, on its own device).
    methods : sequence of str or None
        Registered method names (None: every method supporting the model's kind), and/or
        the reference maps of ``ORACLES`` (``"oracle:gt"``: the ground-truth mask, ...).
    dataset : Dataset
        Items ``(image (3, H, W) in [0, 1], label (-1 unknown), mask (H, W), 1 fg, 0 bg, -1
        unknown)``: the synthetic set or one of :mod:`captum_vit.data.loaders`.
    pairs : Dataset, optional
        Two-object items ``(image, labels (2,), masks (2, H, W))`` for class sensitivity.
    batch_size : int
        Images per attribution batch.
    groups : sequence of str
        Metric groups among ``METRIC_GROUPS``.
    explain : str
        ``"predicted"`` (Chefer's default) or ``"target"`` (the ground-truth label) class.
    baseline : str
        Removal baseline of the perturbation and ADP/PIC metrics (default black, as Chefer);
        the RISE metrics keep MUTEX's grey (zero in normalised space).
    method_options : dict, optional
        Constructor keyword arguments per method name.
    progress : bool
        Show a tqdm bar (rank 0 only).
    num_workers : int
        ``DataLoader`` worker processes loading the images (into pinned memory on CUDA).

    Returns
    -------
    EvaluationResult or None
        The gathered result on rank 0 (and single-process); None on other ranks.

    Raises
    ------
    ValueError
        An empty dataset, unknown or unsupported methods, groups or ``explain``.

    Examples
    --------
    >>> import timm
    >>> from captum_vit.data.synthetic import SyntheticDataset
    >>> m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5,
    ...                       depth=1, img_size=32).eval()
    >>> r = evaluate(m, ["rollout"], SyntheticDataset(2, seed=5, image_size=32), progress=False,
    ...              groups=("segmentation",))
    >>> r.summary()["rollout"]["miou"]["count"]
    2
    """
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError("empty dataset: nothing to evaluate")
    unknown = [g for g in groups if g not in METRIC_GROUPS]
    if unknown:
        raise ValueError(f"unknown metric groups {unknown}; expected a subset of {METRIC_GROUPS}")
    if explain not in ("predicted", "target"):
        raise ValueError(f"explain must be 'predicted' or 'target', got {explain!r}")
    names = list(methods) if methods else list_methods(model_kind(model))
    built = build_methods(model, names, method_options)
    mean, std = model_normalization(model)
    device = _device_of(model)
    ctx = init_distributed(device)
    rank, world = ctx.rank, ctx.world_size
    try:
        jobs: list[tuple[Dataset[Any], str]] = [(dataset, "single")]
        if pairs is not None and "class_sensitivity" in groups:
            jobs.append((pairs, "pairs"))
        local: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
        shards = [list(range(rank, len(ds), world)) for ds, _ in jobs]  # type: ignore[arg-type]
        total = sum((len(s) + batch_size - 1) // batch_size for s in shards) * len(names)
        bar = tqdm(total=total, disable=not progress or rank != 0, file=sys.stderr, desc="evaluate")
        for (ds, tag), shard in zip(jobs, shards, strict=True):
            loader = DataLoader(
                ds, batch_size, sampler=shard, collate_fn=_collate, num_workers=num_workers,
                pin_memory=device.type == "cuda",
            )  # fmt: skip
            for start, (images, labels, masks) in zip(range(0, len(shard), batch_size), loader, strict=True):
                idx = shard[start : start + batch_size]
                offset = 0 if tag == "single" else len(dataset)  # type: ignore[arg-type]
                recs = _evaluate_batch(
                    model, built, images.to(device), labels.to(device), masks.to(device),
                    torch.tensor(idx) + offset, groups, explain, baseline, mean, std,
                )  # fmt: skip
                for n, r in recs.items():
                    local[n].extend(r)
                bar.update(len(names))
        bar.close()
        if world > 1:
            gathered: list[Any] | None = [None] * world if rank == 0 else None
            dist.gather_object(local, gathered, dst=0)
            if rank != 0:
                return None
            assert gathered is not None
            local = {n: [r for part in gathered for r in part[n]] for n in names}
        return EvaluationResult.from_records(local)
    finally:
        shutdown(ctx)
