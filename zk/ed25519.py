"""Edwards25519 with exact integers (RFC 8032 §5.1): decoding, encoding, addition, scalar multiplication.

Used where an Ed25519 key must be checked (canonical, not of small order) or derived (one-time stealth
keys, zk/stealth.py), and to sign with a raw scalar. Not for hot paths, and variable-time.
Points are extended coordinates (X, Y, Z, T) with x = X/Z, y = Y/Z, x*y = T/Z.
"""

from __future__ import annotations

FIELD_P = 2**255 - 19  # field prime
ORDER_L = 2**252 + 27742317777372353535851937790883648493  # prime order of the base point
CURVE_D = -121665 * pow(121666, -1, FIELD_P) % FIELD_P  # curve: -x^2 + y^2 = 1 + d x^2 y^2
SQRT_M1 = pow(2, (FIELD_P - 1) // 4, FIELD_P)  # a square root of -1 mod p

Point = tuple[int, int, int, int]
IDENTITY: Point = (0, 1, 1, 0)


def decode(encoding: bytes) -> Point | None:
    """RFC 8032 §5.1.3 decoding, strict: None unless y < p, x exists, and not (x = 0 with sign bit 1)."""
    p = FIELD_P
    if len(encoding) != 32:
        return None
    y = int.from_bytes(encoding, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    if y >= p:  # non-canonical: y + p fits in 255 bits for y < 19
        return None
    u, v = (y * y - 1) % p, (CURVE_D * y * y + 1) % p  # x^2 = u / v
    x = u * pow(v, 3, p) * pow(u * pow(v, 7, p), (p - 5) // 8, p) % p  # candidate root
    if v * x * x % p == (-u) % p:
        x = x * SQRT_M1 % p
    if v * x * x % p != u:  # u / v is not a square: no point with this y
        return None
    if x == 0 and sign:  # "negative zero": a second encoding of (0, 1) and (0, -1)
        return None
    if x & 1 != sign:
        x = p - x
    return (x, y, 1, x * y % p)


def encode(point: Point) -> bytes:
    """RFC 8032 §5.1.2: y little-endian with the low bit of x in bit 255."""
    X, Y, Z, _ = point
    z_inv = pow(Z, -1, FIELD_P)
    x, y = X * z_inv % FIELD_P, Y * z_inv % FIELD_P
    return (y | (x & 1) << 255).to_bytes(32, "little")


def add(P1: Point, P2: Point) -> Point:
    """RFC 8032 §5.1.4 addition (complete for a = -1 and non-square d, so it also doubles)."""
    p = FIELD_P
    A = (P1[1] - P1[0]) * (P2[1] - P2[0]) % p
    B = (P1[1] + P1[0]) * (P2[1] + P2[0]) % p
    C = 2 * P1[3] * P2[3] * CURVE_D % p
    Dz = 2 * P1[2] * P2[2] % p
    E, F, G, H = B - A, Dz - C, Dz + C, B + A
    return (E * F % p, G * H % p, F * G % p, E * H % p)


def double(P1: Point) -> Point:
    """RFC 8032 §5.1.4 doubling: A = X^2, B = Y^2, C = 2 Z^2, H = A + B, E = H - (X + Y)^2, G = A - B."""
    p = FIELD_P
    A, B, C = P1[0] * P1[0] % p, P1[1] * P1[1] % p, 2 * P1[2] * P1[2] % p
    H = A + B
    E, G = H - (P1[0] + P1[1]) ** 2, A - B
    F = C + G
    return (E * F % p, G * H % p, F * G % p, E * H % p)


def is_identity(P1: Point) -> bool:
    """(X : Y : Z) = (0 : 1 : 1), i.e. X = 0 and Y = Z."""
    return P1[0] % FIELD_P == 0 and (P1[1] - P1[2]) % FIELD_P == 0


def has_small_order(P1: Point) -> bool:
    """[8]P = identity: P is one of the 8 torsion points (the cofactor is 8)."""
    return is_identity(double(double(double(P1))))


def scalar_mult(k: int, P1: Point) -> Point:
    """[k]P by double-and-add, most significant bit first (variable time)."""
    Q = IDENTITY
    for bit in bin(k)[2:]:
        Q = double(Q)
        if bit == "1":
            Q = add(Q, P1)
    return Q


def _check(condition: bool, what: str) -> None:
    """A load-time self-check that survives ``python -O`` (unlike assert)."""
    if not condition:
        raise RuntimeError(f"zk.ed25519 self-check failed: {what}")


def _self_check() -> Point:
    """Check the constants when the module loads; return the base point B (y = 4/5, x even)."""
    _check(SQRT_M1 * SQRT_M1 % FIELD_P == FIELD_P - 1, "sqrt(-1)")
    _check(pow(CURVE_D, (FIELD_P - 1) // 2, FIELD_P) == FIELD_P - 1, "d is a non-square")
    base = decode((4 * pow(5, -1, FIELD_P) % FIELD_P).to_bytes(32, "little"))
    if base is None or is_identity(base):
        raise RuntimeError("zk.ed25519 self-check failed: base point")
    _check(is_identity(scalar_mult(ORDER_L, base)), "[L]B = identity")
    _check(encode(double(base)) == encode(add(base, base)), "double = add")
    return base


BASE = _self_check()
