"""The seeds of the synthetic benchmark: one module, disjoint splits, the values the shipped
weights and figures were produced with."""

from __future__ import annotations

import torch

from captum_vit.data import splits
from captum_vit.data.synthetic import generate
from captum_vit.models.registry import SHIPPED_DIR, read_manifest


def test_splits_are_disjoint_and_keep_the_recorded_values() -> None:
    seeds = {
        "train": splits.CLASSIFIER_TRAIN_SEED,
        "ltx_val": splits.LTX_VAL_SEED,
        "diffmask_val": splits.DIFFMASK_VAL_SEED,
        "held_out": splits.HELD_OUT_SEED,
        "benchmark": splits.BENCHMARK_SEED,
        "export": splits.EXPORT_PARITY_SEED,
    }
    assert seeds == {
        "train": 1000,
        "ltx_val": 424_242,
        "diffmask_val": 4242,
        "held_out": 999_999,
        "benchmark": 12345,
        "export": 777_001,
    }
    epochs = {splits.classifier_epoch_seed(e) for e in range(10)}
    assert not epochs & (set(seeds.values()) - {splits.CLASSIFIER_TRAIN_SEED})
    assert splits.EXPLAINER_TRAIN_SEED == splits.classifier_epoch_seed(0)


def test_manifest_records_are_these_splits() -> None:
    for name, entry in read_manifest(SHIPPED_DIR).items():
        training = entry.training
        if entry.kind == "classifier":
            epochs = training["epochs"]
            assert training["train_seeds"] == [splits.classifier_epoch_seed(e) for e in range(epochs)], name
        else:
            assert training["train_seed"] == splits.EXPLAINER_TRAIN_SEED, name
        if entry.kind == "pltx":
            assert training["val_seed"] == splits.LTX_VAL_SEED, name
        if entry.held_out:
            assert entry.held_out["seed"] == splits.HELD_OUT_SEED, name


def test_different_seeds_render_different_images() -> None:
    a = generate(2, seed=splits.HELD_OUT_SEED, image_size=32).images
    b = generate(2, seed=splits.BENCHMARK_SEED, image_size=32).images
    assert not torch.equal(a, b)
    assert torch.equal(a, generate(2, seed=splits.HELD_OUT_SEED, image_size=32).images)
