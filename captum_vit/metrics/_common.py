"""Validation, normalisation and batched scoring shared by the metrics.

Every metric takes images in ``[0, 1]`` pixel space and the model's normalisation, so the
removal baselines of the papers (black pixel, grey = zero in normalised space, ...) can be
stated in pixel terms and the same code serves ViTs (mean = std = 0.5) and CNNs (ImageNet
statistics).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from captum_vit.models.preprocess import model_logits


def check_images(images: object, name: str = "images") -> Tensor:
    """Validate a ``(B, C, H, W)`` pixel-space batch."""
    if not isinstance(images, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if not images.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor in [0, 1], got dtype {images.dtype}")
    if images.dim() != 4:
        raise ValueError(f"{name} must be (batch, channels, height, width), got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one image, got an empty batch")
    return images


def attribution_map(attributions: object, images: Tensor, name: str = "attributions") -> Tensor:
    """Reduce input-shaped attributions to one ``(B, H, W)`` map per image.

    ``(B, C, H, W)`` is averaged over channels (maps broadcast over channels are unchanged;
    per-channel attributions such as IG are averaged, as IIA does); ``(B, 1, H, W)`` and
    ``(B, H, W)`` are taken as they are.

    Raises
    ------
    ValueError
        If the batch or spatial size differs from ``images``.
    """
    if not isinstance(attributions, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(attributions).__name__}")
    b, c, h, w = images.shape
    a = attributions
    if a.dim() == 4 and a.shape[0] == b and a.shape[1] in (1, c) and tuple(a.shape[2:]) == (h, w):
        return reduce_channels(a)
    if a.dim() == 3 and tuple(a.shape) == (b, h, w):
        return a.detach().float()
    raise ValueError(
        f"{name} must be input-shaped ({b}, {c}, {h}, {w}), ({b}, 1, {h}, {w}) or ({b}, {h}, {w}) to match "
        f"the images, got {tuple(a.shape)}; upsample patch maps first (captum_vit.models.upsample_patch_map)"
    )


def reduce_channels(attributions: Tensor) -> Tensor:
    """``(B, C, H, W)`` -> ``(B, H, W)``: channel 0 when all channels are equal (a broadcast
    map; averaging would round and break the ties that rank pixels), else the channel mean."""
    a = attributions.detach().float()
    return a[:, 0] if bool((a == a[:, :1]).all()) else a.mean(dim=1)


def check_labels(labels: object, batch: int, name: str = "labels") -> Tensor:
    """A ``(B,)`` long tensor of class indices (ints, lists and tensors accepted)."""
    t = torch.as_tensor(labels)
    if t.is_floating_point() or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class indices, got dtype {t.dtype}")
    t = t.long().flatten()
    if t.numel() == 1 and batch > 1:
        t = t.expand(batch)
    if t.numel() != batch:
        raise ValueError(f"{name} must have one entry per image ({batch}), got {t.numel()}")
    if (t < 0).any():
        raise ValueError(f"{name} must be non-negative class indices, got {t.min().item()}")
    return t


def min_max(maps: Tensor) -> Tensor:
    """Per-image min-max normalisation of ``(B, H, W)`` maps to ``[0, 1]`` (constant maps -> 0)."""
    flat = maps.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    span = (hi - lo).clamp_min(torch.finfo(maps.dtype).tiny)
    return ((flat - lo) / span).view_as(maps)


def model_device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


#: Images per forward pass when a metric's ``batch_size`` is ``None``. Measured on the shipped
#: ViT (benchmarks/speed/test_bench_metrics.py): one pass over a 320-image removal stack was 1.2-1.3x
#: slower on CPU than passes of 32-64 images (the activations no longer fit in cache), while
#: passes of >= 8 images already run at full throughput.
DEFAULT_FORWARD_BATCH = 64


@torch.no_grad()
def class_probabilities(model: nn.Module, inputs: Tensor, labels: Tensor, batch_size: int | None = None) -> Tensor:
    """Softmax probability of ``labels`` and the top-1 hit for already normalised inputs.

    ``inputs`` is ``(..., B, C, H, W)``: every leading level (removal steps) is flattened into
    the batch, so all levels go through the model in forward passes of ``batch_size`` images
    (``None``: :data:`DEFAULT_FORWARD_BATCH`), across levels and images alike.

    Returns
    -------
    Tensor
        ``(2, ..., B)``: ``[probability, hit]`` with hit = 1.0 where ``argmax == label``.
    """
    flat = inputs.reshape(-1, *inputs.shape[-3:])
    step = DEFAULT_FORWARD_BATCH if batch_size is None else int(batch_size)
    if step < 1:
        raise ValueError(f"batch_size must be a positive number of images per forward pass, got {batch_size}")
    device = model_device(model)
    outs = []
    for start in range(0, flat.shape[0], step):
        outs.append(model_logits(model(flat[start : start + step].to(device))).float())
    logits = torch.cat(outs).reshape(*inputs.shape[:-3], -1)
    lab = labels.to(logits.device).expand(*logits.shape[:-1]).unsqueeze(-1)
    prob = logits.softmax(-1).gather(-1, lab).squeeze(-1)
    hit = (logits.argmax(-1, keepdim=True) == lab).squeeze(-1).float()
    return torch.stack([prob, hit]).cpu()


def trapezoid_auc(y: Tensor, x: Tensor) -> Tensor:
    """Trapezoid-rule area under ``y`` (``(..., K)``) over the abscissae ``x`` (``(K,)``)."""
    return torch.trapezoid(y, x.to(y), dim=-1)
