"""Crash-safe file writes: a reader sees the old file or the new one, never a torn one.

The recipe: write a temporary file in the same directory, fsync it, ``os.replace`` it over the target,
then fsync the directory so the rename itself survives a power cut. Secrets get mode 0600 from the
moment the temporary file exists (it is never readable by others, not even briefly).
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

SECRET_MODE = 0o600
PUBLIC_MODE = 0o644


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (new names, renames) to stable storage."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, mode: int = PUBLIC_MODE) -> None:
    """Replace ``path`` with ``data`` atomically, with permission bits ``mode``."""
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    fsync_dir(path.parent)


def write_secret(path: Path, data: bytes) -> None:
    """Atomically write a secret (a private key, the root secret): mode 0600."""
    atomic_write(path, data, mode=SECRET_MODE)


def make_private_tempdir(parent: Path, prefix: str) -> Path:
    """A new directory (mode 0700) inside ``parent``, for building something that is then renamed in."""
    return Path(tempfile.mkdtemp(dir=parent, prefix=prefix))


def publish_dir(tmp: Path, final: Path) -> bool:
    """Rename the finished directory ``tmp`` to ``final``; False (tmp left alone) if ``final`` exists.

    A rename onto a non-empty directory fails on POSIX, so of two concurrent publishers exactly one wins.
    """
    try:
        os.rename(tmp, final)
    except OSError as e:
        if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
            return False
        raise
    fsync_dir(final.parent)
    return True
