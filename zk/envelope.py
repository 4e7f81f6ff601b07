"""Envelopes that carry secrets (e.g. commitment openings) to one X25519 key, bound to a caller context."""

from __future__ import annotations

import hmac
import operator
import struct
from typing import SupportsIndex

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from zk.errors import EnvelopeError
from zk.field import R

__all__ = [
    "CONTEXT_TAG",
    "HKDF_INFO",
    "MAX_ENVELOPE_BYTES",
    "MAX_PLAINTEXT_BYTES",
    "MIN_ENVELOPE_BYTES",
    "OPENING_BYTES",
    "VERSION",
    "envelope_context",
    "generate_keypair",
    "open_envelope",
    "open_opening",
    "public_key",
    "seal",
    "seal_opening",
]

# The construction is specified in zk/notes/envelope.md; keep the two in step.
VERSION = 0x01
KEY_BYTES = 32  # X25519 private key, public key and shared secret
TAG_BYTES = 16  # AES-GCM tag
NONCE_BYTES = 12
HEADER_BYTES = 1 + KEY_BYTES  # version || ephemeral public key
MIN_ENVELOPE_BYTES = HEADER_BYTES + TAG_BYTES  # 49: an envelope with an empty plaintext
MAX_ENVELOPE_BYTES = 1 << 20  # 1 MiB, checked before any cryptography
MAX_PLAINTEXT_BYTES = MAX_ENVELOPE_BYTES - MIN_ENVELOPE_BYTES
HKDF_INFO = b"escrow.v1/envelope"
CONTEXT_TAG = b"escrow.v1/envelope-context"
OPENING_BYTES = 8 + 32  # value (u64, big-endian) || blinding (scalar < r, 32 bytes big-endian)

_R = int(R)
_U64 = 1 << 64
_P25519 = 2**255 - 19
_ZERO = bytes(KEY_BYTES)


def _check_key(key: bytes, what: str) -> None:
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise ValueError(f"{what} must be {KEY_BYTES} bytes")


def _x25519(private: bytes, public: bytes) -> bytes:
    """RFC 7748 X25519(private, public); ValueError for a non-canonical or low-order public key."""
    _check_key(private, "X25519 private key")
    _check_key(public, "X25519 public key")
    if int.from_bytes(public, "little") >= _P25519:  # top bit set, or u >= p: not the canonical encoding
        raise ValueError("non-canonical X25519 public key")
    try:
        peer = X25519PublicKey.from_public_bytes(public)
        shared = X25519PrivateKey.from_private_bytes(private).exchange(peer)
    except ValueError:  # OpenSSL refuses to return the all-zero result itself
        shared = _ZERO
    if hmac.compare_digest(shared, _ZERO):
        raise ValueError("low-order X25519 public key (all-zero shared secret)")
    return shared


def _key_and_nonce(shared: bytes, eph_public: bytes, recipient_public: bytes) -> tuple[bytes, bytes]:
    okm = HKDF(
        algorithm=SHA256(), length=KEY_BYTES + NONCE_BYTES, salt=eph_public + recipient_public, info=HKDF_INFO
    ).derive(shared)
    return okm[:KEY_BYTES], okm[KEY_BYTES:]


def generate_keypair() -> tuple[bytes, bytes]:
    """A fresh X25519 key pair from the OS RNG: (private, public), raw 32 bytes each."""
    private = X25519PrivateKey.generate().private_bytes_raw()
    return private, public_key(private)


def public_key(private: bytes) -> bytes:
    """The raw 32-byte X25519 public key of a raw 32-byte private key (clamped per RFC 7748)."""
    _check_key(private, "X25519 private key")
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def seal(
    recipient_public: bytes, plaintext: bytes, context: bytes, *, ephemeral_private: bytes | None = None
) -> bytes:
    """Encrypt plaintext to recipient_public, binding context; ValueError for a bad key or oversize input.

    ephemeral_private exists only for known-answer tests: reusing it breaks the construction.
    """
    if not isinstance(plaintext, bytes) or not isinstance(context, bytes):
        raise TypeError("plaintext and context must be bytes")
    if len(plaintext) > MAX_PLAINTEXT_BYTES:
        raise ValueError(f"plaintext longer than {MAX_PLAINTEXT_BYTES} bytes")
    if ephemeral_private is None:
        ephemeral_private = X25519PrivateKey.generate().private_bytes_raw()
    eph_public = public_key(ephemeral_private)
    shared = _x25519(ephemeral_private, recipient_public)
    key, nonce = _key_and_nonce(shared, eph_public, recipient_public)
    header = bytes([VERSION]) + eph_public
    return header + AESGCM(key).encrypt(nonce, plaintext, header + context)


def open_envelope(recipient_private: bytes, envelope: bytes, context: bytes) -> bytes:
    """Decrypt an envelope sealed to recipient_private under exactly this context.

    Raises EnvelopeError for every envelope that does not open (and ValueError for a malformed private key).
    """
    _check_key(recipient_private, "X25519 private key")
    if not isinstance(envelope, bytes) or not isinstance(context, bytes):
        raise TypeError("envelope and context must be bytes")
    if len(envelope) > MAX_ENVELOPE_BYTES:
        raise EnvelopeError(f"envelope longer than {MAX_ENVELOPE_BYTES} bytes")
    if len(envelope) < MIN_ENVELOPE_BYTES:
        raise EnvelopeError(f"envelope shorter than {MIN_ENVELOPE_BYTES} bytes")
    if envelope[0] != VERSION:
        raise EnvelopeError("unknown envelope version")
    header, eph_public = envelope[:HEADER_BYTES], envelope[1:HEADER_BYTES]
    try:
        shared = _x25519(recipient_private, eph_public)
    except ValueError as exc:
        raise EnvelopeError(f"bad ephemeral key: {exc}") from None
    key, nonce = _key_and_nonce(shared, eph_public, public_key(recipient_private))
    try:
        return AESGCM(key).decrypt(nonce, envelope[HEADER_BYTES:], header + context)
    except InvalidTag:
        raise EnvelopeError("envelope does not open: wrong key, wrong context or tampered bytes") from None


def _length_prefixed(item: bytes) -> bytes:
    if len(item) >= 1 << 32:
        raise ValueError("context field longer than 2^32 - 1 bytes")
    return struct.pack(">I", len(item)) + item


def envelope_context(chain_id: bytes, kind: str, session_id: bytes, sequence: SupportsIndex) -> bytes:
    """Canonical context: every item 4-byte big-endian length-prefixed, in the order
    tag, chain id, kind (ASCII), session id, sequence (8-byte big-endian unsigned)."""
    if not isinstance(chain_id, bytes) or not isinstance(session_id, bytes):
        raise TypeError("chain_id and session_id must be bytes")
    if not isinstance(kind, str) or not kind or not kind.isascii():
        raise ValueError("kind must be a non-empty ASCII string")
    seq = operator.index(sequence)
    if not 0 <= seq < _U64:
        raise ValueError("sequence must be in [0, 2^64)")
    items = (CONTEXT_TAG, chain_id, kind.encode("ascii"), session_id, seq.to_bytes(8, "big"))
    return b"".join(_length_prefixed(item) for item in items)


def seal_opening(
    recipient_public: bytes,
    value: SupportsIndex,
    blinding: SupportsIndex,
    context: bytes,
    *,
    ephemeral_private: bytes | None = None,
) -> bytes:
    """Seal a commitment opening (value < 2^64, blinding < r); ValueError when either is out of range."""
    v, b = operator.index(value), operator.index(blinding)
    if not 0 <= v < _U64:
        raise ValueError("value must be in [0, 2^64)")
    if not 0 <= b < _R:
        raise ValueError("blinding must be in [0, r)")
    plaintext = v.to_bytes(8, "big") + b.to_bytes(32, "big")
    return seal(recipient_public, plaintext, context, ephemeral_private=ephemeral_private)


def open_opening(recipient_private: bytes, envelope: bytes, context: bytes) -> tuple[int, int]:
    """Open a sealed commitment opening: (value, blinding); EnvelopeError for anything malformed."""
    plaintext = open_envelope(recipient_private, envelope, context)
    if len(plaintext) != OPENING_BYTES:
        raise EnvelopeError(f"opening plaintext must be {OPENING_BYTES} bytes")
    value, blinding = int.from_bytes(plaintext[:8], "big"), int.from_bytes(plaintext[8:], "big")
    if blinding >= _R:
        raise EnvelopeError("opening blinding is not below r")
    return value, blinding
