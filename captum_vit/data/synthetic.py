"""A synthetic benchmark with known ground truth: textured objects on cluttered backgrounds.

Each image holds one (or two) *objects*: a random shape (disc, square, triangle or diamond)
filled with a two-colour texture. The texture alone decides the class:

====  ======================  =============================================
class name                    texture inside the object
====  ======================  =============================================
0     ``horizontal-stripes``  stripes along the x axis
1     ``vertical-stripes``    stripes along the y axis
2     ``diagonal-stripes``    stripes at 45 degrees
3     ``checkerboard``        a checkerboard
4     ``dots``                a square lattice of round dots
====  ======================  =============================================

Period (4 to 6 px at 64x64, scaled with the image size), phase and both colours are random,
so each 8x8 patch inside the object carries the cue on its own: a ViT learns it, whereas a
class decided by shape alone is not learnt by a small ViT in a few epochs (issue 3's
planning notes). The background is a smooth random colour field with pixel noise and
2 to 4 *distractors*: shapes of the same families and sizes filled with a flat colour or a
smooth colour ramp, i.e. with no periodic texture, so they carry no class information.

Every random draw of an example comes from its own generator seeded by ``(seed, index)``:
``generate(n, seed)`` and ``SyntheticDataset(n, seed)[i]`` give identical examples, any
shard of a dataset can be generated independently (data-parallel training, sharded
evaluation), and ``render_example(..., labels=...)`` draws exactly the same scene with other
classes, which changes only the pixels inside the object masks (the test of "the class is
decided by the object alone").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

CLASS_NAMES: tuple[str, ...] = ("horizontal-stripes", "vertical-stripes", "diagonal-stripes", "checkerboard", "dots")
NUM_CLASSES = len(CLASS_NAMES)
SHAPES: tuple[str, ...] = ("disc", "square", "triangle", "diamond")

# Sizes below are fractions of the image side, tuned at 64x64.
_OBJECT_RADIUS = (0.17, 0.26)
_DISTRACTOR_RADIUS = (0.08, 0.17)
_PERIOD = (4.0 / 64, 6.0 / 64)
_MIN_CONTRAST = 0.35  # mean absolute difference between the two texture colours


class SyntheticBatch(NamedTuple):
    """Images, labels and ground-truth object masks.

    ``images`` ``(N, 3, H, W)`` float32 in ``[0, 1]``; for one object ``labels`` ``(N,)``
    int64 and ``masks`` ``(N, H, W)`` float32 in ``{0, 1}``; for two objects ``labels``
    ``(N, 2)`` and ``masks`` ``(N, 2, H, W)`` (object ``k`` has label ``labels[:, k]``).
    """

    images: Tensor
    labels: Tensor
    masks: Tensor


def _check(objects: int, image_size: int) -> None:
    if objects not in (1, 2):
        raise ValueError(f"objects must be 1 or 2, got {objects!r}")
    if not isinstance(image_size, int) or image_size < 16:
        raise ValueError(f"image_size must be an int >= 16, got {image_size!r}")


def _shape_mask(shape: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float, angle: float) -> np.ndarray:
    """Boolean mask of a shape of circumradius-like size ``r`` centred at ``(cy, cx)``."""
    dy, dx = yy - cy, xx - cx
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy  # rotated coordinates
    if shape == "disc":
        return u**2 + v**2 <= r**2
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= r * 0.8
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= r * 1.1
    # Equilateral triangle: inside the three half-planes of its edges.
    inside = np.ones_like(u, dtype=bool)
    for k in range(3):
        a = angle + k * 2 * np.pi / 3
        inside &= np.cos(a) * dx + np.sin(a) * dy <= r * 0.6
    return inside


def _texture(label: int, yy: np.ndarray, xx: np.ndarray, period: float, phase: np.ndarray) -> np.ndarray:
    """Boolean two-colour pattern of a class (methods: stripes, checkerboard, dots)."""
    w = 2 * np.pi / period
    if label == 0:
        return np.sin(w * yy + phase[0]) > 0
    if label == 1:
        return np.sin(w * xx + phase[0]) > 0
    if label == 2:
        return np.sin(w * (xx + yy) / np.sqrt(2) + phase[0]) > 0
    if label == 3:
        return np.sin(w * xx + phase[0]) * np.sin(w * yy + phase[1]) > 0
    # Dots: distance to the nearest lattice point, dots of radius 0.3 period.
    fy = np.mod(yy + phase[0] / w, period) - period / 2
    fx = np.mod(xx + phase[1] / w, period) - period / 2
    return fy**2 + fx**2 <= (0.3 * period) ** 2


def _contrasting_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    while True:
        a, b = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
        if np.abs(a - b).mean() >= _MIN_CONTRAST:
            return a, b


def _place(rng: np.random.Generator, size: int, radii: Sequence[float]) -> list[tuple[float, float]]:
    """Centres for objects of the given radii, inside the image and not overlapping."""
    for _ in range(100):
        centres = [(rng.uniform(r, size - r), rng.uniform(r, size - r)) for r in radii]
        if all(
            np.hypot(centres[i][0] - centres[j][0], centres[i][1] - centres[j][1]) > radii[i] + radii[j] + 2
            for i in range(len(radii))
            for j in range(i)
        ):
            return centres
    # Two objects side by side always fit (radii are at most 0.26 of the side).
    return [(size / 2, radii[0] + 1), (size / 2, size - radii[1] - 1)][: len(radii)]


def render_example(
    index: int, seed: int = 0, objects: int = 1, image_size: int = 64, labels: Sequence[int] | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Draw example ``index`` of the benchmark with seed ``seed``.

    Parameters
    ----------
    index, seed : int
        Example index and dataset seed (non-negative); together they seed the example's
        random generator.
    objects : int
        1 or 2 objects (two objects always have different classes and do not overlap).
    image_size : int
        Side of the square image in pixels.
    labels : sequence of int, optional
        Force the objects' classes. Every other random draw is unchanged, so only pixels
        inside the object masks differ from the unforced example.

    Returns
    -------
    tuple of Tensor
        ``image`` ``(3, H, W)`` in ``[0, 1]``; ``label`` ``()`` (or ``(2,)``); ``mask``
        ``(H, W)`` (or ``(2, H, W)``) in ``{0, 1}``.

    Raises
    ------
    ValueError
        For a bad ``objects``, ``image_size``, ``index``, ``seed`` or ``labels``.

    Examples
    --------
    >>> image, label, mask = render_example(0, seed=0, image_size=32)
    >>> image.shape, mask.shape, 0 <= int(label) < NUM_CLASSES
    (torch.Size([3, 32, 32]), torch.Size([32, 32]), True)
    """
    _check(objects, image_size)
    if index < 0 or seed < 0:
        raise ValueError(f"index and seed must be non-negative, got index={index}, seed={seed}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    size = image_size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5

    # Background: a bilinear upsampling of a 3x3 random colour grid, plus pixel noise.
    grid = torch.from_numpy(rng.uniform(0, 1, (1, 3, 3, 3)))
    image = torch.nn.functional.interpolate(grid, size=(size, size), mode="bilinear", align_corners=True)[0].numpy()
    image = image + rng.normal(0, 0.04, image.shape)

    # Distractors: flat colour or a smooth colour ramp; no periodic texture, hence no class cue.
    for _ in range(int(rng.integers(2, 5))):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        r = rng.uniform(*_DISTRACTOR_RADIUS) * size
        cy, cx = rng.uniform(0, size, 2)
        m = _shape_mask(shape, yy, xx, cy, cx, r, rng.uniform(0, 2 * np.pi))
        c0, c1 = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
        t = np.clip(((yy - cy) * rng.normal() + (xx - cx) * rng.normal()) / (2 * r) + 0.5, 0, 1)
        fill = c0[:, None, None] * (1 - t) + c1[:, None, None] * t
        image = np.where(m, fill, image)

    # Objects: classes drawn first so that forcing them leaves every other draw unchanged.
    drawn = rng.choice(NUM_CLASSES, size=objects, replace=False)
    if labels is not None:
        forced = [int(v) for v in labels]
        if len(forced) != objects or len(set(forced)) != objects or not all(0 <= v < NUM_CLASSES for v in forced):
            raise ValueError(f"labels must be {objects} distinct classes in [0, {NUM_CLASSES}), got {labels!r}")
        drawn = np.asarray(forced)
    radii = [rng.uniform(*_OBJECT_RADIUS) * size for _ in range(objects)]
    masks = []
    for k, (cy, cx) in enumerate(_place(rng, size, radii)):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        m = _shape_mask(shape, yy, xx, cy, cx, radii[k], rng.uniform(0, 2 * np.pi))
        period = rng.uniform(*_PERIOD) * size
        phase = rng.uniform(0, 2 * np.pi, 2)
        fg, bg = _contrasting_colours(rng)
        pattern = _texture(int(drawn[k]), yy, xx, period, phase)
        fill = np.where(pattern, fg[:, None, None], bg[:, None, None])
        image = np.where(m, fill, image)
        masks.append(m)

    img = torch.from_numpy(np.clip(image, 0, 1)).float()
    mask = torch.from_numpy(np.stack(masks)).float()
    lab = torch.from_numpy(drawn.astype(np.int64))
    if objects == 1:
        return img, lab[0], mask[0]
    return img, lab, mask


class SyntheticDataset(Dataset[tuple[Tensor, Tensor, Tensor]]):
    """The benchmark as a map-style dataset that renders example ``i`` on demand.

    ``SyntheticDataset(n, seed)[i]`` equals ``generate(n, seed)`` at row ``i``, whichever
    process or shard asks for it.

    Parameters
    ----------
    length : int
        Number of examples (> 0).
    seed : int
        Dataset seed; use different seeds for training and held-out data.
    objects, image_size : int
        As in :func:`generate`.

    Raises
    ------
    ValueError
        For a non-positive ``length`` or a bad ``objects`` / ``image_size``.

    Examples
    --------
    >>> ds = SyntheticDataset(4, seed=1, image_size=32)
    >>> image, label, mask = ds[3]
    >>> bool(torch.equal(image, generate(4, seed=1, image_size=32).images[3]))
    True
    """

    def __init__(self, length: int, seed: int = 0, objects: int = 1, image_size: int = 64) -> None:
        _check(objects, image_size)
        if length <= 0:
            raise ValueError(f"length must be positive, got {length}")
        self.length, self.seed, self.objects, self.image_size = length, seed, objects, image_size

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of {self.length}")
        return render_example(index % self.length, self.seed, self.objects, self.image_size)


def generate(n: int, seed: int = 0, objects: int = 1, image_size: int = 64) -> SyntheticBatch:
    """Generate ``n`` examples of the benchmark deterministically.

    Parameters
    ----------
    n : int
        Number of images (> 0).
    seed : int
        Dataset seed (non-negative): the same seed gives identical tensors.
    objects : int
        1 (one object per image) or 2 (two objects of different classes).
    image_size : int
        Side of the square images in pixels (default 64, the shipped models' input size).

    Returns
    -------
    SyntheticBatch
        ``images`` ``(n, 3, H, W)`` in ``[0, 1]``; ``labels`` ``(n,)`` or ``(n, 2)``;
        ``masks`` ``(n, H, W)`` or ``(n, 2, H, W)``, 1 on the object's pixels.

    Raises
    ------
    ValueError
        For a non-positive ``n`` or a bad ``seed``, ``objects`` or ``image_size``.

    Examples
    --------
    >>> batch = generate(2, seed=0, objects=2, image_size=32)
    >>> batch.images.shape, batch.labels.shape, batch.masks.shape
    (torch.Size([2, 3, 32, 32]), torch.Size([2, 2]), torch.Size([2, 2, 32, 32]))
    >>> bool((batch.labels[:, 0] != batch.labels[:, 1]).all())
    True
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    ds = SyntheticDataset(n, seed, objects, image_size)
    images, labels, masks = zip(*(ds[i] for i in range(n)))
    return SyntheticBatch(torch.stack(images), torch.stack(labels), torch.stack(masks))
