"""The synthetic benchmark: determinism, exact masks, and a class carried by the object alone."""

from __future__ import annotations

import pytest
import torch

from captum_vit.data.synthetic import (
    CLASS_NAMES,
    NUM_CLASSES,
    SyntheticDataset,
    generate,
    render_example,
)
from captum_vit.testing import assert_close


def _colours(image: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """Distinct RGB colours of ``image`` (3, H, W) at the pixels where ``where`` is true."""
    return torch.unique(image.permute(1, 2, 0)[where.bool()], dim=0)


def test_same_seed_gives_identical_tensors() -> None:
    a, b = generate(6, seed=3), generate(6, seed=3)
    for x, y in zip(a, b):
        assert_close(x, y, "exact")
    assert not torch.equal(a.images, generate(6, seed=4).images)


def test_dataset_row_equals_generated_row() -> None:
    batch = generate(5, seed=7, objects=2, image_size=32)
    ds = SyntheticDataset(5, seed=7, objects=2, image_size=32)
    for i in (4, 0, 2):  # any order: each example depends on (seed, index) only
        for x, y in zip(ds[i], (batch.images[i], batch.labels[i], batch.masks[i])):
            assert_close(x, y, "exact")
    assert_close(ds[-1][0], batch.images[4], "exact")


def test_shapes_ranges_and_all_classes_present() -> None:
    batch = generate(60, seed=0)
    assert batch.images.shape == (60, 3, 64, 64) and batch.images.dtype == torch.float32
    assert batch.labels.shape == (60,) and batch.labels.dtype == torch.int64
    assert batch.masks.shape == (60, 64, 64)
    assert 0 <= batch.images.min() and batch.images.max() <= 1
    assert set(batch.masks.unique().tolist()) == {0.0, 1.0}
    assert set(batch.labels.tolist()) == set(range(NUM_CLASSES)) and len(CLASS_NAMES) == NUM_CLASSES
    # Objects are large enough to span several 8x8 patches.
    assert batch.masks.sum((1, 2)).min() >= 64


def test_mask_is_exactly_the_object() -> None:
    # The object is painted with exactly two colours (its texture); everything else has pixel
    # noise or smooth ramps. So the mask holds exactly two colours, and no pixel outside it
    # has either colour: the mask covers the object and nothing else.
    batch = generate(12, seed=5)
    for image, mask in zip(batch.images, batch.masks):
        inside = _colours(image, mask)
        assert inside.shape[0] == 2
        outside = image.permute(1, 2, 0)[~mask.bool()]
        assert not (outside[:, None, :] == inside[None]).all(-1).any()


@pytest.mark.parametrize("objects", [1, 2])
def test_class_changes_only_pixels_inside_the_objects(objects: int) -> None:
    # The stated "no class cue outside the object" check: re-rendering the same scene with
    # other classes leaves every pixel outside the object masks (background, distractors)
    # bit-identical, and changes the texture inside each object.
    for index in range(4):
        image, label, mask = render_example(index, seed=11, objects=objects)
        region = mask.bool() if objects == 1 else mask.bool().any(0)
        originals = label.reshape(-1).tolist()
        for shift in range(1, NUM_CLASSES):
            forced = [(c + shift) % NUM_CLASSES for c in originals]
            other, other_label, other_mask = render_example(index, seed=11, objects=objects, labels=forced)
            assert other_label.reshape(-1).tolist() == forced
            assert_close(other_mask, mask, "exact")
            assert_close(other[:, ~region], image[:, ~region], "exact")
            assert not torch.equal(other[:, region], image[:, region])


def test_two_objects_have_different_classes_and_disjoint_masks() -> None:
    batch = generate(10, seed=2, objects=2)
    assert batch.labels.shape == (10, 2) and batch.masks.shape == (10, 2, 64, 64)
    assert (batch.labels[:, 0] != batch.labels[:, 1]).all()
    assert (batch.masks.sum((2, 3)) >= 64).all()
    assert (batch.masks[:, 0] * batch.masks[:, 1]).sum() == 0
    for image, masks in zip(batch.images, batch.masks):
        for m in masks:
            assert _colours(image, m).shape[0] == 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n=0), "n must be positive"),
        (dict(n=2, objects=3), "objects must be 1 or 2"),
        (dict(n=2, image_size=8), "image_size"),
        (dict(n=2, seed=-1), "non-negative"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        generate(**kwargs)


def test_bad_forced_labels_raise() -> None:
    with pytest.raises(ValueError, match="labels must be 2 distinct"):
        render_example(0, objects=2, labels=[1, 1])
    with pytest.raises(ValueError, match="labels must be 1 distinct"):
        render_example(0, labels=[NUM_CLASSES])
    with pytest.raises(IndexError):
        SyntheticDataset(3)[3]
