"""The payload of every ledger entry kind (DESIGN §6.2): canonical schemas, parsing, outputs and spends.

A payload is the canonical body (escrow.core.encoding) of its kind. The request kinds carry the
request exactly as signed (the signed body bytes, the signatures, the proofs and the envelopes), so an
auditor re-runs the very checks the enclave ran; the enclave's own kinds (GENESIS, KEY, SETTLE) carry
what it decided and its proofs. docs/ledger.md is the reference; keep the two in step.

  GENESIS  protocol | currency | decimals | issuer_keys | generator_set_hash | generator_count |
           grace_ms | max_deadline_ms | mr_enclave | ledger_key | encryption_key | instance_id | isv_svn |
           quote | collateral_json
  KEY      mr_enclave | isv_svn | ledger_key | encryption_key | instance_id | quote | collateral_json
  POLE     pole_body | operator_signature | pop_record
  MINT     mint_body | issuer_signature | amount_proof | envelope
  OPEN     open_body | owner_signatures | range_proof | change_envelope
  SETTLE   open_entry_hash | session_tag | pole note (commitment, owner key, envelope) | refund note |
           range_proof | excess | excess_proof | outcome | readings_digest
  REDEEM   redeem_body | owner_signatures | amount_proof

Note outputs by index (note_id = SHA-256("escrow.v1/note" || entry_hash || index)): MINT 0 = the note;
OPEN 0 = the change note, 1 = the deposit D (spent only by its SETTLE); SETTLE 0 = the pole's note,
1 = the refund note. Every note's envelope and one-time key use ``escrow.core.notes.note_context``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from escrow.core.encoding import U8, U16, U32, U64, BodyError, Bytes, Fixed, ListOf, Text, decode, encode
from escrow.core.errors import CoreError
from escrow.core.notes import MintBody, note_id
from escrow.core.registry import PoleBody
from escrow.core.spending import OpenBody, RedeemBody

PROTOCOL = "escrow.v1"
MAX_ISSUER_KEYS = 16
MAX_QUOTE_BYTES = 16 * 1024
MAX_COLLATERAL_BYTES = 64 * 1024
MAX_NOTE_ENVELOPE_BYTES = 1024
MAX_POP_RECORD_BYTES = 16 * 1024
OUTCOMES = ("ENDED", "STOPPED", "EXHAUSTED", "DEADLINE", "REFUNDED")

GENESIS_PARAMS_SCHEMA = (
    ("protocol", Text(32)),
    ("currency", Text(3)),
    ("decimals", U8),
    ("issuer_keys", ListOf(Fixed(32), MAX_ISSUER_KEYS)),
    ("generator_set_hash", Fixed(32)),
    ("generator_count", U32),
    ("grace_ms", U64),
    ("max_deadline_ms", U64),
    ("mr_enclave", Fixed(32)),
    ("ledger_key", Fixed(65)),
    ("encryption_key", Fixed(32)),
    ("instance_id", Fixed(16)),
    ("isv_svn", U16),
)
GENESIS_SCHEMA = (
    *GENESIS_PARAMS_SCHEMA,
    ("quote", Bytes(MAX_QUOTE_BYTES)),
    ("collateral_json", Bytes(MAX_COLLATERAL_BYTES)),
)
KEY_SCHEMA = (
    ("mr_enclave", Fixed(32)),
    ("isv_svn", U16),
    ("ledger_key", Fixed(65)),
    ("encryption_key", Fixed(32)),
    ("instance_id", Fixed(16)),
    ("quote", Bytes(MAX_QUOTE_BYTES)),
    ("collateral_json", Bytes(MAX_COLLATERAL_BYTES)),
)
POLE_PAYLOAD_SCHEMA = (
    ("pole_body", Bytes(1024)),
    ("operator_signature", Fixed(64)),
    ("pop_record", Bytes(MAX_POP_RECORD_BYTES)),
)
MINT_PAYLOAD_SCHEMA = (
    ("mint_body", Bytes(512)),
    ("issuer_signature", Fixed(64)),
    ("amount_proof", Fixed(64)),
    ("envelope", Bytes(MAX_NOTE_ENVELOPE_BYTES)),
)
OPEN_PAYLOAD_SCHEMA = (
    ("open_body", Bytes(1024)),
    ("owner_signatures", ListOf(Fixed(64), 16)),
    ("range_proof", Bytes(1024)),
    ("change_envelope", Bytes(MAX_NOTE_ENVELOPE_BYTES)),
)
SETTLE_SCHEMA = (
    ("open_entry_hash", Fixed(32)),
    ("session_tag", Fixed(32)),
    ("pole_commitment", Fixed(32)),
    ("pole_owner_key", Fixed(32)),
    ("pole_envelope", Bytes(MAX_NOTE_ENVELOPE_BYTES)),
    ("refund_commitment", Fixed(32)),
    ("refund_owner_key", Fixed(32)),
    ("refund_envelope", Bytes(MAX_NOTE_ENVELOPE_BYTES)),
    ("range_proof", Bytes(1024)),
    ("excess", Fixed(32)),
    ("excess_proof", Fixed(64)),
    ("outcome", Text(16)),
    ("readings_digest", Fixed(32)),
)
REDEEM_PAYLOAD_SCHEMA = (
    ("redeem_body", Bytes(1024)),
    ("owner_signatures", ListOf(Fixed(64), 16)),
    ("amount_proof", Fixed(64)),
)
SCHEMAS: dict[str, Any] = {
    "GENESIS": GENESIS_SCHEMA,
    "KEY": KEY_SCHEMA,
    "POLE": POLE_PAYLOAD_SCHEMA,
    "MINT": MINT_PAYLOAD_SCHEMA,
    "OPEN": OPEN_PAYLOAD_SCHEMA,
    "SETTLE": SETTLE_SCHEMA,
    "REDEEM": REDEEM_PAYLOAD_SCHEMA,
}


class PayloadError(CoreError):
    """A payload that is not the canonical body of its kind (reason PAYLOAD_MALFORMED)."""


def encode_payload(kind: str, values: dict[str, Any]) -> bytes:
    """The canonical payload of ``kind``."""
    try:
        return encode(SCHEMAS[kind], values)
    except (BodyError, KeyError) as e:
        raise PayloadError("PAYLOAD_MALFORMED", f"{kind}: {e}") from None


def decode_payload(kind: str, payload: bytes) -> dict[str, Any]:
    """Strictly parse a payload of ``kind`` (its signed bodies are parsed too, by their own rules)."""
    try:
        values = decode(SCHEMAS[kind], payload, max_len=1 << 20)
    except (BodyError, KeyError) as e:
        raise PayloadError("PAYLOAD_MALFORMED", f"{kind}: {e}") from None
    if kind == "SETTLE" and values["outcome"] not in OUTCOMES:
        raise PayloadError("PAYLOAD_MALFORMED", f"SETTLE outcome {values['outcome']!r}")
    return values


def genesis_nonce(params: dict[str, Any]) -> bytes:
    """The nonce GENESIS's quote is made for: SHA-256("escrow.v1/genesis" || canonical params), so the
    quote binds the chain's currency, issuers, generators and policy as well as the enclave's keys."""
    return hashlib.sha256(b"escrow.v1/genesis" + encode(GENESIS_PARAMS_SCHEMA, params)).digest()


def key_nonce(chain_id: bytes, prev_hash: bytes) -> bytes:
    """The nonce a KEY entry's quote is made for: SHA-256("escrow.v1/key" || chain_id || prev_hash)."""
    return hashlib.sha256(b"escrow.v1/key" + chain_id + prev_hash).digest()


def readings_digest(salt: bytes, record_hashes: tuple[bytes, ...] | list[bytes]) -> bytes:
    """SHA-256("escrow.v1/readings" || salt || hash_1 || ... || hash_k): the SETTLE entry's salted
    commitment to the accepted OCMF records; the salt goes only to the parties, in their receipts."""
    return hashlib.sha256(b"escrow.v1/readings" + salt + b"".join(record_hashes)).digest()


@dataclass(frozen=True)
class NoteOutput:
    """One note an entry creates."""

    index: int
    commitment: bytes
    owner_key: bytes
    envelope: bytes
    is_deposit: bool = False


@dataclass(frozen=True)
class Effects:
    """What one entry does to the note set, read from its payload alone (auditor and enclave agree)."""

    outputs: tuple[NoteOutput, ...]
    spent: tuple[bytes, ...]  # note ids
    session_tag: bytes | None = None  # OPEN: the session opened; SETTLE: the session settled
    mint_reference: bytes | None = None


def effects(kind: str, payload: bytes) -> Effects:
    """Parse a payload and name the notes it creates and spends (the signed bodies are parsed too)."""
    v = decode_payload(kind, payload)
    if kind == "MINT":
        mint = MintBody.from_bytes(v["mint_body"])
        note = NoteOutput(0, mint.commitment, mint.owner_key, v["envelope"])
        return Effects((note,), (), mint_reference=mint.mint_reference)
    if kind == "OPEN":
        body = OpenBody.from_bytes(v["open_body"])
        change = NoteOutput(0, body.change_commitment, body.change_owner_key, v["change_envelope"])
        deposit = NoteOutput(1, body.deposit, bytes(32), b"", is_deposit=True)
        return Effects((change, deposit), tuple(body.input_note_ids), session_tag=body.session_tag)
    if kind == "SETTLE":
        pole = NoteOutput(0, v["pole_commitment"], v["pole_owner_key"], v["pole_envelope"])
        refund = NoteOutput(1, v["refund_commitment"], v["refund_owner_key"], v["refund_envelope"])
        return Effects((pole, refund), (note_id(v["open_entry_hash"], 1),), session_tag=v["session_tag"])
    if kind == "REDEEM":
        redeem = RedeemBody.from_bytes(v["redeem_body"])
        return Effects((), tuple(redeem.input_note_ids))
    if kind == "POLE":
        PoleBody.from_bytes(v["pole_body"])
    return Effects((), ())
