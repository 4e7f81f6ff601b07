"""MINT requests: an issuer-signed, proof-carrying note for a one-time key, and every refusal."""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from typing import Any

import pytest

from escrow.core.notes import MintBody, MintError, mint_message, note_id, verify_mint
from escrow.core.signing import ed25519_key_id, ed25519_public_key, ed25519_sign
from zk import bn254, envelope, pedersen, schnorr
from zk.stealth import WalletKeys, one_time_key

CHAIN = bytes(range(32))
ISSUER_SEED = bytes(range(64, 96))
ISSUER = ed25519_public_key(ISSUER_SEED)
KEYS = {ed25519_key_id(ISSUER): ISSUER}
WALLET = WalletKeys.from_seed(os.urandom(32))
NOW = 1_790_000_000


def make(amount: int = 2_000, *, body_amount: int | None = None, **changes: Any) -> dict[str, Any]:
    blinding = pedersen.random_blinding()
    e = os.urandom(32)
    owner, _ = one_time_key(WALLET.address(), e, CHAIN + b"MINT")
    sealed = envelope.seal_opening(
        WALLET.address().view_public, amount, blinding, CHAIN + b"MINT", ephemeral_private=e
    )
    body = MintBody(
        mint_reference=b"order-" + os.urandom(8).hex().encode(),
        amount=amount,
        currency="EUR",
        commitment=bn254.point_to_bytes(pedersen.commit(amount, blinding)),
        owner_key=owner,
        envelope_hash=hashlib.sha256(sealed).digest(),
        issuer_key_id=ed25519_key_id(ISSUER),
        expiry=NOW + 600,
    )
    body = replace(body, **changes)
    if body_amount is not None:
        body = replace(body, amount=body_amount)
    raw = body.to_bytes()
    message = mint_message(CHAIN, raw)
    return {
        "chain_id": CHAIN,
        "issuer_keys": KEYS,
        "currency": "EUR",
        "body": raw,
        "issuer_signature": ed25519_sign(ISSUER_SEED, message),
        "envelope": sealed,
        "amount_proof": schnorr.prove_public_amount(amount, blinding, message),
        "now_unix": NOW,
    }


def test_a_valid_mint_and_its_note() -> None:
    request = make()
    mint = verify_mint(**request)
    assert mint.amount == 2_000 and MintBody.from_bytes(request["body"]) == mint
    entry_hash = os.urandom(32)
    assert note_id(entry_hash, 0) != note_id(entry_hash, 1) and len(note_id(entry_hash, 0)) == 32
    # the owner finds the note and opens it
    x = WALLET.recognise(mint.owner_key, request["envelope"][1:33], CHAIN + b"MINT")
    assert x is not None
    value, _ = envelope.open_opening(WALLET.view_private, request["envelope"], CHAIN + b"MINT")
    assert value == 2_000


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"body": b"\x00" * 10}, "MINT_MALFORMED"),
        ({"issuer_keys": {}}, "MINT_ISSUER_UNKNOWN"),
        ({"currency": "USD"}, "MINT_CURRENCY_MISMATCH"),
        ({"now_unix": NOW + 601}, "MINT_EXPIRED"),
        ({"envelope": b"another envelope"}, "MINT_ENVELOPE_MISMATCH"),
        ({"issuer_signature": bytes(64)}, "MINT_SIGNATURE_INVALID"),
        ({"chain_id": bytes(32)}, "MINT_SIGNATURE_INVALID"),
        ({"amount_proof": bytes(64)}, "MINT_PROOF_INVALID"),
    ],
)
def test_each_check_refuses(change: dict[str, Any], reason: str) -> None:
    request = {**make(), **change}
    with pytest.raises(MintError) as info:
        verify_mint(**request)
    assert info.value.reason == reason


def test_the_proof_is_bound_to_this_body() -> None:
    a, b = make(), make()
    with pytest.raises(MintError, match="MINT_PROOF_INVALID"):
        verify_mint(**{**a, "amount_proof": b["amount_proof"]})


def test_a_body_claiming_another_amount_is_refused() -> None:
    honest = make(amount=100)
    body = replace(MintBody.from_bytes(honest["body"]), amount=10_000)  # same commitment, inflated amount
    raw = body.to_bytes()
    forged = {**honest, "body": raw, "issuer_signature": ed25519_sign(ISSUER_SEED, mint_message(CHAIN, raw))}
    with pytest.raises(MintError, match="MINT_PROOF_INVALID"):
        verify_mint(**forged)


def test_zero_amounts_and_bad_owner_keys_are_malformed() -> None:
    with pytest.raises(MintError, match="MINT_MALFORMED"):
        verify_mint(**make(amount=1, body_amount=0))
    with pytest.raises(MintError, match="MINT_MALFORMED"):
        verify_mint(**make(owner_key=(1).to_bytes(32, "little")))  # the identity: small order
