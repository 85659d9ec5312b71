"""The LTX objective and per-instance finetuning (LTX stage b), shared by pretraining
(``captum-vit pretrain-ltx``) and :class:`captum_vit.attr.LTX`.

Loss (Barkan et al., "Learning to Explain", §3), per image ``i`` with explainer logits ``z_i`` ``(h, w)`` and keep-mask
``m_i = sigmoid(z_i)``::

    L_i = CE(f(normalise(x_i ⊙ up(m_i) + (1 − up(m_i)) ⊙ baseline)), c_i) + λ · MaskLoss(z_i)

with ``f`` the frozen explainee, ``up`` bilinear upsampling, ``x_i`` in pixel space, the
black baseline by default and ``c_i`` the target class (or the explainee's prediction on the
clean image). Mask losses, averaged over the patch mask:

* ``"bce"``: binary cross-entropy of the mask against 0, ``−log(1 − m) = softplus(z)``;
  computed from the logits, so it is exact and stable. It grows without bound as ``m → 1``.
* ``"l1"``: ``mean |m| = mean m``.
* ``"bce_double_sigmoid"``: the official code's "bce", ``BCEWithLogits(m, 0) =
  softplus(m)`` applied to the *already-sigmoided* mask (a double sigmoid). With
  ``m ∈ (0, 1)`` this is a near-linear penalty of slope 0.5-0.73, i.e. roughly ``0.6 × L1``
  plus a constant; kept only to reproduce the official numbers.

λ (``mask_weight``): the papers use 50 for ViT-B (width 768), 30 for ViT-S (width 384) and 50
for CNNs (the LTX and EEA papers' training details). :func:`default_mask_weight` interpolates the ViT values as a power
law of the embedding width, ``30 · (d / 384) ** log2(50 / 30)``, which passes through both
published points (d = 192 gives 18.3, d = 64 gives 8.0).
"""

from __future__ import annotations

import copy
import functools
import math
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from captum_vit.explainers.ltx_network import CNNExplainer, LTXExplainer, ViTExplainer
from captum_vit.kernels import apply_mask
from captum_vit.models.hooks import count_output_bytes
from captum_vit.models.preprocess import model_logits, normalize

MASK_LOSSES = ("bce", "l1", "bce_double_sigmoid")


def default_mask_weight(explainer: LTXExplainer) -> float:
    """λ for ``explainer``: the one it was pretrained with when known (``explainer.mask_weight``),
    else the papers' λ: 50 for CNN explainees; for ViTs 30 at width 384 and 50 at width 768,
    interpolated as a power law of the width for other sizes (module docstring).

    Examples
    --------
    >>> import timm
    >>> from captum_vit.explainers import ViTExplainer
    >>> vit = timm.create_model("vit_small_patch16_224", pretrained=False, depth=1)
    >>> round(default_mask_weight(ViTExplainer(vit)), 6)
    30.0
    """
    if explainer.mask_weight is not None:  # the λ it was pretrained with
        return float(explainer.mask_weight)
    if isinstance(explainer, CNNExplainer):
        return 50.0
    d = explainer.adapter.embed_dim  # the adapter knows every family's width
    return 30.0 * (d / 384.0) ** math.log2(50.0 / 30.0)


def mask_loss(logits: Tensor, kind: str = "bce") -> Tensor:
    """Per-image mask loss ``(B,)`` from mask logits ``(B, h, w)`` (see the module docstring).

    Examples
    --------
    >>> z = torch.zeros(1, 2, 2)  # m = 0.5 everywhere
    >>> mask_loss(z, "l1"), mask_loss(z, "bce")  # 0.5 and log 2
    (tensor([0.5000]), tensor([0.6931]))
    """
    if kind == "bce":
        per_patch = F.softplus(logits)
    elif kind == "l1":
        per_patch = torch.sigmoid(logits)
    elif kind == "bce_double_sigmoid":
        per_patch = F.softplus(torch.sigmoid(logits))
    else:
        raise ValueError(f"mask_loss must be one of {MASK_LOSSES}, got {kind!r}")
    return per_patch.flatten(1).mean(dim=1)


@dataclass(frozen=True)
class LTXObjective:
    """The LTX loss for one frozen explainee.

    Parameters
    ----------
    explainee : nn.Module
        Frozen classifier taking normalised images; used as is (no mode or flag change).
    mean, std : Tensor
        ``(C,)`` normalisation of the explainee's input.
    mask_weight : float
        λ.
    mask_loss : str
        ``"bce"`` (default), ``"l1"`` or ``"bce_double_sigmoid"`` (official, see module docs).
    baseline : float or Tensor
        Pixel value where the mask is 0 (black, 0.0, by default).
    """

    explainee: nn.Module
    mean: Tensor
    std: Tensor
    mask_weight: float
    mask_loss: str = "bce"
    baseline: float | Tensor = 0.0

    def __post_init__(self) -> None:
        if self.mask_loss not in MASK_LOSSES:
            raise ValueError(f"mask_loss must be one of {MASK_LOSSES}, got {self.mask_loss!r}")
        if not (
            isinstance(self.mask_weight, (int, float)) and math.isfinite(self.mask_weight) and self.mask_weight >= 0
        ):
            raise ValueError(f"mask_weight must be a finite non-negative number, got {self.mask_weight!r}")

    def normalise(self, pixels: Tensor) -> Tensor:
        return normalize(pixels, self.mean, self.std)

    def predicted(self, pixels: Tensor) -> Tensor:
        """The explainee's predicted classes on the clean images."""
        with torch.no_grad():
            return model_logits(self.explainee(self.normalise(pixels))).argmax(dim=1)

    def per_example(self, logits: Tensor, pixels: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(total, prediction term, mask term)``, each ``(B,)``, for mask logits ``(B, h, w)``
        and pixel-space images ``(B, C, H, W)``."""
        masked = apply_mask(pixels, torch.sigmoid(logits), self.baseline, self.mean, self.std, mode="bilinear")
        pred = F.cross_entropy(model_logits(self.explainee(masked)), target.to(pixels.device), reduction="none")
        reg = mask_loss(logits, self.mask_loss)
        return pred + self.mask_weight * reg, pred, reg

    def __call__(
        self, explainer: nn.Module, pixels: Tensor, target: Tensor | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        """Batch-mean loss of ``explainer`` (possibly DDP-wrapped) and logs, for the trainer."""
        tgt = self.predicted(pixels) if target is None else target
        total, pred, reg = self.per_example(explainer(self.normalise(pixels)), pixels, tgt)
        return total.mean(), {"ce": float(pred.detach().mean()), "mask": float(reg.detach().mean())}


def finetune_masks(
    explainer: LTXExplainer,
    objective: LTXObjective,
    pixels: Tensor,
    target: Tensor,
    steps: int,
    lr: float = 1e-4,
    select_by_pos_auc: bool = False,
    pos_auc_stop: float | None = 6.0,
    fractions: Sequence[float] | None = None,
    images_per_group: int | None = None,
    memory_budget: float | None = None,
) -> Tensor:
    """Per-instance finetuning (LTX stage b, "Learning to Explain" §3.2) for a batch of images at once.

    Every image gets its own copy of the explainer's trainable parameters (stacked along a
    new leading axis and run with ``torch.func.vmap``) and its own Adam state; Adam is
    elementwise, so image ``i``'s result is the one it would get alone. Images are finetuned
    ``images_per_group`` at a time, which bounds the memory (every image holds four copies
    of the trainable parameters: weights, gradient and two Adam moments) without changing any
    image's result. ``explainer`` itself is not modified.

    Parameters
    ----------
    explainer : ViTExplainer or CNNExplainer
        The pretrained (pLTX) explainer; run in eval mode on copies of its parameters.
    objective : LTXObjective
        The loss.
    pixels : Tensor
        ``(B, C, H, W)`` images in pixel space.
    target : Tensor
        ``(B,)`` classes to explain.
    steps : int
        Adam steps per image (0 returns the pLTX mask).
    lr : float
        Adam learning rate.
    select_by_pos_auc : bool
        Off by default. When on, keep per image the mask (before any update, or after any
        update) with the lowest positive-perturbation AUC against ``target``, stopping that
        image's selection once it falls below ``pos_auc_stop``, as the official code does.
        This **selects on the evaluation metric, on the test image**: numbers obtained with it
        are not comparable with methods that do not see the metric.
    pos_auc_stop : float, optional
        The official early-stop value 6.0 (``None``: never stop).
    fractions : sequence of float, optional
        Removal fractions of the selection test (default Chefer's 0.1 … 0.9).
    images_per_group : int, optional
        Images finetuned together. Default: as many as fit ``memory_budget``.
    memory_budget : float, optional
        Bytes a group may hold when ``images_per_group`` is ``None``, by the estimate of
        :func:`finetune_bytes_per_image` (at least one image per group). Default (``None``):
        the whole batch in one group.

    Returns
    -------
    Tensor
        ``(B, h, w)`` keep-masks in (0, 1), detached.

    Raises
    ------
    FloatingPointError
        If a finetuning loss becomes NaN or infinite.
    ValueError
        If ``images_per_group`` is not a positive int or ``memory_budget`` not a positive number.

    Examples
    --------
    >>> import timm
    >>> from captum_vit.explainers import build_explainer
    >>> vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, depth=1,
    ...                         img_size=32, patch_size=8, embed_dim=32, num_heads=2).eval()
    >>> objective = LTXObjective(vit, torch.zeros(3), torch.ones(3), mask_weight=8.0)
    >>> pixels, target = torch.rand(3, 3, 32, 32), torch.tensor([0, 1, 2])
    >>> explainer = build_explainer(vit)
    >>> together = finetune_masks(explainer, objective, pixels, target, steps=2)
    >>> in_pairs = finetune_masks(explainer, objective, pixels, target, steps=2, images_per_group=2)
    >>> together.shape, bool(torch.allclose(together, in_pairs, rtol=1e-4, atol=1e-5))
    (torch.Size([3, 4, 4]), True)
    """
    b = pixels.shape[0]
    if images_per_group is not None and (
        isinstance(images_per_group, bool) or not isinstance(images_per_group, int) or images_per_group < 1
    ):
        raise ValueError(f"images_per_group must be None or a positive int, got {images_per_group!r}")
    if memory_budget is not None and (
        isinstance(memory_budget, bool) or not isinstance(memory_budget, (int, float)) or not memory_budget > 0
    ):
        raise ValueError(f"memory_budget must be None or a positive number of bytes, got {memory_budget!r}")
    module = copy.deepcopy(explainer).eval()
    # vmap has no batching rule for CPU flash attention and would run it image by image;
    # the explicit path (the same function) batches. The copy is private: no flag to restore.
    explicit = (
        module.adapter.explicit_attention()
        if isinstance(module, ViTExplainer) and pixels.device.type == "cpu"
        else nullcontext()
    )
    run = functools.partial(
        _finetune_group, module, objective, steps=steps, lr=lr, pos_auc_stop=pos_auc_stop, fractions=fractions
    )
    with explicit:
        size = images_per_group
        if size is None:
            per_image = finetune_bytes_per_image(module, objective, pixels) if memory_budget is not None else 0
            size = max(1, int(memory_budget // per_image)) if memory_budget is not None else b
        with torch.enable_grad():
            masks = [
                run(pixels[s : s + size], target[s : s + size], select_by_pos_auc=select_by_pos_auc)
                for s in range(0, b, size)
            ]
    return torch.cat(masks)


def finetune_bytes_per_image(explainer: LTXExplainer, objective: LTXObjective, pixels: Tensor) -> int:
    """Estimated bytes the finetuning of one image holds: four copies of the explainer's
    trainable parameters (weights, gradient and two Adam moments) plus every module output of
    one explainer and one explainee forward pass on one image (what a backward pass keeps,
    roughly; :func:`~captum_vit.models.hooks.count_output_bytes`, as IIA's estimate).

    Examples
    --------
    >>> import timm
    >>> from captum_vit.explainers import build_explainer
    >>> vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, depth=1,
    ...                         img_size=32, patch_size=8, embed_dim=32, num_heads=2).eval()
    >>> objective = LTXObjective(vit, torch.zeros(3), torch.ones(3), mask_weight=8.0)
    >>> finetune_bytes_per_image(build_explainer(vit), objective, torch.rand(4, 3, 32, 32)) > 0
    True
    """
    weights = sum(p.numel() * p.element_size() for p in explainer.parameters() if p.requires_grad)
    one = objective.normalise(pixels[:1])
    with torch.no_grad(), count_output_bytes(explainer) as mask_net, count_output_bytes(objective.explainee) as model:
        explainer(one)
        objective.explainee(one)
    return 4 * weights + mask_net[0] + model[0]


def _adam(params: list[Tensor], lr: float) -> torch.optim.Adam:
    # The fused Adam reads weights, gradients and moments in one pass (the per-tensor loop
    # makes about five); elsewhere the foreach kernels, the same arithmetic as the loop.
    if params[0].device.type in ("cpu", "cuda"):
        return torch.optim.Adam(params, lr=lr, fused=True)
    return torch.optim.Adam(params, lr=lr, foreach=True)


def _finetune_group(
    module: nn.Module,
    objective: LTXObjective,
    pixels: Tensor,
    target: Tensor,
    steps: int,
    lr: float,
    select_by_pos_auc: bool,
    pos_auc_stop: float | None,
    fractions: Sequence[float] | None,
) -> Tensor:
    """:func:`finetune_masks` for one group of images, each with its own parameters."""
    b = pixels.shape[0]
    names = [n for n, p in module.named_parameters() if p.requires_grad]
    trained = [
        p.detach().unsqueeze(0).repeat(b, *([1] * p.dim())).requires_grad_(True)
        for p in module.parameters()
        if p.requires_grad
    ]
    transposed = [False] * len(trained)
    fixed = {n: p.detach() for n, p in module.named_parameters() if not p.requires_grad} | dict(module.named_buffers())
    x = objective.normalise(pixels)

    def one(p: dict[str, Tensor], xi: Tensor) -> Tensor:
        return functional_call(module, (p, fixed), (xi[None],))[0]

    def logits_now() -> Tensor:
        params = {n: t.mT if flip else t for n, t, flip in zip(names, trained, transposed)}
        with warnings.catch_warnings():  # CUDA attention kernels without a batching rule
            warnings.filterwarnings("ignore", message=".*batching rule.*")
            return vmap(one)(params, x)

    opt: torch.optim.Adam | None = None
    z = logits_now()
    best = torch.sigmoid(z).detach()
    best_auc = _pos_auc(objective, pixels, best, target, fractions) if select_by_pos_auc else None
    for step in range(steps):
        total, _, _ = objective.per_example(z, pixels, target)
        if not torch.isfinite(total).all():
            raise FloatingPointError(f"non-finite LTX finetuning loss at step {step + 1}; lower finetune_lr")
        grads = list(torch.autograd.grad(total.sum(), trained))  # image i's loss sees only copy i
        if opt is None:
            # vmap's weight gradients come transposed: store those copies transposed, so that
            # weights, gradients and Adam moments are contiguous and the fused Adam reads them
            # in one pass without copies (it needs matching layouts; it is wrong otherwise).
            for i, g in enumerate(grads):
                if not g.is_contiguous() and g.dim() > 2 and g.mT.is_contiguous():
                    transposed[i] = True
                    trained[i] = trained[i].detach().mT.contiguous().requires_grad_(True)
                    grads[i] = g.mT
            opt = _adam(trained, lr)
        for p, g in zip(trained, grads):
            p.grad = g.contiguous()
        opt.step()
        z = logits_now()
        current = torch.sigmoid(z).detach()
        if best_auc is None:
            best = current
            continue
        auc = _pos_auc(objective, pixels, current, target, fractions)
        open_ = best_auc >= pos_auc_stop if pos_auc_stop is not None else torch.ones_like(auc, dtype=torch.bool)
        take = open_ & (auc < best_auc)
        best = torch.where(take[:, None, None], current, best)
        best_auc = torch.where(take, auc, best_auc)
    return best


def _pos_auc(
    objective: LTXObjective, pixels: Tensor, masks: Tensor, target: Tensor, fractions: Sequence[float] | None
) -> Tensor:
    from captum_vit.metrics import CHEFER_FRACTIONS, positive_perturbation_auc

    up = F.interpolate(masks[:, None], size=pixels.shape[-2:], mode="bilinear", align_corners=False)
    return positive_perturbation_auc(
        objective.explainee,
        pixels,
        up,
        target,
        fractions=CHEFER_FRACTIONS if fractions is None else fractions,
        baseline=objective.baseline,
        mean=objective.mean,
        std=objective.std,
    ).to(masks.device)
