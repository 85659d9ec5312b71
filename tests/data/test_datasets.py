"""One dataset interface: image folders through the model's own transform, unreadable files
reported by path, held-out splits, and the evaluation on a folder through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from torch.utils.data import Subset, TensorDataset

import captum_vit.evaluate_cli as ev_cli
from captum_vit.cli import main
from captum_vit.data.datasets import (
    BadImageError,
    ImageFiles,
    build_dataset,
    check_images,
    held_out_splits,
    labels_of,
    pixel_transform,
)
from captum_vit.data.loaders import read_image
from captum_vit.data.synthetic import SyntheticDataset
from captum_vit.testing import assert_close, make_vit
from tests.data.image_folders import class_folder, write_image_folder


def _model(size: int = 32, interpolation: str = "bilinear", crop_pct: float = 0.875) -> torch.nn.Module:
    model = make_vit()
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, size, size), "interpolation": interpolation,
                            "crop_pct": crop_pct, "crop_mode": "center"}  # fmt: skip
    return model


def _photo(path: Path, size: tuple[int, int] = (45, 30), seed: int = 0) -> Path:
    rng = torch.Generator().manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((torch.rand(size[1], size[0], 3, generator=rng) * 255).byte().numpy()).save(path)
    return path


def test_a_folder_of_class_subfolders_is_numbered_like_image_folder(tmp_path: Path) -> None:
    files = write_image_folder(tmp_path, 12, seed=4, size=32)
    ds = build_dataset("folder", _model(), tmp_path)
    assert isinstance(ds, ImageFiles) and len(ds) == 12
    assert ds.classes == sorted(p.name for p in tmp_path.iterdir())
    labels = [int(ds[i][1]) for i in range(12)]
    assert labels == [ds.classes.index(f.parent.name) for f in files]
    assert all(ds.classes[label] == class_folder(label) for label in labels)  # the generator's own classes
    assert torch.equal(labels_of(ds), torch.tensor(labels)) and bool((ds[0][2] == -1).all())
    synthetic = SyntheticDataset(12, seed=4, image_size=32)
    by_name = {f.stem: i for i, f in enumerate(files)}
    first = int(files[0].stem)
    assert (ds[by_name[files[0].stem]][0] - synthetic[first][0]).abs().max() <= 0.5 / 255 + 1e-6  # 8-bit PNG


def test_stretch_is_the_loaders_resize_and_model_is_timms_eval_transform(tmp_path: Path) -> None:
    path = _photo(tmp_path / "a" / "photo.png")
    image = Image.open(path)
    bilinear = _model(32, "bilinear")
    assert_close(pixel_transform(bilinear, "stretch")(image), read_image(path, (32, 32)), "exact", "stretch")
    bicubic = _model(32, "bicubic", crop_pct=0.9)
    reference = timm.data.create_transform(**timm.data.resolve_data_config(model=bicubic), is_training=False)
    mean, std = torch.tensor([0.5] * 3).view(3, 1, 1), torch.tensor([0.5] * 3).view(3, 1, 1)
    ours = (pixel_transform(bicubic, "model")(image) - mean) / std
    assert_close(ours, reference(image.convert("RGB")), "fp32", "timm's eval transform")
    assert not torch.allclose(pixel_transform(bicubic, "model")(image), pixel_transform(bicubic, "stretch")(image))
    with pytest.raises(ValueError, match="--resize model is for image folders"):
        build_dataset("voc", bilinear, tmp_path, resize="model")


def test_an_unreadable_image_is_reported_by_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_image_folder(tmp_path / "images", 6, seed=1, size=32)
    bad = next((tmp_path / "images").iterdir()) / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png")
    ds = build_dataset("folder", _model(), tmp_path / "images")
    index = [p for p, _ in ds.items].index(bad)
    with pytest.raises(BadImageError, match=f"^{bad}: unreadable image"):
        ds[index]  # while iterating: the path, never a bare decoder error
    with pytest.raises(
        BadImageError, match=f"1 of 7 images cannot be read: {bad}: unreadable image.*--on-bad-image skip"
    ):
        check_images(ds, "fail", workers=2)
    kept = check_images(ds, "skip")
    assert isinstance(kept, Subset) and len(kept) == 6 and index not in kept.indices
    assert f"captum-vit: skipping {bad}: unreadable image" in capsys.readouterr().err
    assert check_images(SyntheticDataset(2, image_size=32), "fail") is not None  # not files: nothing to check


def test_evaluate_on_a_folder_fails_or_skips_a_corrupt_png(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_image_folder(tmp_path / "images", 5, seed=2, size=32)
    bad = next((tmp_path / "images").iterdir()) / "zz-truncated.png"
    good = next(next((tmp_path / "images").iterdir()).glob("*.png"))
    bad.write_bytes(good.read_bytes()[:60])  # a truncated file
    monkeypatch.setattr(ev_cli, "model_from_args", lambda args: _model())

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("the evaluation started before the images were checked")

    argv = ["evaluate", "--dataset", "folder", "--data-root", str(tmp_path / "images"), "--methods", "rollout",
            "--metrics", "perturbation", "--format", "json", "--no-progress", "--workers", "0"]  # fmt: skip
    with monkeypatch.context() as m:
        m.setattr(ev_cli, "evaluate", must_not_run)
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"captum-vit evaluate: error: 1 of 6 images cannot be read: {bad}: unreadable image")
    assert err.count("\n") == 1
    assert main([*argv, "--on-bad-image", "skip"]) == 0
    captured = capsys.readouterr()
    assert f"skipping {bad}" in captured.err and json.loads(captured.out)["rollout"]["pos_auc"]["count"] == 5


def test_held_out_splits_are_disjoint_and_fixed_by_the_seed() -> None:
    data = TensorDataset(torch.arange(50))
    val, held, train = held_out_splits(data, [5, 7], seed=3)
    seen = [int(x[0]) for part in (val, held, train) for x in part]
    assert sorted(seen) == list(range(50)) and (len(val), len(held), len(train)) == (5, 7, 38)
    again = held_out_splits(data, [5, 7], seed=3)
    assert [p.indices for p in again] == [val.indices, held.indices, train.indices]
    assert held_out_splits(data, [5, 7], seed=4)[0].indices != val.indices
    with pytest.raises(ValueError, match="leave none of 50 to train on"):
        held_out_splits(data, [25, 25])


def test_labels_of_nested_subsets_read_no_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_image_folder(tmp_path, 8, seed=5, size=32)
    ds = build_dataset("folder", _model(), tmp_path)
    everything = [label for _, label in ds.items]
    monkeypatch.setattr(ImageFiles, "__getitem__", lambda self, i: pytest.fail("an image was decoded"))
    inner = Subset(ds, [7, 1, 2, 5])
    assert labels_of(Subset(inner, [3, 0])).tolist() == [everything[5], everything[7]]


def test_datasets_take_the_models_input_size(tmp_path: Path) -> None:
    model = _model(48)
    image, label, mask = build_dataset("synthetic", model, synthetic_images=3, seed=1)[2]
    assert image.shape == (3, 48, 48) and mask.shape == (48, 48)
    assert_close(image, SyntheticDataset(3, seed=1, image_size=48)[2][0], "exact")
    _photo(tmp_path / "c" / "x.png", (100, 60))
    assert build_dataset("folder", model, tmp_path)[0][0].shape == (3, 48, 48)
    with pytest.raises(ValueError, match="--data-root is required for --dataset coco"):
        build_dataset("coco", model)
    with pytest.raises(ValueError, match="--labels-file is for --dataset imagenet-val"):
        build_dataset("folder", model, tmp_path, labels_file=tmp_path / "labels.txt")


def test_the_training_order_depends_only_on_the_seed(tmp_path: Path) -> None:
    """The same batches with and without worker processes; another seed, another order."""
    from captum_vit.training.trainer import Trainer

    write_image_folder(tmp_path, 16, seed=6, size=32)
    ds = build_dataset("folder", _model(), tmp_path)

    def batches(seed: int, workers: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        net = torch.nn.Linear(1, 1)
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        trainer = Trainer(net, opt, lambda m, b: b[0].sum(), ds, 4, 1, seed=seed, num_workers=workers, progress=False)
        return [(images, labels) for images, labels, _ in trainer._batches(epoch=0, skip=0)]

    one, two = batches(3, 0), batches(3, 2)
    assert len(one) == 4
    for (x1, y1), (x2, y2) in zip(one, two, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert [y.tolist() for _, y in batches(4, 0)] != [y.tolist() for _, y in one]
