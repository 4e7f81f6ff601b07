"""The emulated platform's monotonic counter (a TPM NV counter stand-in), kept outside the data directory.

The counter lives in an NV directory apart from the data directory, so restoring an old copy of the
data directory does not restore the counter with it. One file per platform, ``<platform id>.counter``,
ASCII text, each line ending in "\\n":

  escrow.v1/nv-counter/v1
  platform <platform id>
  value <decimal, no leading zeros, < 2^64>
  sha256 <hex SHA-256 of the three lines above, newlines included>

A missing file is the value 0. Any other content is refused with PlatformError; the counter is never
reset silently. Increments are serialised across threads and processes by ``flock`` on a sibling
``<platform id>.lock`` file and written atomically (temp file, fsync, rename, fsync of the directory).
The protocol that uses it is in docs/sealing.md ("Monotonic counter and rollback").
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from enclave.errors import PlatformError

NV_DIR_ENV = "ESCROW_NV_DIR"
FORMAT_TAG = "escrow.v1/nv-counter/v1"
MAX_VALUE = 2**64 - 1
MAX_FILE_SIZE = 4096
_PLATFORM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_FILE = re.compile(
    r"escrow\.v1/nv-counter/v1\nplatform (?P<platform>[^\n]+)\nvalue (?P<value>0|[1-9][0-9]{0,19})\n"
    r"sha256 (?P<digest>[0-9a-f]{64})\n"
)


def default_nv_dir() -> Path:
    """$ESCROW_NV_DIR, else $XDG_STATE_HOME/escrow-nv, else ~/.local/state/escrow-nv."""
    explicit = os.environ.get(NV_DIR_ENV)
    if explicit:
        return Path(explicit)
    state_home = os.environ.get("XDG_STATE_HOME")
    base = Path(state_home) if state_home else Path.home() / ".local" / "state"
    return base / "escrow-nv"


def _encode(platform_id: str, value: int) -> bytes:
    """The counter file's exact bytes."""
    body = f"{FORMAT_TAG}\nplatform {platform_id}\nvalue {value}\n"
    return (body + f"sha256 {hashlib.sha256(body.encode('ascii')).hexdigest()}\n").encode("ascii")


class MonotonicCounter:
    """A per-platform counter that only goes up: ``read()`` and ``increment()``."""

    def __init__(self, platform_id: str, nv_dir: Path | None = None) -> None:
        if not isinstance(platform_id, str) or not _PLATFORM_ID.fullmatch(platform_id):
            raise PlatformError(f"platform id {platform_id!r} cannot name a counter file")
        self.platform_id = platform_id
        self.nv_dir = Path(nv_dir) if nv_dir is not None else default_nv_dir()
        self.path = self.nv_dir / f"{platform_id}.counter"
        self._lock_path = self.nv_dir / f"{platform_id}.lock"

    @contextlib.contextmanager
    def _locked(self, operation: int) -> Iterator[None]:
        """Hold flock(operation) on the lock file (a separate file: the counter file itself is replaced)."""
        try:
            self.nv_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise PlatformError(f"cannot open the monotonic counter in {self.nv_dir}: {exc}") from exc
        try:
            fcntl.flock(fd, operation)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _read_unlocked(self) -> int:
        """Parse the counter file strictly; 0 if it does not exist yet."""
        try:
            with open(self.path, "rb") as f:
                data = f.read(MAX_FILE_SIZE + 1)
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise PlatformError(f"cannot read the monotonic counter {self.path}: {exc}") from exc
        try:
            match = _FILE.fullmatch(data.decode("ascii"))
        except UnicodeDecodeError:
            match = None
        if match is None or _encode(match["platform"], int(match["value"])) != data:
            raise PlatformError(f"monotonic counter {self.path} is corrupt; refusing to reset it")
        if match["platform"] != self.platform_id:
            raise PlatformError(f"monotonic counter {self.path} belongs to platform {match['platform']!r}")
        value = int(match["value"])
        if value > MAX_VALUE:
            raise PlatformError(f"monotonic counter {self.path} is out of range")
        return value

    def _write_unlocked(self, value: int) -> None:
        """Atomically replace the counter file: temp file, fsync, rename, fsync the directory."""
        fd, tmp = tempfile.mkstemp(dir=self.nv_dir, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(_encode(self.platform_id, value))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            dir_fd = os.open(self.nv_dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def read(self) -> int:
        """The current value (0 before the first increment)."""
        with self._locked(fcntl.LOCK_SH):
            return self._read_unlocked()

    def increment(self) -> int:
        """Add one, durably, and return the new value; concurrent callers are serialised."""
        with self._locked(fcntl.LOCK_EX):
            value = self._read_unlocked()
            if value >= MAX_VALUE:
                raise PlatformError("monotonic counter exhausted")
            try:
                self._write_unlocked(value + 1)
            except OSError as exc:
                raise PlatformError(f"cannot write the monotonic counter {self.path}: {exc}") from exc
            return value + 1
