"""Encrypted secret files (wallets, pole operator and meter keys, issuer keys): scrypt + AES-256-GCM.

One file holds one secret payload of a named kind. The layout (documented in docs/secret-files.md):

    offset  size  field
    0       13    magic b"ESCROW-SECRET"
    13      1     format version (1)
    14      1     kind length k (1..32)
    15      k     kind, ASCII [a-z0-9-], e.g. b"wallet", b"pole-keys", b"issuer-keys"
    15+k    1     KDF id (1 = scrypt)
    16+k    1     log2(n), scrypt CPU/memory cost
    17+k    1     r, scrypt block size
    18+k    1     p, scrypt parallelism
    19+k    16    salt
    35+k    12    AES-GCM nonce
    47+k    4     ciphertext length c, big-endian (payload length + 16)
    51+k    c     AES-256-GCM ciphertext and tag, with bytes [0, 51+k) (the header) as associated data

key = scrypt(passphrase, salt, n, r, p, 32 bytes). The KDF parameters are read from the header and
bounded before any work, so a hostile file cannot make the reader allocate gigabytes. Files are written
atomically with mode 0600 from the moment they exist, and refused when group or others have any access.
"""

from __future__ import annotations

import contextlib
import errno
import getpass
import os
import re
import secrets
import stat
import struct
import sys
import unicodedata
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

MAGIC = b"ESCROW-SECRET"
FORMAT_VERSION = 1
KDF_SCRYPT = 1
SALT_BYTES = 16
NONCE_BYTES = 12
TAG_BYTES = 16
KEY_BYTES = 32
MAX_KIND_BYTES = 32
MAX_PAYLOAD_BYTES = 16 * 1024 * 1024
_KIND_RE = re.compile(rb"[a-z0-9]+(-[a-z0-9]+)*")
# magic, version, kind length | KDF id, log2 n, r, p, salt, nonce, ciphertext length
_PREFIX = struct.Struct(f">{len(MAGIC)}sBB")
_KDF_AND_SIZES = struct.Struct(f">BBBB{SALT_BYTES}s{NONCE_BYTES}sI")
MAX_HEADER_BYTES = _PREFIX.size + MAX_KIND_BYTES + _KDF_AND_SIZES.size
MAX_FILE_BYTES = MAX_HEADER_BYTES + MAX_PAYLOAD_BYTES + TAG_BYTES

SECRET_FILE_MODE = 0o600
ALLOW_EMPTY_PASSPHRASE_ENV = "ESCROW_ALLOW_EMPTY_PASSPHRASE"

# Stable reasons of SecretFileError.
SECRET_FILE_MISSING = "SECRET_FILE_MISSING"
SECRET_FILE_EXISTS = "SECRET_FILE_EXISTS"
SECRET_FILE_PERMISSIONS = "SECRET_FILE_PERMISSIONS"
SECRET_FILE_MALFORMED = "SECRET_FILE_MALFORMED"
SECRET_FILE_KIND = "SECRET_FILE_KIND"
SECRET_FILE_PASSPHRASE = "SECRET_FILE_PASSPHRASE"
SECRET_FILE_TOO_LARGE = "SECRET_FILE_TOO_LARGE"
# Stable reasons of PassphraseError.
PASSPHRASE_UNAVAILABLE = "PASSPHRASE_UNAVAILABLE"
PASSPHRASE_EMPTY = "PASSPHRASE_EMPTY"
PASSPHRASE_MISMATCH = "PASSPHRASE_MISMATCH"


class SecretFileError(Exception):
    """A secret file cannot be written or read; ``reason`` is stable. Never carries secret material."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class PassphraseError(SecretFileError):
    """No usable passphrase: none available, empty without the insecure opt-in, or confirmation differs."""


@dataclass(frozen=True)
class ScryptParams:
    """scrypt cost parameters: n = 2**log2_n; memory is 128 * n * r bytes, work is n * r * p."""

    log2_n: int
    r: int
    p: int

    @property
    def n(self) -> int:
        return 1 << self.log2_n


DEFAULT_SCRYPT = ScryptParams(log2_n=15, r=8, p=1)  # 32 MiB, ~0.15 s here
MIN_SCRYPT = DEFAULT_SCRYPT  # weaker files are refused (fail closed) outside the test hook
MAX_SCRYPT_LOG2_N = 20
MAX_SCRYPT_MEMORY_BYTES = 256 * 1024 * 1024  # bound on 128 * n * r
MAX_SCRYPT_WORK = 2**21  # bound on n * r * p: 8x the default
INSECURE_TEST_SCRYPT = ScryptParams(log2_n=4, r=8, p=1)


@dataclass
class _KdfPolicy:
    write: ScryptParams
    minimum: ScryptParams


_policy = _KdfPolicy(write=DEFAULT_SCRYPT, minimum=MIN_SCRYPT)


@contextlib.contextmanager
def insecure_fast_kdf_for_tests() -> Iterator[ScryptParams]:
    """INSECURE, tests only: write with n=2**4 and accept files that weak, while the block runs."""
    global _policy
    previous = _policy
    _policy = _KdfPolicy(write=INSECURE_TEST_SCRYPT, minimum=INSECURE_TEST_SCRYPT)
    try:
        yield INSECURE_TEST_SCRYPT
    finally:
        _policy = previous


def _check_kdf_bounds(params: ScryptParams) -> None:
    """Refuse parameters weaker than the policy or costlier than the bounds, before any work."""
    floor = _policy.minimum
    if params.log2_n < floor.log2_n or params.r < floor.r or params.p < floor.p:
        raise SecretFileError(SECRET_FILE_MALFORMED, "scrypt parameters weaker than the minimum")
    too_costly = (
        params.log2_n > MAX_SCRYPT_LOG2_N
        or 128 * params.n * params.r > MAX_SCRYPT_MEMORY_BYTES
        or params.n * params.r * params.p > MAX_SCRYPT_WORK
    )
    if too_costly:
        raise SecretFileError(
            SECRET_FILE_MALFORMED,
            f"scrypt parameters beyond the bounds (n=2**{params.log2_n}, r={params.r}, p={params.p})",
        )


def _derive_key(passphrase: bytes, salt: bytes, params: ScryptParams) -> bytes:
    # key = scrypt(passphrase, salt, n, r, p) truncated to 32 bytes for AES-256
    return Scrypt(salt=salt, length=KEY_BYTES, n=params.n, r=params.r, p=params.p).derive(passphrase)


def _check_kind(kind: str) -> bytes:
    """The kind as ASCII bytes; a programming error (ValueError) if it is not [a-z0-9-]{1,32}."""
    raw = kind.encode("ascii", errors="replace")
    if len(raw) > MAX_KIND_BYTES or _KIND_RE.fullmatch(raw) is None:
        raise ValueError(f"secret file kind must match [a-z0-9-]{{1,{MAX_KIND_BYTES}}}: {kind!r}")
    return raw


def _encode_header(kind: bytes, params: ScryptParams, salt: bytes, nonce: bytes, ct_len: int) -> bytes:
    kdf = _KDF_AND_SIZES.pack(KDF_SCRYPT, params.log2_n, params.r, params.p, salt, nonce, ct_len)
    return _PREFIX.pack(MAGIC, FORMAT_VERSION, len(kind)) + kind + kdf


def encrypt_secret(kind: str, payload: bytes, passphrase: bytes) -> bytes:
    """The complete file contents for ``payload`` under ``passphrase`` (fresh salt and nonce)."""
    kind_bytes = _check_kind(kind)
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise SecretFileError(SECRET_FILE_TOO_LARGE, f"payload exceeds {MAX_PAYLOAD_BYTES} bytes")
    params = _policy.write
    salt, nonce = secrets.token_bytes(SALT_BYTES), secrets.token_bytes(NONCE_BYTES)
    header = _encode_header(kind_bytes, params, salt, nonce, len(payload) + TAG_BYTES)
    key = _derive_key(passphrase, salt, params)
    return header + AESGCM(key).encrypt(nonce, payload, header)


def decrypt_secret(data: bytes, kind: str, passphrase: bytes) -> bytes:
    """The payload of file contents ``data``: strict parse, kind check, bounded KDF, then GCM."""
    expected_kind = _check_kind(kind)
    if len(data) > MAX_FILE_BYTES:
        raise SecretFileError(SECRET_FILE_TOO_LARGE, f"file exceeds {MAX_FILE_BYTES} bytes")
    if len(data) < _PREFIX.size:
        raise SecretFileError(SECRET_FILE_MALFORMED, "truncated header")
    magic, version, kind_len = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise SecretFileError(SECRET_FILE_MALFORMED, "not an escrow secret file (bad magic)")
    if version != FORMAT_VERSION:
        raise SecretFileError(SECRET_FILE_MALFORMED, f"unsupported format version {version}")
    header_len = _PREFIX.size + kind_len + _KDF_AND_SIZES.size
    if not 1 <= kind_len <= MAX_KIND_BYTES or len(data) < header_len:
        raise SecretFileError(SECRET_FILE_MALFORMED, "truncated header or bad kind length")
    file_kind = data[_PREFIX.size : _PREFIX.size + kind_len]
    kdf_id, log2_n, r, p, salt, nonce, ct_len = _KDF_AND_SIZES.unpack_from(data, _PREFIX.size + kind_len)
    if _KIND_RE.fullmatch(file_kind) is None:
        raise SecretFileError(SECRET_FILE_MALFORMED, "kind is not ASCII [a-z0-9-]")
    if kdf_id != KDF_SCRYPT:
        raise SecretFileError(SECRET_FILE_MALFORMED, f"unsupported KDF id {kdf_id}")
    if ct_len > MAX_PAYLOAD_BYTES + TAG_BYTES:
        raise SecretFileError(SECRET_FILE_TOO_LARGE, f"payload exceeds {MAX_PAYLOAD_BYTES} bytes")
    if ct_len < TAG_BYTES or len(data) != header_len + ct_len:
        raise SecretFileError(SECRET_FILE_MALFORMED, "ciphertext length does not match the file size")
    if file_kind != expected_kind:
        raise SecretFileError(
            SECRET_FILE_KIND, f"file holds {file_kind.decode('ascii')!r}, expected {kind!r}"
        )
    params = ScryptParams(log2_n=log2_n, r=r, p=p)
    _check_kdf_bounds(params)
    key = _derive_key(passphrase, salt, params)
    try:
        return AESGCM(key).decrypt(nonce, data[header_len:], data[:header_len])
    except InvalidTag:
        raise SecretFileError(SECRET_FILE_PASSPHRASE, "wrong passphrase, or the file was modified") from None


def _fsync_dir(directory: Path) -> None:
    """Flush the directory entry (the new name) to stable storage."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_new_private_file(tmp: Path, data: bytes) -> None:
    """Create ``tmp`` exclusively with mode 0600 (never wider, even briefly), write and fsync it."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, SECRET_FILE_MODE)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), SECRET_FILE_MODE)  # exactly 0600 whatever the umask removed
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _publish_exclusive(tmp: Path, path: Path) -> None:
    """Give ``tmp`` the name ``path`` only if ``path`` does not exist, atomically (a hard link)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise SecretFileError(
            SECRET_FILE_EXISTS, f"{path} already exists; refusing to overwrite it"
        ) from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
            raise
        # No hard links on this filesystem: check, then rename (a narrow race, documented).
        if os.path.lexists(path):
            raise SecretFileError(
                SECRET_FILE_EXISTS, f"{path} already exists; refusing to overwrite it"
            ) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def write_secret_file(
    path: Path, kind: str, payload: bytes, passphrase: bytes, *, overwrite: bool = False
) -> None:
    """Encrypt ``payload`` to ``path`` atomically with mode 0600; refuse an existing file unless told."""
    path = Path(path)
    if not overwrite and os.path.lexists(path):
        raise SecretFileError(SECRET_FILE_EXISTS, f"{path} already exists; refusing to overwrite it")
    data = encrypt_secret(kind, payload, passphrase)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    try:
        _write_new_private_file(tmp, data)
        if overwrite:
            os.replace(tmp, path)
        else:
            _publish_exclusive(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _read_private_file(path: Path) -> bytes:
    """The bytes of ``path`` after checking, on the open descriptor, that it is a private regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise SecretFileError(SECRET_FILE_MISSING, f"{path} does not exist") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SecretFileError(SECRET_FILE_MALFORMED, f"{path} is not a regular file")
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as f:
        if st.st_mode & 0o077:
            mode = stat.S_IMODE(st.st_mode)
            raise SecretFileError(
                SECRET_FILE_PERMISSIONS,
                f"{path} has mode {mode:04o}: group or others can access it; "
                f"run 'chmod 600 {path}' (and consider the secret exposed if others could read it)",
            )
        if st.st_size > MAX_FILE_BYTES:
            raise SecretFileError(SECRET_FILE_TOO_LARGE, f"{path} exceeds {MAX_FILE_BYTES} bytes")
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise SecretFileError(SECRET_FILE_TOO_LARGE, f"{path} exceeds {MAX_FILE_BYTES} bytes")
    return data


def read_secret_file(path: Path, kind: str, passphrase: bytes) -> bytes:
    """Decrypt the secret file at ``path``, which must hold ``kind`` and be readable by its owner only."""
    return decrypt_secret(_read_private_file(Path(path)), kind, passphrase)


def _encode_passphrase(text: str) -> bytes:
    # NFC, so the same passphrase typed on any system gives the same bytes; surrogateescape keeps
    # non-UTF-8 bytes from the environment exactly as they were.
    return unicodedata.normalize("NFC", text).encode("utf-8", errors="surrogateescape")


def _refuse_empty(passphrase: str, source: str) -> None:
    if passphrase == "" and os.environ.get(ALLOW_EMPTY_PASSPHRASE_ENV) != "1":
        raise PassphraseError(
            PASSPHRASE_EMPTY,
            f"empty passphrase from {source}; set {ALLOW_EMPTY_PASSPHRASE_ENV}=1 to allow it (INSECURE: "
            "the file is then protected by its permissions only)",
        )


def _ask(prompt: str) -> str:
    """One getpass prompt; refuse (instead of echoing) when the terminal cannot hide input."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", getpass.GetPassWarning)
        try:
            return getpass.getpass(prompt)
        except (getpass.GetPassWarning, EOFError):
            raise PassphraseError(
                PASSPHRASE_UNAVAILABLE, "the terminal cannot read a passphrase without echoing it"
            ) from None


def passphrase_from(env_var: str, *, prompt: str | None, confirm: bool = False) -> bytes:
    """The passphrase from ``env_var`` if set, else from a terminal prompt (twice when ``confirm``)."""
    from_env = os.environ.get(env_var)
    if from_env is not None:
        _refuse_empty(from_env, f"${env_var}")
        return _encode_passphrase(from_env)
    if prompt is None:
        raise PassphraseError(PASSPHRASE_UNAVAILABLE, f"no passphrase: set {env_var}")
    if not sys.stdin.isatty():
        raise PassphraseError(
            PASSPHRASE_UNAVAILABLE, f"no terminal to prompt for the passphrase: set {env_var}"
        )
    entered = _ask(prompt)
    _refuse_empty(entered, "the prompt")
    if confirm and _ask(f"{prompt.rstrip().rstrip(':')} (again): ") != entered:
        raise PassphraseError(PASSPHRASE_MISMATCH, "the two passphrases differ")
    return _encode_passphrase(entered)
