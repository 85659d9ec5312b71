"""The weights registry: one typed entry, the user registry, the lookup, the writing helper."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from captum_vit._io import default_file_mode
from captum_vit.models.fingerprint import model_fingerprint
from captum_vit.models.pretrained import load_pretrained
from captum_vit.models.registry import (
    FORMAT_VERSION,
    SHIPPED_DIR,
    ManifestError,
    WeightsEntry,
    all_entries,
    find_entry,
    find_explainer_entry,
    read_manifest,
    register_weights,
    save_weights,
    sha256_file,
    user_registry_dir,
)

FP = "ab" * 32


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CAPTUM_VIT_HOME", str(tmp_path / "home"))
    return tmp_path / "home" / "weights"


def test_user_registry_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAPTUM_VIT_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert user_registry_dir() == tmp_path / "xdg" / "captum_vit" / "weights"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "me"))
    assert user_registry_dir() == tmp_path / "me" / ".cache" / "captum_vit" / "weights"
    monkeypatch.setenv("CAPTUM_VIT_HOME", str(tmp_path / "h"))
    assert user_registry_dir() == tmp_path / "h" / "weights"


def test_save_weights_mode_digest_and_storage_dtype(tmp_path: Path) -> None:
    state = {"w": torch.randn(3, 2), "fp": torch.arange(4, dtype=torch.uint8)}
    digest = save_weights(tmp_path / "a.safetensors", state, {"k": "v"}, storage_dtype=torch.float16)
    path = tmp_path / "a.safetensors"
    assert digest == sha256_file(path) and path.stat().st_mode & 0o777 == default_file_mode()
    stored = load_file(str(path))
    assert stored["w"].dtype == torch.float16 and torch.equal(stored["w"], state["w"].half())
    assert torch.equal(stored["fp"], state["fp"])  # integer buffers are stored as they are
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]  # no temporary file left


def test_register_and_look_up_in_the_user_registry(home: Path) -> None:
    model = torch.nn.Linear(2, 2)
    entry = register_weights(
        "my-gates", "diffmask", model.state_dict(), explainee="mine", explainee_fingerprint=FP,
        kwargs={"embed_dim": 2}, training={"command": "captum-vit train-diffmask"},
    )  # fmt: skip
    assert entry.folder == home and entry.path == home / "my-gates.safetensors"
    assert entry.sha256 == sha256_file(entry.path) and entry.storage_dtype == "float32"
    data = json.loads((home / "manifest.json").read_text())
    assert data["format"] == FORMAT_VERSION and data["models"]["my-gates"]["explainee_fingerprint"] == FP
    assert find_entry("my-gates") == entry and "synthetic-vit" in all_entries()  # both registries searched
    assert find_explainer_entry(FP, "diffmask") == entry
    assert find_explainer_entry(FP, "pltx") is None
    register_weights("other-gates", "diffmask", model.state_dict(), explainee="mine", explainee_fingerprint=FP)
    with pytest.raises(ValueError, match="several diffmask explainers.*my-gates, other-gates"):
        find_explainer_entry(FP, "diffmask")
    with pytest.raises(ValueError, match="shipped with captum_vit"):
        register_weights("synthetic-vit", "classifier", model.state_dict(), timm_name="x")
    with pytest.raises(ValueError, match="unknown pretrained model name 'nope'.*my-gates"):
        find_entry("nope")


def test_user_registry_explainer_for_a_shipped_model_comes_first(home: Path) -> None:
    shipped = find_explainer_entry(model_fingerprint(load_pretrained("synthetic-vit")), "diffmask")
    assert shipped is not None and shipped.folder == SHIPPED_DIR
    entry = register_weights(
        "my-vit-gates", "diffmask", load_file(str(shipped.path)), explainee="synthetic-vit",
        explainee_fingerprint=shipped.explainee_fingerprint, kwargs=shipped.kwargs,
    )  # fmt: skip
    assert find_explainer_entry(shipped.explainee_fingerprint, "diffmask") == entry


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "not readable JSON"),
        (json.dumps({"format": 1, "models": {}}), "has format 1; this captum_vit reads format 2"),
        (json.dumps({"models": {}}), "has format None"),
        (json.dumps({"format": 2, "models": {"a": {"kind": "pltx", "file": "a.safetensors"}}}), "missing.*sha256"),
        (json.dumps({"format": 2, "models": {"a": {"kind": "x", "file": "a.safetensors", "sha256": FP}}}), "kind"),
        (json.dumps({"format": 2, "models": {"a": {"kind": "pltx", "file": "a.safetensors", "sha256": FP}}}), "explainee"),
        (json.dumps({"format": 2, "models": {"a": {"kind": "classifier", "file": "../a.safetensors", "sha256": FP,
                                                   "timm_name": "t"}}}), "file"),
        (json.dumps({"format": 2, "models": {"a": {"kind": "classifier", "file": "a.safetensors", "sha256": FP,
                                                   "timm_name": "t", "typo": 1}}}), "unknown fields \\['typo'\\]"),
    ],
)  # fmt: skip
def test_corrupt_or_unknown_manifest_is_a_clear_error(home: Path, text: str, match: str) -> None:
    home.mkdir(parents=True)
    (home / "manifest.json").write_text(text)
    with pytest.raises(ManifestError, match=match) as info:
        read_manifest(home)
    assert str(home / "manifest.json") in str(info.value)
    with pytest.raises(ManifestError):  # every lookup reports it, the explanation methods' included
        load_pretrained("synthetic-vit")


def test_shipped_manifest_round_trips_and_fingerprints_match_the_shipped_weights(tmp_path: Path) -> None:
    entries = read_manifest(SHIPPED_DIR)
    assert {e.kind for e in entries.values()} == {"classifier", "pltx", "diffmask"}
    for name, entry in entries.items():
        assert WeightsEntry.from_json(name, entry.to_json(), SHIPPED_DIR) == entry
        assert sha256_file(entry.path) == entry.sha256
        if entry.explainee is not None:  # recomputed from the shipped classifier, not copied
            assert entry.explainee_fingerprint == model_fingerprint(load_pretrained(entry.explainee)), name
    shutil.copy(SHIPPED_DIR / "manifest.json", tmp_path / "manifest.json")
    register_weights("extra", "classifier", {"w": torch.zeros(1)}, tmp_path, timm_name="t")
    assert set(read_manifest(tmp_path)) == set(entries) | {"extra"}
    assert {n: e.to_json() for n, e in read_manifest(tmp_path).items() if n != "extra"} == {
        n: e.to_json() for n, e in entries.items()
    }
