"""The evaluation table: per-example records -> per-method means and counts, as markdown,
CSV, JSON and a plot of the perturbation curves."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from captum_vit.metrics.perturbation import CHEFER_FRACTIONS
from captum_vit.metrics.rise import RISE_PERCENTAGES
from captum_vit.metrics.segmentation import SegmentationStats, segmentation_scores

#: Metric groups :func:`captum_vit.evaluate.evaluate` can compute.
METRIC_GROUPS = ("perturbation", "rise", "adp_pic", "segmentation", "class_sensitivity")

#: Column order and direction (True: higher is better) of every metric in the table.
METRICS: dict[str, bool] = {
    "pos_auc": False,
    "neg_auc": True,
    "deletion_auc": False,
    "insertion_auc": True,
    "rise_deletion": False,
    "rise_insertion": True,
    "adp": False,
    "pic": True,
    "pixel_accuracy": True,
    "miou": True,
    "map": True,
    "mf1": True,
    "class_sensitivity": True,
}
SEGMENTATION_METRICS = ("pixel_accuracy", "miou", "map", "mf1")

#: x axes of the stored curves.
CURVE_X: dict[str, list[float]] = {
    "pos": [0.0, *CHEFER_FRACTIONS],
    "neg": [0.0, *CHEFER_FRACTIONS],
    "rise_deletion": [0.0, *(p / 100 for p in RISE_PERCENTAGES)],
    "rise_insertion": [0.0, *(p / 100 for p in RISE_PERCENTAGES)],
}
CURVE_TITLES = {
    "pos": "positive perturbation (top-1 hit)",
    "neg": "negative perturbation (top-1 hit)",
    "rise_deletion": "RISE deletion (probability)",
    "rise_insertion": "RISE insertion (probability)",
}


@dataclass
class EvaluationResult:
    """Per-method, per-example records, ordered by dataset index.

    Each record is ``{"index", "values": {metric: float}, "curves": {name: list},
    "seg": [correct, labelled, inter_bg, inter_fg, union_bg, union_fg, ap, f1]}``.
    """

    records: dict[str, list[dict[str, Any]]]

    @classmethod
    def from_records(cls, records: dict[str, list[dict[str, Any]]]) -> EvaluationResult:
        return cls({m: sorted(rs, key=lambda r: r["index"]) for m, rs in records.items()})

    def summary(self) -> dict[str, dict[str, dict[str, float | int]]]:
        """``{method: {metric: {"mean": float, "count": int}}}``; NaN values are not counted."""
        out: dict[str, dict[str, dict[str, float | int]]] = {}
        for method, recs in self.records.items():
            table: dict[str, dict[str, float | int]] = {}
            for metric in METRICS:
                vals = [r["values"][metric] for r in recs if metric in r["values"]]
                vals = [v for v in vals if not math.isnan(v)]
                if vals:
                    table[metric] = {"mean": sum(vals) / len(vals), "count": len(vals)}
            seg = [r["seg"] for r in recs if "seg" in r]
            if seg:
                t = torch.tensor(seg, dtype=torch.float64)
                stats = SegmentationStats(t[:, 0], t[:, 1], t[:, 2:4], t[:, 4:6], t[:, 6], t[:, 7])
                for metric, value in segmentation_scores(stats).items():
                    table[metric] = {"mean": value, "count": len(seg)}
            out[method] = {m: table[m] for m in METRICS if m in table}
        return out

    def mean_curves(self) -> dict[str, dict[str, list[float]]]:
        """``{curve: {method: mean y}}`` over the examples that have the curve."""
        out: dict[str, dict[str, list[float]]] = {}
        for method, recs in self.records.items():
            for name in CURVE_X:
                ys = [r["curves"][name] for r in recs if name in r.get("curves", {})]
                if ys:
                    out.setdefault(name, {})[method] = torch.tensor(ys).mean(0).tolist()
        return out

    def _columns(self, summary: dict[str, dict[str, dict[str, float | int]]]) -> list[str]:
        return [m for m in METRICS if any(m in s for s in summary.values())]

    def to_markdown(self) -> str:
        """A markdown table: one row per method, one column per metric (arrow = better)."""
        s = self.summary()
        cols = self._columns(s)
        head = "| method | " + " | ".join(f"{c} {'↑' if METRICS[c] else '↓'}" for c in cols) + " |"
        lines = [head, "|" + "---|" * (len(cols) + 1)]
        for method, table in s.items():
            cells = [f"{table[c]['mean']:.2f}" if c in table else "" for c in cols]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        counts = {c: max(int(t[c]["count"]) for t in s.values() if c in t) for c in cols}
        lines.append("")
        lines.append("images per metric: " + ", ".join(f"{c} {n}" for c, n in counts.items()))
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        """CSV with one row per (method, metric): ``method,metric,mean,count``."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["method", "metric", "mean", "count"])
        for method, table in self.summary().items():
            for metric, v in table.items():
                w.writerow([method, metric, f"{v['mean']:.6f}", v["count"]])
        return buf.getvalue()

    def to_json(self) -> str:
        """One JSON object: per method, per metric, the mean and the count."""
        return json.dumps(self.summary(), indent=2, sort_keys=False)

    def plot(self, path: str | Path) -> Path:
        """Write a PNG with one panel per perturbation curve and one line per method."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        curves = self.mean_curves()
        if not curves:
            raise ValueError("no perturbation curves to plot: evaluate with the 'perturbation' or 'rise' metrics")
        fig, axes = plt.subplots(1, len(curves), figsize=(4.5 * len(curves), 3.8), squeeze=False)
        for ax, (name, per_method) in zip(axes[0], curves.items(), strict=True):
            for method, ys in per_method.items():
                ax.plot(CURVE_X[name], ys, marker=".", label=method)
            ax.set_title(CURVE_TITLES[name], fontsize=9)
            ax.set_xlabel("fraction of pixels removed" if name in ("pos", "neg") else "fraction of pixels")
            ax.set_ylim(-0.02, 1.02)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path
