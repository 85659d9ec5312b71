"""Every registered method on a tiny random model of every family: the coverage matrix.

    python -m benchmarks.quality.coverage_matrix [--families NAME,...] [--methods NAME,...] [--out FILE]

Each cell is one method (built as the contract test builds it, ``options_for``: IIA with
``n_steps=2``, LTX with 2 finetuning steps) on one family of
:data:`captum_vit.testing.families.FAMILIES`, called on two images for target 0 (then 1 and
2 while no map is informative), and classified as

* ``ok``: finite patch maps, at least one of which is not constant, and no map all zero
  unless the method warned (:class:`~captum_vit.attr.EmptyMapWarning`);
* ``empty (warned)``: every map all zero, with the method's warning;
* ``refused [n]``: construction raised a ``TypeError``/``ValueError``; note *n* under the
  table quotes its message (the reason);
* ``FAIL: ...``: anything else: an exception while explaining, a non-finite, constant or
  silently all-zero map, a wrong shape, or a changed model.

It prints the matrix as markdown and writes it to ``--out`` (default
``benchmarks/results/coverage.md``) with the command on top; the exit status is 1 when a
cell FAILs. ``tests/test_coverage.py`` reruns every row and checks it against the README.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from captum_vit._io import atomic_write
from captum_vit.attr import EmptyMapWarning, get_method, list_methods
from captum_vit.testing.contract import assert_untouched, options_for, snapshot
from captum_vit.testing.families import FAMILIES, build, family, missing_requirement

COMMAND = "python -m benchmarks.quality.coverage_matrix"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results" / "coverage.md"
#: Targets tried, in order, until a map is informative.
TARGETS = (0, 1, 2)
#: A map whose range is at most this fraction of its largest magnitude is constant.
CONSTANT_RTOL = 1e-6
#: What the cells mean (the results file and the README say it above the matrix).
LEGEND = (
    "Every registered method (columns) on a tiny random model of each family (rows, "
    "`captum_vit.testing.families`), built with the test options of "
    "`captum_vit.testing.contract.options_for` and called on two images for target 0 (then 1 and 2 while the "
    "maps are uninformative). `ok`: finite maps, not all constant, none all zero unless the method warned; "
    "`empty (warned)`: all-zero maps with the method's `EmptyMapWarning`; `refused [n]`: the constructor "
    "raised the error quoted in note n (`{model}` stands for the model's class); `FAIL`: a crash or a wrong "
    "map. `tests/test_coverage.py` reruns every row and fails on a FAIL cell or when this matrix is stale."
)
#: Longest reason quoted in a note (longer ones are cut, with an ellipsis).
MAX_REASON = 500


@dataclass(frozen=True)
class Cell:
    """One method on one family: ``status`` is ``ok``, ``empty``, ``refused``, ``FAIL`` or
    ``skipped``; ``reason`` is the refusal's or failure's message (empty otherwise)."""

    status: str
    reason: str = ""
    what: str = ""  # for FAIL: what went wrong, in a few words

    @property
    def text(self) -> str:
        """The cell as the matrix shows it (without the note number)."""
        labels = {"ok": "ok", "empty": "empty (warned)", "refused": "refused", "skipped": "skipped"}
        return labels.get(self.status, f"FAIL: {self.what}")


def _reason(e: BaseException, model: nn.Module) -> str:
    """The message, one line, with the model's class name written ``{model}`` and the list of
    supported models that many refusals end with left out (the same for every family), so
    one note serves every family refused for the same reason."""
    text = re.sub(r"\s+", " ", f"{type(e).__name__}: {e}").strip().replace("|", "/")  # one table-safe line
    text = re.sub(rf"\b{re.escape(type(model).__name__)}\b", "{model}", text)
    text = re.split(r"[;,] supported( here)?: ", text)[0]
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 1] + "…"


def _is_refusal(e: BaseException) -> bool:
    # A TypeError from calling a constructor with the wrong arguments is a bug, not a reason.
    signature_error = isinstance(e, TypeError) and re.search(r"(keyword|positional) argument", str(e))
    return isinstance(e, (TypeError, ValueError)) and not signature_error


def _classify(maps: Tensor, warned: bool, batch: int) -> Cell:
    """The cell these maps earn; ``empty`` and ``FAIL: constant`` are provisional (the next
    target may give an informative map)."""
    if maps.dim() != 3 or maps.shape[0] != batch:
        return Cell("FAIL", f"patch map of shape {tuple(maps.shape)}, expected ({batch}, h, w)", "shape")
    if not torch.isfinite(maps).all():
        return Cell("FAIL", "the map holds NaN or infinite values", "NaN")
    flat = maps.detach().double().flatten(1)
    peak = flat.abs().amax(dim=1)
    zero = peak == 0
    if zero.any() and not warned:
        images = zero.nonzero().flatten().tolist()
        return Cell("FAIL", f"the maps of images {images} are all zero, with no warning", "silent all-zero")
    if ((flat.amax(dim=1) - flat.amin(dim=1)) > CONSTANT_RTOL * peak).any():
        return Cell("ok")
    if zero.all():
        return Cell("empty")
    return Cell("FAIL", f"constant maps for every target of {TARGETS}", "constant")


def run_cell(method: str, model: nn.Module, images: Tensor, extra: dict[str, Any] | None = None) -> Cell:
    """Explain ``images`` with the method registered as ``method`` and classify the result
    (see the module docstring). ``extra`` adds constructor options (an ``output_fn``)."""
    before = snapshot(model)
    torch.manual_seed(0)
    try:
        explainer = get_method(method)(model, **options_for(method, model), **(extra or {}))
    except Exception as e:  # noqa: BLE001 - every exception is classified, none escapes
        if _is_refusal(e):
            return Cell("refused", _reason(e, model))
        return Cell("FAIL", _reason(e, model), "crash when built")
    verdicts: list[Cell] = []
    try:
        for target in TARGETS:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                maps = explainer.attribute(images, target=target, return_patch_map=True)
            warned = any(issubclass(w.category, EmptyMapWarning) for w in caught)
            verdicts.append(_classify(maps, warned, images.shape[0]))
            if verdicts[-1].status == "ok" or verdicts[-1].what not in ("", "constant"):
                break  # informative, or a failure no other target can make good
    except Exception as e:  # noqa: BLE001
        return Cell("FAIL", _reason(e, model), "crash")
    try:
        assert_untouched(model, before)
    except AssertionError as e:
        return Cell("FAIL", str(e), "changed the model")
    final = verdicts[-1]
    if final.status == "empty" and any(v.what == "constant" for v in verdicts):
        return next(v for v in verdicts if v.what == "constant")
    return final


def run_family(name: str, methods: Sequence[str] | None = None) -> dict[str, Cell]:
    """Every method (default: all registered) on family ``name``: ``method -> Cell``."""
    methods = list(methods or list_methods())
    why = missing_requirement(name)
    if why is not None:
        return {m: Cell("skipped", why) for m in methods}
    model, images = build(name)
    extra = family(name).method_options
    return {m: run_cell(m, model, images, extra) for m in methods}


def markdown(results: dict[str, dict[str, Cell]]) -> str:
    """The matrix (one row per family, one column per method) and its notes, as markdown."""
    methods = list(next(iter(results.values())))
    notes: dict[str, int] = {}
    lines = [
        "| family | " + " | ".join(f"`{m}`" for m in methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for name, row in results.items():
        cells = []
        for m in methods:
            cell = row[m]
            if cell.reason:
                n = notes.setdefault(cell.reason, len(notes) + 1)
                cells.append(f"{cell.text} [{n}]")
            else:
                cells.append(cell.text)
        lines.append(f"| {FAMILIES[name].label} | " + " | ".join(cells) + " |")
    if notes:
        lines.append("")
        lines += [f"{n}. {reason}" for reason, n in notes.items()]
    return "\n".join(lines) + "\n"


def parse_markdown(text: str) -> dict[str, dict[str, tuple[str, str]]]:
    """Inverse of :func:`markdown`: ``family label -> method -> (cell text, reason)``."""
    rows = [line for line in text.splitlines() if line.startswith("|")]
    notes = dict(re.findall(r"^(\d+)\. (.*)$", text, flags=re.MULTILINE))
    methods = [c.strip().strip("`") for c in rows[0].strip("|").split("|")][1:]
    table: dict[str, dict[str, tuple[str, str]]] = {}
    for line in rows[2:]:
        label, *cells = [c.strip() for c in line.strip("|").split("|")]
        parsed = {}
        for m, cell in zip(methods, cells):
            match = re.fullmatch(r"(.*) \[(\d+)\]", cell)
            parsed[m] = (match[1], notes.get(match[2], "")) if match else (cell, "")
        table[label] = parsed
    return table


def document(matrix: str) -> str:
    """The results file: how it was produced, the legend, and the matrix (the README's
    block between ``<!-- coverage:start -->`` and ``<!-- coverage:end -->`` is the matrix)."""
    return f"# Model coverage\n\nProduced by\n\n```bash\n{COMMAND}\n```\n\n{LEGEND}\n\n{matrix}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", help=f"comma-separated subset of: {', '.join(FAMILIES)}")
    parser.add_argument("--methods", help="comma-separated subset of the registered methods")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="markdown file to write (default: %(default)s)")
    args = parser.parse_args(argv)
    names = args.families.split(",") if args.families else list(FAMILIES)
    for n in names:
        family(n)  # an unknown name fails before any computation
    methods = args.methods.split(",") if args.methods else list_methods()
    for m in methods:
        get_method(m)
    torch.set_num_threads(1)
    results = {}
    for n in names:
        start = time.perf_counter()
        results[n] = run_family(n, methods)
        print(f"{n}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    matrix = markdown(results)
    print(matrix)
    out = Path(args.out)
    atomic_write(out, lambda p: Path(p).write_text(document(matrix)))
    print(f"wrote {out}", file=sys.stderr)
    return int(any(c.status == "FAIL" for row in results.values() for c in row.values()))


if __name__ == "__main__":
    raise SystemExit(main())
