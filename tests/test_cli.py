"""The command-line convention: fast help, one-line errors before compute, torchrun-safe flags."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

import captum_vit.evaluate_cli as ev_cli
from captum_vit import cli
from captum_vit._cli_common import CLIError
from captum_vit._io import default_file_mode
from captum_vit.cli import SUBCOMMANDS, build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def _python(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _one_line_error(err: str, command: str) -> str:
    """The message of a ``captum-vit <command>: error: <message>`` line, asserting it is the only line."""
    assert err.count("\n") == 1 and err.endswith("\n"), err
    prefix = f"captum-vit {command}: error: " if command else "captum-vit: error: "
    assert err.startswith(prefix), err
    return err[len(prefix) : -1]


# ------------------------------------------------------------------------------------- help
def test_help_lists_every_subcommand_without_importing_torch() -> None:
    code = "import sys, captum_vit.cli as c; c.build_parser(); print(sorted(m for m in sys.modules if m == 'torch'))"
    assert _python("-c", code).stdout.strip() == "[]"
    done = _python("-m", "captum_vit.cli", "--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    for name, (_, help_text) in SUBCOMMANDS.items():
        assert f"{name} {help_text}" in text  # argparse may wrap the line; compare word by word


def test_help_answers_in_under_a_second() -> None:
    # The old parser imported every subcommand (torch, timm, onnx): 5.8 s on this machine.
    exe = Path(sys.executable).with_name("captum-vit")
    argv = [str(exe), "--help"] if exe.exists() else [sys.executable, "-m", "captum_vit.cli", "--help"]
    times = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run(argv, cwd=ROOT, capture_output=True, check=True, timeout=60)
        times.append(time.perf_counter() - start)
    assert statistics.median(times) < 1.0, times


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_every_subcommand_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: captum-vit {command} ") and SUBCOMMANDS[command][1].split()[0] in out


def test_build_parser_imports_only_the_chosen_subcommand(monkeypatch: pytest.MonkeyPatch) -> None:
    imported: list[str] = []
    fake = types.ModuleType("fake_cmd")
    fake.add_arguments = lambda p: p.add_argument("--num-images", type=int)  # type: ignore[attr-defined]
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: imported.append(name) or fake)
    monkeypatch.setitem(SUBCOMMANDS, "fake", ("fake_cmd", "a fake command"))
    assert build_parser("fake").parse_args(["fake", "--num-images", "3"]).num_images == 3
    assert build_parser(None) is not None and imported == ["fake_cmd"]


# ---------------------------------------------------------------------- the error convention
def _fake_command(monkeypatch: pytest.MonkeyPatch, check_error: Exception | None, run_error: Exception | None) -> None:
    module = types.ModuleType("captum_vit_fake_command")

    def check(args: object) -> None:
        if check_error is not None:
            raise check_error

    def run(args: object) -> int:
        if run_error is not None:
            raise run_error
        return 0

    module.add_arguments = lambda p: None  # type: ignore[attr-defined]
    module.check, module.run = check, run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(SUBCOMMANDS, "fake", (module.__name__, "a fake command"))


@pytest.mark.parametrize(
    "error", [CLIError("bad --x"), ValueError("bad\n  --x"), TypeError("bad --x"), FileNotFoundError("bad --x")]
)
def test_check_errors_are_one_line_with_status_2(
    error: Exception, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake_command(monkeypatch, check_error=error, run_error=None)
    assert main(["fake"]) == 2
    assert _one_line_error(capsys.readouterr().err, "fake") == "bad --x"


def test_errors_while_computing_keep_their_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake_command(monkeypatch, check_error=None, run_error=ValueError("a genuine bug"))
    with pytest.raises(ValueError, match="a genuine bug"):
        main(["fake"])
    _fake_command(monkeypatch, check_error=None, run_error=CLIError("parity failed"))
    assert main(["fake"]) == 2
    assert _one_line_error(capsys.readouterr().err, "fake") == "parity failed"


def test_unknown_command_and_missing_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluat"]) == 2
    assert "invalid choice: 'evaluat'" in _one_line_error(capsys.readouterr().err, "")
    assert main([]) == 2
    assert "required: COMMAND" in _one_line_error(capsys.readouterr().err, "")


# -------------------------------------------------------- user errors, caught before compute
@pytest.fixture
def no_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the evaluation itself starts: every error must come first."""

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("the evaluation started before the arguments were checked")

    monkeypatch.setattr(ev_cli, "evaluate", must_not_run)


def _evaluate_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["evaluate", "--no-progress", *argv]) == 2
    return _one_line_error(capsys.readouterr().err, "evaluate")


@pytest.mark.usefixtures("no_evaluation")
def test_evaluate_rejects_bad_output_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _evaluate_error(["--out", str(tmp_path)], capsys) == f"--out: {tmp_path} is a folder; expected a file path"
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    msg = _evaluate_error(["--out", str(blocker / "table.json")], capsys)
    assert msg == f"--out: {blocker} is not a folder"
    msg = _evaluate_error(["--plot", str(tmp_path / "curves.png"), "--metrics", "segmentation"], capsys)
    assert msg == "--plot draws perturbation curves: add 'perturbation' or 'rise' to --metrics"
    assert _evaluate_error(["--plot", str(tmp_path / "c.txt")], capsys).startswith("--plot: expected a file path")
    assert not any(p for p in tmp_path.iterdir() if p != blocker)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write in any folder")
@pytest.mark.usefixtures("no_evaluation")
def test_evaluate_rejects_an_unwritable_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert _evaluate_error(["--out", str(locked / "t.json")], capsys) == f"--out: cannot write in {locked}"


@pytest.mark.usefixtures("no_evaluation")
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--num-images", "-3"], "argument --num-images: expected a positive integer, got '-3'"),
        (["--batch-size", "0"], "argument --batch-size: expected a positive integer, got '0'"),
        (["--pairs", "x"], "argument --pairs: expected a non-negative integer, got 'x'"),
        (["--methods", "gae,nope"], "--methods: unknown method 'nope'; expected a comma-separated list of "),
        (["--metrics", "speed"], "--metrics: unknown metric group 'speed'; expected a comma-separated list of "),
        (["--baseline", "grey"], "argument --baseline: invalid choice: 'grey'"),
        (["--model", "no-such-model"], "--model: 'no-such-model' is not a registered classifier"),
        (["--model", "synthetic-resnet", "--methods", "rollout"], "method 'rollout' does not support cnn models"),
        (["--dataset", "voc", "--data-root", "/nonexistent/VOC"], "--data-root: no such file or folder: /nonexistent"),
        (["--n", "8"], "unrecognized arguments: --n 8"),  # renamed: torchrun takes --n as its own
    ],
)
def test_evaluate_rejects_bad_values(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert _evaluate_error(argv, capsys).startswith(message)


def test_demo_rejects_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "figure.png"
    blocker.write_text("")
    for argv, message in [
        (["--out", str(blocker)], f"--out: {blocker} exists and is not a folder"),
        (["--methods", "gradcam"], "--methods: unknown method for a vit model 'gradcam'"),
        (["--num-eval", "0"], "argument --num-eval: expected a positive integer, got '0'"),
        (["--model", "no-such-model"], "--model: 'no-such-model' is not a registered classifier"),
    ]:
        assert main(["demo", "--out", str(tmp_path / "demo"), *argv]) == 2
        assert _one_line_error(capsys.readouterr().err, "demo").startswith(message)
    assert not (tmp_path / "demo").exists()


def test_a_user_error_in_a_subprocess_is_one_line_on_stderr(tmp_path: Path) -> None:
    done = _python("-m", "captum_vit.cli", "evaluate", "--out", str(tmp_path), "--no-progress")
    assert done.returncode == 2 and done.stdout == ""
    assert _one_line_error(done.stderr, "evaluate") == f"--out: {tmp_path} is a folder; expected a file path"


# ------------------------------------------------------------------------------ demo output
def test_demo_writes_the_figure_and_a_table_matching_direct_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from captum_vit.attr import AttentionRollout
    from captum_vit.data.synthetic import generate
    from captum_vit.metrics import positive_perturbation_auc, segmentation_scores, segmentation_stats
    from captum_vit.models import load_pretrained
    from captum_vit.models.preprocess import normalize_for

    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--methods", "rollout", "--num-images", "1", "--num-eval", "3", "--repeats", "1"]
    assert main(argv) == 0
    err = capsys.readouterr().err.splitlines()
    assert [line.split(" (")[0] for line in err] == [f"wrote {out / 'figure.png'}", f"wrote {out / 'metrics.md'}"]
    for name in ("figure.png", "metrics.md"):
        assert (out / name).stat().st_mode & 0o777 == default_file_mode()
    assert (out / "figure.png").read_bytes()[:4] == b"\x89PNG"
    row = next(line for line in (out / "metrics.md").read_text().splitlines() if line.startswith("| rollout "))
    cells = [c.strip() for c in row.strip().strip("|").split("|")]  # method, latency, x forward, pos, neg, mIoU
    pos_auc, miou = float(cells[3]), float(cells[5])
    model = load_pretrained("synthetic-vit")
    data = generate(3, seed=12345, image_size=64)
    attr = AttentionRollout(model).attribute(normalize_for(model, data.images), target=data.labels)
    assert pos_auc == pytest.approx(
        float(positive_perturbation_auc(model, data.images, attr, data.labels).mean()), abs=0.01
    )
    assert miou == pytest.approx(segmentation_scores(segmentation_stats(attr, data.masks))["miou"], abs=0.01)


# --------------------------------------------------------------------------------- torchrun
def _torchrun_flags() -> list[str]:
    from torch.distributed.run import get_args_parser

    return [s for a in get_args_parser()._actions for s in a.option_strings]


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_every_flag_passes_through_torchrun(command: str) -> None:
    """``torchrun ... -m captum_vit.cli <command> <flag> 1`` leaves every flag to the command:
    a flag that abbreviates torchrun's own (``--n`` for ``--nnodes``...) makes torchrun fail."""
    from torch.distributed.run import get_args_parser

    sub = build_parser(command)._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr]
    flags = [s for a in sub._actions for s in a.option_strings if s.startswith("--") and s != "--help"]
    assert flags
    torchrun = get_args_parser()
    for flag in flags:
        args = torchrun.parse_args(["--nproc-per-node", "2", "-m", "captum_vit.cli", command, flag, "1"])
        assert args.training_script_args == [command, flag, "1"], flag
        assert not any(t.startswith(flag) and t != flag for t in _torchrun_flags()), flag


def test_no_second_distributed_helper() -> None:
    pattern = re.compile(r"def (init_distributed|_distributed)\b")
    found = [
        str(p.relative_to(ROOT))
        for folder in ("captum_vit", "export")
        for p in (ROOT / folder).rglob("*.py")
        if pattern.search(p.read_text())
    ]
    assert found == ["captum_vit/distributed.py"]
