"""Sealing inside the emulated enclave: EGETKEY-style key derivation, AES-256-GCM blobs bound to a slot.

Blob layout (integers big-endian; docs/sealing.md has the reasoning):

  offset  size  field
  0       4     magic "SEAL"
  4       1     format version = 1
  5       1     key policy: 1 = MRENCLAVE, 2 = MRSIGNER
  6       2     ISVSVN of the sealing enclave (u16)
  8       1     flags: bit 0 = DEBUG; all other bits zero
  9       32    key id (random per blob)
  41      12    AES-GCM nonce (random per blob)
  53      n     ciphertext of the n-byte plaintext (n <= MAX_PLAINTEXT)
  53+n    16    AES-GCM tag

Associated data = header (bytes 0..52) || slot encoding, where the slot encoding is
u32 len(kind) || kind (UTF-8) || u32 len(object_id) || object_id || u64 version.

Seal key = HKDF-SHA256(ikm = platform root secret, salt = none, info = key request, 32 bytes), where the
key request is

  u32 len(tag) || "escrow.v1/seal-key" || policy u8 ||
  (MRENCLAVE policy) mr_enclave [32]   or   (MRSIGNER policy) mr_signer [32] || isv_prod_id u16 ||
  isv_svn u16 (the blob's, from its header) || attributes u64 (INIT | MODE64BIT | DEBUG if debug) ||
  key id [32]

The measurement, ISVPRODID and DEBUG always come from the enclave asking, never from the blob, so a blob
opens only for the enclave identity its policy names. Like SGX EGETKEY, an enclave may derive keys for an
ISVSVN at or below its own, so a blob sealed at ISVSVN s opens for ISVSVN >= s only.
"""

from __future__ import annotations

import enum
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from enclave.errors import SealingError

MAGIC = b"SEAL"
FORMAT_VERSION = 1
KEY_REQUEST_TAG = b"escrow.v1/seal-key"
ROOT_SECRET_SIZE = 32
KEY_ID_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
MAX_PLAINTEXT = 16 * 1024 * 1024
MAX_SLOT_KIND = 256
MAX_SLOT_OBJECT_ID = 1024
FLAG_DEBUG = 0x01

# Attribute flag bits, as in SGX's SECS.ATTRIBUTES (and enclave.quote).
ATTR_INIT = 0x01
ATTR_DEBUG = 0x02
ATTR_MODE64BIT = 0x04

_HEADER = struct.Struct(f">4sBBHB{KEY_ID_SIZE}s{NONCE_SIZE}s")
HEADER_SIZE = _HEADER.size  # 53
MAX_BLOB = HEADER_SIZE + MAX_PLAINTEXT + TAG_SIZE
_U16_MAX = 0xFFFF
_U64_MAX = 2**64 - 1


class KeyPolicy(enum.IntEnum):
    """Which measurement the seal key is bound to."""

    MRENCLAVE = 1  # this exact enclave build and config only
    MRSIGNER = 2  # any enclave of this signer and ISVPRODID, at the sealing ISVSVN or later


@dataclass(frozen=True)
class EnclaveIdentity:
    """The identity the emulated CPU fixed at EINIT: what EGETKEY derives keys from."""

    mr_enclave: bytes
    mr_signer: bytes
    isv_prod_id: int
    isv_svn: int
    debug: bool

    def __post_init__(self) -> None:
        for name in ("mr_enclave", "mr_signer"):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != 32:
                raise SealingError(f"{name} must be 32 bytes")
        for name in ("isv_prod_id", "isv_svn"):
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value <= _U16_MAX:
                raise SealingError(f"{name} must be an integer in 0..65535")
        if type(self.debug) is not bool:
            raise SealingError("debug must be a bool")

    def attributes(self) -> int:
        """The SGX-style attribute flags that enter key derivation."""
        return ATTR_INIT | ATTR_MODE64BIT | (ATTR_DEBUG if self.debug else 0)


@dataclass(frozen=True)
class Slot:
    """Where a blob belongs (kind, object id, version); bound into the AEAD so blobs cannot be swapped."""

    kind: str
    object_id: bytes
    version: int

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or not 0 < len(self.kind.encode("utf-8")) <= MAX_SLOT_KIND:
            raise SealingError(f"slot kind must be a non-empty string of at most {MAX_SLOT_KIND} bytes")
        if not isinstance(self.object_id, bytes) or len(self.object_id) > MAX_SLOT_OBJECT_ID:
            raise SealingError(f"slot object id must be bytes, at most {MAX_SLOT_OBJECT_ID}")
        if type(self.version) is not int or not 0 <= self.version <= _U64_MAX:
            raise SealingError("slot version must be an integer in 0..2^64-1")

    def to_bytes(self) -> bytes:
        """u32 len || kind (UTF-8) || u32 len || object id || u64 version."""
        kind = self.kind.encode("utf-8")
        return _lp(kind) + _lp(self.object_id) + struct.pack(">Q", self.version)


def _lp(item: bytes) -> bytes:
    """4-byte big-endian length prefix || item."""
    return struct.pack(">I", len(item)) + item


def _key_request(identity: EnclaveIdentity, policy: KeyPolicy, isv_svn: int, key_id: bytes) -> bytes:
    """The canonical key request (module docstring) that becomes the HKDF info."""
    if policy is KeyPolicy.MRENCLAVE:
        measurement = identity.mr_enclave
    else:
        measurement = identity.mr_signer + struct.pack(">H", identity.isv_prod_id)
    return (
        _lp(KEY_REQUEST_TAG)
        + struct.pack(">B", policy)
        + measurement
        + struct.pack(">HQ", isv_svn, identity.attributes())
        + key_id
    )


def _seal_key(root_secret: bytes, request: bytes) -> bytes:
    """Seal key = HKDF-SHA256(root secret, info = key request)."""
    if not isinstance(root_secret, bytes) or len(root_secret) != ROOT_SECRET_SIZE:
        raise SealingError("the platform root secret must be 32 bytes")
    return HKDF(algorithm=SHA256(), length=32, salt=None, info=request).derive(root_secret)


def seal(
    root_secret: bytes,
    identity: EnclaveIdentity,
    policy: KeyPolicy,
    slot: Slot,
    plaintext: bytes,
    *,
    randbytes: Callable[[int], bytes] = os.urandom,
) -> bytes:
    """Seal plaintext for slot under the given policy, at this enclave's ISVSVN and debug mode."""
    policy = KeyPolicy(policy)
    if not isinstance(plaintext, bytes):
        raise SealingError("plaintext must be bytes")
    if len(plaintext) > MAX_PLAINTEXT:
        raise SealingError(f"plaintext exceeds the {MAX_PLAINTEXT}-byte sealing limit")
    key_id, nonce = randbytes(KEY_ID_SIZE), randbytes(NONCE_SIZE)
    if len(key_id) != KEY_ID_SIZE or len(nonce) != NONCE_SIZE:
        raise SealingError("the randomness source returned the wrong number of bytes")
    flags = FLAG_DEBUG if identity.debug else 0
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, policy, identity.isv_svn, flags, key_id, nonce)
    key = _seal_key(root_secret, _key_request(identity, policy, identity.isv_svn, key_id))
    return header + AESGCM(key).encrypt(nonce, plaintext, header + slot.to_bytes())


def unseal(root_secret: bytes, identity: EnclaveIdentity, blob: bytes, slot: Slot) -> bytes:
    """Open a blob sealed for slot; SealingError if malformed, tampered, moved, or not for this enclave."""
    if not isinstance(blob, bytes) or len(blob) < HEADER_SIZE + TAG_SIZE:
        raise SealingError("sealed blob is truncated")
    if len(blob) > MAX_BLOB:
        raise SealingError(f"sealed blob exceeds the {MAX_BLOB}-byte limit")
    magic, version, policy_byte, sealed_svn, flags, key_id, nonce = _HEADER.unpack_from(blob)
    if magic != MAGIC or version != FORMAT_VERSION:
        raise SealingError("not a sealed blob of a supported format version")
    try:
        policy = KeyPolicy(policy_byte)
    except ValueError:
        raise SealingError(f"unknown key policy {policy_byte}") from None
    if flags & ~FLAG_DEBUG:
        raise SealingError("reserved flag bits are set")
    if bool(flags & FLAG_DEBUG) != identity.debug:
        raise SealingError("debug and production enclaves cannot open each other's sealed data")
    if sealed_svn > identity.isv_svn:
        raise SealingError(f"blob sealed at ISVSVN {sealed_svn}; this enclave has ISVSVN {identity.isv_svn}")
    key = _seal_key(root_secret, _key_request(identity, policy, sealed_svn, key_id))
    header = blob[:HEADER_SIZE]
    try:
        return AESGCM(key).decrypt(nonce, blob[HEADER_SIZE:], header + slot.to_bytes())
    except InvalidTag:
        raise SealingError(
            "sealed blob does not open here: tampered, moved to another slot, or sealed by another "
            "enclave or platform"
        ) from None
