"""docs/methods.md stays in step with the code that cites it and the names it cites."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "methods.md"
SOURCES = [
    p
    for d in ("captum_vit", "export", "tests", "benchmarks")
    for p in sorted((ROOT / d).rglob("*.py"))
    if p != Path(__file__).resolve()
]


def _sections() -> set[str]:
    """``{"2", "2.1", ...}``: the numbers of the document's headings."""
    return set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", DOC.read_text(), flags=re.M))


def _cited() -> dict[str, list[str]]:
    """Section numbers cited as ``docs/methods.md §N.M`` (``§2-3`` and ``§7.1-7.2`` cite ranges
    whose ends must both exist), with the files citing them."""
    cited: dict[str, list[str]] = {}
    for path in SOURCES:
        for ref in re.findall(r"docs/methods\.md §(\d+(?:\.\d+)?(?:-\d+(?:\.\d+)?)?)", path.read_text()):
            for number in ref.split("-"):
                cited.setdefault(number, []).append(str(path.relative_to(ROOT)))
    return cited


def test_every_cited_section_exists() -> None:
    cited, sections = _cited(), _sections()
    assert cited, "no docstring cites docs/methods.md"
    missing = {n: files for n, files in cited.items() if n not in sections}
    assert not missing, f"cited sections missing from docs/methods.md: {missing}"


def test_no_citation_of_a_file_outside_the_repository() -> None:
    stale = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in SOURCES
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if re.search(r"(?<![\w/])methods\.md", line)
    ]
    assert not stale, f"'methods.md' without the docs/ folder: {stale}"


@pytest.mark.parametrize("name", sorted(set(re.findall(r"`(captum_vit(?:\.\w+)+)", DOC.read_text()))))
def test_named_objects_exist(name: str) -> None:
    parts = name.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for attr in parts[split:]:
            obj = getattr(obj, attr)
        return
    raise AssertionError(f"{name} does not exist")
