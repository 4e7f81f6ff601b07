"""Tests for zk/rangeproof.py: completeness over every shape, sizes, rejection of every tampered byte,
the statement's transcript binding, batch verification, frozen proofs and random round trips.

The prover's side (values, blindings) and the verifier's side (a Statement: commitments, bits, context,
plus the proof as bytes) are kept apart: verifier code only ever sees a Statement and bytes.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import ShakeRng

import zk.generators
import zk.rangeproof
import zk.transcript
from zk.bn254 import point_to_bytes
from zk.errors import ProofError, ZkError
from zk.pedersen import commit
from zk.rangeproof import MAX_VALUES, prove, verify, verify_batch
from zk.transcript import Transcript

# Written out here rather than imported, so the checks below do not share constants with the code.
R = 21888242871839275222246405745257275088548364400416034343698204186575808495617
P = 21888242871839275222246405745257275088696311157297823662689037894645226208583
IDENTITY_BYTES = bytes([0x40]) + bytes(31)
FROZEN = json.loads((Path(__file__).parent / "vectors" / "rangeproof_frozen.json").read_text())


# --- the two sides ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Statement:
    """Everything the verifier knows: the commitments, the bit width and the caller's context."""

    commitments: tuple[bytes, ...]
    bits: int
    context: bytes


def prover_side(
    values: list[int],
    blindings: list[int],
    bits: int,
    context: bytes,
    rng: Callable[[int], bytes] | None = None,
) -> tuple[Statement, bytes]:
    """The prover publishes the commitments and a proof; nothing else crosses to the verifier."""
    proof = prove(values, blindings, bits, context, rng=rng)
    assert type(proof) is bytes
    commitments = tuple(point_to_bytes(commit(v, b)) for v, b in zip(values, blindings, strict=True))
    return Statement(commitments, bits, bytes(context)), proof


def verifier_side(statement: Statement, proof: bytes) -> None:
    """Raises ProofError unless the proof holds for the statement."""
    verify(list(statement.commitments), proof, statement.bits, statement.context)


def rejected(statement: Statement, proof: Any) -> bool:
    """True when verification raises ProofError (any other exception propagates and fails the test)."""
    try:
        verify(list(statement.commitments), proof, statement.bits, statement.context)
    except ProofError:
        return True
    return False


def edge_values(bits: int, m: int) -> list[int]:
    """2^n - 1, 0, something in between, 1: the first m of them."""
    top = (1 << bits) - 1
    return [top, 0, random.Random(f"value/{bits}/{m}").randrange(top), 1][:m]


def fixed_blindings(tag: str, m: int) -> list[int]:
    rnd = random.Random(f"blinding/{tag}")
    return [rnd.randrange(1, R) for _ in range(m)]


@cache
def case(bits: int, m: int) -> tuple[Statement, bytes]:
    """A valid proof for m values of `bits` bits, shared by the tests (proving costs 50 ms to 1 s)."""
    context = b"escrow.v1/tests/rangeproof/" + f"{bits}x{m}".encode()
    return prover_side(edge_values(bits, m), fixed_blindings(f"{bits}/{m}", m), bits, context)


def expected_size(bits: int, m: int) -> int:
    """32 * (9 + 2 log2(n * m_padded)), m padded to a power of two."""
    padded = 1
    while padded < m:
        padded *= 2
    log = (bits * padded).bit_length() - 1
    assert 1 << log == bits * padded
    return 32 * (9 + 2 * log)


# --- proof layout helpers -----------------------------------------------------------------------------


def chunk_kinds(proof_len: int) -> list[str]:
    """A || S || T1 || T2 || tau_x || mu || t_x || (L_j || R_j)* || a || b as 'point' / 'scalar'."""
    count = proof_len // 32
    kinds = ["point"] * 4 + ["scalar"] * 3 + ["point"] * (count - 9) + ["scalar"] * 2
    assert len(kinds) == count
    return kinds


def with_chunk(proof: bytes, index: int, chunk: bytes) -> bytes:
    assert len(chunk) == 32
    return proof[: 32 * index] + chunk + proof[32 * (index + 1) :]


def flip_bit(data: bytes, pos: int, bit: int) -> bytes:
    out = bytearray(data)
    out[pos] ^= 1 << bit
    return bytes(out)


def bit_for(pos: int) -> int:
    """Which bit to flip at byte `pos`: it varies along a chunk and from chunk to chunk (flag bits too)."""
    return (pos + 3 * (pos // 32)) % 8


def random_point(rnd: random.Random) -> bytes:
    return point_to_bytes(commit(rnd.randrange(R), rnd.randrange(1, R)))


def random_scalar(rnd: random.Random) -> bytes:
    return rnd.randrange(R).to_bytes(32, "big")


def surviving_bit_flips(statement: Statement, proof: bytes, positions: list[int]) -> list[int]:
    """The byte positions whose one-bit change is NOT rejected (should be none)."""
    return [pos for pos in positions if not rejected(statement, flip_bit(proof, pos, bit_for(pos)))]


def not_on_curve_x() -> int:
    """The smallest x with x^3 + 3 a non-residue mod p (no curve point has it)."""
    x = 1
    while pow((x**3 + 3) % P, (P - 1) // 2, P) != P - 1:
        x += 1
    return x


# --- 1. completeness and sizes ------------------------------------------------------------------------


SHAPES = [(bits, m) for bits in (8, 16, 32, 64) for m in (1, 2, 3, 4)]


@pytest.mark.parametrize(("bits", "m"), SHAPES)
def test_proofs_verify_for_every_shape(bits: int, m: int) -> None:
    statement, proof = case(bits, m)
    assert len(proof) == expected_size(bits, m)
    assert verifier_side(statement, proof) is None


@pytest.mark.parametrize("bits", [8, 16, 32, 64])
@pytest.mark.parametrize("value_kind", ["zero", "max"])
def test_edge_values_verify_alone(bits: int, value_kind: str) -> None:
    value = 0 if value_kind == "zero" else (1 << bits) - 1
    statement, proof = prover_side([value], fixed_blindings("edge", 1), bits, b"edge")
    verifier_side(statement, proof)


def test_sizes_are_672_and_736_bytes_for_one_and_two_amounts() -> None:
    assert len(case(64, 1)[1]) == 672
    assert len(case(64, 2)[1]) == 736
    assert len(case(64, 3)[1]) == len(case(64, 4)[1]) == 800  # 3 values are padded to 4


def test_proof_size_function_agrees_with_the_formula() -> None:
    for bits, m in [*SHAPES, (64, 5), (64, 33), (64, MAX_VALUES)]:
        assert zk.rangeproof.proof_size(bits, m) == expected_size(bits, m)


def test_equal_commitments_in_one_statement_verify() -> None:
    statement, proof = prover_side([5, 5], [7, 7], 8, b"ctx")
    assert statement.commitments[0] == statement.commitments[1]
    verifier_side(statement, proof)


def test_five_values_are_padded_to_eight() -> None:
    statement, proof = prover_side([0, 1, 2, 3, 255], fixed_blindings("five", 5), 8, b"ctx")
    assert len(proof) == expected_size(8, 5) == expected_size(8, 8)
    verifier_side(statement, proof)


@pytest.mark.slow
def test_the_maximum_number_of_values_verifies() -> None:
    values = [random.Random(f"max/{j}").randrange(256) for j in range(MAX_VALUES)]
    statement, proof = prover_side(values, fixed_blindings("max", MAX_VALUES), 8, b"ctx")
    assert len(proof) == expected_size(8, MAX_VALUES)
    verifier_side(statement, proof)


def test_blindings_of_zero_and_large_values_of_r_work() -> None:
    statement, proof = prover_side([7, 9], [0, R - 1], 8, b"ctx")
    verifier_side(statement, proof)


def test_the_default_rng_is_fresh_randomness() -> None:
    first, proof_1 = prover_side([5], [11], 8, b"ctx")
    second, proof_2 = prover_side([5], [11], 8, b"ctx")
    assert first == second
    assert proof_1 != proof_2
    verifier_side(first, proof_1)
    verifier_side(second, proof_2)


def test_an_explicit_rng_makes_proving_deterministic() -> None:
    def rng_for(seed: bytes) -> Callable[[int], bytes]:
        stream = hashlib.shake_256(seed).digest(1 << 16)
        position = [0]

        def rng(count: int) -> bytes:
            out = stream[position[0] : position[0] + count]
            position[0] += count
            return out

        return rng

    a = prover_side([3, 4], [5, 6], 16, b"ctx", rng=rng_for(b"seed"))
    b = prover_side([3, 4], [5, 6], 16, b"ctx", rng=rng_for(b"seed"))
    c = prover_side([3, 4], [5, 6], 16, b"ctx", rng=rng_for(b"other seed"))
    assert a == b
    assert c[1] != a[1]
    verifier_side(*a)
    verifier_side(*c)


# --- 2. the prover refuses bad input ------------------------------------------------------------------


@pytest.mark.parametrize("bits", [8, 16, 32, 64])
def test_prove_rejects_values_outside_the_range(bits: int) -> None:
    for value in (1 << bits, -1, (1 << bits) + 5, R, R - 1 if bits < 64 else -(2**64)):
        with pytest.raises(ValueError):
            prove([value], [1], bits, b"ctx")
        with pytest.raises(ValueError):
            prove([0, value], [1, 2], bits, b"ctx")  # also when it is not the first value


@pytest.mark.parametrize("value", [True, False, 1.0, "1", None, b"\x01"])
def test_prove_rejects_values_that_are_not_ints(value: Any) -> None:
    with pytest.raises(ValueError):
        prove([value], [1], 8, b"ctx")


@pytest.mark.parametrize("bits", [0, 1, 7, 9, 63, 65, 128, 256, -64])
def test_prove_rejects_unsupported_bit_widths(bits: int) -> None:
    with pytest.raises(ValueError):
        prove([0], [1], bits, b"ctx")


def test_prove_rejects_no_values_and_too_many() -> None:
    with pytest.raises(ValueError):
        prove([], [], 64, b"ctx")
    with pytest.raises(ValueError):
        prove([1] * (MAX_VALUES + 1), [1] * (MAX_VALUES + 1), 8, b"ctx")


@pytest.mark.parametrize(("m", "k"), [(2, 1), (1, 2), (1, 0), (3, 4)])
def test_prove_rejects_mismatched_lists(m: int, k: int) -> None:
    with pytest.raises(ValueError):
        prove([1] * m, [1] * k, 8, b"ctx")


# --- 3. every change to the proof or the statement is rejected -----------------------------------------


@pytest.mark.parametrize("bits", [8, 64])
def test_every_byte_of_a_single_proof_is_checked(bits: int) -> None:
    statement, proof = case(bits, 1)
    assert surviving_bit_flips(statement, proof, list(range(len(proof)))) == []


def test_a_sample_of_bytes_of_a_two_value_proof_is_checked() -> None:
    statement, proof = case(64, 2)
    positions = random.Random("sample/64/2").sample(range(len(proof)), 100)
    assert surviving_bit_flips(statement, proof, positions) == []


@pytest.mark.slow
@pytest.mark.parametrize(("bits", "m"), [(64, 2), (32, 3)])
def test_every_byte_of_an_aggregated_proof_is_checked(bits: int, m: int) -> None:
    statement, proof = case(bits, m)
    assert surviving_bit_flips(statement, proof, list(range(len(proof)))) == []


@pytest.mark.parametrize(("bits", "m"), [(8, 1), (64, 1), (16, 3)])
def test_every_chunk_replaced_by_another_valid_element_is_rejected(bits: int, m: int) -> None:
    statement, proof = case(bits, m)
    rnd = random.Random(f"chunks/{bits}/{m}")
    for index, kind in enumerate(chunk_kinds(len(proof))):
        other = random_point(rnd) if kind == "point" else random_scalar(rnd)
        assert rejected(statement, with_chunk(proof, index, other)), (index, kind)


@pytest.mark.parametrize(("bits", "m"), [(8, 1), (64, 1)])
def test_every_point_in_the_proof_negated_or_with_bad_flags_is_rejected(bits: int, m: int) -> None:
    statement, proof = case(bits, m)
    bad_x = not_on_curve_x()
    for index, kind in enumerate(chunk_kinds(len(proof))):
        if kind != "point":
            continue
        chunk = proof[32 * index : 32 * index + 32]
        x = int.from_bytes(chunk, "big") & ((1 << 254) - 1)
        variants = {
            "negated (flag 10 <-> 11)": bytes([chunk[0] ^ 0x40]) + chunk[1:],
            "reserved flag 00": bytes([chunk[0] & 0x3F]) + chunk[1:],
            "infinity flag with x != 0": bytes([(chunk[0] & 0x3F) | 0x40]) + chunk[1:],
            "identity": IDENTITY_BYTES,
            "x = p": ((2 << 254) | P).to_bytes(32, "big"),
            "x + p (non-canonical x)": ((2 << 254) | (x + P)).to_bytes(32, "big")
            if x + P < 1 << 254
            else ((2 << 254) | (1 << 254) - 1).to_bytes(32, "big"),
            "x not on the curve": ((2 << 254) | bad_x).to_bytes(32, "big"),
        }
        for name, variant in variants.items():
            assert rejected(statement, with_chunk(proof, index, variant)), (index, name)


@pytest.mark.parametrize(("bits", "m"), [(8, 1), (64, 2)])
def test_every_non_canonical_scalar_in_the_proof_is_rejected(bits: int, m: int) -> None:
    statement, proof = case(bits, m)
    for index, kind in enumerate(chunk_kinds(len(proof))):
        if kind != "scalar":
            continue
        s = int.from_bytes(proof[32 * index : 32 * index + 32], "big")
        assert s < R
        for name, value in {"s + r": s + R, "r": R, "2^256 - 1": 2**256 - 1, "s + 2r": s + 2 * R}.items():
            assert rejected(statement, with_chunk(proof, index, value.to_bytes(32, "big"))), (index, name)


def test_swapped_proof_elements_are_rejected() -> None:
    statement, proof = case(64, 1)
    chunks = [proof[i : i + 32] for i in range(0, len(proof), 32)]
    last = len(chunks) - 1
    for i, j in [(0, 1), (2, 3), (4, 5), (5, 6), (4, 6), (7, 8), (7, 9), (last - 1, last)]:
        swapped = list(chunks)
        swapped[i], swapped[j] = swapped[j], swapped[i]
        assert rejected(statement, b"".join(swapped)), (i, j)


@pytest.mark.parametrize(("bits", "m"), [(8, 1), (64, 2)])
def test_every_byte_of_every_commitment_is_checked(bits: int, m: int) -> None:
    statement, proof = case(bits, m)
    survivors = []
    for j, c in enumerate(statement.commitments):
        for pos in range(32):
            changed = list(statement.commitments)
            changed[j] = flip_bit(c, pos, bit_for(pos + 7 * j))
            if not rejected(replace(statement, commitments=tuple(changed)), proof):
                survivors.append((j, pos))
    assert survivors == []


def test_commitments_to_other_openings_are_rejected() -> None:
    statement, proof = case(8, 1)
    # The prover's secrets, used here only to build commitments the proof is NOT about.
    value, blinding = edge_values(8, 1)[0], fixed_blindings("8/1", 1)[0]
    assert statement.commitments[0] == point_to_bytes(commit(value, blinding))
    for other_value, other_blinding in [
        (value + 256, blinding),
        (value - 1, blinding),
        (value, blinding + 1),
    ]:
        other = replace(statement, commitments=(point_to_bytes(commit(other_value, other_blinding)),))
        assert rejected(other, proof), (other_value, other_blinding)


def test_a_changed_context_is_rejected() -> None:
    statement, proof = case(16, 2)
    context = statement.context
    changed = [
        flip_bit(context, 0, 0),
        flip_bit(context, len(context) // 2, 5),
        flip_bit(context, len(context) - 1, 7),
        context + b"\x00",
        context[:-1],
        b"",
        context.upper(),
    ]
    for other in changed:
        assert rejected(replace(statement, context=other), proof), other


def test_an_empty_context_is_bound_too() -> None:
    statement, proof = prover_side([1], [2], 8, b"")
    verifier_side(statement, proof)
    assert rejected(replace(statement, context=b"\x00"), proof)


@pytest.mark.parametrize(
    ("made_for", "checked_as"), [(a, b) for a in (8, 16, 32, 64) for b in (8, 16, 32, 64) if a != b]
)
def test_a_proof_for_one_bit_width_is_rejected_for_another(made_for: int, checked_as: int) -> None:
    statement, proof = case(made_for, 1)
    assert rejected(replace(statement, bits=checked_as), proof)


@pytest.mark.parametrize("bits", [0, 7, 63, 128, -8])
def test_verify_rejects_unsupported_bit_widths(bits: int) -> None:
    statement, proof = case(8, 1)
    assert rejected(replace(statement, bits=bits), proof)


def test_same_size_different_shape_is_rejected() -> None:
    # n = 16, m = 2 and n = 32, m = 1 give proofs of the same length (N = 32).
    statement, proof = case(16, 2)
    assert len(proof) == len(case(32, 1)[1])
    assert rejected(replace(statement, bits=32, commitments=statement.commitments[:1]), proof)
    assert rejected(replace(statement, bits=32), proof)


@pytest.mark.parametrize("m", [2, 3, 4])
def test_reordered_commitments_are_rejected(m: int) -> None:
    statement, proof = case(16, m)
    c = statement.commitments
    for order in [c[::-1], c[1:] + c[:1]]:
        assert rejected(replace(statement, commitments=order), proof)


def test_a_dropped_or_added_commitment_is_rejected() -> None:
    for m in (2, 3, 4):
        statement, proof = case(16, m)
        c = statement.commitments
        extra = point_to_bytes(commit(5, 6))
        for changed in [c[:-1], c[1:], (*c, extra), (extra, *c), (*c, c[0])]:
            assert rejected(replace(statement, commitments=changed), proof), (m, len(changed))


def test_implicit_padding_cannot_be_made_explicit() -> None:
    # m = 3 is padded with a commitment to (0, 0), the identity; passing it explicitly (m = 4) must fail.
    statement, proof = case(16, 3)
    assert rejected(replace(statement, commitments=(*statement.commitments, IDENTITY_BYTES)), proof)


def test_identity_commitments_are_rejected() -> None:
    statement, proof = case(8, 2)
    for j in range(2):
        changed = list(statement.commitments)
        changed[j] = IDENTITY_BYTES
        assert rejected(replace(statement, commitments=tuple(changed)), proof), j
    statement, proof = prover_side([0], [5], 8, b"ctx")
    assert rejected(replace(statement, commitments=(IDENTITY_BYTES,)), proof)


def test_a_proof_honestly_made_for_the_identity_commitment_is_rejected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The prover refuses v = 0, blinding 0; switch that guard off (it is the only any() in the module) to get
    # a proof that is otherwise valid, so that only the verifier's own identity check can reject it.
    with monkeypatch.context() as patch:
        patch.setattr(zk.rangeproof, "any", lambda _: False, raising=False)
        statement, proof = prover_side([0, 9], [0, 10], 8, b"ctx")
    assert statement.commitments[0] == IDENTITY_BYTES
    assert rejected(statement, proof)


def test_prove_refuses_a_commitment_to_the_identity() -> None:
    # v = 0 with blinding 0 (or a multiple of r) commits to the identity, which no verifier accepts.
    for blinding in (0, R, -R):
        with pytest.raises(ValueError):
            prove([0], [blinding], 8, b"ctx")
        with pytest.raises(ValueError):
            prove([3, 0], [4, blinding], 8, b"ctx")


@pytest.mark.parametrize(
    "bad",
    [b"", bytes(31), bytes(33), bytes(32), b"\x80" + bytes(31), "00" * 32, None, 5, [0] * 32],
    ids=["empty", "31", "33", "zero-flag", "x=0", "hex-str", "none", "int", "list"],
)
def test_malformed_commitments_are_rejected(bad: Any) -> None:
    statement, proof = case(8, 2)
    assert rejected(replace(statement, commitments=(statement.commitments[0], bad)), proof)


@pytest.mark.parametrize("bad", [None, b"", "commitments", 5])
def test_commitment_lists_of_the_wrong_type_are_rejected(bad: Any) -> None:
    statement, proof = case(8, 1)
    with pytest.raises(ProofError):
        verify(bad, proof, statement.bits, statement.context)
    with pytest.raises(ProofError):
        verify(statement.commitments[0], proof, statement.bits, statement.context)  # type: ignore[arg-type]


def test_no_commitments_and_too_many_are_rejected() -> None:
    statement, proof = case(8, 1)
    assert rejected(replace(statement, commitments=()), proof)
    assert rejected(replace(statement, commitments=statement.commitments * (MAX_VALUES + 1)), proof)


def test_truncated_and_extended_proofs_are_rejected() -> None:
    statement, proof = case(64, 1)
    other = case(64, 2)[1]
    for changed in [
        b"",
        proof[:-1],
        proof[:-32],
        proof[:32],
        proof[1:],
        proof + b"\x00",
        proof + proof[-32:],
        proof[:-64] + proof[7 * 32 : 9 * 32] + proof[-64:],  # one more inner-product round
        proof + proof,
        other,
    ]:
        assert rejected(statement, changed), len(changed)


@pytest.mark.parametrize("bad", [None, 0, "hex", [1, 2, 3], object()], ids=repr)
def test_proofs_of_the_wrong_type_are_rejected(bad: Any) -> None:
    statement, proof = case(8, 1)
    assert rejected(statement, bad)
    assert rejected(statement, proof.hex())
    assert rejected(statement, list(proof))


def test_errors_are_zk_errors_and_verify_never_returns_false() -> None:
    statement, proof = case(8, 1)
    with pytest.raises(ZkError):
        verifier_side(statement, flip_bit(proof, 200, 1))
    assert issubclass(ProofError, ZkError)
    assert verifier_side(statement, proof) is None


@pytest.mark.parametrize("bits", [8.0, "8", None, True, b"\x08"], ids=repr)
@pytest.mark.parametrize("batch", [False, True], ids=["verify", "verify_batch"])
def test_bit_widths_of_the_wrong_type_are_rejected(bits: Any, batch: bool) -> None:
    statement, proof = case(8, 1)
    with pytest.raises(ProofError):
        if batch:
            verify_batch([(list(statement.commitments), proof, bits, statement.context)])
        else:
            verify(list(statement.commitments), proof, bits, statement.context)


@pytest.mark.parametrize("context", ["ctx", None, 5, 0, ["c"]], ids=repr)
def test_contexts_of_the_wrong_type_are_rejected(context: Any) -> None:
    statement, proof = case(8, 1)
    with pytest.raises(ProofError):
        verify(list(statement.commitments), proof, statement.bits, context)
    with pytest.raises(ProofError, match=r"^proof 0:"):
        verify_batch([(list(statement.commitments), proof, statement.bits, context)])


def test_an_int_context_is_not_taken_for_zero_bytes() -> None:
    # bytes(5) == bytes(5 zeros): an int must not slip through as a context on either side.
    statement, proof = prover_side([1], [2], 8, bytes(5))
    verifier_side(statement, proof)
    with pytest.raises(ProofError):
        verify(list(statement.commitments), proof, statement.bits, 5)  # type: ignore[arg-type]
    with pytest.raises((TypeError, ValueError)):
        prove([1], [2], 8, 5)  # type: ignore[arg-type]


@pytest.mark.parametrize("items", [None, 0, b"", "items"], ids=repr)
def test_a_batch_that_is_not_a_list_is_rejected(items: Any) -> None:
    with pytest.raises(ProofError):
        verify_batch(items)


def test_prove_refuses_an_rng_that_returns_too_few_bytes() -> None:
    # With 1 byte per call every blinding scalar (alpha, rho, s_L, s_R, tau_1, tau_2) is below 256: the proof
    # still verifies but no longer hides the value.
    with pytest.raises(ValueError):
        prove([5], [7], 8, b"ctx", rng=lambda count: b"\x01")


# --- 4. batch verification -----------------------------------------------------------------------------


def batch_item(statement: Statement, proof: bytes) -> tuple[list[bytes], bytes, int, bytes]:
    return list(statement.commitments), proof, statement.bits, statement.context


MIXED = [(8, 1), (16, 2), (32, 3), (64, 1), (8, 4)]


def mixed_items() -> list[tuple[list[bytes], bytes, int, bytes]]:
    return [batch_item(*case(bits, m)) for bits, m in MIXED]


def test_batch_accepts_valid_proofs_of_mixed_shapes() -> None:
    items = mixed_items()
    assert len({item[3] for item in items}) == len(items)  # different contexts too
    assert verify_batch(items) is None
    assert verify_batch(items[::-1]) is None
    assert verify_batch([items[0]]) is None
    assert verify_batch([items[1], items[1]]) is None


def test_empty_batch_is_accepted() -> None:
    assert verify_batch([]) is None


def _bad_items() -> dict[str, Callable[[tuple[list[bytes], bytes, int, bytes]], tuple[Any, ...]]]:
    """Ways to spoil one batch item: some fail to decode, the others decode but do not verify."""

    def tampered_scalar(item: tuple[list[bytes], bytes, int, bytes]) -> tuple[Any, ...]:
        commitments, proof, bits, context = item
        return commitments, flip_bit(proof, 6 * 32 + 31, 0), bits, context  # t_x + or - 1

    def wrong_context(item: tuple[list[bytes], bytes, int, bytes]) -> tuple[Any, ...]:
        commitments, proof, bits, context = item
        return commitments, proof, bits, context + b"!"

    def truncated(item: tuple[list[bytes], bytes, int, bytes]) -> tuple[Any, ...]:
        commitments, proof, bits, context = item
        return commitments, proof[:-1], bits, context

    def non_canonical(item: tuple[list[bytes], bytes, int, bytes]) -> tuple[Any, ...]:
        commitments, proof, bits, context = item
        s = int.from_bytes(proof[-32:], "big")
        return commitments, proof[:-32] + (s + R).to_bytes(32, "big"), bits, context

    return {
        "tampered scalar": tampered_scalar,
        "wrong context": wrong_context,
        "truncated": truncated,
        "non-canonical": non_canonical,
    }


@pytest.mark.parametrize("spoil", list(_bad_items()))
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_batch_rejects_one_bad_proof_and_names_it(spoil: str, where: str) -> None:
    items: list[Any] = mixed_items()
    index = {"first": 0, "middle": len(items) // 2, "last": len(items) - 1}[where]
    items[index] = _bad_items()[spoil](items[index])
    with pytest.raises(ProofError, match=rf"^proof {index}:"):
        verify_batch(items)


@pytest.mark.parametrize("which", ["a", "b"])
def test_batch_weights_stop_errors_from_cancelling(which: str) -> None:
    # The final scalars a, b are not absorbed by the transcript, so two copies of one proof with a + d and
    # a - d share every challenge and their errors are exact opposites: only independent random weights
    # per proof keep the sum of two invalid proofs from being the identity.
    statement, proof = case(8, 1)
    index = len(proof) // 32 - (2 if which == "a" else 1)
    s = int.from_bytes(proof[32 * index : 32 * index + 32], "big")
    up = with_chunk(proof, index, ((s + 1) % R).to_bytes(32, "big"))
    down = with_chunk(proof, index, ((s - 1) % R).to_bytes(32, "big"))
    assert rejected(statement, up)
    assert rejected(statement, down)
    with pytest.raises(ProofError, match=r"^proof 0:"):
        verify_batch([batch_item(statement, up), batch_item(statement, down)])
    with pytest.raises(ProofError, match=r"^proof 1:"):
        verify_batch([batch_item(*case(16, 1)), batch_item(statement, up), batch_item(statement, down)])


def test_batch_rejects_proofs_swapped_between_statements() -> None:
    # Each proof is valid for the other item's statement of the same shape, so neither item verifies.
    items = [
        batch_item(*case(8, 1)),
        batch_item(*prover_side([9], [10], 8, b"other")),
        batch_item(*case(64, 1)),
    ]
    (c0, p0, b0, x0), (c1, p1, b1, x1) = items[0], items[1]
    items[0], items[1] = (c0, p1, b0, x0), (c1, p0, b1, x1)
    with pytest.raises(ProofError, match=r"^proof 0:"):
        verify_batch(items)


@pytest.mark.parametrize(
    "bad",
    [
        None,
        5,
        (),
        ("too", "short"),
        "four",
        ([b"\x00" * 32], b"", 8),
        ([b"\x00" * 32], b"", 8, b"", b"extra"),
    ],
    ids=["none", "int", "empty-tuple", "pair", "str", "three", "five"],
)
@pytest.mark.parametrize("index", [0, 2])
def test_batch_rejects_malformed_items(bad: Any, index: int) -> None:
    items: list[Any] = [batch_item(*case(8, 1)), batch_item(*case(16, 2)), batch_item(*case(8, 4))]
    items[index] = bad
    with pytest.raises(ProofError, match=rf"^proof {index}:"):
        verify_batch(items)


@pytest.mark.parametrize(
    "field_and_value",
    [(0, b"not a list"), (0, None), (0, []), (1, "hex"), (1, None), (2, 7), (2, "64"), (2, None)],
    ids=repr,
)
def test_batch_rejects_items_with_fields_of_the_wrong_kind(field_and_value: tuple[int, Any]) -> None:
    field, value = field_and_value
    items: list[Any] = [batch_item(*case(8, 1)), batch_item(*case(16, 2))]
    spoiled = list(items[1])
    spoiled[field] = value
    items[1] = tuple(spoiled)
    with pytest.raises(ProofError, match=r"^proof 1:"):
        verify_batch(items)


# --- 5. frozen proofs ---------------------------------------------------------------------------------


VECTOR_IDS = [v["name"] for v in FROZEN["vectors"]]


def test_frozen_vectors_are_for_the_current_protocol_version() -> None:
    assert zk.rangeproof.PROTOCOL.decode() == FROZEN["protocol"], (
        "the protocol version changed: regenerate tests/vectors/rangeproof_frozen.json with "
        "tests/vectors/make_rangeproof_frozen.py --write (and only then)"
    )
    shapes = {(v["bits"], len(v["values"])) for v in FROZEN["vectors"]}
    assert {bits for bits, _ in shapes} == {8, 16, 32, 64}
    assert any(m == 3 for _, m in shapes)  # a padded shape


@pytest.mark.parametrize("vector", FROZEN["vectors"], ids=VECTOR_IDS)
def test_frozen_proof_still_verifies(vector: dict[str, Any]) -> None:
    statement = Statement(
        tuple(bytes.fromhex(c) for c in vector["commitments"]),
        vector["bits"],
        bytes.fromhex(vector["context"]),
    )
    proof = bytes.fromhex(vector["proof"])
    assert len(proof) == expected_size(statement.bits, len(statement.commitments))
    verifier_side(statement, proof)
    assert rejected(replace(statement, context=statement.context + b"\x00"), proof)


@pytest.mark.parametrize("vector", FROZEN["vectors"], ids=VECTOR_IDS)
def test_frozen_proof_is_reproduced_byte_for_byte(vector: dict[str, Any]) -> None:
    values = [int(v) for v in vector["values"]]
    blindings = [int(b, 16) for b in vector["blindings"]]
    rng = ShakeRng(bytes.fromhex(vector["rng_seed"]))
    statement, proof = prover_side(
        values, blindings, vector["bits"], bytes.fromhex(vector["context"]), rng=rng
    )
    assert [c.hex() for c in statement.commitments] == vector["commitments"]
    assert proof.hex() == vector["proof"]


def test_frozen_proofs_verify_as_one_batch() -> None:
    items = [
        (
            [bytes.fromhex(c) for c in v["commitments"]],
            bytes.fromhex(v["proof"]),
            v["bits"],
            bytes.fromhex(v["context"]),
        )
        for v in FROZEN["vectors"]
    ]
    verify_batch(items)


# --- 6. transcript binding: changing any bound item makes verification fail ---------------------------


class _Absorbed:
    """Patches Transcript.append (for every transcript, wherever it is made) to record what is absorbed
    as (label, occurrence) and optionally to change the data of one such message by one bit."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, target: tuple[bytes, int] | None = None) -> None:
        self.seen: list[tuple[bytes, bytes]] = []
        self.target = target
        original = Transcript.append
        absorbed = self

        def append(t: Transcript, label: bytes, data: bytes) -> None:
            data = bytes(data)
            key = (bytes(label), sum(1 for lab, _ in absorbed.seen if lab == label))
            absorbed.seen.append((bytes(label), data))
            if key == absorbed.target:
                data = flip_bit(data, len(data) - 1, 0) if data else b"\x00"
            original(t, label, data)

        monkeypatch.setattr(Transcript, "append", append)

    def keys(self) -> list[tuple[bytes, int]]:
        counts: dict[bytes, int] = {}
        out = []
        for label, _ in self.seen:
            out.append((label, counts.get(label, 0)))
            counts[label] = counts.get(label, 0) + 1
        return out


def _rejected_with(monkeypatch: pytest.MonkeyPatch, target: tuple[bytes, int] | None) -> bool:
    statement, proof = case(16, 3)  # proved before anything is patched
    with monkeypatch.context() as patch:
        _Absorbed(patch, target)
        return rejected(statement, proof)


def _absorbed_by_honest_verification(monkeypatch: pytest.MonkeyPatch) -> _Absorbed:
    statement, proof = case(16, 3)
    with monkeypatch.context() as patch:
        absorbed = _Absorbed(patch)
        verifier_side(statement, proof)
    return absorbed


# What the verifier's transcript must absorb for a (16 bits, m = 3) proof: the statement, including the
# implicit padding commitment V[3], then the proof's messages.
STATEMENT_ITEMS = [
    (b"protocol", 0),
    (b"n", 0),
    (b"m", 0),
    (b"m_padded", 0),
    (b"generators", 0),
    (b"context", 0),
    (b"V", 0),
    (b"V", 1),
    (b"V", 2),
    (b"V", 3),
]
PROOF_ITEMS = [(b"A", 0), (b"S", 0), (b"T1", 0), (b"T2", 0), (b"t_x", 0), (b"tau_x", 0), (b"mu", 0)]
PROOF_ITEMS += [(b"L", j) for j in range(6)] + [(b"R", j) for j in range(6)]


def test_the_patched_transcript_itself_does_not_break_verification(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not _rejected_with(monkeypatch, None)


def test_the_statement_is_absorbed_with_the_expected_values(monkeypatch: pytest.MonkeyPatch) -> None:
    statement, _ = case(16, 3)
    absorbed = _absorbed_by_honest_verification(monkeypatch)
    assert set(STATEMENT_ITEMS + PROOF_ITEMS) <= set(absorbed.keys())
    values = dict(zip(absorbed.keys(), (data for _, data in absorbed.seen), strict=True))
    assert values[(b"protocol", 0)] == zk.rangeproof.PROTOCOL
    assert values[(b"n", 0)] == (16).to_bytes(8, "big")
    assert values[(b"m", 0)] == (3).to_bytes(8, "big")
    assert values[(b"m_padded", 0)] == (4).to_bytes(8, "big")
    assert values[(b"generators", 0)] == zk.generators.generator_set_hash(16 * 4)
    assert values[(b"context", 0)] == statement.context
    assert [values[(b"V", j)] for j in range(4)] == [*statement.commitments, IDENTITY_BYTES]
    # Everything in the statement is absorbed before the first message of the proof.
    keys = absorbed.keys()
    assert max(keys.index(item) for item in STATEMENT_ITEMS) < keys.index((b"A", 0))


@pytest.mark.parametrize("target", STATEMENT_ITEMS + PROOF_ITEMS, ids=lambda t: f"{t[0].decode()}[{t[1]}]")
def test_every_bound_item_is_bound(monkeypatch: pytest.MonkeyPatch, target: tuple[bytes, int]) -> None:
    assert _rejected_with(monkeypatch, target)


def test_everything_the_verifier_absorbs_is_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    # Also covers anything absorbed that the list above does not name.
    keys = _absorbed_by_honest_verification(monkeypatch).keys()
    assert [key for key in keys if not _rejected_with(monkeypatch, key)] == []


def test_the_recipe_transcript_protocol_is_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    statement, proof = case(16, 2)
    monkeypatch.setattr(zk.transcript, "RECIPE_PROTOCOL", zk.transcript.RECIPE_PROTOCOL + b"-other")
    assert rejected(statement, proof)


def test_the_protocol_version_is_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    statement, proof = case(16, 2)
    original = zk.rangeproof.PROTOCOL
    with monkeypatch.context() as patch:
        patch.setattr(zk.rangeproof, "PROTOCOL", original.replace(b"/v1", b"/v2"))
        assert rejected(statement, proof)
        other_statement, other_proof = prover_side([1, 2], [3, 4], 16, b"ctx")  # made under "v2"
        verifier_side(other_statement, other_proof)
    assert original == zk.rangeproof.PROTOCOL
    assert rejected(other_statement, other_proof)


def test_the_generator_set_is_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    statement, proof = case(16, 2)
    real = zk.generators.generator_set_hash

    def other_set(count: int) -> bytes:
        return hashlib.sha256(b"another generator set" + real(count)).digest()

    monkeypatch.setattr(zk.generators, "generator_set_hash", other_set)
    assert rejected(statement, proof)
    monkeypatch.setattr(zk.generators, "generator_set_hash", real)
    verifier_side(statement, proof)


def test_the_generator_set_hash_depends_on_the_count() -> None:
    hashes = {zk.generators.generator_set_hash(count) for count in (8, 16, 32, 64, 128, 256)}
    assert len(hashes) == 6


# --- 7. random round trips ---------------------------------------------------------------------------


@st.composite
def _witnesses(draw: st.DrawFn) -> tuple[list[int], list[int], int, bytes]:
    bits = draw(st.sampled_from([8, 16, 32, 64]))
    m = draw(st.integers(1, 2))
    values = draw(st.lists(st.integers(0, (1 << bits) - 1), min_size=m, max_size=m))
    blindings = draw(st.lists(st.integers(1, R - 1), min_size=m, max_size=m))
    context = draw(st.binary(max_size=64))
    return values, blindings, bits, context


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_witnesses())
def test_random_proofs_round_trip(witness: tuple[list[int], list[int], int, bytes]) -> None:
    statement, proof = prover_side(*witness)
    assert len(proof) == expected_size(statement.bits, len(statement.commitments))
    verifier_side(statement, bytes(bytearray(proof)))
    assert rejected(replace(statement, context=statement.context + b"\x01"), proof)
