"""``captum-vit train-models`` through the shared Trainer: the recipe's arithmetic, the registry
folder it writes, ``--register``."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DistributedSampler

from captum_vit._io import default_file_mode
from captum_vit.cli import main
from captum_vit.data.splits import HELD_OUT_SEED, classifier_epoch_seed
from captum_vit.data.synthetic import SyntheticDataset
from captum_vit.models.pretrained import build_architecture, load_pretrained
from captum_vit.models.registry import SHIPPED_DIR, find_entry, read_manifest, sha256_file, user_registry_dir
from captum_vit.testing import assert_close
from captum_vit.training.train_classifier import IMAGE_SIZE, MEAN, RECIPES, STD, manifest_spec, train_one


def _old_loop(name: str, train_size: int, batch_size: int, epochs: int, seed: int) -> torch.nn.Module:
    """The loop ``train-models`` ran before it used the Trainer, written out (AdamW, linear
    warm-up over a tenth of the steps then cosine, label smoothing 0.1, fresh images per epoch,
    the last partial batch kept), fed the batches in the Trainer's seeded order."""
    recipe = RECIPES[name]
    torch.manual_seed(seed)
    model = build_architecture(manifest_spec(recipe)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    total = epochs * math.ceil(train_size / batch_size)
    warmup = max(1, total // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup))),
    )
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    for epoch in range(epochs):
        data = SyntheticDataset(train_size, seed=1000 + epoch, image_size=IMAGE_SIZE)
        sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=seed, drop_last=True)
        sampler.set_epoch(epoch)
        order = list(sampler)
        for start in range(0, train_size, batch_size):
            items = [data[i] for i in order[start : start + batch_size]]
            images, labels = torch.stack([i[0] for i in items]), torch.stack([i[1] for i in items])
            loss = F.cross_entropy(model((images - mean) / std), labels, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@pytest.mark.parametrize("name", ["synthetic-vit", "synthetic-resnet"])
def test_trainer_path_has_the_recipes_arithmetic(name: str) -> None:
    args = argparse.Namespace(
        models=[name], train_size=20, epochs=2, batch_size=8, held_out=8, seed=3, threads=1, workers=0,
        out=Path("unused"), no_progress=True, register=None, ship=False, amp=None,
    )  # fmt: skip
    model, record = train_one(name, args)
    reference = _old_loop(name, 20, 8, 2, seed=3)
    for key, value in reference.state_dict().items():
        assert_close(model.state_dict()[key], value, "fp32", msg=key)
    assert record["train_seeds"] == [classifier_epoch_seed(0), classifier_epoch_seed(1)] == [1000, 1001]
    assert record["epochs"] == 2 and record["command"].startswith("captum-vit train-models --models " + name)


def test_cli_writes_a_registry_folder_and_registers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPTUM_VIT_HOME", str(tmp_path / "home"))
    shipped_manifest = (SHIPPED_DIR / "manifest.json").read_bytes()
    out = tmp_path / "weights"
    argv = ["train-models", "--models", "synthetic-resnet", "--train-size", "16", "--batch-size", "8"]
    argv += ["--epochs", "1", "--held-out", "8", "--out", str(out), "--no-progress", "--register", "my-resnet"]
    assert main(argv) == 0

    entry = read_manifest(out)["synthetic-resnet"]
    assert entry.kind == "classifier" and entry.storage_dtype == "float16"
    assert entry.sha256 == sha256_file(entry.path) and entry.path.stat().st_mode & 0o777 == default_file_mode()
    assert entry.held_out["seed"] == HELD_OUT_SEED and entry.held_out["images"] == 8
    assert 0.0 <= entry.held_out["accuracy"] <= 1.0
    assert entry.training["command"].endswith("--register my-resnet")
    registered = find_entry("my-resnet")
    assert registered.folder == user_registry_dir() and registered.sha256 == entry.sha256
    mine, theirs = load_pretrained("synthetic-resnet", out), load_pretrained("my-resnet")
    assert mine.pretrained_cfg["mean"] == MEAN and not mine.training
    for key, value in mine.state_dict().items():
        assert_close(theirs.state_dict()[key], value, "exact", msg=key)
    assert (SHIPPED_DIR / "manifest.json").read_bytes() == shipped_manifest


def test_cli_checks_register(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train-models", "--out", str(tmp_path / "w"), "--register", "x"]
    assert main(argv) == 2
    assert "--register names one model" in capsys.readouterr().err
    assert main(["train-models", "--models", "synthetic-vit", "--out", str(tmp_path / "w"), "--ship"]) == 2
    assert "--ship needs --register" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()
