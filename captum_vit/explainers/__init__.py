"""Learned explainers: the networks of LTX/EEA and Vision DiffMask, their objectives, and
how a trained one is found for a model.

The explanation methods (:mod:`captum_vit.attr`), the training commands (``captum-vit
pretrain-ltx``, ``captum-vit train-diffmask``) and the exporter (``captum_vit.export``) all
stand on this package; it depends only on :mod:`captum_vit.models`, :mod:`captum_vit.kernels` and
:mod:`captum_vit.metrics`.

==========================  ===============================================================
module                      holds
==========================  ===============================================================
``ltx_network``             :class:`ViTExplainer` / :class:`CNNExplainer` (LTX / EEA)
``ltx_objective``           the LTX loss, mask losses, λ defaults, per-instance finetuning
``hard_concrete``           the hard-concrete gate distribution
``diffmask_gates``          :class:`DiffMaskGates` (gate networks + placeholder)
``diffmask_objective``      the DiffMask Lagrangian, KL, held-out faithfulness
``registry``                resolving ``explainer=`` / ``gates=``: registered, files, modules
==========================  ===============================================================
"""

from captum_vit.explainers.diffmask_gates import DiffMaskGates, GateNetwork
from captum_vit.explainers.diffmask_objective import DiffMaskObjective, evaluate_gates, kl_divergence
from captum_vit.explainers.hard_concrete import expected_keep, hard_concrete_sample, log_prob_nonzero
from captum_vit.explainers.ltx_network import (
    CNNExplainer,
    LTXExplainer,
    ViTExplainer,
    build_explainer,
    explainer_for_architecture,
)
from captum_vit.explainers.ltx_objective import (
    MASK_LOSSES,
    LTXObjective,
    default_mask_weight,
    finetune_masks,
    mask_loss,
)
from captum_vit.explainers.registry import UntrainedExplainerWarning, load_gates, load_ltx_explainer, load_registered

__all__ = [
    "UntrainedExplainerWarning",
    "MASK_LOSSES",
    "CNNExplainer",
    "DiffMaskGates",
    "DiffMaskObjective",
    "GateNetwork",
    "LTXExplainer",
    "LTXObjective",
    "ViTExplainer",
    "build_explainer",
    "default_mask_weight",
    "evaluate_gates",
    "expected_keep",
    "explainer_for_architecture",
    "finetune_masks",
    "hard_concrete_sample",
    "kl_divergence",
    "load_gates",
    "load_ltx_explainer",
    "load_registered",
    "log_prob_nonzero",
    "mask_loss",
]
