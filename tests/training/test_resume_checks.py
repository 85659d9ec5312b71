"""``--resume`` is refused, in one line and before any training, when ``OUT/last.pt`` cannot
continue this run exactly: another explainee's weights, another ``--batch-size`` or
``--seed``, or a file that is not a readable checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from captum_vit.cli import main
from captum_vit.data.synthetic import SyntheticDataset
from captum_vit.models.fingerprint import model_fingerprint
from captum_vit.models.pretrained import load_pretrained
from captum_vit.training.checkpoint import (
    UnreadableCheckpointError,
    atomic_save,
    checkpoint_fingerprint,
    load_checkpoint,
)
from captum_vit.training.ltx_pretrain import pretrain_ltx
from captum_vit.training.trainer import LAST, Trainer


def _diffmask(out: Path, *extra: str) -> list[str]:
    return [
        "train-diffmask", "--model", "tiny", "--out", str(out), "--train-size", "8", "--batch-size", "8",
        "--max-steps", "1", "--val-size", "4", "--held-out", "4", "--checkpoint-every", "1", "--no-progress", *extra,
    ]  # fmt: skip


def _ltx(out: Path, *extra: str) -> list[str]:
    return [
        "pretrain-ltx", "--explainee", "tiny", "--out", str(out), "--train-size", "8", "--batch-size", "8",
        "--steps", "1", "--val-size", "4", "--checkpoint-every", "1", "--no-progress", *extra,
    ]  # fmt: skip


COMMANDS = {"train-diffmask": _diffmask, "pretrain-ltx": _ltx}
Argv = Callable[..., list[str]]


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str], *expected: str) -> str:
    """Run ``argv``; assert exit status 2 and one stderr line holding every ``expected``."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in err, (text, err)
    return err


@pytest.mark.parametrize("command", COMMANDS)
def test_resume_with_other_weights_batch_size_or_seed_is_refused(
    command: str, tiny_other: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv: Argv = COMMANDS[command]
    out = tiny_other / "run"
    assert main(argv(out)) == 0
    last = out / LAST
    stored = load_checkpoint(last)
    trained_for = model_fingerprint(load_pretrained("tiny"))
    assert checkpoint_fingerprint(stored) == stored["metadata"]["explainee_fingerprint"] == trained_for
    for done in out.glob("best.*"):
        done.unlink()
    before = last.read_bytes()

    other = model_fingerprint(load_pretrained("tiny-other"))
    assert other != trained_for
    err = _refused(argv(out, "--resume", "--model", "tiny-other"), capsys, "--resume", str(last), trained_for, other)
    assert err.index(trained_for) < err.index(other)  # the checkpoint's, then this model's
    _refused(argv(out, "--resume", "--batch-size", "4"), capsys, "--batch-size 8", "--batch-size 4", str(last))
    seed = str(stored["seed"])
    _refused(argv(out, "--resume", "--seed", "99"), capsys, f"--seed {seed}", "--seed 99", str(last))
    assert last.read_bytes() == before and not list(out.glob("best.*"))  # nothing trained
    # With the same options the run resumes.
    assert main(argv(out, "--resume")) == 0


def _truncated_checkpoint(path: Path) -> None:
    torch.save({"model": {"w": torch.ones(64)}}, path)
    path.write_bytes(path.read_bytes()[:100])


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    ("write", "why"),
    [
        (lambda p: p.write_bytes(b""), "EOFError"),
        (_truncated_checkpoint, "RuntimeError"),
        (lambda p: p.write_text("not a checkpoint"), "not a readable checkpoint"),
        (lambda p: torch.save([1, 2], p), "holds a list"),
        (lambda p: torch.save({"model": {}}, p), "not a last.pt written by training"),
    ],
    ids=["empty", "truncated", "text", "list", "not-from-training"],
)
def test_unreadable_last_pt_is_refused(
    command: str, write: Callable[[Path], None], why: str, tiny_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tiny_home / "run"
    out.mkdir()
    write(out / LAST)
    argv: Argv = COMMANDS[command]
    _refused(argv(out, "--resume"), capsys, f"--resume: {out / LAST} is not a readable checkpoint", why, "--resume")
    assert not list(out.glob("best.*"))


def test_ltx_checkpoint_without_metadata_is_checked_by_its_fingerprint_buffer(
    tiny_other: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Older pretrain-ltx checkpoints have no metadata: the explainer's explainee_sha256 buffer
    in the model state tells the explainee (CLI and library)."""
    out = tiny_other / "run"
    assert main(_ltx(out)) == 0
    state = load_checkpoint(out / LAST)
    del state["metadata"]
    atomic_save(state, out / LAST)
    trained_for, other = (model_fingerprint(load_pretrained(n)) for n in ("tiny", "tiny-other"))
    _refused(_ltx(out, "--resume", "--model", "tiny-other"), capsys, trained_for, other)
    with pytest.raises(ValueError, match=f"explainee_fingerprint '{trained_for}'.*'{other}'"):
        pretrain_ltx(
            load_pretrained("tiny-other"), SyntheticDataset(8, image_size=32), steps=2, batch_size=8,
            checkpoint_dir=out, resume=True, progress=False,
        )  # fmt: skip
    assert main(_ltx(out, "--resume", "--steps", "2")) == 0  # the old checkpoint still resumes


def test_diffmask_checkpoint_without_fingerprint_resumes_with_a_warning(
    tiny_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tiny_home / "run"
    assert main(_diffmask(out)) == 0
    state = load_checkpoint(out / LAST)
    del state["metadata"]
    atomic_save(state, out / LAST)
    capsys.readouterr()
    assert main(_diffmask(out, "--resume", "--max-steps", "2")) == 0
    assert "does not record the weights fingerprint" in capsys.readouterr().err
    assert load_checkpoint(out / LAST)["step"] == 2


def _linear_trainer(tmp: Path, **kw: object) -> Trainer:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    data = TensorDataset(torch.randn(8, 3), torch.randn(8, 1))

    def loss_fn(m: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return ((m(batch[0]) - batch[1]) ** 2).mean()

    kw = {"batch_size": 4, "max_steps": 2, "seed": 0, "metadata": {"explainee_fingerprint": "a" * 64}} | kw
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return Trainer(model, opt, loss_fn, data, checkpoint_dir=tmp, progress=False, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"batch_size": 2}, "batch_size=4, this trainer has batch_size=2"),
        ({"seed": 3}, "seed=0, this trainer has seed=3"),
        ({"metadata": {"explainee_fingerprint": "b" * 64}}, f"explainee_fingerprint '{'a' * 64}'"),
    ],
)
def test_trainer_refuses_to_resume_another_run(tmp_path: Path, kw: dict[str, object], match: str) -> None:
    _linear_trainer(tmp_path).fit()
    before = (tmp_path / LAST).read_bytes()
    with pytest.raises(ValueError, match=match):
        _linear_trainer(tmp_path, **kw).fit(resume=True)
    assert (tmp_path / LAST).read_bytes() == before
    assert _linear_trainer(tmp_path, max_steps=3).fit(resume=True).step == 3  # the same run resumes


def test_trainer_names_an_unreadable_checkpoint(tmp_path: Path) -> None:
    (tmp_path / LAST).write_bytes(b"")
    with pytest.raises(UnreadableCheckpointError, match=f"{tmp_path / LAST} is not a readable checkpoint"):
        _linear_trainer(tmp_path).fit(resume=True)
