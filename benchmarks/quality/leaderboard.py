"""The quality leaderboard: every registered method on the shipped ViT and CNN.

    python benchmarks/quality/leaderboard.py                 # writes benchmarks/results/leaderboard.{md,json}
    python benchmarks/quality/leaderboard.py --n 64 --pairs 16 --out /tmp/lb   # a quick run

Each method runs on held-out synthetic images (a seed no training run uses) with every metric
of :mod:`captum_vit.metrics`; methods that do not support a model kind are skipped, and a
method that fails to build or run is listed with its error instead of stopping the run. The
ground-truth mask, its inverse and a random map are added as reference rows.
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
from captum_vit.metrics.report import METRICS
from captum_vit.models.pretrained import load_pretrained

MODELS = ("synthetic-vit", "synthetic-resnet")
RESULTS = Path(__file__).resolve().parents[1] / "results"


def leaderboard(
    n: int,
    pairs: int,
    seed: int,
    batch_size: int,
    models: tuple[str, ...] = MODELS,
    methods: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """``{model: {"methods": {method: summary}, "skipped": {...}, "seconds": {...}}}``.

    ``methods`` restricts the rows (default: every registered method and the oracles)."""
    out: dict[str, Any] = {}
    for model_name in models:
        model = load_pretrained(model_name)
        kind = model_kind(model)
        size = int(model.pretrained_cfg["input_size"][-1])
        data = SyntheticDataset(n, seed=seed, image_size=size)
        two = SyntheticDataset(pairs, seed=seed + 1, objects=2, image_size=size) if pairs > 0 else None
        entry: dict[str, Any] = {"methods": {}, "skipped": {}, "seconds": {}}
        supported = set(list_methods(kind))
        entry["skipped"].update({m: f"does not support {kind} models" for m in list_methods() if m not in supported})
        for name in [*sorted(supported), *ORACLES]:
            if methods is not None and name not in methods:
                continue
            t0 = time.perf_counter()
            try:
                result = evaluate(model, [name], data, two, batch_size=batch_size, progress=False)
            except Exception as e:  # noqa: BLE001 - a broken method is reported, not fatal
                entry["skipped"][name] = f"{type(e).__name__}: {e}"
                print(f"[{model_name}] {name}: FAILED {e}", file=sys.stderr)
                continue
            assert result is not None
            entry["methods"][name] = result.summary()[name]
            entry["seconds"][name] = round(time.perf_counter() - t0, 1)
            print(f"[{model_name}] {name}: {entry['seconds'][name]} s", file=sys.stderr)
        out[model_name] = entry
    return out


def to_markdown(board: dict[str, Any], command: str) -> str:
    lines = ["# Leaderboard on the synthetic benchmark", "", f"Produced by `{command}`", ""]
    lines.append("Arrows give the better direction. Perturbation AUCs follow Chefer et al. (black pixels, top-1 hit")
    lines.append("against the label, x = 0 included, ×100); insertion/deletion_auc are LTX's probability versions;")
    lines.append("rise_* are MUTEX's (grey baseline, percent axis, fixed origin); segmentation thresholds at the mean.")
    for model_name, entry in board.items():
        lines += ["", f"## {model_name}", ""]
        rows = entry["methods"]
        cols = [m for m in METRICS if any(m in t for t in rows.values())]
        lines.append("| method | " + " | ".join(f"{c} {'↑' if METRICS[c] else '↓'}" for c in cols) + " | seconds |")
        lines.append("|" + "---|" * (len(cols) + 2))
        for name, table in rows.items():
            cells = [f"{table[c]['mean']:.2f}" if c in table else "" for c in cols]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {entry['seconds'][name]} |")
        if entry["skipped"]:
            lines += ["", "Skipped: " + "; ".join(f"`{k}` ({v})" for k, v in sorted(entry["skipped"].items()))]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=256, help="single-object images (default 256)")
    p.add_argument("--pairs", type=int, default=64, help="two-object images for class sensitivity (default 64)")
    p.add_argument("--seed", type=int, default=BENCHMARK_SEED, help="dataset seed (default 12345, unused by training)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", type=Path, default=RESULTS, help="output folder (default benchmarks/results)")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated shipped models")
    p.add_argument("--methods", default=None, help="comma-separated rows to (re)compute (default: all)")
    p.add_argument(
        "--update",
        action="store_true",
        help="merge the computed rows into an existing leaderboard.json in --out (same --n/--pairs/--seed)",
    )
    args = p.parse_args(argv)
    torch.manual_seed(0)
    methods = tuple(args.methods.split(",")) if args.methods else None
    board = leaderboard(args.n, args.pairs, args.seed, args.batch_size, tuple(args.models.split(",")), methods)
    command = "python benchmarks/quality/leaderboard.py" + "".join(
        f" --{k.replace('_', '-')} {v}"
        for k, v in vars(args).items()
        if k not in ("out", "models", "methods", "update") and v != p.get_default(k)
    )
    args.out.mkdir(parents=True, exist_ok=True)
    if args.update and (args.out / "leaderboard.json").is_file():
        previous = json.loads((args.out / "leaderboard.json").read_text())
        if previous["meta"]["command"] != command:
            raise SystemExit(
                f"--update: the existing table was made by {previous['meta']['command']!r}, not {command!r}"
            )
        for model_name, entry in board.items():
            old = previous["models"].setdefault(model_name, {"methods": {}, "skipped": {}, "seconds": {}})
            for key in ("methods", "skipped", "seconds"):
                for name in list(entry["methods"]) + list(entry["skipped"]):
                    old[key].pop(name, None)
                old[key].update(entry[key])
            old["methods"] = dict(sorted(old["methods"].items(), key=lambda kv: (kv[0].startswith("oracle"), kv[0])))
        board = previous["models"]
    (args.out / "leaderboard.md").write_text(to_markdown(board, command))
    meta = {"command": command, "torch": torch.__version__, "machine": platform.machine(), "args": {
        k: str(v) for k, v in vars(args).items()}}  # fmt: skip
    (args.out / "leaderboard.json").write_text(json.dumps({"meta": meta, "models": board}, indent=2))
    print(to_markdown(board, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
