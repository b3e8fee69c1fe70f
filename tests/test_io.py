"""The one atomic writer: a finished file or the old one, never a partial file or a leftover temporary."""

from __future__ import annotations

import pytest

from hrlf.io import atomic_write


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "f.txt"
    atomic_write(path, lambda tmp: tmp.write_text("old"))  # the folder is created

    def broken(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, broken)
    assert path.read_text() == "old" and [p.name for p in path.parent.iterdir()] == ["f.txt"]


def test_mode_and_fsync(tmp_path):
    atomic_write(tmp_path / "private", lambda tmp: tmp.write_bytes(b"x"))
    atomic_write(tmp_path / "shared", lambda tmp: tmp.write_bytes(b"y"), fsync=True, mode=0o644)
    assert (tmp_path / "private").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "shared").stat().st_mode & 0o777 == 0o644 and (tmp_path / "shared").read_bytes() == b"y"


def test_checkpoint_still_exports_it():
    from hrlf.engine import checkpoint

    assert checkpoint.atomic_write is atomic_write
