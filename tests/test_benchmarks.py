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


def test_token_scaling_explicit_path_variant_runs_the_explicit_path() -> None:
    """The "(explicit attention)" rows time the hook path (no sliced recomputation) and give
    the same maps; the patch is undone after each call."""
    from benchmarks.speed import token_scaling
    from captum_vit.attr import GenericAttention, _vit_common
    from captum_vit.models import recomputed_attention
    from captum_vit.testing import input_for, make_vit

    model = make_vit("cls", depth=2)
    x = input_for(model, batch=2)
    calls: list[str] = []
    real = recomputed_attention.attention_gradients

    def spy(*args: object, **kwargs: object) -> object:
        calls.append("recomputed")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_vit_common, "attention_gradients", spy)
        fused = GenericAttention(model).attribute(x, target=[0, 1])
        assert calls == ["recomputed"]
        explicit = token_scaling.ExplicitPath(GenericAttention(model)).attribute(x, target=[0, 1])
        assert calls == ["recomputed"]  # not called again
    assert _vit_common.recomputes_attention is recomputed_attention.recomputes_attention
    assert float((fused - explicit).abs().max()) <= 1e-5 * float(explicit.abs().max())


def test_method_table_runs_tiny(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.speed import method_table

    out = tmp_path / "table.md"
    tiny = '{"img_size": 32, "patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2, "num_classes": 5}'
    args = ["--models", "vit_tiny_patch16_224", "--model-kwargs", tiny, "--batches", "2", "--repeats", "1"]
    method_table.main([*args, "--methods", "iia", "--out", str(out)])  # a fresh process per cell: keep it to two
    (row,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| `")]
    ratio, peak, forward_peak = (float(c) for c in row.split("|")[4:7])
    assert row.startswith("| `iia` | vit_tiny_patch16_224 | 2 |") and ratio > 1, row  # 36 passes > one forward
    assert peak >= forward_peak > 0, row  # the same start-up, plus the method's own memory
    text = out.read_text()
    assert (
        text.startswith("Command: `python -m benchmarks.speed.method_table --models vit_tiny_patch16_224")
        and row in text
    )
