"""The shared training loop: resume == uninterrupted, DDP == single process, stops on NaN."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from captum_vit.testing import assert_close
from captum_vit.training.checkpoint import load_checkpoint
from captum_vit.training.schedules import linear_warmup_decay
from captum_vit.training.trainer import NonFiniteLossError, Trainer


def _data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(22, 4, generator=g), torch.randint(0, 3, (22,), generator=g))


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Dropout(0.3), nn.Linear(8, 3))


class StochasticLoss:
    """CE plus a numpy-drawn weight (exercises torch and numpy RNG restore); can fail on call k."""

    def __init__(self, fail_at: int | None = None, nan_at: int | None = None) -> None:
        self.calls, self.fail_at, self.nan_at = 0, fail_at, nan_at

    def __call__(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt("simulated kill")
        x, y = batch
        w = float(np.random.uniform(0.5, 1.5))
        loss = w * nn.functional.cross_entropy(model(x), y)
        return loss * float("nan") if self.calls == self.nan_at else loss


def _trainer(model: nn.Module, loss_fn: StochasticLoss, tmp: Path | None, **kw: object) -> Trainer:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    kw = {"checkpoint_every": 3, "progress": False, "seed": 7} | kw
    return Trainer(
        model,
        opt,
        loss_fn,
        _data(),
        batch_size=4,
        max_steps=12,
        scheduler=linear_warmup_decay(opt, 12),
        checkpoint_dir=tmp,
        **kw,  # type: ignore[arg-type]
    )


def test_resume_after_kill_equals_uninterrupted(tmp_path: Path) -> None:
    torch.manual_seed(123)
    np.random.seed(5)
    ref = _model()
    _trainer(ref, StochasticLoss(), tmp_path / "ref").fit()

    torch.manual_seed(123)
    np.random.seed(5)
    killed = _model()
    with pytest.raises(KeyboardInterrupt):
        _trainer(killed, StochasticLoss(fail_at=8), tmp_path / "run").fit()  # dies after checkpoint at 6
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 6

    torch.manual_seed(999)  # a fresh process: different RNG, different init
    np.random.seed(999)
    resumed = _model(seed=42)
    result = _trainer(resumed, StochasticLoss(), tmp_path / "run").fit(resume=True)
    assert result.step == 12
    for (name, a), b in zip(ref.state_dict().items(), resumed.state_dict().values()):
        assert_close(b, a, "fp32", msg=name)
    # and the run really trained
    assert not torch.allclose(ref[0].weight, _model()[0].weight)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    model = _model()
    with pytest.raises(NonFiniteLossError, match="step 5"):
        _trainer(model, StochasticLoss(nan_at=5), tmp_path, checkpoint_every=2).fit()
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the bad step was not applied


def test_validation_keeps_best_checkpoint(tmp_path: Path) -> None:
    metrics = {3: 5.0, 6: 2.0, 9: 4.0, 12: 3.0}
    snapshots: dict[int, torch.Tensor] = {}

    def validate(m: nn.Module, step: int) -> float:
        assert not m.training
        snapshots[step] = m[0].weight.detach().clone()
        return metrics[step]

    model = _model()
    res = _trainer(model, StochasticLoss(), tmp_path, validate=validate, validate_every=3).fit()
    assert (res.best_step, res.best_metric) == (6, 2.0)
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["step"] == 6
    assert_close(best["model"]["0.weight"], snapshots[6], "exact")
    assert model.training


def test_checkpoint_from_another_model_is_rejected(tmp_path: Path) -> None:
    m = _model()
    Trainer(
        m,
        torch.optim.SGD(m.parameters(), lr=0.1),
        StochasticLoss(),
        _data(),
        4,
        3,
        checkpoint_dir=tmp_path,
        progress=False,
    ).fit()
    other = nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 3))
    opt = torch.optim.SGD(other.parameters(), lr=0.1)
    t = Trainer(other, opt, StochasticLoss(), _data(), 4, 6, checkpoint_dir=tmp_path, progress=False)
    assert (tmp_path / "last.pt").exists()
    with pytest.raises(ValueError, match="does not match the model"):
        t.fit(resume=True)


@pytest.mark.parametrize(
    ("kw", "match"),
    [({"batch_size": 0}, "batch_size"), ({"max_steps": -1}, "max_steps"), ({"batch_size": 64}, "smaller than")],
)
def test_bad_arguments(kw: dict[str, int], match: str) -> None:
    m = _model()
    args = {"batch_size": 4, "max_steps": 3} | kw
    with pytest.raises(ValueError, match=match):
        Trainer(m, torch.optim.SGD(m.parameters(), lr=0.1), StochasticLoss(), _data(), **args)


DDP_SCRIPT = textwrap.dedent(
    """
    import sys, torch, torch.distributed as dist
    from torch import nn
    from torch.utils.data import TensorDataset
    from captum_vit.distributed import init_distributed
    from captum_vit.training.schedules import linear_warmup_decay
    from captum_vit.training.trainer import Trainer

    def run(out):
        init_distributed()
        g = torch.Generator().manual_seed(0)
        data = TensorDataset(torch.randn(22, 4, generator=g), torch.randint(0, 3, (22,), generator=g))
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        loss = lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1])
        Trainer(model, opt, loss, data, batch_size=4, max_steps=9, scheduler=linear_warmup_decay(opt, 9),
                checkpoint_dir=out, checkpoint_every=4, progress=False, seed=3).fit()
        if dist.is_initialized():
            dist.destroy_process_group()

    if __name__ == "__main__":
        run(sys.argv[1])
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_process_ddp_matches_single_process(tmp_path: Path) -> None:
    """Two gloo processes (started with torchrun's environment variables, without the
    torchrun agent to keep the test fast) against one process with the same global batch."""
    script = tmp_path / "ddp_job.py"
    script.write_text(DDP_SCRIPT)
    base = os.environ | {
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "WORLD_SIZE": "2",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / "ddp")],
            env=base | {"RANK": str(r), "LOCAL_RANK": str(r)},
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    spec = importlib.util.spec_from_file_location("ddp_job", script)
    assert spec is not None and spec.loader is not None
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    job.run(str(tmp_path / "single"))  # in this process: not distributed
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]
    ddp, single = (load_checkpoint(tmp_path / d / "last.pt") for d in ("ddp", "single"))
    assert ddp["step"] == single["step"] == 9
    assert len(ddp["rng"]) == 2
    for name, v in single["model"].items():
        assert_close(ddp["model"][name], v, "fp32_loose", msg=name)
    assert not torch.equal(single["model"]["0.weight"], _model_init_weight())


def _model_init_weight() -> torch.Tensor:
    torch.manual_seed(0)
    return nn.Linear(4, 8).weight.detach()
