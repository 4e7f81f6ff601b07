"""The enclave's public-key bundle and the REPORTDATA that commits to it (DESIGN §5, Quotes).

Canonical encoding (every field length-prefixed with a 4-byte big-endian length, in this order):

  lp("escrow.v1/key-bundle/v1") || lp(chain_id: 32) || lp(ledger_key: 65, SEC1 uncompressed P-256) ||
  lp(encryption_key: 32, X25519) || lp(instance_id: 16) || lp(isv_svn: 2, big-endian) ||
  lp(head_height: 8, big-endian) || lp(head_hash: 32)

Before GENESIS exists the chain id, the head height and the head hash are all zero (GENESIS carries a
quote over the key bundle, and the chain id is GENESIS's own hash). REPORTDATA = SHA-256(bundle) ||
SHA-256(nonce). This module is shared by the trusted runtime (which builds bundles) and by verifiers
(which parse them), so it imports nothing but the standard library.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

TAG = b"escrow.v1/key-bundle/v1"
MAX_NONCE_BYTES = 64
_SIZES = (("chain_id", 32), ("ledger_key", 65), ("encryption_key", 32), ("instance_id", 16))


class KeyBundleError(ValueError):
    """Bytes that are not a canonical key bundle, or a nonce out of bounds."""


@dataclass(frozen=True)
class KeyBundle:
    """What a quote's REPORTDATA commits to: who the enclave is and which keys it holds."""

    chain_id: bytes
    ledger_key: bytes
    encryption_key: bytes
    instance_id: bytes
    isv_svn: int
    head_height: int = 0
    head_hash: bytes = bytes(32)

    def __post_init__(self) -> None:
        for name, size in _SIZES:
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != size:
                raise KeyBundleError(f"{name} must be {size} bytes")
        if self.ledger_key[0] != 0x04:
            raise KeyBundleError("ledger_key must be an uncompressed SEC1 point (0x04 || x || y)")
        if not isinstance(self.head_hash, bytes) or len(self.head_hash) != 32:
            raise KeyBundleError("head_hash must be 32 bytes")
        if not 0 <= self.isv_svn < 1 << 16:
            raise KeyBundleError("isv_svn must fit 16 bits")
        if not 0 <= self.head_height < 1 << 64:
            raise KeyBundleError("head_height must fit 64 bits")

    def to_bytes(self) -> bytes:
        """The canonical encoding."""
        fields = [
            TAG,
            self.chain_id,
            self.ledger_key,
            self.encryption_key,
            self.instance_id,
            self.isv_svn.to_bytes(2, "big"),
            self.head_height.to_bytes(8, "big"),
            self.head_hash,
        ]
        return b"".join(len(f).to_bytes(4, "big") + f for f in fields)

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyBundle:
        """Strictly parse a canonical bundle (exact lengths, nothing trailing)."""
        if not isinstance(data, (bytes, bytearray)) or len(data) > 1024:
            raise KeyBundleError("a key bundle is at most 1024 bytes")
        data = bytes(data)
        fields = split_length_prefixed(data)
        if len(fields) != 8 or fields[0] != TAG:
            raise KeyBundleError("not an escrow.v1 key bundle")
        if len(fields[5]) != 2 or len(fields[6]) != 8:
            raise KeyBundleError("isv_svn is 2 bytes and head_height 8 bytes")
        bundle = cls(
            chain_id=fields[1],
            ledger_key=fields[2],
            encryption_key=fields[3],
            instance_id=fields[4],
            isv_svn=int.from_bytes(fields[5], "big"),
            head_height=int.from_bytes(fields[6], "big"),
            head_hash=fields[7],
        )
        if bundle.to_bytes() != data:
            raise KeyBundleError("non-canonical key bundle")
        return bundle


def split_length_prefixed(data: bytes) -> list[bytes]:
    """Split lp(f1) || lp(f2) || ... (4-byte big-endian lengths); raises KeyBundleError if truncated."""
    fields = []
    pos = 0
    while pos < len(data):
        if pos + 4 > len(data):
            raise KeyBundleError("truncated length prefix")
        n = int.from_bytes(data[pos : pos + 4], "big")
        pos += 4
        if pos + n > len(data):
            raise KeyBundleError("truncated field")
        fields.append(data[pos : pos + n])
        pos += n
    return fields


def check_nonce(nonce: bytes) -> bytes:
    """A verifier's nonce: 1 to 64 bytes."""
    if not isinstance(nonce, (bytes, bytearray)) or not 1 <= len(nonce) <= MAX_NONCE_BYTES:
        raise KeyBundleError(f"a nonce is 1 to {MAX_NONCE_BYTES} bytes")
    return bytes(nonce)


def report_data(bundle_bytes: bytes, nonce: bytes) -> bytes:
    """REPORTDATA = SHA-256(key bundle) || SHA-256(nonce): 64 bytes."""
    return hashlib.sha256(bundle_bytes).digest() + hashlib.sha256(check_nonce(nonce)).digest()
