"""OPEN and REDEEM requests that spend notes: canonical bodies and the owners' and ledger's checks.

Both are pure: the caller looks up each input note id in its store and passes what it knows
(``InputNote``: commitment, owner key, spent, is a deposit); recording the spend is the store's job.

OPEN body (canonical, escrow.core.encoding), signed by every input owner over
signed_message("open", chain_id, body) (DESIGN §6.3):

  session_tag (32) | input_note_ids (list of 32, 1..16, strictly increasing) | deposit (32, D)
  | change_commitment (32) | change_owner_key (32, Ed25519) | change_envelope_hash (32)
  | range_proof_hash (32, SHA-256 of the aggregated range proof over (D, change)) | deadline (u64 unix ms)
  | enclave_envelope_hash (32) | enclave_key_id (32) | expiry (u64 unix seconds)

The range proof binds proof_context("OPEN", chain_id, session_tag, input_note_ids).

REDEEM body, signed by every input owner over signed_message("redeem", chain_id, body):

  input_note_ids (list of 32, 1..16, strictly increasing) | amount (u64 > 0) | currency (3 letters)
  | issuer_reference (bytes <= 64) | proof_hash (32, SHA-256 of the Schnorr proof) | expiry (u64)

The Schnorr proof shows sum(inputs) - amount*G is a multiple of H; it is the public-amount proof of
zk.schnorr for C = sum(inputs) (so it binds C and the amount), with the context
proof_context("REDEEM", chain_id, b"", input_note_ids). It cannot bind the signed message itself, which
carries the proof's hash; the owners' signatures over that hash tie the proof to the body. A prover calls
``schnorr.prove_public_amount(amount, sum of blindings, redeem_proof_context(chain_id, ids))``.

Checks run cheapest first (DESIGN §8): structure, time, keys and hashes, existence, deposit, unspent,
owner signatures, and only then proofs, so costing the server a proof needs owning unspent notes.
Knowing a note's opening (v, b) is not owning it: every input needs its owner key's signature.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

from escrow.core.encoding import U64, BodyError, Bytes, Fixed, ListOf, Text, decode, encode
from escrow.core.errors import CoreError
from escrow.core.settlement import (
    AMOUNT_BITS,
    MAX_INPUTS,
    SettlementError,
    proof_context,
    verify_open_balance,
)
from escrow.core.signing import (
    ED25519_SIGNATURE_BYTES,
    SignatureError,
    ed25519_check_public_key,
    ed25519_verify,
    signed_message,
)
from zk import bn254, rangeproof, schnorr
from zk.errors import EncodingError, ProofError

MAX_CHANGE_ENVELOPE_BYTES = 1024
MAX_ENCLAVE_ENVELOPE_BYTES = 4096
OPEN_RANGE_PROOF_BYTES = rangeproof.proof_size(AMOUNT_BITS, 2)  # one aggregated proof over (D, change)

OPEN_SCHEMA = (
    ("session_tag", Fixed(32)),
    ("input_note_ids", ListOf(Fixed(32), MAX_INPUTS)),
    ("deposit", Fixed(32)),
    ("change_commitment", Fixed(32)),
    ("change_owner_key", Fixed(32)),
    ("change_envelope_hash", Fixed(32)),
    ("range_proof_hash", Fixed(32)),
    ("deadline", U64),
    ("enclave_envelope_hash", Fixed(32)),
    ("enclave_key_id", Fixed(32)),
    ("expiry", U64),
)
REDEEM_SCHEMA = (
    ("input_note_ids", ListOf(Fixed(32), MAX_INPUTS)),
    ("amount", U64),
    ("currency", Text(3)),
    ("issuer_reference", Bytes(64)),
    ("proof_hash", Fixed(32)),
    ("expiry", U64),
)
_BALANCE_REASONS = {
    "BALANCE_MALFORMED": "SPEND_MALFORMED",
    "BALANCE_UNBALANCED": "SPEND_UNBALANCED",
    "BALANCE_RANGE_PROOF_INVALID": "SPEND_PROOF_INVALID",
}


class SpendError(CoreError):
    """An OPEN or REDEEM that must be refused; ``reason`` is stable (SPEND_MALFORMED, SPEND_EXPIRED,
    SPEND_DEADLINE_INVALID, SPEND_WRONG_ENCLAVE_KEY, SPEND_CURRENCY_MISMATCH, SPEND_ENVELOPE_MISMATCH,
    SPEND_NOTE_NOT_FOUND, SPEND_DEPOSIT_AS_INPUT, SPEND_NOTE_SPENT, SPEND_SIGNATURE_INVALID,
    SPEND_UNBALANCED, SPEND_PROOF_INVALID)."""


@dataclass(frozen=True)
class InputNote:
    """What the store knows about one input: its commitment, owner key, and whether it is spent or is
    an OPEN's deposit D (which only SETTLE may consume)."""

    commitment: bytes
    owner_key: bytes
    spent: bool
    is_deposit: bool


@dataclass(frozen=True)
class OpenBody:
    """A parsed OPEN body."""

    session_tag: bytes
    input_note_ids: list[bytes]
    deposit: bytes
    change_commitment: bytes
    change_owner_key: bytes
    change_envelope_hash: bytes
    range_proof_hash: bytes
    deadline: int
    enclave_envelope_hash: bytes
    enclave_key_id: bytes
    expiry: int

    def to_bytes(self) -> bytes:
        return encode(OPEN_SCHEMA, self.__dict__)

    @classmethod
    def from_bytes(cls, data: bytes) -> OpenBody:
        try:
            return cls(**decode(OPEN_SCHEMA, data, max_len=1024))
        except BodyError as e:
            raise SpendError("SPEND_MALFORMED", str(e)) from None


@dataclass(frozen=True)
class RedeemBody:
    """A parsed REDEEM body."""

    input_note_ids: list[bytes]
    amount: int
    currency: str
    issuer_reference: bytes
    proof_hash: bytes
    expiry: int

    def to_bytes(self) -> bytes:
        return encode(REDEEM_SCHEMA, self.__dict__)

    @classmethod
    def from_bytes(cls, data: bytes) -> RedeemBody:
        try:
            return cls(**decode(REDEEM_SCHEMA, data, max_len=1024))
        except BodyError as e:
            raise SpendError("SPEND_MALFORMED", str(e)) from None


def open_message(chain_id: bytes, body: bytes) -> bytes:
    """What every input owner of an OPEN signs."""
    return signed_message("open", chain_id, body)


def redeem_message(chain_id: bytes, body: bytes) -> bytes:
    """What every input owner of a REDEEM signs."""
    return signed_message("redeem", chain_id, body)


def redeem_proof_context(chain_id: bytes, input_note_ids: list[bytes]) -> bytes:
    """The context the REDEEM amount proof binds (no session: an empty session tag)."""
    return proof_context("REDEEM", chain_id, b"", input_note_ids)


def open_proof_context(chain_id: bytes, body: OpenBody) -> bytes:
    """The context the OPEN range proof over (D, change) binds."""
    return proof_context("OPEN", chain_id, body.session_tag, body.input_note_ids)


# --- checks shared by OPEN and REDEEM ---------------------------------------------------------------


def _check_structure(input_note_ids: list[bytes], owner_signatures: Sequence[bytes]) -> None:
    """1..16 input ids, strictly increasing (sorted, no duplicates), one 64-byte signature each."""
    if not 1 <= len(input_note_ids) <= MAX_INPUTS:
        raise SpendError("SPEND_MALFORMED", f"1 to {MAX_INPUTS} input notes")
    if any(a >= b for a, b in pairwise(input_note_ids)):
        raise SpendError("SPEND_MALFORMED", "input note ids must be sorted and distinct")
    if not isinstance(owner_signatures, (list, tuple)) or len(owner_signatures) != len(input_note_ids):
        raise SpendError("SPEND_MALFORMED", "exactly one owner signature per input note")
    if any(not isinstance(s, bytes) or len(s) != ED25519_SIGNATURE_BYTES for s in owner_signatures):
        raise SpendError("SPEND_MALFORMED", f"an owner signature is {ED25519_SIGNATURE_BYTES} bytes")


def _check_blob(blob: object, max_len: int, what: str) -> bytes:
    if not isinstance(blob, bytes) or len(blob) > max_len:
        raise SpendError("SPEND_MALFORMED", f"{what} must be bytes, at most {max_len}")
    return blob


def _check_hash(blob: bytes, expected: bytes, what: str) -> None:
    if hashlib.sha256(blob).digest() != expected:
        raise SpendError("SPEND_ENVELOPE_MISMATCH", f"{what} does not match the signed hash")


def _check_point(data: bytes, what: str) -> bn254.Point:
    try:
        return bn254.point_from_bytes(data, allow_identity=False)
    except (EncodingError, TypeError) as e:
        raise SpendError("SPEND_MALFORMED", f"{what}: {e}") from None


def _check_expiry(expiry: int, now_unix: int) -> None:
    if now_unix > expiry:
        raise SpendError("SPEND_EXPIRED", f"expired at {expiry}, now {now_unix}")


def _lookup(input_note_ids: list[bytes], inputs: Mapping[bytes, InputNote]) -> list[InputNote]:
    """The inputs in order: each must exist, be no deposit, and be unspent (checked in that order)."""
    notes = [inputs.get(i) for i in input_note_ids]
    missing = [i.hex()[:16] for i, n in zip(input_note_ids, notes) if n is None]
    if missing:
        raise SpendError("SPEND_NOTE_NOT_FOUND", f"no such note: {', '.join(missing)}")
    found = [n for n in notes if n is not None]
    if any(n.is_deposit for n in found):
        raise SpendError("SPEND_DEPOSIT_AS_INPUT", "a deposit is spent only by its SETTLE")
    if any(n.spent for n in found):
        raise SpendError("SPEND_NOTE_SPENT", "an input note is already spent")
    return found


def _check_owners(notes: list[InputNote], message: bytes, owner_signatures: Sequence[bytes]) -> None:
    """Each owner's Ed25519 signature over the shared message, under its note's one-time key."""
    for index, (note, signature) in enumerate(zip(notes, owner_signatures)):
        try:
            ed25519_verify(note.owner_key, message, signature)
        except SignatureError as e:
            raise SpendError("SPEND_SIGNATURE_INVALID", f"input {index}: {e.reason}") from None


# --- OPEN --------------------------------------------------------------------------------------------


def verify_open(
    chain_id: bytes,
    body: bytes,
    owner_signatures: Sequence[bytes],
    range_proof: bytes,
    change_envelope: bytes,
    enclave_envelope: bytes | None,
    inputs: Mapping[bytes, InputNote],
    enclave_key_id: bytes,
    now_unix: int,
    max_deadline_ms: int,
) -> OpenBody:
    """Check an OPEN against the store's view of its inputs and this enclave's key id; the deadline
    must lie in (now, now + max_deadline_ms] in unix ms. Returns the parsed body or raises SpendError.

    ``enclave_envelope`` None skips its size and hash checks: an auditor replaying the ledger never sees
    it (it goes only to the enclave)."""
    opened = OpenBody.from_bytes(body)
    _check_structure(opened.input_note_ids, owner_signatures)
    _check_blob(change_envelope, MAX_CHANGE_ENVELOPE_BYTES, "change envelope")
    if enclave_envelope is not None:
        _check_blob(enclave_envelope, MAX_ENCLAVE_ENVELOPE_BYTES, "enclave envelope")
    if not isinstance(range_proof, bytes) or len(range_proof) != OPEN_RANGE_PROOF_BYTES:
        raise SpendError("SPEND_MALFORMED", f"the range proof is {OPEN_RANGE_PROOF_BYTES} bytes")
    try:
        ed25519_check_public_key(opened.change_owner_key)
    except SignatureError as e:
        raise SpendError("SPEND_MALFORMED", f"change owner key: {e.detail}") from None
    _check_point(opened.deposit, "deposit")
    _check_point(opened.change_commitment, "change commitment")
    _check_expiry(opened.expiry, now_unix)
    now_ms = now_unix * 1000
    if not now_ms < opened.deadline <= now_ms + max_deadline_ms:
        raise SpendError("SPEND_DEADLINE_INVALID", f"deadline must lie in ({now_ms}, +{max_deadline_ms} ms]")
    if opened.enclave_key_id != enclave_key_id:
        raise SpendError("SPEND_WRONG_ENCLAVE_KEY", "the OPEN is for another enclave key")
    _check_hash(change_envelope, opened.change_envelope_hash, "change envelope")
    if enclave_envelope is not None:
        _check_hash(enclave_envelope, opened.enclave_envelope_hash, "enclave envelope")
    _check_hash(range_proof, opened.range_proof_hash, "range proof")
    notes = _lookup(opened.input_note_ids, inputs)
    _check_owners(notes, open_message(chain_id, body), owner_signatures)
    try:
        verify_open_balance(
            [n.commitment for n in notes],
            opened.deposit,
            opened.change_commitment,
            range_proof,
            open_proof_context(chain_id, opened),
        )
    except SettlementError as e:
        raise SpendError(_BALANCE_REASONS.get(e.reason, "SPEND_PROOF_INVALID"), e.detail) from None
    return opened


# --- REDEEM ------------------------------------------------------------------------------------------


def _sum_commitments(notes: list[InputNote]) -> bn254.Point:
    """sum(input commitments); a stored commitment that is not a point is refused as malformed."""
    total = bn254.IDENTITY
    for index, note in enumerate(notes):
        total = total + _check_point(note.commitment, f"input {index} commitment")
    return total


def verify_redeem(
    chain_id: bytes,
    currency: str,
    body: bytes,
    owner_signatures: Sequence[bytes],
    amount_proof: bytes,
    inputs: Mapping[bytes, InputNote],
    now_unix: int,
) -> RedeemBody:
    """Check a REDEEM against the chain's currency and the store's view of its inputs; returns the
    parsed body or raises SpendError."""
    redeem = RedeemBody.from_bytes(body)
    _check_structure(redeem.input_note_ids, owner_signatures)
    if redeem.amount == 0:
        raise SpendError("SPEND_MALFORMED", "amount must be positive")
    if not isinstance(amount_proof, bytes) or len(amount_proof) != schnorr.PROOF_BYTES:
        raise SpendError("SPEND_MALFORMED", f"the amount proof is {schnorr.PROOF_BYTES} bytes")
    if redeem.currency != currency:
        raise SpendError("SPEND_CURRENCY_MISMATCH", f"chain currency is {currency}")
    _check_expiry(redeem.expiry, now_unix)
    _check_hash(amount_proof, redeem.proof_hash, "amount proof")
    notes = _lookup(redeem.input_note_ids, inputs)
    _check_owners(notes, redeem_message(chain_id, body), owner_signatures)
    total = _sum_commitments(notes)
    if (total - redeem.amount * bn254.G).is_identity():  # P = sum(inputs) - amount*G; b = 0 has no proof
        raise SpendError("SPEND_UNBALANCED", "inputs minus the amount leave no blinding to prove")
    try:
        context = redeem_proof_context(chain_id, redeem.input_note_ids)
        schnorr.verify_public_amount(bn254.point_to_bytes(total), redeem.amount, amount_proof, context)
    except (ProofError, SettlementError) as e:
        raise SpendError("SPEND_PROOF_INVALID", str(e)) from None
    return redeem
