"""Tests for the hazardous lower layer: zk.field, zk.g1 (formulas, GLV, wNAF) and zk.msm.

Formulas are compared with py_ecc.optimized_bn128 on random points, on Jacobian inputs with random Z,
and on the special cases (equal points, opposite points, infinity). The MSMs are compared with a naive
sum of g1.scalar_mul results (scalar_mul itself is compared with py_ecc below), over the sizes the
protocol uses and the inputs that break bucket methods: zeros, scalars >= r, repeats, P with -P, and
sums that cancel to infinity.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from functools import cache
from typing import Any

import gmpy2
import pytest
from gmpy2 import mpz
from hypothesis import given, settings
from hypothesis import strategies as st
from py_ecc import optimized_bn128 as ref
from strategies import huge_ints

from zk import field, g1
from zk.hash_to_curve import hash_to_curve
from zk.msm import COMB_MAX_BASES, FixedBases, WindowTable, msm, msm_affine, reduce_buckets

# Written out here rather than imported, so the checks do not share constants with the code.
P = 21888242871839275222246405745257275088696311157297823662689037894645226208583
R = 21888242871839275222246405745257275088548364400416034343698204186575808495617

Affine = tuple[mpz, mpz] | None

POOL: list[tuple[mpz, mpz]] = [hash_to_curve(b"test/g1/%d" % i) for i in range(40)] + [g1.GEN]
pool_points = st.sampled_from(POOL)
maybe_points = st.one_of(st.none(), pool_points)
nonzero_z = st.integers(1, P - 1)
EDGE_SCALARS = [0, 1, 2, R - 1, R - 2, (R - 1) // 2, int(g1.LAMBDA), R - int(g1.LAMBDA), 2**128, 2**129 - 1]
scalars = st.one_of(st.integers(0, R - 1), st.sampled_from(EDGE_SCALARS))
any_ints = st.one_of(scalars, st.integers(-(2**260), 2**260), huge_ints)


def neg(a: Affine) -> Affine:
    return None if a is None else (a[0], mpz(P - a[1]))


def to_ref(a: Affine) -> Any:
    return ref.Z1 if a is None else (ref.FQ(int(a[0])), ref.FQ(int(a[1])), ref.FQ.one())


def ref_affine(pt: Any) -> tuple[int, int] | None:
    if ref.is_inf(pt):
        return None
    x, y = ref.normalize(pt)
    return (int(x), int(y))


def plain(a: Affine) -> tuple[int, int] | None:
    return None if a is None else (int(a[0]), int(a[1]))


def lift(a: Affine, z: int) -> g1.Jacobian:
    """a in Jacobian coordinates with the given Z: (x z^2, y z^3, z)."""
    if a is None:
        return (mpz(1), mpz(1), mpz(0))
    return (a[0] * z * z % P, a[1] * z * z * z % P, mpz(z))


def jaffine(j: g1.Jacobian) -> tuple[int, int] | None:
    return plain(g1.jac_to_affine(j))


def second_operand(a: Affine, kind: str, other: Affine) -> Affine:
    """The special cases of addition: b = a, b = -a, or an unrelated b (possibly None)."""
    return {"equal": a, "opposite": neg(a), "other": other}[kind]


kinds = st.sampled_from(["equal", "opposite", "other"])


# --- field -------------------------------------------------------------------------------------


@given(values=st.lists(st.integers(1, P - 1), max_size=20), modulus=st.sampled_from([P, R]))
def test_batch_inverse(values: list[int], modulus: int) -> None:
    values = [v % modulus or 1 for v in values]
    out = field.batch_inverse([mpz(v) for v in values], mpz(modulus))
    assert [int(v) for v in out] == [pow(v, -1, modulus) for v in values]


@given(a=st.integers(0, P - 1))
def test_sqrt_and_inverse(a: int) -> None:
    root = field.sqrt_p(mpz(a * a % P))
    assert root is not None and root * root % P == a * a % P
    if pow(a, (P - 1) // 2, P) == P - 1:
        assert field.sqrt_p(mpz(a)) is None
    if a:
        assert field.inv_p(mpz(a)) * a % P == 1
    assert field.P == P and field.R == R


# --- affine and Jacobian formulas against py_ecc ------------------------------------------------


@given(a=maybe_points, b=maybe_points, kind=kinds)
def test_affine_formulas(a: Affine, b: Affine, kind: str) -> None:
    b = second_operand(a, kind, b)
    assert plain(g1.affine_add(a, b)) == ref_affine(ref.add(to_ref(a), to_ref(b)))
    assert plain(g1.affine_double(a)) == ref_affine(ref.double(to_ref(a)))
    assert plain(g1.affine_neg(a)) == ref_affine(ref.neg(to_ref(a)))


@given(a=maybe_points, z=nonzero_z)
def test_jac_double(a: Affine, z: int) -> None:
    assert jaffine(g1.jac_double(lift(a, z))) == ref_affine(ref.double(to_ref(a)))


def test_jac_infinity() -> None:
    for inf in (g1.JAC_INF, (mpz(5), mpz(7), mpz(0))):
        assert g1.jac_to_affine(inf) is None
        assert g1.jac_double(inf)[2] == 0
        assert g1.jac_add(inf, inf)[2] == 0
        assert g1.jac_add_affine(inf, None)[2] == 0
    assert g1.jac_from_affine(None)[2] == 0 and g1.jac_from_affine(g1.GEN) == (1, 2, 1)


@given(a=maybe_points, b=maybe_points, kind=kinds, z1=nonzero_z, z2=nonzero_z)
def test_jac_add(a: Affine, b: Affine, kind: str, z1: int, z2: int) -> None:
    b = second_operand(a, kind, b)
    expected = ref_affine(ref.add(to_ref(a), to_ref(b)))
    assert jaffine(g1.jac_add(lift(a, z1), lift(b, z2))) == expected
    assert jaffine(g1.jac_add(lift(b, z2), lift(a, z1))) == expected
    assert jaffine(g1.jac_add_affine(lift(a, z1), b)) == expected


@given(
    pts=st.lists(st.one_of(st.none(), pool_points, pool_points.map(neg)), max_size=12),
    zs=st.lists(nonzero_z, min_size=12, max_size=12),
)
def test_jac_batch_to_affine(pts: list[Affine], zs: list[int]) -> None:
    lifted = [lift(a, z) for a, z in zip(pts, zs[: len(pts)], strict=True)]
    assert g1.jac_batch_to_affine(lifted) == pts


@given(pairs=st.lists(st.tuples(pool_points, pool_points, kinds), max_size=16))
def test_batch_add_pairs(pairs: list[tuple[Any, Any, str]]) -> None:
    operands = [(a, second_operand(a, kind, b)) for a, b, kind in pairs]
    expected = [ref_affine(ref.add(to_ref(a), to_ref(b))) for a, b in operands]
    assert [plain(s) for s in g1.batch_add_pairs(operands)] == expected


@given(pts=st.lists(st.one_of(st.none(), pool_points, pool_points.map(neg)), max_size=24))
def test_affine_sum(pts: list[Affine]) -> None:
    expected = ref.Z1
    for a in pts:
        expected = ref.add(expected, to_ref(a))
    assert plain(g1.affine_sum(pts)) == ref_affine(expected)
    assert g1.affine_sum(pts + [neg(a) for a in reversed(pts)]) is None


# --- GLV and wNAF ------------------------------------------------------------------------------

near_multiples = st.builds(
    lambda m, j, d: max(0, min(R - 1, (m * R >> j) + d)),
    st.integers(1, 7),
    st.integers(0, 254),
    st.integers(-3, 3),
)


@given(k=st.one_of(scalars, near_multiples))
def test_glv_split(k: int) -> None:
    for arg in (k, mpz(k)):
        k1, k2 = g1.glv_split(arg)
        assert (k1 + k2 * g1.LAMBDA - k) % R == 0
        assert abs(k1) < 2**129 and abs(k2) < 2**129


@pytest.mark.parametrize("k", [0, 1, R - 1, int(g1.LAMBDA), (R - 1) // 2, (R + 1) // 2])
def test_glv_split_edges(k: int) -> None:
    k1, k2 = g1.glv_split(mpz(k))
    assert (k1 + k2 * g1.LAMBDA - k) % R == 0 and abs(k1) < 2**129 and abs(k2) < 2**129


@given(k=st.one_of(st.integers(0, 2**260), st.sampled_from(EDGE_SCALARS)), w=st.integers(2, 8))
def test_wnaf(k: int, w: int) -> None:
    digits = g1.wnaf(k, w)
    assert sum(d << pos for pos, d in digits) == k
    for _, d in digits:
        assert d % 2 == 1 and abs(d) < 2 ** (w - 1)
    positions = [pos for pos, _ in digits]
    assert all(b - a >= w for a, b in itertools.pairwise(positions))
    assert positions == sorted(positions) and (not positions or positions[0] >= 0)


def test_endomorphism_constants() -> None:
    assert pow(int(g1.BETA), 3, P) == 1 and g1.BETA != 1
    assert pow(int(g1.LAMBDA), 3, R) == 1 and g1.LAMBDA != 1


@settings(max_examples=15)
@given(a=pool_points)
def test_endomorphism_is_lambda_mul(a: tuple[mpz, mpz]) -> None:
    phi = (int(g1.BETA * a[0] % P), int(a[1]))
    assert phi == ref_affine(ref.multiply(to_ref(a), int(g1.LAMBDA)))
    assert jaffine(g1.scalar_mul(a, g1.LAMBDA)) == phi


@settings(max_examples=30)
@given(a=maybe_points, k=any_ints)
def test_scalar_mul(a: Affine, k: int) -> None:
    assert jaffine(g1.scalar_mul(a, k)) == ref_affine(ref.multiply(to_ref(a), k % R))


@given(a=pool_points, count=st.integers(1, 16))
def test_odd_multiples(a: tuple[mpz, mpz], count: int) -> None:
    table = g1.odd_multiples(a, count)
    assert len(table) == count
    assert [plain(t) for t in table] == [jaffine(g1.scalar_mul(a, 2 * i + 1)) for i in range(count)]


# --- multi-scalar multiplication ---------------------------------------------------------------

SIZES = [0, 1, 2, 3, 5, 8, 9, 17, 64, 147]
BASES: list[tuple[mpz, mpz]] = [hash_to_curve(b"test/msm/%d" % i) for i in range(147)]
NEG_COUNT = 16  # ALL_BASES holds BASES, then -BASES[i] for i < NEG_COUNT
ALL_BASES = BASES + [neg(a) for a in BASES[:NEG_COUNT]]
# FixedBases uses comb tables while every index is below COMB_MAX_BASES and per-window tables past it:
# the "windows" set pads ALL_BASES beyond that bound and each call names the last base with scalar 0.
PADDING = [hash_to_curve(b"test/msm/pad/%d" % i) for i in range(COMB_MAX_BASES + 1 - len(ALL_BASES))]


def naive(points: list[Affine], ks: list[int]) -> tuple[int, int] | None:
    acc = g1.JAC_INF
    for a, k in zip(points, ks, strict=True):
        acc = g1.jac_add(acc, g1.scalar_mul(a, k))
    return jaffine(acc)


class FixedPath:
    """A FixedBases over ALL_BASES whose msm takes the comb path or the window-table path."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.bases = FixedBases(ALL_BASES + (PADDING if path == "windows" else []))

    def msm(self, ks: list[int], idx: list[int] | None = None) -> g1.Jacobian:
        if self.path == "comb":
            return self.bases.msm(ks, idx)
        last = len(self.bases.bases) - 1
        return self.bases.msm([*ks, 0], [*(range(len(ks)) if idx is None else idx), last])


@pytest.fixture(scope="module", params=["comb", "windows"])
def fixed(request: pytest.FixtureRequest) -> FixedPath:
    return FixedPath(request.param)


def test_fixed_bases_paths(fixed: FixedPath) -> None:
    """Both table layouts really are exercised (the tests below would silently test one otherwise)."""
    fixed.msm([5, 7], [0, 1])
    if fixed.path == "comb":
        assert fixed.bases.comb and not fixed.bases.tables
    else:
        assert fixed.bases.tables and len(fixed.bases.bases) > COMB_MAX_BASES


def scenario(kind: str, n: int) -> tuple[list[int], list[int]]:
    """(indices into the FixedBases above, scalars) for n terms; indices also name the points."""
    rng = random.Random(f"{kind}/{n}")
    idx = list(range(n))
    ks = [rng.randrange(R) for _ in range(n)]
    if kind == "zeros":
        ks = [0 if i % 3 == 0 else k for i, k in enumerate(ks)]
    elif kind == "all zero":
        ks = [0] * n
    elif kind == "big scalars":
        ks = [
            k + rng.choice([R, 2 * R, 7 * R, -R, -5 * R, 2**256, R << 300, -(R << 300) - 2**299]) for k in ks
        ]
    elif kind == "small scalars":
        ks = [rng.randrange(1, 20) for _ in range(n)]
    elif kind == "repeated points":
        idx = [i % 3 for i in range(n)]
    elif kind == "repeated terms":
        idx, ks = [i % 3 for i in range(n)], [ks[i % 3] for i in range(n)]
    elif kind == "P and -P":
        idx = [i // 2 if i % 2 == 0 else len(BASES) + i // 2 % NEG_COUNT for i in range(n)]
    elif kind == "k and r - k":  # each point twice, k then r - k: the sum is infinity
        idx = [i // 2 for i in range(n)]
        ks = [R - ks[i - 1] if i % 2 else ks[i] for i in range(n)]
        if n % 2:
            ks[-1] = 0
    elif kind == "P, -P, same k":  # k P + k (-P): infinity
        idx = [i // 2 if i % 2 == 0 else len(BASES) + i // 2 % NEG_COUNT for i in range(n)]
        idx = [i % NEG_COUNT if i < len(BASES) else i for i in idx]
        ks = [ks[i - 1] if i % 2 else ks[i] for i in range(n)]
        if n % 2:
            ks[-1] = 0
    return idx, ks


KINDS = [
    "random",
    "zeros",
    "all zero",
    "big scalars",
    "small scalars",
    "repeated points",
    "repeated terms",
    "P and -P",
    "k and r - k",
    "P, -P, same k",
]


@cache
def naive_scenario(kind: str, n: int) -> tuple[int, int] | None:
    idx, ks = scenario(kind, n)
    return naive([ALL_BASES[i] for i in idx], ks)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("kind", KINDS)
def test_msm(kind: str, n: int) -> None:
    idx, ks = scenario(kind, n)
    expected = naive_scenario(kind, n)
    if kind in ("all zero", "k and r - k", "P, -P, same k"):
        assert expected is None
    assert jaffine(msm([ALL_BASES[i] for i in idx], ks)) == expected
    assert plain(msm_affine([ALL_BASES[i] for i in idx], ks)) == expected


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("kind", KINDS)
def test_fixed_bases_msm(fixed: FixedPath, kind: str, n: int) -> None:
    idx, ks = scenario(kind, n)
    assert jaffine(fixed.msm(ks, idx)) == naive_scenario(kind, n)
    if idx == list(range(n)):
        assert jaffine(fixed.msm(ks)) == naive_scenario(kind, n)


@pytest.mark.parametrize("n", SIZES)
def test_fixed_bases_default_indices(n: int) -> None:
    rng = random.Random(n)
    ks = [rng.randrange(R) for _ in range(n)]
    assert jaffine(FixedBases(BASES[:n]).msm(ks)) == naive(list(BASES[:n]), ks)


def test_msm_with_identity_points() -> None:
    pts: list[Affine] = [None, BASES[0], None, BASES[1], neg(BASES[0]), None, *BASES[2:8]]
    ks = [5, 7, 11, 13, 7, 0, 1, 2, 3, R - 1, R, R + 1]
    assert jaffine(msm(pts, ks)) == naive(pts, ks)
    assert msm([None] * 20, list(range(20)))[2] == 0


def test_msm_matches_reference() -> None:
    rng = random.Random(17)
    pts, ks = BASES[:17], [rng.randrange(2**256) for _ in range(17)]
    expected = ref.Z1
    for a, k in zip(pts, ks, strict=True):
        expected = ref.add(expected, ref.multiply(to_ref(a), k % R))
    assert jaffine(msm(pts, ks)) == ref_affine(expected)


term = st.tuples(st.integers(0, len(BASES) + NEG_COUNT - 1), any_ints)


@settings(max_examples=30)
@given(terms=st.lists(term, max_size=24))
def test_msm_random(fixed: FixedPath, terms: list[tuple[int, int]]) -> None:
    idx, ks = [i for i, _ in terms], [k for _, k in terms]
    expected = naive([ALL_BASES[i] for i in idx], ks)
    assert jaffine(msm([ALL_BASES[i] for i in idx], ks)) == expected
    assert jaffine(fixed.msm(ks, idx)) == expected


@pytest.mark.slow
@settings(max_examples=300)
@given(terms=st.lists(term, max_size=160))
def test_msm_random_exhaustive(fixed: FixedPath, terms: list[tuple[int, int]]) -> None:
    idx, ks = [i for i, _ in terms], [k for _, k in terms]
    expected = naive([ALL_BASES[i] for i in idx], ks)
    assert jaffine(msm([ALL_BASES[i] for i in idx], ks)) == expected
    assert jaffine(fixed.msm(ks, idx)) == expected


@pytest.mark.slow
def test_msm_147_matches_reference() -> None:
    rng = random.Random(147)
    ks = [rng.randrange(R) for _ in BASES]
    expected = ref.Z1
    for a, k in zip(BASES, ks, strict=True):
        expected = ref.add(expected, ref.multiply(to_ref(a), k))
    assert jaffine(msm(BASES, ks)) == ref_affine(expected)


@pytest.fixture(scope="module")
def window_tables() -> list[WindowTable]:
    return [WindowTable(g1.GEN), WindowTable(BASES[0])]


@pytest.mark.parametrize(
    "k", [*EDGE_SCALARS, R, R + 1, -1, -R - 3, 2**256 - 1, 2**255, 2**264 + 5, 2**300, -(2**300), 12345]
)
def test_window_table(window_tables: list[WindowTable], k: int) -> None:
    for table in window_tables:
        assert plain(table.mul(k)) == jaffine(g1.scalar_mul(table.base, k))


@given(k=any_ints)
def test_window_table_random(window_tables: list[WindowTable], k: int) -> None:
    for table in window_tables:
        assert plain(table.mul(k)) == jaffine(g1.scalar_mul(table.base, k))


def _race(threads: int, target: Any) -> None:
    """Run ``target`` in ``threads`` threads released together (as a server's request threads are)."""
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def run() -> None:
        barrier.wait()
        try:
            target()
        except BaseException as e:  # reported below, never lost in a thread
            errors.append(e)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors


def test_window_table_built_once_under_concurrent_first_use(monkeypatch: pytest.MonkeyPatch) -> None:
    # A server's first requests all meet the unbuilt table at once; each building its own copy made
    # the first OPENs of a loaded server take seconds. One builds, the others wait and share it.
    table = WindowTable(BASES[1], window=4)
    builds = []
    original = WindowTable._build_locked

    def counting(self: WindowTable) -> None:
        builds.append(1)
        time.sleep(0.05)  # widen the window in which a racing thread would start its own build
        original(self)

    monkeypatch.setattr(WindowTable, "_build_locked", counting)
    _race(8, lambda: table.points_for(5))
    assert len(builds) == 1
    assert plain(table.mul(12345)) == jaffine(g1.scalar_mul(BASES[1], 12345))


def test_fixed_bases_extended_concurrently_stay_aligned(monkeypatch: pytest.MonkeyPatch) -> None:
    # Two threads extending at once used to append the same bases twice, so table i stopped
    # being base i's once the set grew further: wrong MSMs, not just wasted work.
    import zk.msm as msm_module

    real_double_n = msm_module.batch_double_n

    def slow_double_n(points: Any, n: int) -> Any:
        time.sleep(0.001)
        return real_double_n(points, n)

    monkeypatch.setattr(msm_module, "batch_double_n", slow_double_n)
    bases = FixedBases(list(BASES[:4]))
    _race(6, lambda: bases.extend_to(4))
    assert len(bases.tables) == 4 and len(bases.comb) == 4
    bases.bases = list(BASES[:6])
    bases.extend_to(6)
    ks = [3, 5, 7, 11, 13, 17]
    assert jaffine(bases.msm(ks)) == naive(list(BASES[:6]), ks)


@pytest.mark.parametrize("length", [1, 7, 16, 128, 130])
def test_reduce_buckets(length: int) -> None:
    rng = random.Random(length)
    buckets: list[Affine] = [rng.choice([None, *BASES[:5], neg(BASES[0])]) for _ in range(length)]
    expected = naive(buckets, list(range(1, length + 1)))
    assert plain(reduce_buckets(buckets)) == expected


def test_constants_are_consistent() -> None:
    assert gmpy2.is_prime(P) and gmpy2.is_prime(R)
    assert g1.is_on_curve(*g1.GEN) and not g1.is_on_curve(mpz(1), mpz(3))
