"""BN254 G1 arithmetic on gmpy2: Jacobian and affine formulas, batched affine additions, GLV + wNAF.

This is the "hazardous" layer: points are bare tuples, nothing is validated, nothing is constant-time.
Code outside ``zk`` uses :mod:`zk.bn254` instead.

Representations (see zk/notes/arithmetic.md):
  * affine ``(x, y)`` with x, y in [0, p); the point at infinity is ``None``;
  * Jacobian ``(X, Y, Z)`` standing for (X/Z^2, Y/Z^3); infinity has Z = 0 (``JAC_INF``).
The curve is y^2 = x^3 + 3 (a = 0), so the a = 0 formulas of the Explicit-Formulas Database apply.
"""

from __future__ import annotations

from collections.abc import Sequence

import gmpy2
from gmpy2 import mpz

from zk.field import P, R, batch_inverse

Affine = tuple[mpz, mpz] | None
Jacobian = tuple[mpz, mpz, mpz]

B = mpz(3)
GEN: tuple[mpz, mpz] = (mpz(1), mpz(2))
ONE = mpz(1)
JAC_INF: Jacobian = (ONE, ONE, mpz(0))

# GLV endomorphism phi(x, y) = (BETA * x, y) = LAMBDA * (x, y); the pair used by gnark-crypto
# (thirdRootOneG1 and lambdaGLV), checked below.
BETA = mpz(0x59E26BCEA0D48BACD4F263F1ACDB5C4F5763473177FFFFFE)
LAMBDA = mpz(0xB3C4D79D41A917585BFC41088D8DAAA78B17EA66B99C90DD)


def is_on_curve(x: mpz, y: mpz) -> bool:
    """y^2 = x^3 + 3 over F_p, for coordinates already in [0, p)."""
    return bool((y * y - x * x * x - B) % P == 0)


def affine_neg(a: Affine) -> Affine:
    """-(x, y) = (x, -y)."""
    return None if a is None else (a[0], (-a[1]) % P)


def affine_double(a: Affine) -> Affine:
    """2(x, y): lambda = 3x^2 / 2y, x' = lambda^2 - 2x, y' = lambda (x - x') - y."""
    if a is None or a[1] == 0:
        return None
    x, y = a
    lam = 3 * x * x * gmpy2.invert(2 * y, P) % P
    x3 = (lam * lam - 2 * x) % P
    return (x3, (lam * (x - x3) - y) % P)


def affine_add(a: Affine, b: Affine) -> Affine:
    """a + b with one inversion: lambda = (y2 - y1) / (x2 - x1)."""
    if a is None:
        return b
    if b is None:
        return a
    if a[0] == b[0]:
        return affine_double(a) if a[1] == b[1] else None
    lam = (b[1] - a[1]) * gmpy2.invert(b[0] - a[0], P) % P
    x3 = (lam * lam - a[0] - b[0]) % P
    return (x3, (lam * (a[0] - x3) - a[1]) % P)


def jac_from_affine(a: Affine) -> Jacobian:
    """(x, y) -> (x, y, 1)."""
    return JAC_INF if a is None else (a[0], a[1], mpz(1))


def jac_to_affine(j: Jacobian) -> Affine:
    """(X, Y, Z) -> (X/Z^2, Y/Z^3)."""
    X, Y, Z = j
    if Z == 0:
        return None
    zi = gmpy2.invert(Z, P)
    zi2 = zi * zi % P
    return (X * zi2 % P, Y * zi2 * zi % P)


def jac_batch_to_affine(points: Sequence[Jacobian]) -> list[Affine]:
    """Normalise many Jacobian points with one inversion (Montgomery's trick)."""
    live = [i for i, j in enumerate(points) if j[2] != 0]
    out: list[Affine] = [None] * len(points)
    invs = batch_inverse([points[i][2] for i in live])
    for i, zi in zip(live, invs):
        X, Y, _ = points[i]
        zi2 = zi * zi % P
        out[i] = (X * zi2 % P, Y * zi2 * zi % P)
    return out


def jac_double(j: Jacobian) -> Jacobian:
    """dbl-2009-l (a = 0) with D = 2((X+B)^2-A-C) = 4XB: B=Y^2, E=3X^2, X'=E^2-2D, Y'=E(D-X')-8B^2, Z'=2YZ."""
    X, Y, Z = j
    if Z == 0:
        return j
    Bq = Y * Y % P
    E = 3 * X * X % P
    D = 4 * X * Bq % P
    X3 = (E * E - D - D) % P
    return (X3, (E * (D - X3) - 8 * Bq * Bq) % P, 2 * Y * Z % P)


def jac_add_affine(j: Jacobian, a: Affine) -> Jacobian:
    """Mixed addition (Z2 = 1): h = x2 Z1^2 - X1, r = y2 Z1^3 - Y1, X' = r^2 - h^3 - 2 X1 h^2."""
    if a is None:
        return j
    X1, Y1, Z1 = j
    if Z1 == 0:
        return (a[0], a[1], mpz(1))
    zz = Z1 * Z1 % P
    h = (a[0] * zz - X1) % P
    r = (a[1] * Z1 * zz - Y1) % P
    if h == 0:
        return jac_double(j) if r == 0 else JAC_INF
    hh = h * h % P
    hhh = h * hh % P
    v = X1 * hh % P
    X3 = (r * r - hhh - 2 * v) % P
    return (X3, (r * (v - X3) - Y1 * hhh) % P, Z1 * h % P)


def jac_add(j1: Jacobian, j2: Jacobian) -> Jacobian:
    """add-2007-bl without the Z-tricks: U_i = X_i Z_j^2, S_i = Y_i Z_j^3, then as mixed addition."""
    X1, Y1, Z1 = j1
    X2, Y2, Z2 = j2
    if Z1 == 0:
        return j2
    if Z2 == 0:
        return j1
    z1z1 = Z1 * Z1 % P
    z2z2 = Z2 * Z2 % P
    u1 = X1 * z2z2 % P
    s1 = Y1 * Z2 * z2z2 % P
    h = (X2 * z1z1 - u1) % P
    r = (Y2 * Z1 * z1z1 - s1) % P
    if h == 0:
        return jac_double(j1) if r == 0 else JAC_INF
    hh = h * h % P
    hhh = h * hh % P
    v = u1 * hh % P
    X3 = (r * r - hhh - 2 * v) % P
    return (X3, (r * (v - X3) - s1 * hhh) % P, Z1 * Z2 % P * h % P)


def batch_add(lefts: Sequence[tuple[mpz, mpz]], rights: Sequence[tuple[mpz, mpz]]) -> list[Affine]:
    """Many independent affine additions lefts[i] + rights[i] sharing one inversion.

    Montgomery's trick inline: with d_i = x2_i - x1_i and prefix_i = d_0 ... d_{i-1}, walking back
    from inv = (d_0 ... d_{n-1})^-1 gives 1/d_i = inv * prefix_i, then inv <- inv * d_i; so
    lambda_i = (y2_i - y1_i) * inv * prefix_i. Inputs are finite points; a pair with equal x is
    doubled or cancels (None), outside the batch.
    """
    p = P
    dens = [b[0] - a[0] for a, b in zip(lefts, rights)]
    if 0 in dens:
        return _batch_add_with_special(lefts, rights, dens)
    prefix: list[mpz] = []
    keep = prefix.append
    acc = ONE
    for d in dens:
        keep(acc)
        acc = acc * d % p
    inv = gmpy2.invert(acc, p)
    out: list[Affine] = []
    put = out.append
    for (x1, y1), (x2, y2), d, pre in zip(
        reversed(lefts), reversed(rights), reversed(dens), reversed(prefix)
    ):
        lam = (y2 - y1) * inv * pre % p
        inv = inv * d % p
        x3 = (lam * lam - x1 - x2) % p
        put((x3, (lam * (x1 - x3) - y1) % p))
    out.reverse()
    return out


def _batch_add_with_special(
    lefts: Sequence[tuple[mpz, mpz]], rights: Sequence[tuple[mpz, mpz]], dens: list[mpz]
) -> list[Affine]:
    """batch_add when some pairs share x: those are added one by one, the rest batched."""
    regular = [i for i, d in enumerate(dens) if d]
    out: list[Affine] = [None] * len(dens)
    sums = batch_add([lefts[i] for i in regular], [rights[i] for i in regular]) if regular else []
    for i, s in zip(regular, sums):
        out[i] = s
    for i, d in enumerate(dens):
        if not d:
            out[i] = affine_add(lefts[i], rights[i])
    return out


def batch_add_pairs(pairs: Sequence[tuple[tuple[mpz, mpz], tuple[mpz, mpz]]]) -> list[Affine]:
    """:func:`batch_add` over a list of (a, b) pairs."""
    return batch_add([a for a, _ in pairs], [b for _, b in pairs])


def sum_lists(lists: Sequence[Sequence[tuple[mpz, mpz]]]) -> list[Affine]:
    """The sum of each list of finite affine points, as balanced trees whose levels are batched
    across all the lists: one inversion per level for everything."""
    result: list[Affine] = [None] * len(lists)
    current = [list(points) for points in lists]
    active = [i for i, points in enumerate(current) if points]
    while active:
        lefts: list[tuple[mpz, mpz]] = []
        rights: list[tuple[mpz, mpz]] = []
        plan = []
        for i in active:
            points = current[i]
            n = len(points)
            if n == 1:
                result[i] = points[0]
                continue
            half = n >> 1
            lefts += points[0 : 2 * half : 2]
            rights += points[1 : 2 * half : 2]
            plan.append((i, half, points[-1] if n & 1 else None))
        if not plan:
            break
        sums = batch_add(lefts, rights)
        active = []
        offset = 0
        for i, half, odd in plan:
            nxt = sums[offset : offset + half]
            offset += half
            if odd is not None:
                nxt.append(odd)
            if None in nxt:
                nxt = [s for s in nxt if s is not None]
            if nxt:
                current[i] = nxt  # type: ignore[assignment]
                active.append(i)
    return result


def affine_sum(points: Sequence[Affine]) -> Affine:
    """Sum of many affine points as a balanced tree, each level one batched addition."""
    return sum_lists([[pt for pt in points if pt is not None]])[0]


def _glv_basis() -> tuple[tuple[mpz, mpz], tuple[mpz, mpz]]:
    """Short basis of {(a, b): a + b*LAMBDA = 0 mod r} by the extended Euclidean algorithm (GLV 2001, §4)."""
    r0, r1 = R, LAMBDA
    t0, t1 = mpz(0), mpz(1)
    bound = gmpy2.isqrt(R)
    while r1 >= bound:
        q = r0 // r1
        r0, r1 = r1, r0 - q * r1
        t0, t1 = t1, t0 - q * t1
    # now r0 >= sqrt(r) > r1: v1 = (r1, -t1); v2 is the shorter of (r0, -t0) and the next remainder pair
    q = r0 // r1
    r2, t2 = r0 - q * r1, t0 - q * t1
    v1 = (r1, -t1)
    v2 = (r0, -t0) if r0 * r0 + t0 * t0 <= r2 * r2 + t2 * t2 else (r2, -t2)
    return v1, v2


(_A1, _B1), (_A2, _B2) = _glv_basis()
_DET = _A1 * _B2 - _A2 * _B1


def glv_split(k: mpz) -> tuple[mpz, mpz]:
    """k = k1 + k2 * LAMBDA (mod r) with |k1|, |k2| about sqrt(r): Babai rounding against the basis."""
    c1 = (2 * _B2 * k + _DET) // (2 * _DET)
    c2 = (-2 * _B1 * k + _DET) // (2 * _DET)
    return k - c1 * _A1 - c2 * _A2, -c1 * _B1 - c2 * _B2


def wnaf(k: int, w: int) -> list[tuple[int, int]]:
    """Width-w NAF of k >= 0 as (bit position, odd digit in (-2^(w-1), 2^(w-1))) pairs, low to high.

    Runs on Python ints: for scalars of about 128 bits they are faster than mpz here.
    """
    out = []
    pos = 0
    full = 1 << w
    half = full >> 1
    mask = full - 1
    k = int(k)
    while k:
        tz = (k & -k).bit_length() - 1  # skip the run of zero digits at once
        k >>= tz
        pos += tz
        d = k & mask
        if d >= half:
            d -= full
        out.append((pos, d))
        k = (k - d) >> w
        pos += w
    return out


def odd_multiples(a: tuple[mpz, mpz], count: int) -> list[tuple[mpz, mpz]]:
    """[1a, 3a, 5a, ..., (2count-1)a] in affine form (a of order r, so none is infinity)."""
    two = affine_double(a)
    out = [a]
    for _ in range(count - 1):
        nxt = affine_add(out[-1], two)
        assert nxt is not None
        out.append(nxt)
    return out


WNAF_WIDTH = 5


def scalar_mul(a: Affine, k: int) -> Jacobian:
    """k * a for a point of G1, by GLV + interleaved wNAF-5 (Straus on (a, phi(a)))."""
    k = mpz(k) % R
    if a is None or k == 0:
        return JAC_INF
    k1, k2 = glv_split(k)
    base1 = a if k1 >= 0 else (a[0], P - a[1])
    (BETA * a[0] % P, a[1] if k2 >= 0 else P - a[1])
    table1 = odd_multiples(base1, 1 << (WNAF_WIDTH - 2))
    table2 = [(BETA * x % P, y if (k1 >= 0) == (k2 >= 0) else P - y) for x, y in table1]
    return straus([(wnaf(abs(k1), WNAF_WIDTH), table1), (wnaf(abs(k2), WNAF_WIDTH), table2)])


def straus(terms: Sequence[tuple[list[tuple[int, int]], list[tuple[mpz, mpz]]]]) -> Jacobian:
    """Sum of wNAF-digit scalars times tables of odd multiples, sharing one chain of doublings."""
    top = max((digits[-1][0] for digits, _ in terms if digits), default=-1)
    if top < 0:
        return JAC_INF
    at: list[list[tuple[mpz, mpz]]] = [[] for _ in range(top + 1)]
    for digits, table in terms:
        for pos, d in digits:
            at[pos].append(table[d >> 1] if d > 0 else (table[(-d) >> 1][0], P - table[(-d) >> 1][1]))
    X, Y, Z = JAC_INF
    p = P
    for pos in range(top, -1, -1):
        if Z != 0:  # inline doubling, as jac_double
            Bq = Y * Y % p
            E = 3 * X * X % p
            D = 4 * X * Bq % p
            Z = 2 * Y * Z % p
            X = (E * E - D - D) % p
            Y = (E * (D - X) - 8 * Bq * Bq) % p
        for x2, y2 in at[pos]:
            if Z == 0:
                X, Y, Z = x2, y2, mpz(1)
                continue
            zz = Z * Z % p  # inline mixed addition
            h = (x2 * zz - X) % p
            r = (y2 * Z * zz - Y) % p
            if h == 0:
                X, Y, Z = jac_double((X, Y, Z)) if r == 0 else JAC_INF
                continue
            hh = h * h % p
            hhh = h * hh % p
            v = X * hh % p
            X3 = (r * r - hhh - 2 * v) % p
            Y = (r * (v - X3) - Y * hhh) % p
            X = X3
            Z = Z * h % p
    return (X, Y, Z)


def _self_check() -> None:
    """Curve constants checked when the module loads (py_ecc style)."""
    assert is_on_curve(*GEN)
    assert gmpy2.powmod(BETA, 3, P) == 1 and BETA != 1
    assert gmpy2.powmod(LAMBDA, 3, R) == 1 and LAMBDA != 1
    for a, b in ((_A1, _B1), (_A2, _B2)):
        assert (a + b * LAMBDA) % R == 0 and a.bit_length() <= 128 and abs(b).bit_length() <= 128


_self_check()
