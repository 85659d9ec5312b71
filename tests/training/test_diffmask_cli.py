"""``captum-vit train-diffmask`` end to end on a tiny ViT registered in a temporary user registry."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from captum_vit._io import default_file_mode
from captum_vit.attr import VisionDiffMask
from captum_vit.cli import main
from captum_vit.explainers import DiffMaskGates
from captum_vit.models.fingerprint import half_fingerprints, model_fingerprint
from captum_vit.models.pretrained import load_pretrained
from captum_vit.models.registry import SHIPPED_DIR, find_entry, sha256_file, user_registry_dir
from captum_vit.testing import assert_close
from captum_vit.training.checkpoint import load_checkpoint


def _argv(out: Path, steps: int, *extra: str) -> list[str]:
    return [
        "train-diffmask", "--model", "tiny", "--out", str(out),
        "--train-size", "16", "--batch-size", "8", "--max-steps", str(steps), "--val-size", "8", "--held-out", "8",
        "--validate-every", "2", "--checkpoint-every", "2", "--lr", "1e-3", "--no-progress",
        "--select-max-kl", "100", "--select-min-acc", "0", *extra,
    ]  # fmt: skip


def test_train_resume_register_and_use_by_default(tiny_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shipped_manifest = (SHIPPED_DIR / "manifest.json").read_bytes()
    out = tiny_home / "run"
    assert main(_argv(out, 2)) == 0
    assert load_checkpoint(out / "last.pt")["step"] == 2
    assert main(_argv(out, 4, "--resume", "--register", "tiny-diffmask")) == 0
    assert load_checkpoint(out / "last.pt")["step"] == 4
    captured = capsys.readouterr()
    assert "held-out: kl" in captured.out
    assert f"wrote {out / 'best.safetensors'}" in captured.err and "registered as 'tiny-diffmask'" in captured.err

    model = load_pretrained("tiny")
    entry = find_entry("tiny-diffmask")
    assert entry.kind == "diffmask" and entry.explainee == "tiny" and entry.folder == user_registry_dir()
    assert entry.explainee_fingerprint == model_fingerprint(model)
    assert entry.explainee_half_fingerprints == half_fingerprints(model)  # model.to(bfloat16) finds them too
    assert entry.sha256 == sha256_file(entry.path) and entry.path.stat().st_mode & 0o777 == default_file_mode()
    assert "--register tiny-diffmask" in entry.training["command"] and "--resume" in entry.training["command"]
    assert set(entry.held_out) >= {"kl", "kept", "expected_keep", "epsilon"}
    assert (SHIPPED_DIR / "manifest.json").read_bytes() == shipped_manifest  # the package is never written

    registered = load_pretrained("tiny-diffmask")
    assert isinstance(registered, DiffMaskGates)
    on_disk = DiffMaskGates.load(out / "best.safetensors")
    for k, v in on_disk.state_dict().items():
        assert_close(registered.state_dict()[k], v, "exact", k)

    x = torch.randn(2, 3, 32, 32)
    by_default = VisionDiffMask(model).attribute(x)  # found through the weights fingerprint
    for gates in (on_disk, "tiny-diffmask", out / "best.safetensors", str(entry.path)):
        assert_close(by_default, VisionDiffMask(model, gates=gates).attribute(x), "exact", str(gates))
    half = load_pretrained("tiny").to(torch.bfloat16)  # a bfloat16 copy finds them, registered or on disk
    for gates in (None, out / "best.safetensors"):
        assert VisionDiffMask(half, gates=gates).gates.fingerprint == entry.explainee_fingerprint

    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # other weights: the registered gates no longer apply
    with pytest.raises(ValueError, match="needs gate networks"):
        VisionDiffMask(model)
    theirs = model_fingerprint(model)
    with pytest.raises(ValueError, match=f"{entry.explainee_fingerprint}.*{theirs}"):
        VisionDiffMask(model, gates=out / "best.safetensors")


def test_arguments_are_checked_before_training(tiny_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tiny_home / "run"
    assert main(_argv(out, 2, "--model", "nope")) == 2
    assert "--model: 'nope' is not a registered classifier" in capsys.readouterr().err
    assert main(_argv(out, 2, "--register", "synthetic-vit-diffmask")) == 2
    assert "is shipped with captum_vit" in capsys.readouterr().err
    assert main(_argv(out, 2, "--register", "../escape")) == 2
    assert "not a valid name" in capsys.readouterr().err
    (tiny_home / "file").write_text("x")
    assert main(_argv(tiny_home / "file", 2)) == 2
    assert "--out" in capsys.readouterr().err
    assert not out.exists()  # nothing ran
