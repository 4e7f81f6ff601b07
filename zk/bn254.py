"""BN254 (alt_bn128) G1 as a safe point type: G, H, strict 32-byte encoding, scalar multiplication.

The recipe layer over zk.g1 (formulas) and zk.msm (tables). Points are immutable and always valid
group elements; the only ways in from outside are :func:`from_affine` and :func:`point_from_bytes`,
which validate. Encoding (zk/notes/encoding.md): 32 bytes, big-endian x with the two top bits as
flags, as gnark-crypto: 10 = y is the smaller of (y, p - y), 11 = the larger, 01 with x = 0 = the
point at infinity, 00 reserved (rejected).
"""

from __future__ import annotations

from gmpy2 import mpz

from zk import g1
from zk.errors import EncodingError
from zk.field import P, R, sqrt_p
from zk.hash_to_curve import hash_to_curve
from zk.msm import WindowTable

ORDER: int = int(R)
FIELD_MODULUS: int = int(P)

_FLAG_MASK = 0xC0
_FLAG_SMALLER = 0x80
_FLAG_LARGER = 0xC0
_FLAG_INFINITY = 0x40


class Point:
    """An element of BN254 G1 (affine, or the identity). Supports +, -, k * P, ==, hash."""

    __slots__ = ("_table", "_xy")

    def __init__(self, xy: g1.Affine, *, _trusted: bool = False) -> None:
        if not _trusted:
            raise TypeError("construct points with from_affine() or point_from_bytes()")
        self._xy = xy
        self._table: WindowTable | None = None

    @property
    def xy(self) -> g1.Affine:
        """The affine coordinates as gmpy2 integers, or None for the identity."""
        return self._xy

    def is_identity(self) -> bool:
        """True for the point at infinity."""
        return self._xy is None

    def __add__(self, other: Point) -> Point:
        if not isinstance(other, Point):
            return NotImplemented
        return Point(g1.affine_add(self._xy, other._xy), _trusted=True)

    def __neg__(self) -> Point:
        return Point(g1.affine_neg(self._xy), _trusted=True)

    def __sub__(self, other: Point) -> Point:
        if not isinstance(other, Point):
            return NotImplemented
        return self + (-other)

    def __mul__(self, k: int) -> Point:
        if isinstance(k, bool) or not isinstance(k, (int, mpz)):
            return NotImplemented
        if self._table is not None:
            return Point(self._table.mul(int(k)), _trusted=True)
        return Point(g1.jac_to_affine(g1.scalar_mul(self._xy, k)), _trusted=True)

    __rmul__ = __mul__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and self._xy == other._xy

    def __hash__(self) -> int:
        return hash(("bn254.G1", self._xy))

    def __repr__(self) -> str:
        return f"Point({point_to_bytes(self).hex()})"


def _with_table(pt: Point) -> Point:
    """Attach a fixed-base window table (built on first use) so that k * pt needs no doublings."""
    assert pt._xy is not None
    pt._table = WindowTable(pt._xy)
    return pt


IDENTITY = Point(None, _trusted=True)
G = _with_table(Point(g1.GEN, _trusted=True))
H = _with_table(Point(hash_to_curve(b"escrow.v1/pedersen/H"), _trusted=True))


def from_affine(x: int, y: int) -> Point:
    """The point (x, y); raises EncodingError unless x, y are integers, 0 <= x, y < p, y^2 = x^3 + 3."""
    for c in (x, y):
        if isinstance(c, bool) or not isinstance(c, (int, mpz)):
            raise EncodingError("coordinates must be integers")
    if not (0 <= x < P and 0 <= y < P):
        raise EncodingError("coordinate out of range [0, p)")
    mx, my = mpz(x), mpz(y)
    if not g1.is_on_curve(mx, my):
        raise EncodingError("point is not on the curve y^2 = x^3 + 3")
    return Point((mx, my), _trusted=True)


def to_affine(pt: Point) -> tuple[int, int] | None:
    """(x, y) as Python ints, or None for the identity."""
    xy = pt.xy
    return None if xy is None else (int(xy[0]), int(xy[1]))


def point_to_bytes(pt: Point) -> bytes:
    """The canonical 32-byte encoding (flags in the top two bits of big-endian x)."""
    xy = pt.xy
    if xy is None:
        return bytes([_FLAG_INFINITY]) + bytes(31)
    x, y = xy
    flag = _FLAG_SMALLER if y <= P - y else _FLAG_LARGER
    out = bytearray(int(x).to_bytes(32, "big"))
    out[0] |= flag
    return bytes(out)


def point_from_bytes(data: bytes, *, allow_identity: bool = True) -> Point:
    """Strictly decode 32 bytes; raises EncodingError for any non-canonical or invalid input."""
    if not isinstance(data, (bytes, bytearray)) or len(data) != 32:
        raise EncodingError("a point encoding is exactly 32 bytes")
    flag = data[0] & _FLAG_MASK
    x = mpz(int.from_bytes(bytes([data[0] & ~_FLAG_MASK & 0xFF]) + bytes(data[1:]), "big"))
    if flag == _FLAG_INFINITY:
        if x != 0:
            raise EncodingError("infinity flag with a non-zero x")
        if not allow_identity:
            raise EncodingError("the identity is not allowed here")
        return IDENTITY
    if flag == 0:
        raise EncodingError("reserved flag 00")
    if x >= P:
        raise EncodingError("x >= p")
    y = sqrt_p((x * x * x + 3) % P)
    if y is None:
        raise EncodingError("x is not the abscissa of a curve point")
    small, large = (y, P - y) if y <= P - y else (P - y, y)
    return Point((x, small if flag == _FLAG_SMALLER else large), _trusted=True)


def scalar_to_bytes(k: int) -> bytes:
    """32-byte big-endian encoding of a scalar in [0, r)."""
    if not 0 <= k < R:
        raise EncodingError("scalar out of range [0, r)")
    return int(k).to_bytes(32, "big")


def scalar_from_bytes(data: bytes) -> int:
    """Strictly decode a 32-byte big-endian scalar; values >= r are rejected, not reduced."""
    if not isinstance(data, (bytes, bytearray)) or len(data) != 32:
        raise EncodingError("a scalar encoding is exactly 32 bytes")
    k = int.from_bytes(data, "big")
    if k >= R:
        raise EncodingError("scalar >= r is not canonical")
    return k
