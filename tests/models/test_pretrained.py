"""The shipped trained models: offline loading, checksums, clear errors, held-out accuracy."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
import torch
from torch import nn

from captum_vit.data.synthetic import NUM_CLASSES, generate
from captum_vit.models import ViTAdapter, list_pretrained, load_pretrained
from captum_vit.models.preprocess import normalize_for
from captum_vit.models.pretrained import ChecksumError, load_verified_state_dict
from captum_vit.models.registry import SHIPPED_DIR, find_entry, read_manifest, sha256_file

SHIPPED = ["synthetic-vit", "synthetic-resnet"]
#: Fresh held-out seed: neither a training seed (1000+) nor the manifest's held-out seed.
TEST_SEED = 31337


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a socket while loading fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def held_out() -> tuple[torch.Tensor, torch.Tensor]:
    batch = generate(300, seed=TEST_SEED)
    return batch.images, batch.labels


def test_shipped_names_are_listed() -> None:
    assert set(SHIPPED) <= set(list_pretrained())


@pytest.mark.parametrize("name", SHIPPED)
def test_manifest_matches_files_and_size_budget(name: str) -> None:
    entry = find_entry(name, SHIPPED_DIR)
    assert entry.kind == "classifier" and sha256_file(entry.path) == entry.sha256
    assert entry.held_out["accuracy"] >= 0.97
    assert entry.training["command"].startswith("captum-vit train-models")
    total = sum(e.path.stat().st_size for e in read_manifest().values())
    assert total <= 15 * 2**20


@pytest.mark.parametrize("name", SHIPPED)
def test_loads_plain_timm_model_in_eval_mode_with_its_preprocessing(
    name: str, held_out: tuple[torch.Tensor, torch.Tensor]
) -> None:
    model = load_pretrained(name)
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    cfg = model.pretrained_cfg
    assert tuple(cfg["input_size"]) == (3, 64, 64) and cfg["num_classes"] == NUM_CLASSES
    assert len(cfg["mean"]) == 3 and len(cfg["std"]) == 3
    assert not cfg.get("url") and not cfg.get("hf_hub_id")
    images, labels = held_out
    with torch.no_grad():
        accuracy = (model(normalize_for(model, images)).argmax(-1) == labels).float().mean().item()
    assert accuracy >= 0.97, f"{name}: {accuracy:.3f} on 300 fresh held-out images"


def test_vit_is_a_class_token_vit_with_six_blocks_and_an_8x8_grid() -> None:
    adapter = ViTAdapter(load_pretrained("synthetic-vit"))
    assert adapter.num_blocks >= 6
    h, w = adapter.grid_size((64, 64))
    assert h >= 8 and w >= 8
    assert adapter.num_prefix_tokens == 1


def _copy_weights(tmp_path: Path, name: str) -> Path:
    entry = find_entry(name, SHIPPED_DIR)
    shutil.copy(SHIPPED_DIR / "manifest.json", tmp_path / "manifest.json")
    shutil.copy(entry.path, tmp_path / entry.file)
    return tmp_path / entry.file


def test_tampered_weights_raise_checksum_error(tmp_path: Path) -> None:
    path = _copy_weights(tmp_path, "synthetic-vit")
    assert isinstance(load_pretrained("synthetic-vit", tmp_path), nn.Module)  # the copy itself loads
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="checksum mismatch"):
        load_pretrained("synthetic-vit", tmp_path)
    assert issubclass(ChecksumError, ValueError)


def test_missing_weights_file_raises(tmp_path: Path) -> None:
    _copy_weights(tmp_path, "synthetic-resnet").unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        load_pretrained("synthetic-resnet", tmp_path)


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(ValueError, match="unknown pretrained model name 'synthetic-vitt'.*synthetic-resnet"):
        load_pretrained("synthetic-vitt")


def test_verified_state_dict_is_reusable_and_float32() -> None:
    entry = find_entry("synthetic-resnet", SHIPPED_DIR)
    state = load_verified_state_dict(entry.path, entry.sha256)
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    with pytest.raises(ChecksumError):
        load_verified_state_dict(entry.path, "0" * 64)
