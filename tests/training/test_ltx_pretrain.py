"""pLTX pretraining: best checkpoint kept, explainee untouched, export with a manifest entry."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from captum_vit.cli import main
from captum_vit.data.synthetic import SyntheticDataset
from captum_vit.models.explainer import build_explainer, model_fingerprint
from captum_vit.models.pretrained import load_pretrained, sha256_file, write_manifest_entry
from captum_vit.training.ltx_pretrain import export_explainer, pretrain_ltx
from captum_vit.training.trainer import LAST, load_checkpoint
from tests.conftest import make_vit
from tests.helpers import assert_close


def test_pretraining_keeps_best_checkpoint_and_leaves_explainee(tmp_path: Path, tiny_weights: Path) -> None:
    model = make_vit()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    explainer, res = pretrain_ltx(
        model,
        SyntheticDataset(12, seed=1, image_size=32),
        SyntheticDataset(6, seed=2, image_size=32),
        steps=4,
        batch_size=4,
        lr=1e-3,
        checkpoint_dir=tmp_path,
        checkpoint_every=2,
        validate_every=2,
        progress=False,
    )
    assert res.step == 4 and res.best_step in (2, 4)
    vals = [h["val"] for h in res.history]
    assert len(vals) == 2 and res.best_metric == min(vals)
    assert all(0.0 <= v <= 100.0 for v in vals)
    best = load_checkpoint(tmp_path / "best.pt")
    for k, v in explainer.state_dict().items():
        assert torch.equal(v, best["model"][k]), k
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters()) and not model.training
    assert explainer.explainee_fingerprint == model_fingerprint(model)

    path = export_explainer(explainer, "tiny-pltx", "tiny", {"command": "test"}, weights_dir=tiny_weights)
    entry = json.loads((tiny_weights / "manifest.json").read_text())["models"]["tiny-pltx"]
    assert entry["sha256"] == sha256_file(path) and entry["explainee_sha256"] == model_fingerprint(model)
    stored = load_file(str(path))  # float16 storage, the fingerprint buffer unchanged
    assert torch.equal(stored["head.0.weight"], explainer.head[0].weight.half())
    assert torch.equal(stored["explainee_sha256"], explainer.explainee_sha256) and entry["storage_dtype"] == "float16"


def test_bad_target_option() -> None:
    with pytest.raises(ValueError, match="target"):
        pretrain_ltx(make_vit(), SyntheticDataset(4, image_size=32), steps=1, batch_size=4, target="gt")


@pytest.fixture
def tiny_weights(tmp_path: Path) -> Path:
    """A folder holding a manifest with one tiny shipped-style ViT, ``"tiny"`` (``make_vit()``)."""
    tmp_path = tmp_path / "weights"
    tmp_path.mkdir()
    model = make_vit()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "tiny.safetensors"))
    entry = {
        "file": "tiny.safetensors",
        "sha256": sha256_file(tmp_path / "tiny.safetensors"),
        "timm_name": "vit_tiny_patch16_224",
        "kwargs": dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5),
        "pretrained_cfg": {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.22] * 3, "num_classes": 5},
    }
    write_manifest_entry("tiny", entry, tmp_path)
    return tmp_path


def _cli_args(weights: Path, out: Path, *extra: str) -> list[str]:
    return [
        "pretrain-ltx", "--explainee", "tiny", "--weights-dir", str(weights), "--out", str(out),
        "--steps", str(CLI_STEPS), "--batch-size", "4", "--train-size", "16", "--val-size", "4",
        "--checkpoint-every", "4", "--validate-every", "20", "--lr", "1e-3", "--no-progress", *extra,
    ]  # fmt: skip


CLI_STEPS = 60


def _kill_after_first_checkpoint(args: list[str], out: Path) -> int | None:
    """Run the CLI in a subprocess and SIGKILL it as soon as its first checkpoint exists;
    the checkpoint's step, or None when the run finished before the kill landed."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-m", "captum_vit.cli", *args], env=env, stderr=subprocess.PIPE)
    try:
        while not (out / LAST).exists() and proc.poll() is None:
            time.sleep(0.002)
        proc.kill()
    finally:
        _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        return None
    assert proc.returncode == -signal.SIGKILL, err.decode()[-3000:]
    return int(load_checkpoint(out / LAST)["step"])


def test_cli_run_killed_mid_way_and_resumed_equals_uninterrupted(tiny_weights: Path) -> None:
    assert main(_cli_args(tiny_weights, tiny_weights / "ref")) == 0
    ref = load_checkpoint(tiny_weights / "ref" / LAST)
    for attempt in range(3):  # the kill races the (fast) run; a finished run is retried
        out = tiny_weights / f"killed{attempt}"
        step = _kill_after_first_checkpoint(_cli_args(tiny_weights, out), out)
        if step is not None:
            break
    else:
        pytest.fail("the pretrain-ltx subprocess always finished before it could be killed")
    assert 0 < step < CLI_STEPS
    assert main(_cli_args(tiny_weights, out, "--resume", "--export", "tiny-pltx")) == 0
    resumed = load_checkpoint(out / LAST)
    assert resumed["step"] == ref["step"] == CLI_STEPS
    for name, value in ref["model"].items():
        assert_close(resumed["model"][name], value, "fp32", msg=name)
    assert not torch.equal(ref["model"]["head.2.weight"], build_explainer(make_vit()).head[2].weight)
    # The export holds the best checkpoint (float16 storage) and names the explainee's weights.
    shipped = load_pretrained("tiny-pltx", tiny_weights)
    best = load_checkpoint(out / "best.pt")["model"]
    for name, value in shipped.state_dict().items():
        assert_close(value, best[name].half().float() if value.is_floating_point() else best[name], "exact", msg=name)
    assert shipped.explainee_fingerprint == model_fingerprint(load_pretrained("tiny", tiny_weights))
