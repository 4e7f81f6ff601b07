"""Tests for the zk.bn254 recipe layer: the group law, scalar multiplication and the strict encodings.

One parametrised suite states the group properties once and runs them on zk.bn254 and on a thin adapter
over py_ecc.optimized_bn128 (the reference), so the properties themselves are checked against the
reference. Point-by-point comparisons with py_ecc, mclbn256 and Ethereum's vectors are in
test_conformance_vectors.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from gmpy2 import mpz
from hypothesis import given, settings
from hypothesis import strategies as st
from py_ecc import optimized_bn128 as ref
from strategies import huge_ints

from zk import bn254, pedersen
from zk.errors import EncodingError
from zk.hash_to_curve import hash_to_curve

# Written out here rather than imported, so the checks do not share constants with the code.
P = 21888242871839275222246405745257275088696311157297823662689037894645226208583
R = 21888242871839275222246405745257275088548364400416034343698204186575808495617
LAMBDA = 0xB3C4D79D41A917585BFC41088D8DAAA78B17EA66B99C90DD

# Random-looking points with unknown discrete logs (hash_to_curve is checked in test_generators.py).
POOL: list[tuple[int, int]] = [tuple(int(c) for c in hash_to_curve(b"test/bn254/%d" % i)) for i in range(48)]
POOL += [(1, 2), (1, P - 2), tuple(int(c) for c in hash_to_curve(b"escrow.v1/pedersen/H"))]

EDGE_SCALARS = [0, 1, 2, 3, R - 1, R - 2, (R - 1) // 2, (R + 1) // 2, LAMBDA, R - LAMBDA, 2**127, 2**128 - 1]
scalars = st.one_of(st.integers(0, R - 1), st.sampled_from(EDGE_SCALARS))
any_ints = st.one_of(
    scalars,
    st.integers(-(2**300), 2**300),
    huge_ints,
    st.builds(lambda m, d: m * R + d, st.integers(-4, 4), st.integers(-3, 3)),
)
pool_points = st.sampled_from(POOL)


# --- the two implementations behind one interface ----------------------------------------------


class RefPoint:
    """py_ecc's Jacobian triples behind the operators of bn254.Point (scalars reduced mod r here)."""

    __slots__ = ("pt",)

    def __init__(self, pt: Any) -> None:
        self.pt = pt

    def __add__(self, other: RefPoint) -> RefPoint:
        return RefPoint(ref.add(self.pt, other.pt))

    def __neg__(self) -> RefPoint:
        return RefPoint(ref.neg(self.pt))

    def __sub__(self, other: RefPoint) -> RefPoint:
        return self + (-other)

    def __mul__(self, k: int) -> RefPoint:
        if isinstance(k, bool) or not isinstance(k, int):
            return NotImplemented
        return RefPoint(ref.multiply(self.pt, k % ref.curve_order))  # py_ecc recurses forever on k < 0

    __rmul__ = __mul__

    def affine(self) -> tuple[int, int] | None:
        if ref.is_inf(self.pt):
            return None
        x, y = ref.normalize(self.pt)
        return (int(x), int(y))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RefPoint) and ref.eq(self.pt, other.pt)

    def __hash__(self) -> int:
        return hash(self.affine())


def ref_from_affine(x: int, y: int) -> RefPoint:
    pt = (ref.FQ(x), ref.FQ(y), ref.FQ.one())
    if not (0 <= x < P and 0 <= y < P and ref.is_on_curve(pt, ref.b)):
        raise EncodingError("not a point")
    return RefPoint(pt)


@dataclass(frozen=True)
class Backend:
    name: str
    G: Any
    H: Any
    IDENTITY: Any
    order: int
    from_affine: Callable[[int, int], Any]
    to_affine: Callable[[Any], tuple[int, int] | None]


ZK = Backend("zk", bn254.G, bn254.H, bn254.IDENTITY, bn254.ORDER, bn254.from_affine, bn254.to_affine)
REF = Backend(
    "py_ecc",
    RefPoint(ref.G1),
    ref_from_affine(*POOL[-1]),
    RefPoint(ref.Z1),
    ref.curve_order,
    ref_from_affine,
    RefPoint.affine,
)
backends = pytest.mark.parametrize("be", [ZK, REF], ids=lambda b: b.name)


# --- the group properties, on both backends ----------------------------------------------------


@backends
def test_constants(be: Backend) -> None:
    assert be.order == R and bn254.ORDER == R and bn254.FIELD_MODULUS == P
    assert be.to_affine(be.G) == (1, 2)
    assert be.order * be.G == be.IDENTITY
    assert (be.order - 1) * be.G == -be.G
    assert be.H not in (be.G, -be.G, be.IDENTITY)
    assert be.order * be.H == be.IDENTITY
    assert be.to_affine(be.IDENTITY) is None


@backends
@given(xy=pool_points)
def test_identity_handling(be: Backend, xy: tuple[int, int]) -> None:
    pt, inf = be.from_affine(*xy), be.IDENTITY
    assert pt + inf == pt and inf + pt == pt
    assert pt - pt == inf and pt + (-pt) == inf and (-pt) + pt == inf
    assert -inf == inf and inf + inf == inf and inf - inf == inf
    assert inf - pt == -pt
    assert 0 * pt == inf and pt * 0 == inf and be.order * pt == inf and (-be.order) * pt == inf
    assert 5 * inf == inf and inf * (be.order + 1) == inf
    assert pt != inf


@backends
@given(a=pool_points, b=pool_points, c=pool_points)
def test_addition_laws(be: Backend, a: tuple[int, int], b: tuple[int, int], c: tuple[int, int]) -> None:
    A, B, C = (be.from_affine(*xy) for xy in (a, b, c))
    assert A + B == B + A
    assert (A + B) + C == A + (B + C)
    assert A - B == A + (-B)
    assert (A - B) + B == A
    neg_a = -A
    assert -neg_a == A
    assert A + A == 2 * A and A + A + A == 3 * A
    assert -(A + B) == (-A) + (-B)


@backends
@given(xy=pool_points)
def test_negation_flips_y(be: Backend, xy: tuple[int, int]) -> None:
    x, y = xy
    assert be.to_affine(-be.from_affine(x, y)) == (x, P - y)


@backends
@settings(max_examples=25)
@given(xy=pool_points, a=scalars, b=scalars)
def test_scalar_mul_laws(be: Backend, xy: tuple[int, int], a: int, b: int) -> None:
    pt = be.from_affine(*xy)
    a_pt = a * pt
    assert (a + b) * pt == a_pt + b * pt
    assert a * (b * pt) == (a * b) * pt
    assert pt * a == a_pt


@backends
@settings(max_examples=25)
@given(xy=pool_points, k=any_ints)
def test_scalar_mul_reduces_mod_order(be: Backend, xy: tuple[int, int], k: int) -> None:
    pt = be.from_affine(*xy)
    k_pt = k * pt
    assert k_pt == (k % R) * pt
    assert (-k) * pt == -k_pt


@backends
@settings(max_examples=10)
@given(xy=pool_points)
def test_scalar_mul_special_values(be: Backend, xy: tuple[int, int]) -> None:
    pt = be.from_affine(*xy)
    assert 1 * pt == pt and (R + 1) * pt == pt
    assert (R - 1) * pt == -pt and (-1) * pt == -pt
    assert 2 * pt == pt + pt


@backends
@settings(max_examples=25)
@given(a=any_ints)
def test_fixed_bases_match_plain_points(be: Backend, a: int) -> None:
    """G and H may carry precomputed tables; a*G must equal a times a fresh copy of G."""
    for base in (be.G, be.H):
        fresh = be.from_affine(*be.to_affine(base))
        assert a * base == a * fresh == base * a


@backends
@given(a=pool_points, b=pool_points)
def test_equality_and_hash(be: Backend, a: tuple[int, int], b: tuple[int, int]) -> None:
    pt_a, pt_b = be.from_affine(*a), be.from_affine(*b)
    again = (pt_a + pt_b) - pt_b  # the same point reached another way
    assert again == pt_a and hash(again) == hash(pt_a)
    assert (pt_a == pt_b) == (a == b)
    assert len({pt_a, again, -pt_a, be.IDENTITY, be.IDENTITY + be.IDENTITY}) == 3
    for other in (a, "A", 0, None):  # compares unequal to non-points instead of raising
        assert pt_a != other


def test_pedersen_edge_cases() -> None:
    assert pedersen.commit(0, 0) == bn254.IDENTITY
    assert pedersen.commit(1, 0) == bn254.G and pedersen.commit(0, 1) == bn254.H
    assert pedersen.commit(R + 5, 2 * R - 1) == 5 * bn254.G - bn254.H
    assert pedersen.commit(3, 4) + pedersen.commit(R - 3, R - 4) == bn254.IDENTITY
    assert pedersen.commit(7, 9) == 7 * bn254.G + 9 * bn254.H
    assert 0 < pedersen.random_blinding() < R


# --- point encoding ----------------------------------------------------------------------------

ENC_G = bytes.fromhex("80" + "00" * 30 + "01")
ENC_NEG_G = bytes.fromhex("c0" + "00" * 30 + "01")
ENC_IDENTITY = bytes.fromhex("40" + "00" * 31)


def _is_square(a: int) -> bool:
    return pow(a, (P - 1) // 2, P) == 1


def _first_off_curve_x(start: int) -> int:
    x = start
    while _is_square((x**3 + 3) % P):
        x += 1
    return x


OFF_CURVE_X = _first_off_curve_x(2)  # x^3 + 3 is not a square mod p: no point has this abscissa


def _enc(flag: int, x: int) -> bytes:
    return (flag << 248 | x).to_bytes(32, "big")


def test_known_encodings() -> None:
    assert bn254.point_to_bytes(bn254.G) == ENC_G == _enc(0x80, 1)
    assert bn254.point_to_bytes(-bn254.G) == ENC_NEG_G
    assert bn254.point_to_bytes(bn254.IDENTITY) == ENC_IDENTITY
    assert bn254.point_from_bytes(ENC_G) == bn254.G
    assert bn254.point_from_bytes(ENC_NEG_G) == -bn254.G
    assert bn254.point_from_bytes(ENC_IDENTITY) == bn254.IDENTITY
    assert bn254.point_from_bytes(ENC_G, allow_identity=False) == bn254.G


@given(xy=pool_points, k=scalars)
def test_encoding_round_trip(xy: tuple[int, int], k: int) -> None:
    pt = k * bn254.from_affine(*xy)
    data = bn254.point_to_bytes(pt)
    assert isinstance(data, bytes) and len(data) == 32
    assert bn254.point_from_bytes(data) == pt
    affine = bn254.to_affine(pt)
    if affine is None:
        assert data == ENC_IDENTITY
        return
    x, y = affine
    assert int.from_bytes(data, "big") & ((1 << 254) - 1) == x
    assert data[0] >> 6 == (0b10 if y < P - y else 0b11)
    assert bn254.point_to_bytes(-pt)[0] >> 6 == (0b11 if y < P - y else 0b10)


@given(
    data=st.one_of(
        st.binary(min_size=32, max_size=32),
        st.builds(_enc, st.sampled_from([0x80, 0xC0]), st.integers(0, P - 1)),
    )
)
def test_decoding_is_canonical(data: bytes) -> None:
    """Whatever decodes re-encodes to the very same bytes, and is a point of the curve."""
    try:
        pt = bn254.point_from_bytes(data)
    except EncodingError:
        return
    assert bn254.point_to_bytes(pt) == data
    xy = bn254.to_affine(pt)
    assert xy is None or (xy[1] ** 2 - xy[0] ** 3 - 3) % P == 0


def test_off_curve_x_really_is() -> None:
    assert not _is_square(3) and not _is_square((OFF_CURVE_X**3 + 3) % P) and OFF_CURVE_X < P


REJECTED_ENCODINGS = {
    "empty": b"",
    "31 bytes": ENC_G[1:],
    "33 bytes": ENC_G + b"\x00",
    "33 bytes, leading zero": b"\x00" + ENC_G,
    "64 bytes": ENC_G * 2,
    "x = p, flag 10": _enc(0x80, P),
    "x = p, flag 11": _enc(0xC0, P),
    "x = p + 1, flag 10": _enc(0x80, P + 1),
    "x = p + 1, flag 11": _enc(0xC0, P + 1),
    "x = 2^254 - 1, flag 10": _enc(0x80, 2**254 - 1),
    "x = 2^254 - 1, flag 11": _enc(0xC0, 2**254 - 1),
    "x = 0 off the curve, flag 10": _enc(0x80, 0),
    "x = 0 off the curve, flag 11": _enc(0xC0, 0),
    "x off the curve, flag 10": _enc(0x80, OFF_CURVE_X),
    "x off the curve, flag 11": _enc(0xC0, OFF_CURVE_X),
    "reserved flag 00 with x of G": _enc(0x00, 1),
    "reserved flag 00, all zero (EVM infinity)": bytes(32),
    "infinity flag with x = 1": _enc(0x40, 1),
    "infinity flag with a low bit of byte 0": _enc(0x40, 1 << 248),
    "infinity flag with x = p": _enc(0x40, P),
    "infinity flag with all low bits": b"\x7f" + b"\xff" * 31,
}


@pytest.mark.parametrize("data", REJECTED_ENCODINGS.values(), ids=REJECTED_ENCODINGS.keys())
def test_point_decoding_rejects(data: bytes) -> None:
    with pytest.raises(EncodingError):
        bn254.point_from_bytes(data)


@pytest.mark.parametrize(
    "data",
    [ENC_G.hex(), ENC_G.decode("latin-1"), 0, int.from_bytes(ENC_G, "big"), None, list(ENC_G)],
    ids=["hex str", "str", "int 0", "int", "None", "list"],
)
def test_point_decoding_rejects_non_bytes(data: Any) -> None:
    with pytest.raises(EncodingError):
        bn254.point_from_bytes(data)


def test_identity_rejected_where_forbidden() -> None:
    with pytest.raises(EncodingError):
        bn254.point_from_bytes(ENC_IDENTITY, allow_identity=False)
    assert bn254.point_from_bytes(ENC_IDENTITY, allow_identity=True) == bn254.IDENTITY


REJECTED_AFFINE = {
    "x = p": (P, 2),
    "y = p": (1, P),
    "y = p + 2 (congruent to G)": (1, P + 2),
    "x = p + 1 (congruent to G)": (P + 1, 2),
    "x < 0": (-1, 2),
    "y < 0": (1, -2),
    "y = -(p - 2)": (1, 2 - P),
    "off the curve": (1, 3),
    "(0, 0), the EVM's infinity": (0, 0),
    "x off the curve": (OFF_CURVE_X, 2),
    "huge": (2**256 + 1, 2),
}


@pytest.mark.parametrize("xy", REJECTED_AFFINE.values(), ids=REJECTED_AFFINE.keys())
def test_from_affine_rejects(xy: tuple[int, int]) -> None:
    with pytest.raises(EncodingError):
        bn254.from_affine(*xy)


@pytest.mark.parametrize(
    "xy",
    [(1.5, 2), (1.0, 2.9), (1, 2.0), (True, 2), ("1", 2)],
    ids=["x = 1.5", "y = 2.9", "y = 2.0", "bool", "str"],
)
def test_from_affine_rejects_non_integers(xy: tuple[Any, Any]) -> None:
    with pytest.raises((EncodingError, TypeError)):
        bn254.from_affine(*xy)


def test_from_affine_accepts_both_roots() -> None:
    assert bn254.from_affine(1, 2) == bn254.G and bn254.from_affine(1, P - 2) == -bn254.G
    assert bn254.from_affine(mpz(1), mpz(2)) == bn254.G
    xy = bn254.to_affine(bn254.G)
    assert xy == (1, 2) and all(type(c) is int for c in xy)


def test_points_only_come_from_validating_constructors() -> None:
    with pytest.raises(TypeError):
        bn254.Point((mpz(1), mpz(3)))
    for bad in (1.5, "2", None, True):
        with pytest.raises(TypeError):
            bad * bn254.G  # type: ignore[operator]
        with pytest.raises(TypeError):
            bn254.G * bad  # type: ignore[operator]
    with pytest.raises(TypeError):
        bn254.G + 1  # type: ignore[operator]
    assert bn254.G * mpz(5) == 5 * bn254.G == mpz(5) * bn254.G


# --- scalar encoding ---------------------------------------------------------------------------


@given(k=scalars)
def test_scalar_round_trip(k: int) -> None:
    data = bn254.scalar_to_bytes(k)
    assert data == k.to_bytes(32, "big")
    assert bn254.scalar_from_bytes(data) == k


def test_scalar_edges_accepted() -> None:
    assert bn254.scalar_from_bytes(bytes(32)) == 0
    assert bn254.scalar_from_bytes((R - 1).to_bytes(32, "big")) == R - 1
    assert bn254.scalar_to_bytes(R - 1) == (R - 1).to_bytes(32, "big")


@pytest.mark.parametrize(
    "data",
    [
        R.to_bytes(32, "big"),
        (R + 1).to_bytes(32, "big"),
        b"\xff" * 32,
        b"",
        bytes(31),
        bytes(33),
        (R - 1).to_bytes(33, "big"),
        "00" * 32,
        0,
        None,
    ],
    ids=[
        "r",
        "r + 1",
        "2^256 - 1",
        "empty",
        "31 bytes",
        "33 bytes",
        "r - 1 in 33 bytes",
        "str",
        "int",
        "None",
    ],
)
def test_scalar_decoding_rejects(data: Any) -> None:
    with pytest.raises(EncodingError):
        bn254.scalar_from_bytes(data)


@pytest.mark.parametrize("k", [R, R + 1, -1, 2**256])
def test_scalar_encoding_rejects_out_of_range(k: int) -> None:
    with pytest.raises(EncodingError):
        bn254.scalar_to_bytes(k)
