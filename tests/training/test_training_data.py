"""The training commands on any dataset: labels checked before training, unlabelled
validation images scored on the explainee's predictions, folders split at random."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from captum_vit.cli import main
from captum_vit.explainers.ltx_objective import LTXObjective
from captum_vit.models.preprocess import model_logits, model_normalization, normalize_for
from captum_vit.testing import make_vit
from captum_vit.training._common import check_labels, training_splits
from captum_vit.training.ltx_pretrain import pretrain_ltx, validation_pos_auc
from tests.data.image_folders import write_image_folder


def _vit() -> torch.nn.Module:
    model = make_vit()
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, 32, 32), "num_classes": 5}
    return model


def test_unlabelled_validation_images_are_scored_on_the_predictions() -> None:
    model = _vit()
    g = torch.Generator().manual_seed(0)
    images = torch.rand(8, 3, 32, 32, generator=g)
    unlabelled = TensorDataset(images, torch.full((8,), -1))
    explainer, result = pretrain_ltx(model, unlabelled, unlabelled, steps=2, batch_size=4, target="predicted",
                                     validate_every=2, progress=False)  # fmt: skip
    mean, std = model_normalization(model)
    with torch.no_grad():
        predicted = model_logits(model(normalize_for(model, images))).argmax(1)
    objective = LTXObjective(model, mean, std, 1.0)
    expected = validation_pos_auc(explainer, objective, images, predicted)
    assert result.best_metric == pytest.approx(expected) and 0.0 <= expected <= 100.0


def test_labels_are_checked_against_the_model() -> None:
    model = _vit()
    check_labels(TensorDataset(torch.zeros(2, 3, 32, 32), torch.tensor([0, 4])), model)
    with pytest.raises(ValueError, match="needs labelled images; this dataset has none: use --target predicted"):
        check_labels(TensorDataset(torch.zeros(2, 3, 32, 32), torch.tensor([0, -1])), model)
    with pytest.raises(ValueError, match="labels up to 7 but the model has 5 classes"):
        check_labels(TensorDataset(torch.zeros(2, 3, 32, 32), torch.tensor([0, 7])), model)


def test_a_folder_is_split_into_validation_held_out_and_training(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "images", 30, seed=1, size=32)
    args = argparse.Namespace(
        dataset="folder", data_root=tmp_path / "images", labels_file=None, resize="stretch", on_bad_image="fail",
        workers=0, val_size=6, train_size=None, batch_size=4,
    )  # fmt: skip
    train, val, held = training_splits(args, _vit(), val_seed=0, default_train_size=100, held_out=5)
    assert held is not None and (len(train), len(val), len(held)) == (19, 6, 5)
    paths = [train.dataset.items[i][0] for i in train.indices]  # type: ignore[attr-defined]
    assert len(set(paths)) == 19
    args.train_size = 10
    assert len(training_splits(args, _vit(), 0, 100, held_out=5)[0]) == 10
    args.batch_size = 32
    with pytest.raises(ValueError, match="--batch-size 32 is larger than the 19 training images"):
        training_splits(args, _vit(), 0, 100, held_out=5)


def test_pretrain_ltx_refuses_labels_beyond_the_models_classes(
    tiny_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "images"
    write_image_folder(images, 12, seed=2, size=32)
    (images / "5_extra").mkdir()
    (images / "5_extra" / "x.png").write_bytes(next(images.rglob("*.png")).read_bytes())  # a sixth class
    argv = ["pretrain-ltx", "--model", "tiny", "--dataset", "folder", "--data-root", str(images), "--out",
            str(tmp_path / "run"), "--val-size", "2", "--steps", "1", "--batch-size", "2", "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    assert "--target label: the images have labels up to 5 but the model has 5 classes" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    assert main([*argv, "--target", "predicted", "--workers", "0"]) == 0
