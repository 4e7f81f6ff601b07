"""Notes and the MINT request that creates them: canonical bodies, note ids, the issuer's checks.

A note is (commitment C = v*G + b*H, one-time owner key P, envelope holding (v, b) for the owner)
(DESIGN §6.1); note_id = SHA-256("escrow.v1/note" || entry_hash || output_index as u32).

MINT body (canonical, escrow.core.encoding), signed by the issuer over
signed_message("mint", chain_id, body):

  mint_reference (bytes <= 64, unique per chain) | amount (u64, minor units, > 0) | currency (3 letters)
  | commitment (32) | owner_key (32, Ed25519) | envelope_hash (32, SHA-256 of the envelope)
  | issuer_key_id (32, SHA-256 of the issuer's Ed25519 key) | expiry (u64, unix seconds)

The Schnorr proof that C - amount*G is a multiple of H binds the same message as its context, so it
cannot be replayed for another body. Checks run cheapest first; the reference's uniqueness is the
ledger state's to check (it needs the store).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from escrow.core.encoding import U64, BodyError, Bytes, Fixed, Text, decode, encode
from escrow.core.errors import CoreError
from escrow.core.signing import (
    SignatureError,
    ed25519_check_public_key,
    ed25519_key_id,
    ed25519_verify,
    signed_message,
)
from zk import bn254, envelope, pedersen, schnorr, stealth
from zk.errors import EncodingError, EnvelopeError, ProofError

MAX_ENVELOPE_BYTES = 1024
MINT_SCHEMA = (
    ("mint_reference", Bytes(64)),
    ("amount", U64),
    ("currency", Text(3)),
    ("commitment", Fixed(32)),
    ("owner_key", Fixed(32)),
    ("envelope_hash", Fixed(32)),
    ("issuer_key_id", Fixed(32)),
    ("expiry", U64),
)


class MintError(CoreError):
    """A MINT request that must be refused; ``reason`` is stable (MINT_MALFORMED, MINT_ISSUER_UNKNOWN,
    MINT_EXPIRED, MINT_CURRENCY_MISMATCH, MINT_ENVELOPE_MISMATCH, MINT_SIGNATURE_INVALID,
    MINT_PROOF_INVALID)."""


def note_id(entry_hash: bytes, output_index: int) -> bytes:
    """SHA-256("escrow.v1/note" || entry_hash || output_index as 4 bytes big-endian)."""
    if len(entry_hash) != 32 or not 0 <= output_index < 1 << 32:
        raise ValueError("entry_hash is 32 bytes and output_index a u32")
    return hashlib.sha256(b"escrow.v1/note" + entry_hash + output_index.to_bytes(4, "big")).digest()


@dataclass(frozen=True)
class MintBody:
    """A parsed MINT body."""

    mint_reference: bytes
    amount: int
    currency: str
    commitment: bytes
    owner_key: bytes
    envelope_hash: bytes
    issuer_key_id: bytes
    expiry: int

    def to_bytes(self) -> bytes:
        return encode(MINT_SCHEMA, self.__dict__)

    @classmethod
    def from_bytes(cls, data: bytes) -> MintBody:
        try:
            return cls(**decode(MINT_SCHEMA, data, max_len=512))
        except BodyError as e:
            raise MintError("MINT_MALFORMED", str(e)) from None


def mint_message(chain_id: bytes, body: bytes) -> bytes:
    """What the issuer signs and the amount proof binds."""
    return signed_message("mint", chain_id, body)


def verify_mint(
    chain_id: bytes,
    issuer_keys: Mapping[bytes, bytes],
    currency: str,
    body: bytes,
    issuer_signature: bytes,
    envelope: bytes,
    amount_proof: bytes,
    now_unix: int,
) -> MintBody:
    """Check a MINT request against the chain's issuer keys (key id -> Ed25519 public key) and
    currency; returns the parsed body or raises MintError. Leaves no trace on failure."""
    mint = MintBody.from_bytes(body)
    if mint.amount == 0:
        raise MintError("MINT_MALFORMED", "amount must be positive")
    if not isinstance(envelope, bytes) or len(envelope) > MAX_ENVELOPE_BYTES:
        raise MintError("MINT_MALFORMED", f"envelope must be bytes, at most {MAX_ENVELOPE_BYTES}")
    try:
        ed25519_check_public_key(mint.owner_key)
    except SignatureError as e:
        raise MintError("MINT_MALFORMED", f"owner key: {e.detail}") from None
    try:
        bn254.point_from_bytes(mint.commitment, allow_identity=False)
    except EncodingError as e:
        raise MintError("MINT_MALFORMED", f"commitment: {e}") from None
    issuer = issuer_keys.get(mint.issuer_key_id)
    if issuer is None or ed25519_key_id(issuer) != mint.issuer_key_id:
        raise MintError("MINT_ISSUER_UNKNOWN", "no issuer key with this id on this chain")
    if mint.currency != currency:
        raise MintError("MINT_CURRENCY_MISMATCH", f"chain currency is {currency}")
    if now_unix > mint.expiry:
        raise MintError("MINT_EXPIRED", f"expired at {mint.expiry}, now {now_unix}")
    if hashlib.sha256(envelope).digest() != mint.envelope_hash:
        raise MintError("MINT_ENVELOPE_MISMATCH", "envelope does not match the signed hash")
    message = mint_message(chain_id, body)
    try:
        ed25519_verify(issuer, message, issuer_signature)
    except SignatureError as e:
        raise MintError("MINT_SIGNATURE_INVALID", f"{e.reason}: {e.detail}") from None
    try:
        schnorr.verify_public_amount(mint.commitment, mint.amount, amount_proof, message)
    except ProofError as e:
        raise MintError("MINT_PROOF_INVALID", str(e)) from None
    return mint


# --- note envelopes and one-time keys (DESIGN §6.1, zk/notes/stealth.md) --------------------------------


def note_context(chain_id: bytes, commitment: bytes) -> bytes:
    """The context of a note's envelope and of its one-time key derivation:
    envelope_context(chain_id, "note", commitment, 0). Public, so a wallet can scan for its notes."""
    return envelope.envelope_context(chain_id, "note", commitment, 0)


def seal_note(
    chain_id: bytes, address: stealth.Address, commitment: bytes, value: int, blinding: int
) -> tuple[bytes, bytes]:
    """(one-time owner key, envelope) of a new note for ``address``: a fresh X25519 key e gives both the
    owner key P (stealth) and the envelope of (value, blinding) sealed to the address's view key."""
    ephemeral = envelope.generate_keypair()[0]
    context = note_context(chain_id, commitment)
    owner_key, _ = stealth.one_time_key(address, ephemeral, context)
    sealed = envelope.seal_opening(address.view_public, value, blinding, context, ephemeral_private=ephemeral)
    return owner_key, sealed


@dataclass(frozen=True)
class OpenedNote:
    """A note this wallet owns: its secret owner scalar and its opening."""

    secret_scalar: int
    value: int
    blinding: int

    def __repr__(self) -> str:
        return "OpenedNote(<secret>)"


def open_note(
    keys: stealth.WalletKeys, chain_id: bytes, commitment: bytes, owner_key: bytes, sealed: bytes
) -> OpenedNote | None:
    """The note's secrets if ``keys`` own it (the one-time key is theirs and the envelope opens to an
    opening of the commitment), else None. Never raises on someone else's note."""
    if len(sealed) < envelope.HEADER_BYTES:
        return None
    context = note_context(chain_id, commitment)
    x = keys.recognise(owner_key, sealed[1 : envelope.HEADER_BYTES], context)
    if x is None:
        return None
    try:
        value, blinding = envelope.open_opening(keys.view_private, sealed, context)
    except (EnvelopeError, ValueError):
        return None
    if bn254.point_to_bytes(pedersen.commit(value, blinding)) != commitment:
        return None
    return OpenedNote(x, value, blinding)
