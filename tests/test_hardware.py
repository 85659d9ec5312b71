"""``--device``, ``--amp``: checked before compute; autocast really applied in training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from captum_vit.cli import main
from captum_vit.hardware import amp_dtype, check_amp, check_device, device_type
from captum_vit.training.checkpoint import load_checkpoint
from captum_vit.training.trainer import Trainer

NO_GPU = not torch.cuda.is_available()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("gpu", "expected cpu, cuda or cuda:N, got 'gpu'"),
        ("cuda:x", "expected cpu, cuda or cuda:N"),
        ("CPU", "got 'CPU'"),
    ],
)
def test_device_spellings(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_device(text)
    assert check_device("cpu") == "cpu" and check_device(None) is None and device_type("cuda:1") == "cuda"


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")
def test_cuda_without_a_gpu_and_fp16_on_the_cpu_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="CUDA is not available here"):
        check_device("cuda:0")
    with pytest.raises(ValueError, match="--amp fp16 needs a CUDA device"):
        check_amp("fp16", None)  # the default device here is the CPU
    check_amp("bf16", "cpu")
    base = ["pretrain-ltx", "--model", "synthetic-vit", "--out", str(tmp_path / "run"), "--no-progress"]
    for extra, message in [
        (["--device", "cuda"], "--device cuda: CUDA is not available here"),
        (["--amp", "fp16"], "--amp fp16 needs a CUDA device (--device cuda); on the CPU use --amp bf16 or no --amp"),
        (["--device", "tpu"], "--device: expected cpu, cuda or cuda:N, got 'tpu'"),
        (["--amp", "int8"], "argument --amp: invalid choice: 'int8'"),
    ]:
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("captum-vit pretrain-ltx: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()  # refused before anything ran


class _Recording(nn.Module):
    """A linear model that records the autocast state and the dtype its matmul computes in."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(4, 3)
        self.seen: list[tuple[bool, torch.dtype]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x)
        self.seen.append((torch.is_autocast_enabled("cpu"), out.dtype))
        return out


def _train(amp: str | None, tmp: Path | None = None) -> _Recording:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(16, 4, generator=g), torch.randint(0, 3, (16,), generator=g))
    model = _Recording()

    def loss(m: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return nn.functional.cross_entropy(m(batch[0]).float(), batch[1])

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = Trainer(model, opt, loss, data, 4, 6, amp=amp, checkpoint_dir=tmp, checkpoint_every=3, progress=False)
    assert trainer.pin_memory is False  # pinned memory is for CUDA training only
    trainer.fit()
    return model


def test_bf16_autocast_in_the_training_step(tmp_path: Path) -> None:
    full, mixed = _train(None), _train("bf16", tmp_path)
    assert set(full.seen) == {(False, torch.float32)} and set(mixed.seen) == {(True, torch.bfloat16)}
    assert mixed.linear.weight.dtype == torch.float32  # the master weights stay fp32
    # bf16 keeps 8 bits of mantissa: 6 SGD steps land within a few 1e-3 of fp32 training.
    torch.testing.assert_close(mixed.linear.weight, full.linear.weight, rtol=0, atol=2e-2)
    assert not torch.equal(mixed.linear.weight, full.linear.weight)
    assert "scaler" in load_checkpoint(tmp_path / "last.pt")
    assert amp_dtype("bf16") is torch.bfloat16 and amp_dtype(None) is None


def test_fp16_training_needs_cuda() -> None:
    model = nn.Linear(2, 2)
    data = TensorDataset(torch.randn(4, 2))
    with pytest.raises(ValueError, match="amp='fp16' needs a CUDA device"):
        Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), lambda m, b: m(b[0]).sum(), data, 2, 1,
                amp="fp16", device="cpu")  # fmt: skip
