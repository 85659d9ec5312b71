"""The benchmarks still import and their scripts still parse their command lines.

The default test run does not collect ``benchmarks/`` (timing suites are slow and noisy), so
without these checks a renamed or moved API would only surface when someone next runs a
benchmark.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(
    ".".join(p.relative_to(ROOT).with_suffix("").parts)
    for p in (ROOT / "benchmarks").rglob("*.py")
    if p.name != "__init__.py"
)


def test_layout_speed_quality_results(pytestconfig: pytest.Config) -> None:
    folders = {m.split(".")[1] for m in MODULES if m.count(".") == 2}
    assert {"speed", "quality"} <= folders and all(m.count(".") == 2 for m in MODULES), "one folder per kind"
    assert (ROOT / "benchmarks" / "results" / "leaderboard.md").is_file()
    testpaths = pytestconfig.getini("testpaths")
    assert testpaths and not any(p.startswith("benchmarks") for p in testpaths), "default run collects benchmarks"


@pytest.mark.parametrize("module", MODULES)
def test_benchmark_module_imports(module: str) -> None:
    importlib.import_module(module)


@pytest.mark.parametrize("module", ["benchmarks.quality.leaderboard", "benchmarks.quality.diffmask_ranking"])
def test_quality_script_help(module: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(module).main(["--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_token_scaling_script_runs_tiny(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.speed import token_scaling

    token_scaling.main(["--tiny", "--rounds", "1", "--sizes", "197", "--no-memory"])
    out = capsys.readouterr().out
    assert all(f"| {case} |" in out for case in ("rollout", "gae", "attention_gradcam", "raw_attention")), out
    mem = token_scaling.memory_case("gae", batch=1, tiny=True)  # what each child process of the memory table runs
    assert mem["peak_gb"] >= mem["base_gb"] > 0
