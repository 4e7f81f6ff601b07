"""Stealth addresses: one-time owner keys only the recipient can find and sign for."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from escrow.core.signing import SignatureError, ed25519_verify
from zk import envelope
from zk.stealth import Address, StealthError, WalletKeys, one_time_key, public_key, sign_with_scalar

ALICE = WalletKeys.from_seed(bytes(range(32)))
BOB = WalletKeys.from_seed(bytes(range(1, 33)))
CTX = b"escrow.v1/test/SETTLE/0"


def test_known_answer() -> None:
    # frozen: a change to any derivation shows up here
    assert ALICE.address().to_text() == FROZEN_ADDRESS
    key, ephemeral = one_time_key(ALICE.address(), bytes(range(100, 132)), CTX)
    assert (key.hex(), ephemeral.hex()) == FROZEN_ONE_TIME


def test_the_recipient_finds_and_signs_for_its_note() -> None:
    e = os.urandom(32)
    P, E = one_time_key(ALICE.address(), e, CTX)
    x = ALICE.recognise(P, E, CTX)
    assert x is not None and public_key(x) == P
    signature = sign_with_scalar(x, b"spend this note")
    ed25519_verify(P, b"spend this note", signature)  # strict verifier
    Ed25519PublicKey.from_public_bytes(P).verify(signature, b"spend this note")  # OpenSSL
    with pytest.raises(SignatureError):
        ed25519_verify(P, b"spend that note", signature)


def test_nobody_else_recognises_it() -> None:
    P, E = one_time_key(ALICE.address(), os.urandom(32), CTX)
    assert BOB.recognise(P, E, CTX) is None
    assert ALICE.recognise(P, E, CTX + b"x") is None  # the context is bound
    assert ALICE.recognise(P, os.urandom(32), CTX) is None
    assert ALICE.recognise(os.urandom(32), E, CTX) is None


@settings(max_examples=10, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))
def test_fresh_ephemeral_keys_give_unlinkable_owner_keys(e1: bytes, e2: bytes) -> None:
    a = one_time_key(ALICE.address(), e1, CTX)
    b = one_time_key(ALICE.address(), e2, CTX)
    if e1 != e2:
        assert a[0] != b[0] and a[0] != ALICE.address().spend_public
    assert ALICE.recognise(*a, CTX) is not None and ALICE.recognise(*b, CTX) is not None


def test_the_envelope_sealed_with_the_same_ephemeral_key_carries_e() -> None:
    e = os.urandom(32)
    P, E = one_time_key(ALICE.address(), e, CTX)
    sealed = envelope.seal_opening(ALICE.address().view_public, 1_463, 42, CTX, ephemeral_private=e)
    assert sealed[1:33] == E  # version byte, then the ephemeral public key
    assert envelope.open_opening(ALICE.view_private, sealed, CTX) == (1_463, 42)
    assert ALICE.recognise(P, sealed[1:33], CTX) is not None


def test_address_text_round_trip_and_typos() -> None:
    text = ALICE.address().to_text()
    assert Address.from_text(text) == ALICE.address()
    typo = text[:-3] + ("a" if text[-3] != "a" else "b") + text[-2:]
    for bad in (typo, text[4:], "esc1", text + "a", text.upper(), "esc1!!!!"):
        with pytest.raises(StealthError):
            Address.from_text(bad)


def test_addresses_refuse_bad_keys() -> None:
    identity = (1).to_bytes(32, "little")
    with pytest.raises(StealthError):
        Address(identity, bytes(32))
    with pytest.raises(StealthError):
        Address.from_bytes(bytes(63))
    with pytest.raises(StealthError):
        WalletKeys.from_seed(bytes(31))
    with pytest.raises(StealthError):  # a low-order X25519 view key cannot be paid
        one_time_key(Address(ALICE.address().spend_public, bytes(32)), os.urandom(32), CTX)


def test_secrets_do_not_print() -> None:
    assert "secret" in repr(ALICE) and str(ALICE.spend_scalar) not in repr(ALICE)


FROZEN_ADDRESS = (
    "esc145qvjaretl667cjcjytnt7ozlk6eqrikw7dz3wsx66bkie22mvsrcugoqqsxomdl6"
    "mso6m54mjbkochq5sjn6xgglwqlocamxuzeeumzqyx2m"
)
FROZEN_ONE_TIME = (
    "ce607dff38469c38c9cd48fc7171e40dc4931721be5d4e9ac918a5cea84cef47",
    "7d9c24316539825c1896e57f28197746793ce60cbee3ad47da9d07b85fa55e2a",
)
