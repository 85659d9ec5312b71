"""Fused kernels: each a pure-torch reference (the spec), a Triton kernel and a dispatcher."""

from captum_vit.kernels.rollout import attention_rollout, fuse_heads, rollout_step

__all__ = ["attention_rollout", "fuse_heads", "rollout_step"]
