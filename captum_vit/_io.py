"""Atomic file writes with normal permissions, shared by every command that writes a file.

A file is written to a temporary name in the destination folder and moved into place with
``os.replace``, so a kill never leaves a half-written file under the final name. Temporary
files from :func:`tempfile.mkstemp` are created 0600; the result gets the permissions a plain
``open(path, "w")`` would give (0666 masked by the process umask), so exported models and
registered weights are readable by the other users of a shared system.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def default_file_mode() -> int:
    """The mode ``open()`` gives a new file: ``0o666`` masked by the current umask.

    Examples
    --------
    >>> default_file_mode() & 0o600 == 0o600
    True
    """
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then move it into place.

    Parameters
    ----------
    path
        The destination file. Its folder is created if missing.
    write
        Writes the complete file to the path it is given.

    Returns
    -------
    Path
        ``path``, now holding the new file with :func:`default_file_mode` permissions.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> p = atomic_write(folder / "a.txt", lambda tmp: tmp.write_text("hello"))
    >>> p.read_text(), oct(p.stat().st_mode & 0o777) == oct(default_file_mode())
    ('hello', True)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        tmp.chmod(default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def exception_line(e: BaseException) -> str:
    """An exception's first line without terminal colour codes (torch's pickle errors carry
    both), or its type name when it says nothing: the reason part of a one-line error.

    Examples
    --------
    >>> exception_line(OSError("no file named model.safetensors" + chr(10) + "advice")), exception_line(EOFError())
    ('no file named model.safetensors', 'EOFError')
    """
    lines = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines()
    return lines[0].strip() if lines else type(e).__name__


def read_safetensors(path: str | os.PathLike[str], what: str) -> tuple[dict[str, Any], dict[str, str]]:
    """``(tensors, metadata)`` of a ``.safetensors`` file on the CPU.

    Raises
    ------
    ValueError
        Naming ``what`` (the argument) and the file when it is not a readable safetensors
        file (empty, truncated, another format).

    Examples
    --------
    >>> import tempfile
    >>> bad = Path(tempfile.mkdtemp()) / "x.safetensors"
    >>> _ = bad.write_bytes(b"")
    >>> read_safetensors(bad, "--weights")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: --weights: .../x.safetensors is not a readable safetensors file (...)
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
        return load_file(str(path), device="cpu"), meta
    except Exception as e:  # SafetensorError, OSError...: name the file and the argument
        raise ValueError(f"{what}: {path} is not a readable safetensors file ({exception_line(e)})") from None


def read_torch_file(path: str | os.PathLike[str], what: str, expected: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU.

    Raises
    ------
    ValueError
        Naming ``what``, the file, the first line of the reason and ``expected`` (what the
        file should hold) when it cannot be read that way (a pickled module, an empty file...).
    """
    import torch

    try:
        return torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors of many kinds
        raise ValueError(
            f"{what}: {path} cannot be read with torch.load(weights_only=True) ({exception_line(e)}); expected {expected}"
        ) from None
