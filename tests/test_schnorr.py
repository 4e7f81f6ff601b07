"""Schnorr proofs of knowledge of b with P = b*H: round trips, binding, and every rejection."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zk import bn254, pedersen, schnorr
from zk.errors import ProofError, ZkError
from zk.transcript import Transcript

CTX = b"escrow.v1/test/MINT/ref-1"


def _rng(seed: bytes):  # deterministic byte source for reproducible proofs
    counter = [0]

    def draw(n: int) -> bytes:
        counter[0] += 1
        return hashlib.shake_256(seed + counter[0].to_bytes(4, "big")).digest(n)

    return draw


def _statement(b: int) -> bytes:
    return bn254.point_to_bytes(b * bn254.H)


@given(st.integers(min_value=1, max_value=bn254.ORDER - 1), st.binary(max_size=64))
def test_round_trip(blinding: int, context: bytes) -> None:
    proof = schnorr.prove(blinding, context)
    assert len(proof) == schnorr.PROOF_BYTES
    schnorr.verify(_statement(blinding), proof, context)


def test_public_amount_round_trip_and_binding() -> None:
    b = 0x1234567890ABCDEF1234567890ABCDEF
    C = bn254.point_to_bytes(pedersen.commit(2_000, b))
    proof = schnorr.prove_public_amount(2_000, b, CTX)
    schnorr.verify_public_amount(C, 2_000, proof, CTX)
    with pytest.raises(ProofError):
        schnorr.verify_public_amount(C, 2_001, proof, CTX)
    with pytest.raises(ProofError):
        schnorr.verify_public_amount(C, 1_999, proof, CTX)
    # the same P = C - amount*G reached with another (C', amount') must not verify: C and amount are bound
    C_shifted = bn254.point_to_bytes(bn254.point_from_bytes(C) + 5 * bn254.G)
    with pytest.raises(ProofError):
        schnorr.verify_public_amount(C_shifted, 2_005, proof, CTX)


def test_deterministic_with_rng() -> None:
    a = schnorr.prove(777, CTX, rng=_rng(b"seed"))
    b = schnorr.prove(777, CTX, rng=_rng(b"seed"))
    assert a == b
    assert schnorr.prove(777, CTX) != schnorr.prove(777, CTX)


@pytest.mark.parametrize("position", range(schnorr.PROOF_BYTES))
def test_every_byte_of_the_proof_is_checked(position: int) -> None:
    proof = bytearray(schnorr.prove(4242, CTX, rng=_rng(b"tamper")))
    proof[position] ^= 0x01
    with pytest.raises(ProofError):
        schnorr.verify(_statement(4242), bytes(proof), CTX)


@pytest.mark.parametrize("position", range(32))
def test_every_byte_of_the_statement_is_checked(position: int) -> None:
    proof = schnorr.prove(4242, CTX)
    statement = bytearray(_statement(4242))
    statement[position] ^= 0x01
    with pytest.raises(ProofError):
        schnorr.verify(bytes(statement), proof, CTX)


def test_context_is_bound() -> None:
    proof = schnorr.prove(99, CTX)
    for other in (b"", CTX + b"\x00", CTX[:-1], b"X" + CTX[1:]):
        with pytest.raises(ProofError):
            schnorr.verify(_statement(99), proof, other)


def test_rejections() -> None:
    proof = schnorr.prove(99, CTX)
    with pytest.raises(ProofError):
        schnorr.verify(_statement(99), proof[:-1], CTX)  # short
    with pytest.raises(ProofError):
        schnorr.verify(_statement(99), proof + b"\x00", CTX)  # long
    with pytest.raises(ProofError):
        schnorr.verify(_statement(99), "not bytes", CTX)  # type: ignore[arg-type]
    with pytest.raises(ProofError):
        schnorr.verify(bn254.point_to_bytes(bn254.IDENTITY), proof, CTX)  # identity statement
    with pytest.raises(ProofError):
        schnorr.verify(_statement(99), bn254.point_to_bytes(bn254.IDENTITY) + proof[32:], CTX)  # R = O
    with pytest.raises(ProofError):
        schnorr.verify(_statement(99), proof[:32] + bn254.ORDER.to_bytes(32, "big"), CTX)  # s >= r
    with pytest.raises(ProofError):
        schnorr.verify(_statement(99), proof, "text")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        schnorr.prove(0, CTX)
    with pytest.raises(ValueError):
        schnorr.prove(bn254.ORDER, CTX)
    assert issubclass(ProofError, ZkError)


def test_public_amount_rejections() -> None:
    b = 31337
    C = bn254.point_to_bytes(pedersen.commit(10, b))
    proof = schnorr.prove_public_amount(10, b, CTX)
    for amount in (-1, 1 << 64, True, "10"):
        with pytest.raises(ProofError):
            schnorr.verify_public_amount(C, amount, proof, CTX)  # type: ignore[arg-type]
    with pytest.raises(ProofError):
        schnorr.verify_public_amount(b"\x00" * 32, 10, proof, CTX)  # reserved flag
    zero_blinding = bn254.point_to_bytes(pedersen.commit(10, 0))
    with pytest.raises(ProofError):  # C - amount*G is the identity
        schnorr.verify_public_amount(zero_blinding, 10, proof, CTX)
    with pytest.raises(ValueError):
        schnorr.prove_public_amount(1 << 64, b, CTX)


def test_caller_owned_transcript_binds_prior_items() -> None:
    t_prove = Transcript(b"app")
    t_prove.append(b"chain", b"id-1")
    proof = schnorr.prove_with_transcript(t_prove, 5)
    t_ok = Transcript(b"app")
    t_ok.append(b"chain", b"id-1")
    schnorr.verify_with_transcript(t_ok, _statement(5), proof)
    t_bad = Transcript(b"app")
    t_bad.append(b"chain", b"id-2")
    with pytest.raises(ProofError):
        schnorr.verify_with_transcript(t_bad, _statement(5), proof)
