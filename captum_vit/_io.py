"""Atomic file writes with normal permissions, shared by every command that writes a file.

A file is written to a temporary name in the destination folder and moved into place with
``os.replace``, so a kill never leaves a half-written file under the final name. Temporary
files from :func:`tempfile.mkstemp` are created 0600; the result gets the permissions a plain
``open(path, "w")`` would give (0666 masked by the process umask), so exported models and
registered weights are readable by the other users of a shared system.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


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
