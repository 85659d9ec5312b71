"""Positive/negative perturbation AUC (Chefer et al. 2021) and LTX's probability
deletion/insertion (docs/methods.md §7.1-7.2).

Protocol, as the official code implements it: rank the pixels by the attribution map; for
each fraction p in 0.1, ..., 0.9 set the top ``round(p * H * W)`` pixels (POS: the most
relevant first; NEG: the least relevant first) to black in ``[0, 1]`` pixel space, starting
afresh from the clean image each time (the removal sets are nested); normalise and classify.
The curve starts with the clean image at x = 0 and is integrated with the trapezoid rule,
times 100. Chefer scores a top-1 hit against the ground-truth label; LTX's variant scores
the softmax probability of the label instead ("deletion" = POS order, "insertion" = NEG).

All levels of a batch go through the model as one batched forward pass (chunked by
``batch_size``), built by :func:`captum_vit.kernels.perturbation_batch`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from captum_vit.kernels import perturbation_batch
from captum_vit.metrics._common import (
    attribution_map,
    check_images,
    check_labels,
    class_probabilities,
    trapezoid_auc,
)
from captum_vit.metrics.baselines import BaselineSpec, removal_baseline
from captum_vit.models.preprocess import Stats, model_normalization, normalize

#: Removal fractions of Chefer's test (x = 0, the clean image, is added in front).
CHEFER_FRACTIONS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(1, 10))


@dataclass(frozen=True)
class PerturbationCurves:
    """Per-image curves of one ordering.

    ``fractions`` ``(K + 1,)`` starts at 0 (the clean image); ``probability`` and ``hit``
    are ``(B, K + 1)``: the softmax probability of the label and the top-1 hit (0/1).
    """

    fractions: Tensor
    probability: Tensor
    hit: Tensor

    def auc(self, score: str = "hit") -> Tensor:
        """``(B,)`` trapezoid AUC x 100 of the ``"hit"`` or ``"probability"`` curve."""
        if score not in ("hit", "probability"):
            raise ValueError(f"score must be 'hit' or 'probability', got {score!r}")
        return 100.0 * trapezoid_auc(getattr(self, score), self.fractions)


def _fractions(fractions: Sequence[float] | Tensor) -> Tensor:
    f = torch.as_tensor(fractions, dtype=torch.float64).flatten()
    if f.numel() == 0 or ((f <= 0) | (f > 1)).any() or (f.diff() <= 0).any():
        raise ValueError(f"fractions must be increasing values in (0, 1], got {f.tolist()}")
    return torch.cat([torch.zeros(1, dtype=f.dtype), f])


def perturbation_curves(
    model: nn.Module,
    images: Tensor,
    attributions: Tensor,
    labels: Tensor | Sequence[int],
    most_relevant_first: bool = True,
    fractions: Sequence[float] | Tensor = CHEFER_FRACTIONS,
    baseline: BaselineSpec = "black",
    mean: Stats = None,
    std: Stats = None,
    batch_size: int | None = None,
    indices: Tensor | None = None,
    impl: str = "auto",
) -> PerturbationCurves:
    """Classify the images with growing fractions of pixels removed in attribution order.

    Parameters
    ----------
    model : nn.Module
        The classifier, taking normalised images. Used as is (no mode change).
    images : Tensor
        ``(B, C, H, W)`` in ``[0, 1]`` pixel space.
    attributions : Tensor
        ``(B, C, H, W)``, ``(B, 1, H, W)`` or ``(B, H, W)``; channels are averaged into one map.
    labels : Tensor or sequence of int
        ``(B,)`` classes to score (the ground truth in Chefer's protocol).
    most_relevant_first : bool
        ``True`` for the positive test (remove the most relevant pixels first), ``False``
        for the negative one.
    fractions : sequence of float
        Increasing removal fractions in ``(0, 1]``; x = 0 is added in front.
    baseline : str, float or Tensor
        Removal value, see :func:`captum_vit.metrics.baselines.removal_baseline` (default
        black in pixel space, as Chefer and LTX).
    mean, std : sequence of float, optional
        Normalisation; default ``model.pretrained_cfg``'s.
    batch_size : int, optional
        Images per forward pass over the ``(K + 1) * B`` stack of removal levels (default
        64, :data:`captum_vit.metrics._common.DEFAULT_FORWARD_BATCH`); the result does not
        depend on it.
    indices : Tensor, optional
        Dataset indices of the images (seeds the ``"uniform"`` baseline).
    impl : str
        ``perturbation_batch`` implementation: ``"auto"``, ``"reference"`` or ``"triton"``.

    Returns
    -------
    PerturbationCurves

    Raises
    ------
    ValueError, TypeError
        For attributions or labels that do not match the images, or bad fractions.

    References
    ----------
    Chefer, Gur & Wolf, "Transformer Interpretability Beyond Attention Visualization", CVPR
    2021, §5 (perturbation tests); docs/methods.md §7.1-7.2.

    Examples
    --------
    >>> import timm
    >>> m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3,
    ...                       depth=1, img_size=32).eval()
    >>> x, a = torch.rand(2, 3, 32, 32), torch.rand(2, 32, 32)
    >>> c = perturbation_curves(m, x, a, labels=[0, 1])
    >>> c.hit.shape, c.auc("probability").shape
    (torch.Size([2, 10]), torch.Size([2]))
    """
    images = check_images(images)
    scores = attribution_map(attributions, images)
    lab = check_labels(labels, images.shape[0])
    mu, sigma = model_normalization(model, mean, std)
    frac = _fractions(fractions)
    base = removal_baseline(images, baseline, mu, indices=indices)
    # One stack (K + 1, B, C, H, W): level 0 removes nothing, i.e. the clean image.
    stack = perturbation_batch(images, scores, frac, baseline=base, most_relevant_first=most_relevant_first, impl=impl)
    prob, hit = class_probabilities(model, normalize(stack, mu, sigma), lab, batch_size)
    return PerturbationCurves(frac.float(), prob.T.contiguous(), hit.T.contiguous())


def positive_perturbation_auc(
    model: nn.Module, images: Tensor, attributions: Tensor, labels: Tensor | Sequence[int], **kwargs: object
) -> Tensor:
    """Chefer's positive perturbation AUC per image, ``(B,)`` in ``[0, 100]`` (lower is better).

    Keyword arguments are those of :func:`perturbation_curves`.
    """
    return perturbation_curves(model, images, attributions, labels, True, **kwargs).auc("hit")  # type: ignore[arg-type]


def negative_perturbation_auc(
    model: nn.Module, images: Tensor, attributions: Tensor, labels: Tensor | Sequence[int], **kwargs: object
) -> Tensor:
    """Chefer's negative perturbation AUC per image, ``(B,)`` in ``[0, 100]`` (higher is better)."""
    return perturbation_curves(model, images, attributions, labels, False, **kwargs).auc("hit")  # type: ignore[arg-type]


def probability_deletion_auc(
    model: nn.Module, images: Tensor, attributions: Tensor, labels: Tensor | Sequence[int], **kwargs: object
) -> Tensor:
    """LTX's "deletion": the POS ordering scored by the label's probability (lower is better)."""
    return perturbation_curves(model, images, attributions, labels, True, **kwargs).auc("probability")  # type: ignore[arg-type]


def probability_insertion_auc(
    model: nn.Module, images: Tensor, attributions: Tensor, labels: Tensor | Sequence[int], **kwargs: object
) -> Tensor:
    """LTX's "insertion": the NEG ordering scored by the label's probability (higher is better)."""
    return perturbation_curves(model, images, attributions, labels, False, **kwargs).auc("probability")  # type: ignore[arg-type]
