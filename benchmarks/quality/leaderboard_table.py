"""The leaderboard's statistics and markdown: per-image values -> means with 95 % bootstrap
intervals, "gap closed" between the random map and the ground-truth oracle, and paired
significance marks between adjacent rows (:mod:`captum_vit.metrics.bootstrap`)."""

from __future__ import annotations

import math
from typing import Any

import torch

from captum_vit.metrics import METRICS, gap_closed, mean_ci, miou_ci, paired_difference
from captum_vit.metrics.report import EvaluationResult

RANDOM, ORACLE = "oracle:random", "oracle:gt"
#: Metrics that get a "gap closed" column: the top-1 POS AUC of Chefer et al. (coarse: a
#: per-image value moves in steps of 10), the same curve scored by the label's probability,
#: and MUTEX's RISE deletion (probability, grey baseline, percent axis), whose random-to-oracle
#: gap is about four times wider on this benchmark.
GAP_METRICS = ("pos_auc", "deletion_auc", "rise_deletion")
#: Columns of the main table (the full one has every metric).
MAIN = ("pos_auc", "deletion_auc", "rise_deletion", "neg_auc", "insertion_auc", "miou", "class_sensitivity")
#: Metrics of the paired tests between adjacent rows.
TESTED = ("pos_auc", "rise_deletion")
SEG = ("correct", "labelled", "inter_bg", "inter_fg", "union_bg", "union_fg", "ap", "f1")


def per_image(result: EvaluationResult, name: str) -> dict[str, Any]:
    """The JSON-ready per-image record of one method: image indices, each metric's values
    (``None`` where it does not apply) and the segmentation counts."""
    recs = result.records[name]
    out: dict[str, Any] = {"index": [r["index"] for r in recs], "values": {}, "seg": {}}
    for metric in METRICS:
        vals = [r["values"].get(metric) for r in recs]
        if any(v is not None for v in vals):
            out["values"][metric] = [None if v is None or math.isnan(v) else round(float(v), 5) for v in vals]
    seg = [r.get("seg") for r in recs]
    if any(s is not None for s in seg):
        for j, key in enumerate(SEG):
            out["seg"][key] = [None if s is None else float(s[j]) for s in seg]
    return out


def _values(rec: dict[str, Any], metric: str) -> dict[int, float]:
    vals = rec["values"].get(metric, [])
    return {i: v for i, v in zip(rec["index"], vals, strict=False) if v is not None}


def _aligned(recs: list[dict[str, Any]], metric: str) -> list[torch.Tensor] | None:
    """The metric's values of several methods on the images they all have."""
    maps = [_values(r, metric) for r in recs]
    common = sorted(set.intersection(*(set(m) for m in maps)))
    if not common:
        return None
    return [torch.tensor([m[i] for i in common], dtype=torch.float64) for m in maps]


def statistics(rows: dict[str, dict[str, Any]], resamples: int, seed: int = 0) -> dict[str, dict[str, Any]]:
    """``{method: {metric: {"mean", "low", "high", "count"}, "gap_<metric>": {...}}}``."""
    out: dict[str, dict[str, Any]] = {}
    for name, rec in rows.items():
        table: dict[str, Any] = {}
        for metric in METRICS:
            if metric == "miou":
                seg = rec.get("seg", {})
                if seg:
                    keep = [j for j, v in enumerate(seg["inter_bg"]) if v is not None]
                    inter = torch.tensor([[seg["inter_bg"][j], seg["inter_fg"][j]] for j in keep], dtype=torch.float64)
                    union = torch.tensor([[seg["union_bg"][j], seg["union_fg"][j]] for j in keep], dtype=torch.float64)
                    ci = miou_ci(inter, union, resamples, seed=seed)
                    table[metric] = {"mean": ci.estimate, "low": ci.low, "high": ci.high, "count": len(keep)}
                continue
            vals = _values(rec, metric)
            if vals:
                ci = mean_ci(torch.tensor(list(vals.values()), dtype=torch.float64), resamples, seed=seed)
                table[metric] = {"mean": ci.estimate, "low": ci.low, "high": ci.high, "count": len(vals)}
        if RANDOM in rows and ORACLE in rows:
            for metric in GAP_METRICS:
                aligned = _aligned([rec, rows[RANDOM], rows[ORACLE]], metric)
                if aligned is not None:
                    g = gap_closed(*aligned, num_samples=resamples, seed=seed)
                    table[f"gap_{metric}"] = {"mean": g.estimate, "low": g.low, "high": g.high}
        out[name] = table
    return out


def ranking(rows: dict[str, dict[str, Any]], stats: dict[str, dict[str, Any]], metric: str, resamples: int) -> list[
    tuple[str, float | None]
]:  # fmt: skip
    """Methods (not the oracle rows) from best to worst on ``metric``, each with the paired
    bootstrap p-value of its difference to the next row (``None`` for the last)."""
    better_high = METRICS[metric]
    names = [n for n in rows if not n.startswith("oracle") and metric in stats[n]]
    names.sort(key=lambda n: -stats[n][metric]["mean"] if better_high else stats[n][metric]["mean"])
    out: list[tuple[str, float | None]] = []
    for i, name in enumerate(names):
        p = None
        if i + 1 < len(names):
            aligned = _aligned([rows[name], rows[names[i + 1]]], metric)
            if aligned is not None:
                p = paired_difference(aligned[0], aligned[1], resamples).p_value
        out.append((name, p))
    return out


def _adjacent_p(rows: dict[str, dict[str, Any]], names: list[str], i: int, metric: str, resamples: int) -> float | None:
    if i + 1 >= len(names):
        return None
    aligned = _aligned([rows[names[i]], rows[names[i + 1]]], metric)
    return None if aligned is None else paired_difference(aligned[0], aligned[1], resamples).p_value


def _cell(entry: dict[str, Any] | None, digits: int = 1) -> str:
    if entry is None:
        return ""
    m, lo, hi = (round(float(entry[k]), digits) + 0.0 for k in ("mean", "low", "high"))  # + 0.0: no "-0.00"
    return f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _mark(p: float | None) -> str:
    if p is None:
        return ""
    return f"{'**≠**' if p < 0.05 else '≈'} (p {p:.3f})" if p >= 0.001 else "**≠** (p < 0.001)"


def _count(t: dict[str, Any]) -> str:
    return str(t["pos_auc"]["count"]) if "pos_auc" in t else ""


def to_markdown(board: dict[str, Any], commands: list[str], resamples: int) -> str:
    lines = ["# Leaderboard on the synthetic benchmark", "", "Produced by", "", "```bash", *commands, "```", ""]
    lines += [
        "Every figure is the mean over images with its 95 % percentile bootstrap interval "
        f"({resamples} resamples of the images). *gap closed* = (random − method) / (random − oracle) on the",
        "same images: 1 is the ground-truth-mask oracle, 0 the seeded random map (`oracle:random`, uniform per pixel).",
        "Rows are ordered by POS AUC. *vs next*: paired bootstrap test of the row against the next one, on POS AUC",
        "and on RISE deletion: **≠** the two differ significantly (two-sided p < 0.05; the means give the",
        "direction), ≈ they cannot be told apart on these images.",
        "POS/NEG AUC follow Chefer et al. (black pixels, top-1",
        "hit against the label, ×100); deletion/insertion AUC are the same curves scored by the label's softmax",
        "probability (LTX's), which do not move in steps of 10 per image; RISE deletion/insertion are MUTEX's",
        "(grey baseline, percent axis, probability). Maps explain the ground-truth class.",
    ]
    for model_name, entry in board.items():
        rows = entry["per_image"]
        stats = statistics(rows, resamples)
        n_single = max((stats[n]["pos_auc"]["count"] for n in stats if "pos_auc" in stats[n]), default=0)
        n_pairs = max(
            (stats[n]["class_sensitivity"]["count"] for n in stats if "class_sensitivity" in stats[n]), default=0
        )
        lines += ["", f"## {model_name}", "", f"Up to {n_single} single-object images and {n_pairs} two-object images"]
        lines += ["(*n*: a row's single-object images; rows are compared on the images they share).", ""]
        head = [
            "method",
            "n",
            "gap closed (POS)",
            "gap closed (deletion)",
            "gap closed (RISE del.)",
            *(f"{c} {'↑' if METRICS[c] else '↓'}" for c in MAIN),
        ]
        tests = [f"vs next ({'POS' if m == 'pos_auc' else 'RISE del.'})" for m in TESTED]
        lines += ["| " + " | ".join([*head, *tests]) + " |", "|" + "---|" * (len(head) + len(tests))]
        order = ranking(rows, stats, "pos_auc", resamples)
        names = [n for n, _ in order]
        marks = {n: [_mark(_adjacent_p(rows, names, i, m, resamples)) for m in TESTED] for i, n in enumerate(names)}
        for name in [*names, *(n for n in rows if n.startswith("oracle"))]:
            t = stats[name]
            cells = [_cell(t.get(f"gap_{m}"), 2) for m in GAP_METRICS] + [_cell(t.get(c)) for c in MAIN]
            cells += marks.get(name, [""] * len(TESTED))
            lines.append(f"| {name} | {_count(t)} | " + " | ".join(cells) + " |")
        cols = [m for m in METRICS if m not in MAIN and any(m in t for t in stats.values())]
        if cols:
            lines += ["", "Other metrics (mean [95 % interval]) and run time:", ""]
            lines += ["| method | " + " | ".join(f"{c} {'↑' if METRICS[c] else '↓'}" for c in cols) + " | seconds |"]
            lines.append("|" + "---|" * (len(cols) + 2))
            for name in rows:
                cells = [_cell(stats[name].get(c)) for c in cols]
                lines.append(f"| {name} | " + " | ".join(cells) + f" | {entry['seconds'].get(name, '')} |")
        if entry["skipped"]:
            lines += ["", "Skipped: " + "; ".join(f"`{k}` ({v})" for k, v in sorted(entry["skipped"].items()))]
    return "\n".join(lines) + "\n"
