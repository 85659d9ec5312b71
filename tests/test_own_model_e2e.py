"""Your model, your images, through the command line only, offline (issue 17).

"Your model" is a randomly initialised timm ``test_vit`` (6 blocks, 64 wide, 4x4 patches at
64 px) saved as ``.safetensors``; "your images" are 200 PNGs written from the synthetic
generator into class subfolders. Every command runs as a user runs it (``python -m
captum_vit.cli``, a fresh process) against a **read-only copy of the installed package**
(``PYTHONPATH``), with ``CAPTUM_VIT_HOME`` in the test's folder. The tests run as root here,
which ignores file permissions, so each test also compares the copy's file list, sizes and
modification times before and after: nothing may be written into the package at run time.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from captum_vit.attr import LTX, PLTX, AttentionRollout, VisionDiffMask
from captum_vit.cli import SUBCOMMANDS
from captum_vit.data.datasets import build_dataset
from captum_vit.export import FastAttribution, FastExplainer
from captum_vit.metrics import positive_perturbation_auc
from captum_vit.models.fingerprint import model_fingerprint
from captum_vit.models.preprocess import model_logits, normalize_for
from captum_vit.models.registry import find_explainer_entry
from captum_vit.models.spec import ModelSpec
from captum_vit.testing import assert_close
from captum_vit.training.checkpoint import load_checkpoint
from tests.data.image_folders import model_options, write_image_folder, write_random_vit

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _snapshot(folder: Path) -> dict[str, tuple[int, int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_mode)
        for p in folder.rglob("*")
    }


@dataclass
class Installed:
    """A read-only copy of the package, the environment that imports it, and what it held."""

    site: Path
    home: Path
    work: Path
    env: dict[str, str]
    before: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    def cli(self, *argv: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "captum_vit.cli", *argv],
            cwd=self.work, env=self.env, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        assert done.returncode == 0, f"captum-vit {' '.join(argv)}\n{done.stderr[-4000:]}"
        return done

    def assert_untouched(self) -> None:
        after = _snapshot(self.site)
        changed = sorted(k for k in self.before.keys() | after.keys() if self.before.get(k) != after.get(k))
        assert not changed, f"written into the installed package: {changed[:10]}"


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Installed]:
    site = tmp_path / "site"
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "captum_vit", site / "captum_vit", ignore=skip)
    shutil.copytree(ROOT / "export", site / "captum_vit" / "export", ignore=skip)  # installed as captum_vit.export
    for path in [site, *site.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("CAPTUM_VIT_HOME", str(home))  # this process reads the same user registry
    env = os.environ | {
        "PYTHONPATH": str(site),
        "PYTHONDONTWRITEBYTECODE": "1",  # the interpreter's own .pyc cache is not ours to test
        "OMP_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
    }
    yield Installed(site, home, work, env, _snapshot(site))
    for path in [site, *site.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o200)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _parity(stderr: str) -> float:
    match = re.search(r"max \|onnx - torch\| = (\S+)\)", stderr)
    assert match is not None, stderr
    return float(match.group(1))


def _your_model_and_images(tmp_path: Path) -> tuple[list[str], list[str], torch.nn.Module]:
    weights, images = tmp_path / "mine.safetensors", tmp_path / "images"
    write_random_vit(weights)
    write_image_folder(images, 200, seed=3)
    mine = model_options(weights)
    model = ModelSpec.parse(mine[1], weights=weights, num_classes=5, img_size=64).load()
    return mine, ["--dataset", "folder", "--data-root", str(images)], model


def _folder_images(model: torch.nn.Module, data: list[str], n: int) -> tuple[torch.Tensor, torch.Tensor]:
    dataset = build_dataset("folder", model, data[-1])
    return torch.stack([dataset[i][0] for i in range(n)]), torch.stack([dataset[i][1] for i in range(n)])


def _evaluate_three(installed: Installed, mine: list[str], data: list[str], methods: str) -> dict:
    table = installed.work / f"{methods.replace(',', '_')}.json"
    argv = ["evaluate", *mine, *data, "--methods", methods, "--metrics", "perturbation", "--format", "json"]
    installed.cli(*argv, "--out", str(table), "--no-progress", "--workers", "2")
    summary = json.loads(table.read_text())
    assert set(summary) == set(methods.split(","))
    assert all(summary[m]["pos_auc"]["count"] == 200 for m in summary)  # the whole folder
    return summary


def _check_rollout_row(summary: dict, model: torch.nn.Module, data: list[str]) -> None:
    """``evaluate``'s rollout row against the metric called directly on the folder's images:
    the predicted class explained, the curve scored on the folder's labels (as Chefer's script)."""
    pixels, labels = _folder_images(model, data, 200)
    x = normalize_for(model, pixels)
    with torch.no_grad():
        predicted = model_logits(model(x)).argmax(1)
    attr = AttentionRollout(model).attribute(x, target=predicted)
    expected = positive_perturbation_auc(model, pixels, attr, labels).mean()
    assert summary["rollout"]["pos_auc"]["mean"] == pytest.approx(float(expected), abs=1e-3)


def test_pltx_for_your_model_on_your_images(installed: Installed, tmp_path: Path) -> None:
    start = time.perf_counter()
    mine, data, model = _your_model_and_images(tmp_path)
    run = installed.work / "run"
    train = ["pretrain-ltx", *mine, *data, "--steps", "20", "--batch-size", "8", "--val-size", "16", "--lr", "1e-3",
             "--validate-every", "10", "--checkpoint-every", "10", "--no-progress", "--workers", "2"]  # fmt: skip
    done = installed.cli(*train, "--out", str(run), "--register", "mine-pltx")
    assert "steps/s" in done.stdout and load_checkpoint(run / "last.pt")["step"] == 20

    # LTX(model) finds the registered explainer by the model's fingerprint (fp16 storage).
    entry = find_explainer_entry(model_fingerprint(model), "pltx")
    assert entry is not None and entry.name == "mine-pltx" and entry.folder == installed.home / "weights"
    # ...and so does its bfloat16 copy (the entry records the fingerprints of half-precision copies)
    assert find_explainer_entry(model_fingerprint(model, torch.bfloat16), "pltx") == entry
    assert entry.explainee is not None and entry.explainee.startswith("timm:test_vit --weights ")
    assert entry.training["dataset"] == "folder" and entry.training["train_images"] == 184  # 200 - 16 held out
    best = load_file(str(run / "best.safetensors"))
    found = LTX(model, finetune_steps=0).explainer.state_dict()
    for name, value in best.items():
        assert_close(found[name], value.half().float() if value.is_floating_point() else value, "exact", name)

    # Export the registered explainer (found by fingerprint): parity within 1e-4.
    onnx = installed.work / "mine-pltx.onnx"
    assert _parity(installed.cli("export", *mine, "--out", str(onnx)).stderr) <= 1e-4
    pixels, _ = _folder_images(model, data, 12)
    x = normalize_for(model, pixels)
    with torch.no_grad():
        logits = model_logits(model(x))
    target = logits.argmax(1).tolist()
    fast = FastAttribution(str(onnx)).attribute(x, target=target)
    assert_close(fast, PLTX(model).attribute(x, target=target), "onnx_fp32", "FastAttribution vs PLTX")

    # A predict-and-explain graph: the map and the model's logits from one call.
    both = installed.work / "mine-predict.onnx"
    assert _parity(installed.cli("export", *mine, "--predict", "--out", str(both)).stderr) <= 1e-4
    session = FastExplainer(str(both)).session
    maps, onnx_logits = session.run(["maps", "logits"], {"images": x.numpy()})
    assert_close(torch.from_numpy(onnx_logits), logits, "onnx_fp32", "logits")
    assert_close(torch.from_numpy(maps), PLTX(model).attribute(x, return_patch_map=True), "onnx_fp32", "maps")

    summary = _evaluate_three(installed, mine, data, "pltx,gae,rollout")
    _check_rollout_row(summary, model, data)
    installed.assert_untouched()
    print(f"\npLTX workflow: {time.perf_counter() - start:.1f} s")


def test_diffmask_for_your_model_on_your_images(installed: Installed, tmp_path: Path) -> None:
    start = time.perf_counter()
    mine, data, model = _your_model_and_images(tmp_path)
    run = installed.work / "dm"
    train = ["train-diffmask", *mine, *data, "--max-steps", "20", "--batch-size", "8", "--val-size", "16",
             "--held-out", "16", "--lr", "1e-3", "--warmup-steps", "5", "--validate-every", "10",
             "--checkpoint-every", "10", "--select-max-kl", "100", "--select-min-acc", "0", "--no-progress"]  # fmt: skip
    done = installed.cli(*train, "--out", str(run), "--register", "mine-diffmask")
    assert "held-out: kl" in done.stdout

    entry = find_explainer_entry(model_fingerprint(model), "diffmask")
    assert entry is not None and entry.name == "mine-diffmask" and entry.training["train_images"] == 168
    x = normalize_for(model, _folder_images(model, data, 12)[0])
    by_fingerprint = VisionDiffMask(model).attribute(x)
    from_file = VisionDiffMask(model, gates=run / "best.safetensors").attribute(x)
    assert_close(by_fingerprint, from_file, "onnx_fp16", "fp16-stored gates vs the float32 file")

    onnx = installed.work / "mine-diffmask.onnx"
    assert _parity(installed.cli("export", *mine, "--method", "diffmask", "--out", str(onnx)).stderr) <= 1e-4
    fast = FastAttribution(str(onnx)).attribute(x)
    assert_close(fast, by_fingerprint, "onnx_fp32", "FastAttribution vs VisionDiffMask")

    summary = _evaluate_three(installed, mine, data, "diffmask,gae,rollout")
    _check_rollout_row(summary, model, data)
    installed.assert_untouched()
    print(f"\nDiffMask workflow: {time.perf_counter() - start:.1f} s")


def _without_key_biases(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with each attention's key bias (the middle third of ``qkv.bias``) left out.

    Its gradient is zero in exact arithmetic (a softmax does not change when the same
    ``q . b`` is added to every logit of a row), so Adam turns float noise of ~1e-10 into
    steps of about ``lr``, whose sign depends on the order of the sums; it does not change
    the output at all, which is compared separately."""
    out = {}
    for name, value in state.items():
        if name.endswith("attn.qkv.bias"):
            third = value.shape[0] // 3
            value = torch.cat([value[:third], value[2 * third :]])
        out[name] = value
    return out


def test_torchrun_pretraining_equals_one_process(installed: Installed, tmp_path: Path) -> None:
    """Two gloo processes, each with half of every global batch of 8, against one process:
    the same weights within ``fp32_loose`` (rtol 1e-4, atol 1e-5: DDP sums the two halves'
    gradients in another order), the attention key biases aside (see
    :func:`_without_key_biases`), and the same explainer masks within ``fp32_loose``."""
    from captum_vit.explainers import build_explainer

    mine, data, model = _your_model_and_images(tmp_path)
    args = ["pretrain-ltx", *mine, *data, "--steps", "6", "--batch-size", "8", "--val-size", "8", "--lr", "1e-3",
            "--validate-every", "3", "--checkpoint-every", "3", "--no-progress", "--workers", "0"]  # fmt: skip
    installed.cli(*args, "--out", str(installed.work / "one"))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                str(_free_port()), "-m", "captum_vit.cli", *args, "--out", str(installed.work / "two")]  # fmt: skip
    done = subprocess.run(torchrun, cwd=installed.work, env=installed.env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    one, two = (load_checkpoint(installed.work / d / "last.pt") for d in ("one", "two"))
    assert one["step"] == two["step"] == 6 and len(two["rng"]) == 2
    assert one["best_step"] == two["best_step"]
    for name, value in _without_key_biases(one["model"]).items():
        assert_close(_without_key_biases(two["model"])[name], value, "fp32_loose", name)
    x = normalize_for(model, _folder_images(model, data, 8)[0])
    masks = []
    for state in (one["model"], two["model"]):
        explainer = build_explainer(model)
        explainer.load_state_dict(state)
        with torch.no_grad():
            masks.append(explainer.eval()(x).sigmoid())
    assert_close(masks[1], masks[0], "fp32_loose", "explainer masks")
    installed.assert_untouched()


def test_no_subcommand_writes_into_the_installed_package(installed: Installed) -> None:
    where = subprocess.run(
        [sys.executable, "-c", "import captum_vit, captum_vit.export as e; print(captum_vit.__file__, e.__file__)"],
        cwd=installed.work, env=installed.env, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert all(Path(p).is_relative_to(installed.site) for p in where), where
    out, ran = installed.work, set()
    ran.add("demo")
    installed.cli("demo", "--out", str(out / "demo"), "--num-images", "1", "--num-eval", "2", "--repeats", "1",
                  "--methods", "rollout")  # fmt: skip
    ran.add("evaluate")
    installed.cli("evaluate", "--methods", "rollout", "--num-images", "2", "--pairs", "0", "--metrics", "segmentation",
                  "--out", str(out / "table.md"), "--no-progress")  # fmt: skip
    ran.add("export")
    installed.cli("export", "--out", str(out / "e.onnx"))
    ran.add("train-models")
    installed.cli("train-models", "--models", "synthetic-resnet", "--train-size", "16", "--epochs", "1",
                  "--batch-size", "8", "--held-out", "8", "--out", str(out / "models"), "--register", "my-resnet",
                  "--no-progress")  # fmt: skip
    ran.add("pretrain-ltx")
    installed.cli("pretrain-ltx", "--model", "synthetic-vit", "--train-size", "8", "--val-size", "4", "--steps", "2",
                  "--batch-size", "4", "--out", str(out / "pltx"), "--register", "my-pltx", "--no-progress")  # fmt: skip
    ran.add("train-diffmask")
    installed.cli("train-diffmask", "--train-size", "8", "--val-size", "4", "--held-out", "4", "--max-steps", "2",
                  "--batch-size", "4", "--out", str(out / "dm"), "--register", "my-dm", "--no-progress")  # fmt: skip
    ran.add("serve")
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "captum_vit.cli", "serve", "--model", str(out / "e.onnx"), "--port", str(port)],
        cwd=installed.work, env=installed.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("captum-vit serve never became ready")
    finally:
        server.terminate()
        server.communicate(timeout=60)
    assert ran == set(SUBCOMMANDS)
    registered = sorted(p.name for p in (installed.home / "weights").iterdir())
    assert registered == ["manifest.json", "my-dm.safetensors", "my-pltx.safetensors", "my-resnet.safetensors"]
    installed.assert_untouched()
