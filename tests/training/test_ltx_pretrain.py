"""pLTX pretraining: best checkpoint kept, explainee untouched, saved and registered explainers."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from captum_vit.attr import LTX, PLTX
from captum_vit.cli import main
from captum_vit.data.synthetic import SyntheticDataset
from captum_vit.explainers import build_explainer
from captum_vit.models.fingerprint import model_fingerprint
from captum_vit.models.pretrained import load_pretrained
from captum_vit.models.registry import SHIPPED_DIR, find_entry, user_registry_dir
from captum_vit.testing import assert_close, input_for, make_vit
from captum_vit.training.checkpoint import load_checkpoint
from captum_vit.training.ltx_pretrain import pretrain_ltx
from captum_vit.training.trainer import LAST


def test_pretraining_keeps_best_checkpoint_and_leaves_explainee(tmp_path: Path) -> None:
    model = make_vit()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    explainer, res = pretrain_ltx(
        model,
        SyntheticDataset(12, seed=1, image_size=32),
        SyntheticDataset(6, seed=2, image_size=32),
        steps=4,
        batch_size=4,
        lr=1e-3,
        mask_weight=3.0,
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

    # A saved explainer carries its explainee's fingerprint and its λ: LTX(model, explainer=file).
    explainer.save(tmp_path / "best.safetensors")
    stored = load_file(str(tmp_path / "best.safetensors"))
    assert torch.equal(stored["explainee_sha256"], explainer.explainee_sha256)
    from_file = LTX(model, explainer=tmp_path / "best.safetensors", finetune_steps=0)
    assert from_file.mask_weight == 3.0
    x = input_for(model, batch=2)
    assert_close(from_file.attribute(x), PLTX(model, explainer=explainer).attribute(x), "exact")


def test_bad_target_option() -> None:
    with pytest.raises(ValueError, match="target"):
        pretrain_ltx(make_vit(), SyntheticDataset(4, image_size=32), steps=1, batch_size=4, target="gt")


def _cli_args(out: Path, *extra: str) -> list[str]:
    return [
        "pretrain-ltx", "--explainee", "tiny", "--out", str(out),
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


def test_cli_run_killed_mid_way_and_resumed_equals_uninterrupted(tiny_home: Path) -> None:
    shipped_manifest = (SHIPPED_DIR / "manifest.json").read_bytes()
    assert main(_cli_args(tiny_home / "ref")) == 0
    ref = load_checkpoint(tiny_home / "ref" / LAST)
    for attempt in range(3):  # the kill races the (fast) run; a finished run is retried
        out = tiny_home / f"killed{attempt}"
        step = _kill_after_first_checkpoint(_cli_args(out), out)
        if step is not None and step < CLI_STEPS:  # on a loaded machine the kill can land after the last step
            break
    else:
        pytest.fail("the pretrain-ltx subprocess always finished before it could be killed")
    assert 0 < step < CLI_STEPS
    assert main(_cli_args(out, "--resume", "--register", "tiny-pltx")) == 0
    resumed = load_checkpoint(out / LAST)
    assert resumed["step"] == ref["step"] == CLI_STEPS
    for name, value in ref["model"].items():
        assert_close(resumed["model"][name], value, "fp32", msg=name)
    assert not torch.equal(ref["model"]["head.2.weight"], build_explainer(make_vit()).head[2].weight)

    # The registered explainer is the best checkpoint (float16 storage), in the user registry,
    # keyed by the explainee's fingerprint; LTX(model) picks it up; the package is not written.
    entry = find_entry("tiny-pltx")
    model = load_pretrained("tiny")
    assert entry.kind == "pltx" and entry.folder == user_registry_dir() and entry.storage_dtype == "float16"
    assert entry.explainee == "tiny" and entry.explainee_fingerprint == model_fingerprint(model)
    assert "--register tiny-pltx" in entry.training["command"]
    assert (SHIPPED_DIR / "manifest.json").read_bytes() == shipped_manifest
    registered = load_pretrained("tiny-pltx")
    best = load_checkpoint(out / "best.pt")["model"]
    for name, value in registered.state_dict().items():
        assert_close(value, best[name].half().float() if value.is_floating_point() else best[name], "exact", msg=name)
    ltx = LTX(model, finetune_steps=0)
    assert ltx.mask_weight == registered.mask_weight
    for name, value in registered.state_dict().items():
        assert_close(ltx.explainer.state_dict()[name], value, "exact", msg=name)
    # best.safetensors in --out is the float32 best checkpoint itself
    exact = LTX(model, explainer=out / "best.safetensors", finetune_steps=0).explainer
    for name, value in exact.state_dict().items():
        assert_close(value, best[name], "exact", msg=name)
    # ...and it records the explainee's half-precision copies: a bfloat16 copy takes it as it is
    from_half = LTX(copy.deepcopy(model).to(torch.bfloat16), explainer=out / "best.safetensors", finetune_steps=0)
    for name, value in from_half.explainer.state_dict().items():
        assert_close(value, best[name], "exact", msg=name)
