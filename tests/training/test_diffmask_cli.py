"""``captum-vit train-diffmask`` end to end on a tiny ViT registered in a temporary manifest."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import captum_vit.models.pretrained as pretrained
from captum_vit.attr import VisionDiffMask
from captum_vit.cli import main
from captum_vit.training.diffmask import DiffMaskGates
from captum_vit.training.trainer import load_checkpoint
from tests.conftest import make_vit
from tests.helpers import assert_close


@pytest.fixture
def weights_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    model = make_vit("cls")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "tiny.safetensors"))
    entry = {
        "file": "tiny.safetensors",
        "sha256": pretrained.sha256_file(tmp_path / "tiny.safetensors"),
        "timm_name": "vit_tiny_patch16_224",
        "kwargs": dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5),
        "pretrained_cfg": {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.22] * 3, "num_classes": 5},
    }
    pretrained.write_manifest_entry("tiny", entry, tmp_path)
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path)  # the "package" manifest for this test
    return tmp_path


def _argv(weights_dir: Path, steps: int, *extra: str) -> list[str]:
    return [
        "train-diffmask", "--model", "tiny", "--weights-dir", str(weights_dir), "--out-dir", str(weights_dir / "run"),
        "--train-size", "16", "--batch-size", "8", "--max-steps", str(steps), "--val-size", "8", "--held-out", "8",
        "--validate-every", "2", "--checkpoint-every", "2", "--lr", "1e-3", "--no-progress",
        "--select-max-kl", "100", "--select-min-acc", "0", *extra,
    ]  # fmt: skip


def test_train_resume_register_and_use_by_default(weights_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_argv(weights_dir, 2)) == 0
    assert load_checkpoint(weights_dir / "run" / "last.pt")["step"] == 2
    assert main(_argv(weights_dir, 4, "--resume", "--register", "tiny-diffmask")) == 0
    assert load_checkpoint(weights_dir / "run" / "last.pt")["step"] == 4
    assert "held-out: kl" in capsys.readouterr().out

    entry = pretrained.pretrained_entry("tiny-diffmask")
    assert entry["explains"] == "tiny" and "--register tiny-diffmask" in entry["training"]["command"]
    assert set(entry["held_out"]) >= {"kl", "kept", "expected_keep", "epsilon"}
    shipped = pretrained.load_pretrained("tiny-diffmask")
    assert isinstance(shipped, DiffMaskGates)
    on_disk = DiffMaskGates.load(weights_dir / "run" / "gates.safetensors")
    for k, v in on_disk.state_dict().items():
        assert_close(shipped.state_dict()[k], v, "exact", k)

    model = pretrained.load_pretrained("tiny")
    x = torch.randn(2, 3, 32, 32)
    by_default = VisionDiffMask(model).attribute(x)  # found through the weight fingerprint
    assert_close(by_default, VisionDiffMask(model, gates=on_disk).attribute(x), "exact")
    assert_close(by_default, VisionDiffMask(model, gates="tiny-diffmask").attribute(x), "exact")
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # other weights: the shipped gates no longer apply
    with pytest.raises(ValueError, match="needs gate networks"):
        VisionDiffMask(model)
