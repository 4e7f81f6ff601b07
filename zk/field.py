"""BN254 base-field (F_p) and scalar-field (F_r) constants and helpers on gmpy2 integers.

Everything here works on gmpy2 ``mpz`` values; callers reduce with ``% P`` themselves in hot loops.
Nothing here is constant-time (see zk/notes/arithmetic.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import gmpy2
from gmpy2 import mpz

# p: the base field of BN254 (alt_bn128); r: the prime order of G1.
P = mpz(0x30644E72E131A029B85045B68181585D97816A916871CA8D3C208C16D87CFD47)
R = mpz(0x30644E72E131A029B85045B68181585D2833E84879B9709143E1F593F0000001)

_SQRT_EXP = (P + 1) // 4  # p = 3 (mod 4), so sqrt(a) = a^((p+1)/4) when a is a square

assert gmpy2.is_prime(P) and gmpy2.is_prime(R) and P % 4 == 3


def inv_p(a: mpz) -> mpz:
    """a^-1 mod p (raises ZeroDivisionError for a = 0 mod p)."""
    return gmpy2.invert(a, P)


def inv_r(a: mpz) -> mpz:
    """a^-1 mod r (raises ZeroDivisionError for a = 0 mod r)."""
    return gmpy2.invert(a, R)


def sqrt_p(a: mpz) -> mpz | None:
    """A square root of a mod p, or None when a is not a square."""
    s = gmpy2.powmod(a, _SQRT_EXP, P)
    return s if s * s % P == a % P else None


def batch_inverse(values: Sequence[mpz], modulus: mpz = P) -> list[mpz]:
    """Montgomery's trick: all inverses for one inversion and 3(n-1) multiplications.

    Every value must be non-zero modulo ``modulus``.
    """
    n = len(values)
    if n == 0:
        return []
    prefix = [mpz(0)] * n
    acc = mpz(1)
    for i, v in enumerate(values):  # prefix[i] = v_0 * ... * v_{i-1}
        prefix[i] = acc
        acc = acc * v % modulus
    inv = gmpy2.invert(acc, modulus)
    out = [mpz(0)] * n
    for i in range(n - 1, -1, -1):  # inv = (v_0 * ... * v_i)^-1 on entry
        out[i] = inv * prefix[i] % modulus
        inv = inv * values[i] % modulus
    return out
