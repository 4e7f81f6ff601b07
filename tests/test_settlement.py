"""OPEN and SETTLE conserve value: the balance equations, their proofs, and every refusal."""

from __future__ import annotations

import os
from typing import Any

import pytest

from escrow.core.settlement import (
    SettlementError,
    proof_context,
    split_deposit,
    verify_open_balance,
    verify_split,
)
from zk import bn254, pedersen, rangeproof

CHAIN = bytes(range(32))
TAG = os.urandom(32)
NOTES = [os.urandom(32), os.urandom(32)]
OPEN_CTX = proof_context("OPEN", CHAIN, TAG, NOTES)
SETTLE_CTX = proof_context("SETTLE", CHAIN, TAG, [])
R = bn254.ORDER


def enc(value: int, blinding: int) -> bytes:
    return bn254.point_to_bytes(pedersen.commit(value, blinding))


def open_case(change_value: int = 500, change_shift: int = 0) -> dict[str, Any]:
    """Two notes (1500, 1000) into a deposit of 2000 and change of 500 (prover side)."""
    b1, b2, b_d = (pedersen.random_blinding() for _ in range(3))
    b_c = (b1 + b2 - b_d + change_shift) % R
    proof = rangeproof.prove([2000, change_value], [b_d, b_c], 64, OPEN_CTX)
    return {
        "inputs": [enc(1500, b1), enc(1000, b2)],
        "deposit": enc(2000, b_d),
        "change": enc(change_value, b_c),
        "range_proof": proof,
        "context": OPEN_CTX,
    }


def test_open_balances() -> None:
    verify_open_balance(**open_case())


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ({"change_value": 600}, "BALANCE_UNBALANCED"),  # value created out of nothing
        ({"change_shift": 1}, "BALANCE_UNBALANCED"),
    ],
)
def test_open_refusals(case: dict[str, int], reason: str) -> None:
    with pytest.raises(SettlementError) as info:
        verify_open_balance(**open_case(**case))
    assert info.value.reason == reason


def test_open_refuses_foreign_proofs_and_malformed_input() -> None:
    good = open_case()
    other = open_case()
    for change, reason in [
        ({"range_proof": other["range_proof"]}, "BALANCE_RANGE_PROOF_INVALID"),
        ({"context": proof_context("OPEN", CHAIN, TAG, NOTES[::-1])}, "BALANCE_RANGE_PROOF_INVALID"),
        ({"inputs": []}, "BALANCE_MALFORMED"),
        ({"inputs": good["inputs"] * 9}, "BALANCE_MALFORMED"),
        ({"deposit": b"\x00" * 32}, "BALANCE_MALFORMED"),
        ({"change": bn254.point_to_bytes(bn254.IDENTITY)}, "BALANCE_MALFORMED"),
    ]:
        with pytest.raises(SettlementError) as info:
            verify_open_balance(**{**good, **change})
        assert info.value.reason == reason


def test_a_negative_change_cannot_be_range_proved() -> None:
    """1000 in, 2000 out, change -1000: the balance holds mod r, but no range proof exists for it."""
    b1, b_d = pedersen.random_blinding(), pedersen.random_blinding()
    b_c = (b1 - b_d) % R
    with pytest.raises(ValueError):
        rangeproof.prove([2000, R - 1000], [b_d, b_c], 64, OPEN_CTX)
    stolen = rangeproof.prove([2000, 0], [b_d, b_c], 64, OPEN_CTX)  # a proof for other commitments
    with pytest.raises(SettlementError, match="BALANCE_RANGE_PROOF_INVALID"):
        verify_open_balance([enc(1000, b1)], enc(2000, b_d), enc(R - 1000, b_c), stolen, OPEN_CTX)


@pytest.fixture(scope="module")
def split() -> tuple[bytes, Any]:
    b_d = pedersen.random_blinding()
    return enc(2000, b_d), split_deposit(2000, b_d, 1463, SETTLE_CTX)


def test_settle_conserves_value(split: tuple[bytes, Any]) -> None:
    deposit, s = split
    verify_split(
        deposit, s.pole_commitment, s.refund_commitment, s.excess, s.range_proof, s.excess_proof, SETTLE_CTX
    )
    assert s.pole_opening[0] == 1463 and s.refund_opening[0] == 537
    assert enc(*s.pole_opening) == s.pole_commitment and enc(*s.refund_opening) == s.refund_commitment
    assert "1463" not in repr(s)


def test_settle_refusals(split: tuple[bytes, Any]) -> None:
    deposit, s = split
    args = [
        deposit,
        s.pole_commitment,
        s.refund_commitment,
        s.excess,
        s.range_proof,
        s.excess_proof,
        SETTLE_CTX,
    ]
    other = split_deposit(2000, pedersen.random_blinding(), 1000, SETTLE_CTX)
    cases = [
        ({1: s.refund_commitment, 2: s.pole_commitment}, "BALANCE_EXCESS_PROOF_INVALID"),  # swapped: bound
        ({3: other.excess}, "BALANCE_UNBALANCED"),
        ({0: enc(2001, 5)}, "BALANCE_UNBALANCED"),
        ({5: other.excess_proof}, "BALANCE_EXCESS_PROOF_INVALID"),
        ({4: other.range_proof}, "BALANCE_RANGE_PROOF_INVALID"),
        ({6: proof_context("SETTLE", CHAIN, os.urandom(32), [])}, "BALANCE_EXCESS_PROOF_INVALID"),
        ({3: bn254.point_to_bytes(bn254.IDENTITY)}, "BALANCE_MALFORMED"),
    ]
    for change, reason in cases:
        call = list(args)
        for i, v in change.items():
            call[i] = v
        with pytest.raises(SettlementError) as info:
            verify_split(*call)
        assert info.value.reason == reason, change


@pytest.mark.parametrize(("deposit", "pole"), [(100, 101), (100, -1), (1 << 64, 1)])
def test_split_refuses_impossible_amounts(deposit: int, pole: int) -> None:
    with pytest.raises(SettlementError, match="BALANCE_MALFORMED"):
        split_deposit(deposit, 7, pole, SETTLE_CTX)


def test_full_refund_and_full_pay_are_fine() -> None:
    for pole in (0, 2000):
        b_d = pedersen.random_blinding()
        s = split_deposit(2000, b_d, pole, SETTLE_CTX)
        verify_split(
            enc(2000, b_d),
            s.pole_commitment,
            s.refund_commitment,
            s.excess,
            s.range_proof,
            s.excess_proof,
            SETTLE_CTX,
        )
