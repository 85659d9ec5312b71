"""Issue 16's coverage matrix: every registered method on a tiny random model of every family.

Each family's row (``benchmarks/quality/coverage_matrix.py``: one small call per method)
must hold no FAIL cell (a crash, or a NaN, constant or silently all-zero map): a method
works or refuses at construction with an error naming why. The row must also be the one the
README shows between ``<!-- coverage:start -->`` and ``<!-- coverage:end -->`` (same cells,
same refusal reasons), so the README cannot go stale.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import benchmarks.quality.coverage_matrix as harness
from benchmarks.quality.coverage_matrix import (
    COMMAND,
    DEFAULT_OUT,
    Cell,
    markdown,
    parse_markdown,
    run_cell,
    run_family,
)
from captum_vit.attr import EmptyMapWarning, list_methods
from captum_vit.testing.families import FAMILIES, missing_requirement

README = Path(__file__).resolve().parents[1] / "README.md"
MARKERS = re.compile(r"<!-- coverage:start -->\n(.*?)<!-- coverage:end -->", re.DOTALL)


def _readme_block() -> str | None:
    found = MARKERS.search(README.read_text())
    return found[1] if found else None


@pytest.fixture(scope="module")
def readme_rows() -> dict[str, dict[str, tuple[str, str]]] | None:
    block = _readme_block()
    return None if block is None else parse_markdown(block)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_row_has_no_failure_and_matches_the_readme(
    name: str, readme_rows: dict[str, dict[str, tuple[str, str]]] | None
) -> None:
    why = missing_requirement(name)
    if why is not None:
        pytest.skip(why)
    row = run_family(name)
    failed = {m: f"{c.what}: {c.reason}" for m, c in row.items() if c.status == "FAIL"}
    assert not failed, f"{FAMILIES[name].label}: {failed}"
    assert all(c.reason for c in row.values() if c.status == "refused"), "a refusal must say why"
    if readme_rows is None:
        return  # test_readme_has_the_matrix reports the missing markers
    label = FAMILIES[name].label
    assert label in readme_rows, f"the README's coverage matrix has no row {label!r}; rerun {COMMAND}"
    got = {m: (c.text, c.reason) for m, c in row.items()}
    stale = {m: (readme_rows[label].get(m), now) for m, now in got.items() if readme_rows[label].get(m) != now}
    assert not stale, f"README row {label!r} is stale (README, now): {stale}; rerun {COMMAND} and paste it"


def test_readme_has_the_matrix() -> None:
    block = _readme_block()
    if block is None:
        pytest.skip("README.md has no <!-- coverage:start --> / <!-- coverage:end --> markers around the matrix")
    rows = parse_markdown(block)
    assert list(rows) == [f.label for f in FAMILIES.values()], "one row per family, in FAMILIES order"
    assert all(list(r) == list_methods() for r in rows.values()), "one column per registered method"
    # the results file the command writes holds the same matrix
    assert parse_markdown(DEFAULT_OUT.read_text()) == rows, (
        f"{DEFAULT_OUT.name} differs from the README; rerun {COMMAND}"
    )


def test_markdown_round_trips_and_numbers_each_reason_once() -> None:
    results = {
        "timm_vit": {"gae": Cell("ok"), "rollout": Cell("refused", "TypeError: no way"), "mutex": Cell("empty")},
        "swin": {
            "gae": Cell("refused", "TypeError: no way"),
            "rollout": Cell("FAIL", "boom", "crash"),
            "mutex": Cell("ok"),
        },
    }
    text = markdown(results)
    assert "| timm ViT | ok | refused [1] | empty (warned) |" in text
    assert "| timm Swin | refused [1] | FAIL: crash [2] | ok |" in text
    assert "1. TypeError: no way" in text and "2. boom" in text
    back = parse_markdown(text)
    assert back["timm Swin"]["rollout"] == ("FAIL: crash", "boom")
    assert back["timm ViT"]["mutex"] == ("empty (warned)", "")


class _Fake:
    """A stand-in method whose ``attribute`` returns ``maps(target)`` (or raises it)."""

    behaviour: Any = None

    def __init__(self, model: nn.Module, **options: Any) -> None:
        if isinstance(self.behaviour, Exception):
            raise self.behaviour
        self.model = model

    def attribute(self, x: Tensor, target: int, return_patch_map: bool) -> Tensor:
        out = type(self).behaviour(self.model, target)
        if isinstance(out, Exception):
            raise out
        return out


def _zero_with_warning(model: nn.Module, target: int) -> Tensor:
    warnings.warn("all zero", EmptyMapWarning, stacklevel=1)
    return torch.zeros(2, 4, 4)


def _nudge(model: nn.Module, target: int) -> Tensor:
    with torch.no_grad():
        next(model.parameters()).add_(1)
    return torch.rand(2, 4, 4)


@pytest.mark.parametrize(
    ("behaviour", "status", "what"),
    [
        (lambda m, t: torch.rand(2, 4, 4), "ok", ""),
        (lambda m, t: torch.ones(2, 4, 4) * (t == 2) * torch.arange(16.0).view(4, 4) + 1, "ok", ""),  # target 2
        (_zero_with_warning, "empty", ""),
        (ValueError("no attention pooling rules"), "refused", ""),
        (TypeError("__init__() got an unexpected keyword argument 'output_fn'"), "FAIL", "crash when built"),
        (lambda m, t: RuntimeError("shape mismatch"), "FAIL", "crash"),
        (lambda m, t: ValueError("raised while explaining"), "FAIL", "crash"),
        (lambda m, t: torch.full((2, 4, 4), float("nan")), "FAIL", "NaN"),
        (lambda m, t: torch.full((2, 4, 4), 0.25), "FAIL", "constant"),
        (lambda m, t: torch.cat([torch.rand(1, 4, 4), torch.zeros(1, 4, 4)]), "FAIL", "silent all-zero"),
        (lambda m, t: torch.rand(2, 16), "FAIL", "shape"),
        (_nudge, "FAIL", "changed the model"),
    ],
)
def test_run_cell_classifies_every_outcome(
    behaviour: Any, status: str, what: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = type(
        "Fake", (_Fake,), {"behaviour": behaviour if isinstance(behaviour, Exception) else staticmethod(behaviour)}
    )
    monkeypatch.setattr(harness, "get_method", lambda name: fake)
    cell = run_cell("fake", nn.Linear(2, 2), torch.zeros(2, 3, 32, 32))
    assert (cell.status, cell.what) == (status, what), cell
    assert bool(cell.reason) == (status in ("refused", "FAIL"))
