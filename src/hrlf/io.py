"""Atomic file writes: the one writer every file of the package goes through (runs, synthetic and extracted
feature files, clip parts, reports, prepared assets).

A reader, or a run interrupted mid-write, sees either the old file or the complete new one, never a partial file.
Imports only the standard library, so the optional media code and ``hrlf synth`` can use it without torch.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(
    path: str | Path, write: Callable[[Path], object], *, fsync: bool = False, mode: int | None = None
) -> None:
    """Call ``write(tmp_path)`` on a fresh temporary file beside ``path``, then move the finished file into place.

    Args:
        path: the file to (re)place; its folder is created when missing.
        write: writes the complete contents to the path it is given.
        fsync: flush the contents to disk before the move (large files others read, e.g. feature files).
        mode: permission bits of the result (e.g. ``0o644`` for a file meant to be shared); None keeps the
            temporary file's ``0o600``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        if fsync:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
