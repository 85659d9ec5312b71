"""The conventions every ``captum-vit`` subcommand follows.

- Output goes to ``--out`` (a file or a folder, as the command states); ``--register NAME``
  adds a trained artefact to the user registry. No other spelling.
- A user error raises :class:`CLIError` (or ``ValueError``/``TypeError`` from the library while
  the arguments are checked); ``captum_vit.cli.main`` prints it as one line
  (``captum-vit <command>: error: <message>``) and exits with status 2.
- Arguments are checked before any long computation: :func:`output_file`, :func:`output_dir`
  and :func:`input_file` run in a command's check step.
- Each written file is reported with :func:`wrote`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path


class CLIError(Exception):
    """A mistake in the command line; printed as one line, exit status 2."""


def _writable_folder(folder: Path, flag: str) -> None:
    probe = folder
    while not probe.exists():  # the nearest existing ancestor must let us create the rest
        probe = probe.parent
    if not probe.is_dir():
        raise CLIError(f"{flag}: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise CLIError(f"{flag}: cannot write in {probe}")
    try:  # os.access says yes to root everywhere: a read-only mount or /proc only shows on writing
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise CLIError(f"{flag}: cannot write in {probe} ({e.strerror or type(e).__name__})") from None


def output_file(path: str | os.PathLike[str], flag: str = "--out", suffixes: tuple[str, ...] = ()) -> Path:
    """Check that ``path`` can be written as a file, before any computation starts.

    Examples
    --------
    >>> output_file("/tmp/x.onnx", suffixes=(".onnx",))
    PosixPath('/tmp/x.onnx')
    >>> output_file("/tmp", suffixes=(".onnx",))
    Traceback (most recent call last):
    ...
    captum_vit._cli_common.CLIError: --out: /tmp is a folder; expected a file path ending in .onnx
    """
    p = Path(path)
    want = f" ending in {' or '.join(suffixes)}" if suffixes else ""
    if p.is_dir():
        raise CLIError(f"{flag}: {p} is a folder; expected a file path{want}")
    if suffixes and p.suffix.lower() not in suffixes:
        raise CLIError(f"{flag}: expected a file path{want}, got {p}")
    if p.exists() and not os.access(p, os.W_OK):
        raise CLIError(f"{flag}: {p} exists and is not writable")
    _writable_folder(p.parent, flag)
    return p


def output_dir(path: str | os.PathLike[str], flag: str = "--out") -> Path:
    """Check that ``path`` is (or can be created as) a writable folder.

    Examples
    --------
    >>> output_dir("/tmp/captum-vit-doctest-out")
    PosixPath('/tmp/captum-vit-doctest-out')
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise CLIError(f"{flag}: {p} exists and is not a folder")
    _writable_folder(p, flag)
    return p


def input_file(path: str | os.PathLike[str], flag: str) -> Path:
    """Check that ``path`` is an existing readable file.

    Examples
    --------
    >>> input_file("/nonexistent/w.safetensors", "--weights")
    Traceback (most recent call last):
    ...
    captum_vit._cli_common.CLIError: --weights: no such file: /nonexistent/w.safetensors
    """
    p = Path(path)
    if not p.exists():
        raise CLIError(f"{flag}: no such file: {p}")
    if not p.is_file():
        raise CLIError(f"{flag}: {p} is not a file")
    if not os.access(p, os.R_OK):
        raise CLIError(f"{flag}: {p} is not readable")
    return p


def positive_int(text: str) -> int:
    """An argparse ``type`` for counts that must be at least 1.

    Examples
    --------
    >>> positive_int("8")
    8
    >>> positive_int("-3")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: expected a positive integer, got '-3'
    """
    return _integer(text, minimum=1, what="a positive integer")


def non_negative_int(text: str) -> int:
    """An argparse ``type`` for counts that may be 0.

    Examples
    --------
    >>> non_negative_int("0")
    0
    """
    return _integer(text, minimum=0, what="a non-negative integer")


def _integer(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def name_list(text: str | None, flag: str, known: tuple[str, ...] | list[str], what: str = "name") -> list[str]:
    """Split a comma-separated option into names, each of which must be in ``known``.

    Examples
    --------
    >>> name_list("gae, rollout", "--methods", ("gae", "rollout"))
    ['gae', 'rollout']
    >>> name_list("gae,nope", "--methods", ("gae", "rollout"), "method")
    Traceback (most recent call last):
    ...
    captum_vit._cli_common.CLIError: --methods: unknown method 'nope'; expected a comma-separated list of gae, rollout
    """
    names = [n.strip() for n in (text or "").split(",") if n.strip()]
    if not names:
        raise CLIError(f"{flag}: expected a comma-separated list of {', '.join(known)}, got {text!r}")
    for name in names:
        if name not in known:
            raise CLIError(f"{flag}: unknown {what} {name!r}; expected a comma-separated list of {', '.join(known)}")
    return names


def wrote(path: str | os.PathLike[str], what: str = "") -> None:
    """Tell the user a file was written: ``wrote <path> (<what>)`` on standard error."""
    print(f"wrote {path}" + (f" ({what})" if what else ""), file=sys.stderr)
