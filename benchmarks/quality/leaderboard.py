"""The quality leaderboard: every registered method on the shipped ViT and CNN, with 95 %
bootstrap intervals, gap closed and paired significance marks.

    python benchmarks/quality/leaderboard.py        # writes benchmarks/results/leaderboard.{md,json}
    python benchmarks/quality/leaderboard.py --num-images 64 --pairs 16 --out /tmp/lb   # a quick run

Each method runs on held-out synthetic images (a seed no training run uses) with the metrics
of :mod:`captum_vit.metrics`; methods that do not support a model kind are skipped, and a
method that fails to build or run is listed with its error instead of stopping the run. The
ground-truth mask, its inverse and a random map are added as reference rows. The JSON keeps
every per-image value, so ``--update`` can add rows and every interval and test is
recomputed over all rows (:mod:`benchmarks.quality.leaderboard_table`).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from captum_vit.attr import list_methods
from captum_vit.data.splits import BENCHMARK_SEED
from captum_vit.data.synthetic import SyntheticDataset
from captum_vit.evaluate import ORACLES, evaluate, model_kind
from captum_vit.metrics.report import METRIC_GROUPS
from captum_vit.models.pretrained import load_pretrained

try:  # run as a script (python benchmarks/quality/leaderboard.py) or imported as a module
    from benchmarks.quality.leaderboard_table import per_image, statistics, to_markdown
except ModuleNotFoundError:  # pragma: no cover - the script's own folder is on sys.path
    from leaderboard_table import per_image, statistics, to_markdown  # type: ignore[no-redef]

MODELS = ("synthetic-vit", "synthetic-resnet")
RESULTS = Path(__file__).resolve().parents[1] / "results"


def leaderboard(
    num_images: int,
    pairs: int,
    seed: int,
    batch_size: int,
    models: tuple[str, ...] = MODELS,
    methods: tuple[str, ...] | None = None,
    groups: tuple[str, ...] = METRIC_GROUPS,
) -> dict[str, Any]:
    """``{model: {"per_image": {method: record}, "skipped": {...}, "seconds": {...}}}``.

    ``methods`` restricts the rows (default: every registered method and the oracles)."""
    out: dict[str, Any] = {}
    for model_name in models:
        model = load_pretrained(model_name)
        kind = model_kind(model)
        size = int(model.pretrained_cfg["input_size"][-1])
        data = SyntheticDataset(num_images, seed=seed, image_size=size)
        two = SyntheticDataset(pairs, seed=seed + 1, objects=2, image_size=size) if pairs > 0 else None
        entry: dict[str, Any] = {"per_image": {}, "skipped": {}, "seconds": {}}
        supported = set(list_methods(kind))
        entry["skipped"].update({m: f"does not support {kind} models" for m in list_methods() if m not in supported})
        for name in [*sorted(supported), *ORACLES]:
            if methods is not None and name not in methods:
                continue
            t0 = time.perf_counter()
            try:
                result = evaluate(
                    model, [name], data, two, batch_size=batch_size, groups=groups, explain="target", progress=False
                )
            except Exception as e:  # noqa: BLE001 - a broken method is reported, not fatal
                entry["skipped"][name] = f"{type(e).__name__}: {e}"
                print(f"[{model_name}] {name}: FAILED {e}", file=sys.stderr)
                continue
            assert result is not None
            entry["per_image"][name] = per_image(result, name)
            entry["seconds"][name] = round(time.perf_counter() - t0, 1)
            print(f"[{model_name}] {name}: {entry['seconds'][name]} s", file=sys.stderr)
        out[model_name] = entry
    return out


def _groups(text: str) -> tuple[str, ...]:
    groups = tuple(g for g in text.split(",") if g)
    bad = [g for g in groups if g not in METRIC_GROUPS]
    if bad or not groups:
        raise SystemExit(f"--groups: expected a comma-separated subset of {','.join(METRIC_GROUPS)}, got {text!r}")
    return groups


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-images", type=int, default=512, help="single-object images (default 512)")
    p.add_argument("--pairs", type=int, default=128, help="two-object images for class sensitivity (default 128)")
    p.add_argument("--seed", type=int, default=BENCHMARK_SEED, help="dataset seed (default 12345, unused by training)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--groups", default=",".join(METRIC_GROUPS), help="comma-separated metric groups (default: all)")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples per interval (default 1000)")
    p.add_argument("--out", type=Path, default=RESULTS, help="output folder (default benchmarks/results)")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated shipped models")
    p.add_argument("--methods", default=None, help="comma-separated rows to (re)compute (default: all)")
    p.add_argument(
        "--update",
        action="store_true",
        help="merge the computed rows into an existing leaderboard.json in --out (same images and metrics)",
    )
    args = p.parse_args(argv)
    groups = _groups(args.groups)
    if args.num_images < 1 or args.pairs < 0 or args.resamples < 1:
        raise SystemExit("--num-images and --resamples must be positive and --pairs non-negative")
    torch.manual_seed(0)
    methods = tuple(args.methods.split(",")) if args.methods else None
    models = tuple(args.models.split(","))
    board = leaderboard(args.num_images, args.pairs, args.seed, args.batch_size, models, methods, groups)
    command = (
        "python benchmarks/quality/leaderboard.py"
        + "".join(
            f" --{k.replace('_', '-')} {v}"
            for k, v in vars(args).items()
            if k not in ("out", "update", "resamples") and v != p.get_default(k)
        )
        + (" --update" if args.update else "")
    )
    args.out.mkdir(parents=True, exist_ok=True)
    commands = [command]
    if args.update and (args.out / "leaderboard.json").is_file():
        previous = json.loads((args.out / "leaderboard.json").read_text())
        # Rows may use different image counts: SyntheticDataset(n, seed)[i] does not depend on
        # n, so a smaller run holds the first images of a larger one and rows are compared on
        # the images they share. The seed and the metrics must match.
        same = {k: previous["meta"]["args"][k] for k in ("seed", "groups")} == {
            "seed": str(args.seed), "groups": args.groups}  # fmt: skip
        if not same:
            raise SystemExit(
                f"--update: the existing table used {previous['meta']['args']}; --seed and --groups must match"
            )
        for model_name, entry in board.items():
            old = previous["models"].setdefault(model_name, {"per_image": {}, "skipped": {}, "seconds": {}})
            for key in ("per_image", "skipped", "seconds"):
                for name in list(entry["per_image"]) + list(entry["skipped"]):
                    old[key].pop(name, None)
                old[key].update(entry[key])
            old["per_image"] = dict(
                sorted(old["per_image"].items(), key=lambda kv: (kv[0].startswith("oracle"), kv[0]))
            )
        board = previous["models"]
        commands = [*previous["meta"].get("commands", [previous["meta"]["command"]]), command]
    for entry in board.values():
        entry["summary"] = statistics(entry["per_image"], args.resamples)
    markdown = to_markdown(board, commands, args.resamples)
    (args.out / "leaderboard.md").write_text(markdown)
    meta = {"command": command, "commands": commands, "torch": torch.__version__, "machine": platform.machine(),
            "args": {k: str(v) for k, v in vars(args).items()}}  # fmt: skip
    (args.out / "leaderboard.json").write_text(json.dumps({"meta": meta, "models": board}))
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
