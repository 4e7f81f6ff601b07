"""Nothing-up-my-sleeve points of G1 from labels: try-and-increment over SHA-512.

hash_to_curve(label) = (x, y) for the first counter c = 0, 1, 2, ... such that
  x = int(SHA-512(lp(DST) || lp(label) || c as 4 bytes big-endian)) mod p
has x^3 + 3 a square; y is the smaller of the two roots (y <= p - y), as encoding flag 10 means.
lp(s) = len(s) as 4 bytes big-endian || s. BN254 G1 has cofactor 1, so the point is in the group.
Variable time, which is fine: the labels are public. See zk/notes/generators.md.
"""

from __future__ import annotations

import hashlib

from gmpy2 import mpz

from zk.field import P, sqrt_p

DST = b"escrow.v1/hash-to-curve/bn254-g1/sha512-try-and-increment"


def _lp(data: bytes) -> bytes:
    """Length-prefixed bytes: 4-byte big-endian length, then the bytes."""
    return len(data).to_bytes(4, "big") + data


def hash_to_curve(label: bytes) -> tuple[mpz, mpz]:
    """The affine point derived from ``label`` (deterministic; never the identity)."""
    prefix = _lp(DST) + _lp(label)
    for counter in range(1 << 16):
        digest = hashlib.sha512(prefix + counter.to_bytes(4, "big")).digest()
        x = mpz(int.from_bytes(digest, "big")) % P
        y = sqrt_p((x * x * x + 3) % P)
        if y is not None:
            return (x, min(y, P - y))
    raise RuntimeError("no point found for label")  # probability about 2^-65536
