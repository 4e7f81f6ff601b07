"""The Bulletproofs vector generators G_i, H_i: hash-to-curve points from versioned labels.

G_i = hash_to_curve("escrow.v1/bulletproofs/G/" || i as 4 bytes big-endian), likewise H_i with "H".
They are derived lazily, each with its fixed-base table, and shared by the whole process. The Pedersen
bases G (the group generator, for values) and H (for blindings) come from zk.bn254, and sit at index 0
and 1 of the fixed-base set, followed by G_0, H_0, G_1, H_1, ... (see zk/notes/generators.md).
"""

from __future__ import annotations

import hashlib
import threading

from zk import bn254
from zk.hash_to_curve import hash_to_curve
from zk.msm import FixedBases, Point

MAX_GENERATORS = 64 * 64  # n * m for n = 64 bits and up to m = 64 aggregated values

_lock = threading.Lock()
_points: list[Point] = []
_fixed = FixedBases([])


def _label(kind: str, i: int) -> bytes:
    return b"escrow.v1/bulletproofs/" + kind.encode() + b"/" + i.to_bytes(4, "big")


def _ensure(count: int) -> None:
    """Derive G_i, H_i for i < count (and the table rows of the bases that precede them)."""
    if count > MAX_GENERATORS:
        raise ValueError(f"at most {MAX_GENERATORS} generators")
    with _lock:
        if not _points:
            g, h = bn254.G.xy, bn254.H.xy
            assert g is not None and h is not None
            _points.extend([g, h])
        have = (len(_points) - 2) // 2
        for i in range(have, count):
            _points.append(hash_to_curve(_label("G", i)))
            _points.append(hash_to_curve(_label("H", i)))
        _fixed.bases = _points
        _fixed.extend_to(len(_points))


def fixed_bases(count: int) -> FixedBases:
    """The fixed-base MSM context covering G, H and G_i, H_i for i < count."""
    _ensure(count)
    return _fixed


def index_G(i: int) -> int:
    """Position of G_i in the fixed-base set."""
    return 2 + 2 * i


def index_H(i: int) -> int:
    """Position of H_i in the fixed-base set."""
    return 3 + 2 * i


INDEX_VALUE_BASE = 0  # G
INDEX_BLINDING_BASE = 1  # H


def vector_G(count: int) -> list[Point]:
    """[G_0, ..., G_{count-1}] in affine coordinates."""
    _ensure(count)
    return [_points[index_G(i)] for i in range(count)]


def vector_H(count: int) -> list[Point]:
    """[H_0, ..., H_{count-1}] in affine coordinates."""
    _ensure(count)
    return [_points[index_H(i)] for i in range(count)]


_set_hashes: dict[int, bytes] = {}


def generator_set_hash(count: int) -> bytes:
    """SHA-256 over the encodings of G, H, G_0, H_0, ..., G_{count-1}, H_{count-1}, with a version tag."""
    if count not in _set_hashes:
        _ensure(count)
        h = hashlib.sha256(b"escrow.v1/generator-set/v1")
        h.update(count.to_bytes(4, "big"))
        for xy in _points[: 2 + 2 * count]:
            h.update(bn254.point_to_bytes(bn254.Point(xy, _trusted=True)))
        _set_hashes[count] = h.digest()
    return _set_hashes[count]
