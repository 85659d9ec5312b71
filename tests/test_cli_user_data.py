"""The user's own files on the command line: what cannot work is refused in one line, before
any computation (corrupt weights, broken model folders, datasets the metrics cannot use,
learned explainers with nothing trained), and 16-bit images are read with their real values."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

import captum_vit.evaluate_cli as ev_cli
from captum_vit.cli import main
from captum_vit.data.loaders import read_image

#: test_vit at 64 px with 5 classes: the README's stand-in for the user's ViT.
MODEL = ["--model", "timm:test_vit", "--num-classes", "5", "--img-size", "64"]


@pytest.fixture(autouse=True)
def no_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the evaluation itself starts: every error must come first."""

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("the evaluation started before the arguments were checked")

    monkeypatch.setattr(ev_cli, "evaluate", must_not_run)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("user")
    torch.manual_seed(0)
    save_file(timm.create_model("test_vit", img_size=64, num_classes=5).state_dict(), str(root / "vit.safetensors"))
    rng = np.random.default_rng(0)
    for c in range(6):  # one class more than the model has
        (root / "six" / str(c)).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "six" / str(c) / "a.png")
    (root / "flat").mkdir()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "flat" / "a.png")
    (root / "empty.safetensors").write_bytes(b"")
    (root / "noise.safetensors").write_bytes(rng.integers(0, 255, 1000, dtype=np.uint8).tobytes())
    (root / "empty.pth").write_bytes(b"")
    torch.save(timm.create_model("test_vit", img_size=64, num_classes=5), root / "pickled-module.pth")
    (root / "not-a-model").mkdir()
    (root / "notes.md").write_text("not a .mat file\n")
    return root


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["evaluate", "--no-progress", *argv]) == 2
    lines = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.startswith("captum-vit evaluate")]
    assert len(lines) == 1, lines
    return lines[0].removeprefix("captum-vit evaluate: error: ")


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ("empty.safetensors", r"--weights: .*empty.safetensors is not a readable safetensors file \(.*header"),
        ("noise.safetensors", r"--weights: .*noise.safetensors is not a readable safetensors file"),
        ("empty.pth", r"--weights: .*empty.pth cannot be read with torch.load\(weights_only=True\) \(EOFError\)"),
        ("pickled-module.pth", r"--weights: .*pickled-module.pth cannot be read .*; expected a state dict saved with"),
    ],
)
def test_unreadable_weights(files: Path, weights: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    err = _error([*MODEL, "--weights", str(files / weights), "--methods", "gae"], capsys)
    assert re.match(message, err), err
    assert "\x1b[" not in err


def test_image_size_must_be_a_multiple_of_the_patch(files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--model", "timm:test_vit", "--num-classes", "5", "--img-size", "63", "--pretrained", "--methods", "gae"]
    assert _error(argv, capsys) == "--img-size 63 is not a multiple of test_vit's patch size 16"


def test_a_folder_that_is_no_model(files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _error(["--model", str(files / "not-a-model"), "--methods", "gae"], capsys)
    assert err.startswith(f"--model: {files / 'not-a-model'} is a folder without config.json")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (["--dataset", "folder", "--data-root", "six"], "--data-root: the images have labels up to 5 but the model has 5"),
        (["--dataset", "folder", "--data-root", "six", "--metrics", "segmentation"],
         "--metrics segmentation needs per-pixel ground truth: --dataset folder has none"),
        (["--dataset", "folder", "--data-root", "six", "--metrics", "class_sensitivity"],
         "--metrics class_sensitivity needs the synthetic two-object images, not --dataset folder"),
        (["--dataset", "folder", "--data-root", "six", "--pairs", "4"],
         "--pairs: two-object images exist in the synthetic dataset only"),
        (["--dataset", "folder", "--data-root", "flat"], "'{root}/flat' holds images but no class subfolders"),
        (["--dataset", "folder", "--data-root", "notes.md"], "ImageNet validation folder '{root}/notes.md' is a file"),
        (["--dataset", "imagenet-seg", "--data-root", "notes.md"], "'{root}/notes.md' is not an HDF5 (MATLAB v7.3)"),
    ],
)  # fmt: skip
def test_datasets_the_metrics_cannot_use(
    files: Path, data: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = [str(files / a) if i and data[i - 1] == "--data-root" else a for i, a in enumerate(data)]
    argv = [*MODEL, "--weights", str(files / "vit.safetensors"), "--methods", "gae", *data]
    assert _error(argv, capsys).startswith(message.format(root=files))


def test_an_untrained_ltx_is_refused_not_scored(files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [*MODEL, "--weights", str(files / "vit.safetensors"), "--num-images", "2", "--metrics", "segmentation"]
    for method in ("ltx", "pltx", "gae,pltx"):
        err = _error([*argv, "--methods", method], capsys)
        assert err.startswith("--methods: no trained LTX explainer is registered for this model (weights fingerprint")


def test_an_empty_methods_list_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert _error(["--methods", ""], capsys).startswith("--methods: expected a comma-separated list of")


def test_sixteen_bit_grayscale_keeps_its_values(tmp_path: Path) -> None:
    levels = np.array([[0, 257 * 64, 257 * 128, 65535]], dtype=np.uint16).repeat(4, axis=0)
    Image.fromarray(levels).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    got = read_image(tmp_path / "g16.png", None)
    want = torch.tensor([0, 64, 128, 255], dtype=torch.float32) / 255
    assert torch.equal(got[:, 0], want.expand(3, 4))
