"""The demo: explain built-in synthetic images with every registered method.

Writes ``figure.png`` (each image with its ground-truth mask and one map per method) and
``metrics.md`` (per-method latency as a ratio to one forward pass of the model, and the
faithfulness/localisation metrics) to ``--out``, and prints the table.

    captum-vit demo --out out/demo
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

from captum_vit.attr import get_method, list_methods


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder (default out/demo)")
    p.add_argument("--model", default="synthetic-vit", help="shipped model name (default synthetic-vit)")
    p.add_argument("--n-images", type=int, default=4, help="images in the figure (default 4)")
    p.add_argument("--n-eval", type=int, default=16, help="images for the metrics (default 16)")
    p.add_argument("--seed", type=int, default=12345, help="seed of the generated images")
    p.add_argument("--methods", nargs="*", default=None, help="subset of registered methods (default all)")
    p.add_argument("--repeats", type=int, default=3, help="timing repeats; the median is reported")


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up (lazy state, allocator)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def normalise(images: Tensor, model: nn.Module) -> Tensor:
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    mean = torch.tensor(cfg.get("mean", (0.5, 0.5, 0.5))).view(1, -1, 1, 1)
    std = torch.tensor(cfg.get("std", (0.5, 0.5, 0.5))).view(1, -1, 1, 1)
    return (images - mean) / std


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
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    from captum_vit.data.synthetic import CLASS_NAMES, generate
    from captum_vit.models import load_pretrained

    torch.manual_seed(0)
    model = load_pretrained(args.model)
    kind = "vit" if hasattr(model, "blocks") else "cnn"
    names = args.methods or list_methods(kind)
    cfg: dict[str, Any] = model.pretrained_cfg  # type: ignore[assignment]
    size = int(cfg["input_size"][-1])
    data = generate(max(args.n_images, args.n_eval), seed=args.seed, image_size=size)
    pixels, labels, masks = data.images, data.labels, data.masks
    x = normalise(pixels, model)

    shown = x[: args.n_images]
    with torch.no_grad():
        forward_s = median_seconds(lambda: model(shown), args.repeats)
        pred = model(x).argmax(1)
    rows = []
    maps: dict[str, Tensor] = {}
    for name in names:
        try:
            method = get_method(name)(model)
        except (ValueError, TypeError) as e:  # e.g. a method needing weights not shipped for this model
            warnings.warn(f"skipping {name}: {e}", stacklevel=1)
            continue

        def explain(m: Attribution = method, t: Tensor = labels[: args.n_images]) -> Tensor:
            return m.attribute(shown, target=t)

        seconds = median_seconds(explain, args.repeats)
        maps[name] = explain().detach()
        row = {"method": name, "latency_ms": 1000 * seconds, "x_forward": seconds / forward_s}
        row.update(
            demo_metrics(
                model, method, pixels[: args.n_eval], x[: args.n_eval], labels[: args.n_eval], masks[: args.n_eval]
            )
        )
        rows.append(row)

    captions = [
        f"{CLASS_NAMES[int(t)]}\n(pred {CLASS_NAMES[int(p)]})"
        for t, p in zip(labels[: args.n_images], pred[: args.n_images])
    ]
    write_figure(args.out / "figure.png", pixels[: args.n_images], masks[: args.n_images], maps, captions)
    table = format_table(rows, forward_ms=1000 * forward_s, batch=int(shown.shape[0]), model_name=args.model)
    (args.out / "metrics.md").write_text(table)
    print(table)
    print(f"wrote {args.out / 'figure.png'} and {args.out / 'metrics.md'}")
    return 0


def demo_metrics(
    model: nn.Module, method: Attribution, pixels: Tensor, x: Tensor, labels: Tensor, masks: Tensor
) -> dict[str, float]:
    """Chefer's positive/negative perturbation AUC (methods.md §7.1) and the segmentation
    mIoU against the ground-truth object masks (§7.5) on the evaluation images, explaining
    the ground-truth class."""
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
        "mIoU": segmentation_scores(segmentation_stats(attr, masks))["miou"],
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
