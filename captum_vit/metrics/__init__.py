"""Faithfulness and localisation metrics, reproducing the papers' protocols (docs/methods.md §7).

Every metric takes images in ``[0, 1]`` pixel space, input-shaped attributions and the
model's normalisation (``model.pretrained_cfg`` by default), and runs all removal levels of
a batch through the model as batched forward passes.
"""

from captum_vit.metrics.adp_pic import adp_pic
from captum_vit.metrics.baselines import BASELINES, removal_baseline
from captum_vit.metrics.bootstrap import (
    Interval,
    PairedDifference,
    bootstrap,
    gap_closed,
    mean_ci,
    miou_ci,
    paired_difference,
)
from captum_vit.metrics.class_sensitivity import class_sensitivity
from captum_vit.metrics.perturbation import (
    CHEFER_FRACTIONS,
    PerturbationCurves,
    negative_perturbation_auc,
    perturbation_curves,
    positive_perturbation_auc,
    probability_deletion_auc,
    probability_insertion_auc,
)
from captum_vit.metrics.report import METRIC_GROUPS, METRICS, EvaluationResult
from captum_vit.metrics.rise import RISE_PERCENTAGES, RiseCurves, rise_curves, rise_deletion_auc, rise_insertion_auc
from captum_vit.metrics.segmentation import (
    SegmentationStats,
    average_precision,
    segmentation_scores,
    segmentation_stats,
)
from captum_vit.models.preprocess import model_normalization  # the one helper, re-exported for metric users

__all__ = [
    "BASELINES",
    "CHEFER_FRACTIONS",
    "METRICS",
    "METRIC_GROUPS",
    "RISE_PERCENTAGES",
    "EvaluationResult",
    "Interval",
    "PairedDifference",
    "PerturbationCurves",
    "RiseCurves",
    "SegmentationStats",
    "adp_pic",
    "average_precision",
    "bootstrap",
    "class_sensitivity",
    "gap_closed",
    "mean_ci",
    "miou_ci",
    "model_normalization",
    "negative_perturbation_auc",
    "paired_difference",
    "perturbation_curves",
    "positive_perturbation_auc",
    "probability_deletion_auc",
    "probability_insertion_auc",
    "removal_baseline",
    "rise_curves",
    "rise_deletion_auc",
    "rise_insertion_auc",
    "segmentation_scores",
    "segmentation_stats",
]
