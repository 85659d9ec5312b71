"""Merge leaderboard parts run side by side (each ``leaderboard.py ... --out PART``) into one table.

    python benchmarks/quality/leaderboard_merge.py benchmarks/results/leaderboard-parts/*

The slow rows (LTX, IIA) and the fast ones can run in separate processes on separate cores;
every part keeps its per-image values, so the merged intervals and paired tests are computed
exactly as one run would compute them (:mod:`benchmarks.quality.leaderboard_table`). Parts must
share the dataset seed and metric groups.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path
from typing import Any

try:  # run as a script or imported as a module
    from benchmarks.quality.leaderboard_table import statistics, to_markdown
except ModuleNotFoundError:  # pragma: no cover - the script's own folder is on sys.path
    from leaderboard_table import statistics, to_markdown  # type: ignore[no-redef]

RESULTS = Path(__file__).resolve().parents[1] / "results"


def merge(parts: list[dict[str, Any]], resamples: int) -> dict[str, Any]:
    """``{model: {"per_image", "skipped", "seconds", "summary"}}`` over every part's rows."""
    keys = {(p["meta"]["args"]["seed"], p["meta"]["args"]["groups"]) for p in parts}
    if len(keys) != 1:
        raise SystemExit(f"leaderboard_merge: parts differ in seed or metric groups: {sorted(keys)}")
    board: dict[str, Any] = {}
    for part in parts:
        for model, entry in part["models"].items():
            target = board.setdefault(model, {"per_image": {}, "skipped": {}, "seconds": {}})
            for key in ("per_image", "skipped", "seconds"):
                target[key].update(entry[key])
    for entry in board.values():
        entry["per_image"] = dict(sorted(entry["per_image"].items(), key=lambda kv: (kv[0].startswith("oracle"), kv[0])))
        entry["skipped"] = {k: v for k, v in entry["skipped"].items() if k not in entry["per_image"]}
        entry["summary"] = statistics(entry["per_image"], resamples)
    return board


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("parts", nargs="+", type=Path, help="folders holding a part's leaderboard.json")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples per interval (default 1000)")
    p.add_argument("--out", type=Path, default=RESULTS, help="output folder (default benchmarks/results)")
    args = p.parse_args(argv)
    missing = [str(d) for d in args.parts if not (d / "leaderboard.json").is_file()]
    if missing:
        raise SystemExit(f"leaderboard_merge: no leaderboard.json in {', '.join(missing)}")
    parts = [json.loads((d / "leaderboard.json").read_text()) for d in args.parts]
    commands = [f"{p['meta']['command']} --out {shlex.quote(str(d))}" for p, d in zip(parts, args.parts, strict=True)]
    commands.append("python benchmarks/quality/leaderboard_merge.py " + " ".join(shlex.quote(str(d)) for d in args.parts))
    board = merge(parts, args.resamples)
    meta = dict(parts[0]["meta"], command=commands[-1], commands=commands)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "leaderboard.md").write_text(to_markdown(board, commands, args.resamples))
    (args.out / "leaderboard.json").write_text(json.dumps({"meta": meta, "models": board}))
    print(f"wrote {args.out / 'leaderboard.md'} and leaderboard.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
