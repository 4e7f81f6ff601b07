"""OPEN and REDEEM requests: owners spending stealth notes, and every refusal, cheapest first."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from typing import Any

import pytest

from escrow.core.readings import session_tag
from escrow.core.settlement import proof_context
from escrow.core.spending import (
    InputNote,
    OpenBody,
    RedeemBody,
    SpendError,
    open_message,
    redeem_message,
    redeem_proof_context,
    verify_open,
    verify_redeem,
)
from zk import bn254, envelope, pedersen, rangeproof, schnorr
from zk.stealth import WalletKeys, one_time_key, sign_with_scalar

CHAIN = bytes(range(32))
WALLET = WalletKeys.from_seed(os.urandom(32))
STRANGER = WalletKeys.from_seed(os.urandom(32))
ENCLAVE_KEY_ID = hashlib.sha256(b"enclave key").digest()
NOW = 1_790_000_000
MAX_DEADLINE_MS = 4 * 3600 * 1000
R = bn254.ORDER


@dataclass(frozen=True)
class Owned:
    """A note as its owner's wallet sees it (prover side): id, opening, one-time secret scalar."""

    note_id: bytes
    value: int
    blinding: int
    secret: int
    owner_key: bytes

    @property
    def commitment(self) -> bytes:
        return bn254.point_to_bytes(pedersen.commit(self.value, self.blinding))

    def stored(self, *, spent: bool = False, is_deposit: bool = False) -> InputNote:
        """What the store holds (verifier side)."""
        return InputNote(self.commitment, self.owner_key, spent, is_deposit)


def pay(wallet: WalletKeys, value: int) -> Owned:
    """A note paid to ``wallet``'s address; the wallet recognises it and learns its secret scalar."""
    e, context = os.urandom(32), CHAIN + b"MINT"
    owner_key, ephemeral = one_time_key(wallet.address(), e, context)
    secret = wallet.recognise(owner_key, ephemeral, context)
    assert secret is not None
    return Owned(os.urandom(32), value, pedersen.random_blinding(), secret, owner_key)


NOTES = sorted([pay(WALLET, 1500), pay(WALLET, 1000)], key=lambda n: n.note_id)
IDS = [n.note_id for n in NOTES]
STORE = {n.note_id: n.stored() for n in NOTES}
TAG = session_tag(os.urandom(16))


@dataclass(frozen=True)
class OpenProver:
    """D = 2000 and change = 500 from the two notes, with the range proof (built once: proving is slow)."""

    deposit: bytes
    change: bytes
    range_proof: bytes


def _open_prover(change_shift: int = 0) -> OpenProver:
    b_d = pedersen.random_blinding()
    b_c = (sum(n.blinding for n in NOTES) - b_d + change_shift) % R
    proof = rangeproof.prove([2000, 500], [b_d, b_c], 64, proof_context("OPEN", CHAIN, TAG, IDS))
    return OpenProver(
        bn254.point_to_bytes(pedersen.commit(2000, b_d)),
        bn254.point_to_bytes(pedersen.commit(500, b_c)),
        proof,
    )


PROVER = _open_prover()
CHANGE_KEY, _ = one_time_key(WALLET.address(), os.urandom(32), CHAIN + b"change")
CHANGE_ENVELOPE = envelope.seal_opening(WALLET.address().view_public, 500, 1, CHAIN + b"change")
ENCLAVE_ENVELOPE = os.urandom(300)


def sign_all(notes: list[Owned], message: bytes) -> list[bytes]:
    return [sign_with_scalar(n.secret, message) for n in notes]


def make_open(
    prover: OpenProver = PROVER, signers: list[Owned] | None = None, **changes: Any
) -> dict[str, Any]:
    body = OpenBody(
        session_tag=TAG,
        input_note_ids=IDS,
        deposit=prover.deposit,
        change_commitment=prover.change,
        change_owner_key=CHANGE_KEY,
        change_envelope_hash=hashlib.sha256(CHANGE_ENVELOPE).digest(),
        range_proof_hash=hashlib.sha256(prover.range_proof).digest(),
        deadline=(NOW + 3600) * 1000,
        enclave_envelope_hash=hashlib.sha256(ENCLAVE_ENVELOPE).digest(),
        enclave_key_id=ENCLAVE_KEY_ID,
        expiry=NOW + 60,
    )
    raw = replace(body, **changes).to_bytes()
    return {
        "chain_id": CHAIN,
        "body": raw,
        "owner_signatures": sign_all(signers or NOTES, open_message(CHAIN, raw)),
        "range_proof": prover.range_proof,
        "change_envelope": CHANGE_ENVELOPE,
        "enclave_envelope": ENCLAVE_ENVELOPE,
        "inputs": STORE,
        "enclave_key_id": ENCLAVE_KEY_ID,
        "now_unix": NOW,
        "max_deadline_ms": MAX_DEADLINE_MS,
    }


def refused(verify: Any, request: dict[str, Any]) -> str:
    with pytest.raises(SpendError) as info:
        verify(**request)
    return info.value.reason


def test_a_valid_open_from_two_stealth_notes() -> None:
    request = make_open()
    opened = verify_open(**request)
    assert opened == OpenBody.from_bytes(request["body"]) and opened.input_note_ids == IDS
    assert opened.to_bytes() == request["body"]


ANOTHER = pay(STRANGER, 1500)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"body": b"\x00" * 10}, "SPEND_MALFORMED"),
        ({"owner_signatures": []}, "SPEND_MALFORMED"),
        ({"owner_signatures": [bytes(64)]}, "SPEND_MALFORMED"),
        ({"owner_signatures": [bytes(64), bytes(63)]}, "SPEND_MALFORMED"),
        ({"range_proof": b"short"}, "SPEND_MALFORMED"),
        ({"enclave_envelope": bytes(5000)}, "SPEND_MALFORMED"),
        ({"now_unix": NOW + 61}, "SPEND_EXPIRED"),
        ({"max_deadline_ms": 3600 * 1000 - 1}, "SPEND_DEADLINE_INVALID"),
        ({"enclave_key_id": bytes(32)}, "SPEND_WRONG_ENCLAVE_KEY"),
        ({"change_envelope": b"another envelope"}, "SPEND_ENVELOPE_MISMATCH"),
        ({"enclave_envelope": b"another envelope"}, "SPEND_ENVELOPE_MISMATCH"),
        ({"range_proof": bytes(len(PROVER.range_proof))}, "SPEND_ENVELOPE_MISMATCH"),
        ({"inputs": {IDS[0]: STORE[IDS[0]]}}, "SPEND_NOTE_NOT_FOUND"),
        ({"inputs": {**STORE, IDS[1]: NOTES[1].stored(is_deposit=True)}}, "SPEND_DEPOSIT_AS_INPUT"),
        ({"inputs": {**STORE, IDS[0]: NOTES[0].stored(spent=True)}}, "SPEND_NOTE_SPENT"),
        ({"owner_signatures": [bytes(64), bytes(64)]}, "SPEND_SIGNATURE_INVALID"),
        ({"chain_id": bytes(32)}, "SPEND_SIGNATURE_INVALID"),
    ],
)
def test_each_open_check_refuses(change: dict[str, Any], reason: str) -> None:
    assert refused(verify_open, {**make_open(), **change}) == reason


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"input_note_ids": IDS[::-1]}, "SPEND_MALFORMED"),  # unsorted
        ({"input_note_ids": [IDS[0], IDS[0]]}, "SPEND_MALFORMED"),  # the same note twice
        ({"input_note_ids": []}, "SPEND_MALFORMED"),
        ({"change_owner_key": (1).to_bytes(32, "little")}, "SPEND_MALFORMED"),  # small order
        ({"deposit": bn254.point_to_bytes(bn254.IDENTITY)}, "SPEND_MALFORMED"),
        ({"deadline": NOW * 1000}, "SPEND_DEADLINE_INVALID"),  # already passed
        ({"deadline": NOW * 1000 + MAX_DEADLINE_MS + 1}, "SPEND_DEADLINE_INVALID"),  # too far ahead
        ({"session_tag": bytes(32)}, "SPEND_PROOF_INVALID"),  # the range proof binds the session tag
    ],
)
def test_open_body_refusals(changes: dict[str, Any], reason: str) -> None:
    assert refused(verify_open, make_open(**changes)) == reason


def test_a_duplicated_input_is_refused_even_if_signed_twice() -> None:
    request = make_open(signers=[NOTES[0], NOTES[0]], input_note_ids=[IDS[0], IDS[0]])
    assert refused(verify_open, request) == "SPEND_MALFORMED"


def test_a_deposit_cannot_be_spent_as_an_input() -> None:
    """The deposit D of an earlier OPEN, referenced as an input by someone who knows its opening."""
    deposit = pay(WALLET, 2000)
    ids = sorted([IDS[0], deposit.note_id])
    signers = sorted([NOTES[0], deposit], key=lambda n: n.note_id)
    store = {**STORE, deposit.note_id: deposit.stored(is_deposit=True)}
    request = {**make_open(signers=signers, input_note_ids=ids), "inputs": store}
    assert refused(verify_open, request) == "SPEND_DEPOSIT_AS_INPUT"


def test_a_signature_from_another_owner_is_refused() -> None:
    impostor = replace(NOTES[1], secret=ANOTHER.secret)  # the stranger signs for the wallet's note
    assert refused(verify_open, make_open(signers=[NOTES[0], impostor])) == "SPEND_SIGNATURE_INVALID"
    assert refused(verify_open, make_open(signers=NOTES[::-1])) == "SPEND_SIGNATURE_INVALID"  # wrong order


def test_an_unbalanced_open_is_refused() -> None:
    """Change one blinding unit off: the range proof holds, the sum does not."""
    assert refused(verify_open, make_open(prover=_open_prover(change_shift=1))) == "SPEND_UNBALANCED"


# --- REDEEM -------------------------------------------------------------------------------------------


def make_redeem(
    notes: list[Owned] = NOTES,
    amount: int = 2500,
    signers: list[Owned] | None = None,
    proof_amount: int | None = None,
    **changes: Any,
) -> dict[str, Any]:
    ids = [n.note_id for n in notes]
    blinding = sum(n.blinding for n in notes) % R
    proof = schnorr.prove_public_amount(
        amount if proof_amount is None else proof_amount, blinding, redeem_proof_context(CHAIN, ids)
    )
    body = RedeemBody(ids, amount, "EUR", b"iban:DE00-1234", hashlib.sha256(proof).digest(), NOW + 60)
    raw = replace(body, **changes).to_bytes()
    return {
        "chain_id": CHAIN,
        "currency": "EUR",
        "body": raw,
        "owner_signatures": sign_all(signers or notes, redeem_message(CHAIN, raw)),
        "amount_proof": proof,
        "inputs": {**STORE, **{n.note_id: n.stored() for n in notes}},
        "now_unix": NOW,
    }


def test_a_valid_redeem() -> None:
    request = make_redeem()
    redeemed = verify_redeem(**request)
    assert redeemed.amount == 2500 and redeemed == RedeemBody.from_bytes(request["body"])


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"body": b"\x00" * 10}, "SPEND_MALFORMED"),
        ({"owner_signatures": [bytes(64)]}, "SPEND_MALFORMED"),
        ({"amount_proof": bytes(10)}, "SPEND_MALFORMED"),
        ({"currency": "USD"}, "SPEND_CURRENCY_MISMATCH"),
        ({"now_unix": NOW + 61}, "SPEND_EXPIRED"),
        ({"amount_proof": bytes(64)}, "SPEND_ENVELOPE_MISMATCH"),
        ({"inputs": {}}, "SPEND_NOTE_NOT_FOUND"),
        ({"inputs": {**STORE, IDS[0]: NOTES[0].stored(is_deposit=True)}}, "SPEND_DEPOSIT_AS_INPUT"),
        ({"inputs": {**STORE, IDS[1]: NOTES[1].stored(spent=True)}}, "SPEND_NOTE_SPENT"),
        ({"owner_signatures": [bytes(64), bytes(64)]}, "SPEND_SIGNATURE_INVALID"),
        ({"chain_id": bytes(32)}, "SPEND_SIGNATURE_INVALID"),
    ],
)
def test_each_redeem_check_refuses(change: dict[str, Any], reason: str) -> None:
    assert refused(verify_redeem, {**make_redeem(), **change}) == reason


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"amount": 0, "proof_amount": 1}, "SPEND_MALFORMED"),
        ({"input_note_ids": IDS[::-1]}, "SPEND_MALFORMED"),
        ({"input_note_ids": [IDS[0], IDS[0]]}, "SPEND_MALFORMED"),
        ({"amount": 2600}, "SPEND_PROOF_INVALID"),  # claims more than the notes hold
        ({"amount": 2600, "proof_amount": 2500}, "SPEND_PROOF_INVALID"),
    ],
)
def test_redeem_body_refusals(kwargs: dict[str, Any], reason: str) -> None:
    assert refused(verify_redeem, make_redeem(**kwargs)) == reason


def test_a_redeem_leaving_no_blinding_is_unbalanced() -> None:
    bare = replace(NOTES[0], blinding=0)
    store = {**STORE, bare.note_id: bare.stored()}
    request = {**make_redeem(notes=[NOTES[0]], amount=bare.value), "inputs": store}
    assert refused(verify_redeem, request) == "SPEND_UNBALANCED"


def test_knowing_the_opening_is_not_owning_the_note() -> None:
    """A party that learnt (v, b) of the wallet's notes builds a perfect proof but cannot sign for P."""
    thief = [replace(n, secret=ANOTHER.secret) for n in NOTES]
    request = make_redeem(signers=thief)
    assert refused(verify_redeem, request) == "SPEND_SIGNATURE_INVALID"
    schnorr.verify_public_amount(  # the proof itself is fine: only the signature stops the theft
        bn254.point_to_bytes(pedersen.commit(2500, sum(n.blinding for n in NOTES) % R)),
        2500,
        request["amount_proof"],
        redeem_proof_context(CHAIN, IDS),
    )


def test_a_redeem_proof_is_bound_to_its_inputs() -> None:
    other = make_redeem(notes=[NOTES[0]], amount=NOTES[0].value)
    request = make_redeem()
    forged = replace(
        RedeemBody.from_bytes(request["body"]), proof_hash=hashlib.sha256(other["amount_proof"]).digest()
    )
    raw = forged.to_bytes()
    request = {
        **request,
        "body": raw,
        "amount_proof": other["amount_proof"],
        "owner_signatures": sign_all(NOTES, redeem_message(CHAIN, raw)),
    }
    assert refused(verify_redeem, request) == "SPEND_PROOF_INVALID"
