"""Fused kernels: each a pure-torch reference (the spec), a Triton kernel and a dispatcher.

Every public function takes ``impl="auto" | "reference" | "triton"``: ``auto`` runs Triton on
CUDA tensors when Triton is importable and the reference otherwise. Triton is imported lazily
(the ``triton`` extra); nothing is swapped at import time.
"""

from captum_vit.kernels._common import fuse_heads
from captum_vit.kernels.graph_pruning import attention_graph_centralities
from captum_vit.kernels.mask import apply_mask
from captum_vit.kernels.perturbation import perturbation_batch
from captum_vit.kernels.rollout import attention_rollout, rollout_step

__all__ = [
    "apply_mask",
    "attention_graph_centralities",
    "attention_rollout",
    "fuse_heads",
    "perturbation_batch",
    "rollout_step",
]
