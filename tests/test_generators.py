"""Tests for zk.hash_to_curve and zk.generators: frozen generator encodings and an independent derivation.

The reference below re-implements the documented derivation (try-and-increment over SHA-512 with
length-prefixed DST and label, smaller root) with Python ints only, so a silent change of label,
DST, counter width, root choice or ordering shows up here as well as in the frozen hex.
"""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zk import bn254, generators
from zk.g1 import jac_to_affine, scalar_mul
from zk.hash_to_curve import DST, hash_to_curve

P = 21888242871839275222246405745257275088696311157297823662689037894645226208583
R = 21888242871839275222246405745257275088548364400416034343698204186575808495617

# Computed once from the code and frozen: changing any of these breaks every stored commitment and proof.
FROZEN_H = "a3d88265acf57740bab6bbdb5467bd02a7eda5d5b71783fced5860da3876a600"
FROZEN_G_VEC = [
    "9f15c01572cee475197c3e2b8d4fad2c99b8d80d955453350f2a99e72e07af5e",
    "9486be60fe5d7d67d12025004c0622377cffc2ba2c67066eb78a4d18e0e3cc5e",
    "a4d4fde8da09c3348b3b105985494d76808c8e7d5aeb13fd44309deda9c1a3b3",
    "820218cf529a5acda174b948b6da847d5da73762341c40965fbeb6e2b671c2c9",
]
FROZEN_H_VEC = [
    "a5607964cfc4a48b2f8dad978685a5c01d23f7897a57dbaa29293c75c7290a82",
    "861606c892f1d89683a48b24327d07a0c27431807b86041acfe683bba3d26d7b",
    "8c4b03f355b888e7e2e48888229c36a75e0938c4b83af446c09aae8b8a6641a5",
    "8addcdfdf4d64b6a56e50de344b279336dbae67a79443ad51568e3940b22c13b",
]
FROZEN_SET_HASH_4 = "a53a33f454f390f308a4b9649dfff9a94429fc03a85f04d61d4f701b0e2fb36a"


def ref_hash_to_curve(label: bytes) -> tuple[int, int]:
    """The derivation of zk/hash_to_curve.py's docstring, written from the text with plain ints."""
    dst = b"escrow.v1/hash-to-curve/bn254-g1/sha512-try-and-increment"
    prefix = len(dst).to_bytes(4, "big") + dst + len(label).to_bytes(4, "big") + label
    for counter in range(1 << 16):
        x = int.from_bytes(hashlib.sha512(prefix + counter.to_bytes(4, "big")).digest(), "big") % P
        rhs = (x**3 + 3) % P
        if pow(rhs, (P - 1) // 2, P) == 1:
            y = pow(rhs, (P + 1) // 4, P)
            return x, min(y, P - y)
    raise AssertionError("unreachable")


def encode(xy: tuple[int, int]) -> str:
    return bn254.point_to_bytes(bn254.from_affine(int(xy[0]), int(xy[1]))).hex()


def ref_encode(xy: tuple[int, int]) -> str:
    x, y = xy
    return ((0x80 if y < P - y else 0xC0) << 248 | x).to_bytes(32, "big").hex()


def test_frozen_encodings() -> None:
    assert bn254.point_to_bytes(bn254.H).hex() == FROZEN_H
    assert [encode(xy) for xy in generators.vector_G(4)] == FROZEN_G_VEC
    assert [encode(xy) for xy in generators.vector_H(4)] == FROZEN_H_VEC
    assert generators.generator_set_hash(4).hex() == FROZEN_SET_HASH_4


def test_reference_derivation_matches() -> None:
    assert DST == b"escrow.v1/hash-to-curve/bn254-g1/sha512-try-and-increment"
    assert ref_encode(ref_hash_to_curve(b"escrow.v1/pedersen/H")) == FROZEN_H
    for i in range(8):
        idx = i.to_bytes(4, "big")
        assert generators.vector_G(8)[i] == ref_hash_to_curve(b"escrow.v1/bulletproofs/G/" + idx)
        assert generators.vector_H(8)[i] == ref_hash_to_curve(b"escrow.v1/bulletproofs/H/" + idx)
    assert [
        ref_encode(ref_hash_to_curve(b"escrow.v1/bulletproofs/G/" + i.to_bytes(4, "big"))) for i in range(4)
    ] == FROZEN_G_VEC


def test_generators_are_valid_and_distinct() -> None:
    n = 16
    points = [(1, 2), bn254.to_affine(bn254.H), *generators.vector_G(n), *generators.vector_H(n)]
    for x, y in points:
        assert 0 <= x < P and 0 < y < P
        assert (y * y - x**3 - 3) % P == 0
        assert y < P - y or (x, y) == (1, 2)  # hash-to-curve picks the smaller root
    xs = {int(x) for x, _ in points}
    assert len(xs) == len(points)  # distinct up to sign, so none is another's negation either
    assert len({encode(xy) for xy in points}) == len(points)
    assert bn254.H not in (bn254.G, -bn254.G, bn254.IDENTITY)
    for xy in points[1:]:
        assert bn254.from_affine(int(xy[0]), int(xy[1])) not in (bn254.G, -bn254.G)
        assert jac_to_affine(scalar_mul(xy, R)) is None  # prime order: the point is in G1


def test_vectors_are_prefix_stable() -> None:
    assert generators.vector_G(2) == generators.vector_G(6)[:2]
    assert generators.vector_H(3) == generators.vector_H(5)[:3]
    assert generators.vector_G(0) == [] == generators.vector_H(0)


def test_hash_to_curve_is_deterministic_and_label_sensitive() -> None:
    assert hash_to_curve(b"label") == hash_to_curve(b"label")
    assert hash_to_curve(b"label") != hash_to_curve(b"label2")
    assert hash_to_curve(b"") != hash_to_curve(b"\x00")
    assert hash_to_curve(b"ab") != hash_to_curve(b"a")


@given(a=st.binary(max_size=40), b=st.binary(max_size=40))
def test_hash_to_curve_labels(a: bytes, b: bytes) -> None:
    pa, pb = hash_to_curve(a), hash_to_curve(b)
    assert pa == ref_hash_to_curve(a)
    assert (pa == pb) == (a == b)


def test_generator_set_hash() -> None:
    hashes = [generators.generator_set_hash(n) for n in (0, 1, 2, 4, 8, 64)]
    assert all(len(h) == 32 for h in hashes)
    assert len(set(hashes)) == len(hashes)
    assert generators.generator_set_hash(4) == generators.generator_set_hash(4)
    # recomputed from the docstring's definition
    h = hashlib.sha256(b"escrow.v1/generator-set/v1" + (4).to_bytes(4, "big"))
    h.update(bytes.fromhex("80" + "00" * 30 + "01") + bytes.fromhex(FROZEN_H))
    for g_hex, h_hex in zip(FROZEN_G_VEC, FROZEN_H_VEC, strict=True):
        h.update(bytes.fromhex(g_hex) + bytes.fromhex(h_hex))
    assert h.hexdigest() == FROZEN_SET_HASH_4


def test_generator_count_is_bounded() -> None:
    with pytest.raises(ValueError):
        generators.vector_G(generators.MAX_GENERATORS + 1)
    with pytest.raises(ValueError):
        generators.fixed_bases(generators.MAX_GENERATORS + 1)
    assert len(generators.vector_G(4)) == 4  # the failed call left the cache intact


def test_fixed_bases_layout() -> None:
    """Index 0 is G, 1 is H, then G_0, H_0, G_1, H_1, ...: a fixed-base MSM equals the naive sum."""
    n = 8
    fixed = generators.fixed_bases(n)
    rng = random.Random(8)
    idx = [generators.INDEX_VALUE_BASE, generators.INDEX_BLINDING_BASE]
    idx += [generators.index_G(i) for i in range(n)] + [generators.index_H(i) for i in range(n)]
    bases = [(1, 2), bn254.to_affine(bn254.H), *generators.vector_G(n), *generators.vector_H(n)]
    ks = [rng.randrange(R) for _ in idx]
    expected = bn254.IDENTITY
    for (x, y), k in zip(bases, ks, strict=True):
        expected = expected + k * bn254.from_affine(int(x), int(y))
    assert jac_to_affine(fixed.msm(ks, idx)) == expected.xy
    assert jac_to_affine(fixed.msm([3, 5], [0, 1])) == (3 * bn254.G + 5 * bn254.H).xy
