"""Charging-session messages (DESIGN §6.3, §7): canonical bodies, who signs them, envelope contexts.

These are formats every party shares: the vehicle builds the OPEN secret and signs STOP and GET with its
session key, the pole signs ATTACH, STOP and GET with its operator key and seals readings, the enclave
signs ACKs and receipts. Every body is the canonical encoding of escrow.core.encoding; every signed
message is ``signed_message(kind, chain_id, body)``; every envelope to or from the enclave binds
``envelope_context(chain_id, kind, session field, sequence)`` (zk/notes/envelope.md).

  OPEN secret    (envelope to the enclave, context (chain, "open", session_tag, 0))
                 session_id[16] | deposit_amount u64 | deposit_blinding[32] | pole_id text |
                 tariff_hash[32] | refund_address[64] | session_key[32] (Ed25519)
  ATTACH         (operator, "attach") session_id[16] | pole_id | evse_id | tariff_hash[32] |
                 payout_address[64] | enclave_key_id[32] | expiry u64 (unix s)
                 sealed as [body, signature[64]] to the enclave, context (chain, "attach", session_id, 0)
  reading        the OCMF record's bytes, sealed to the enclave, context (chain, "reading", session_id, seq)
  ACK            (enclave, "ack", P-256) session_id[16] | pg text | reading_hash[32] | decision text |
                 coverage_limit text (decimal in the billed unit, "" before the B reading) | sequence u64
  STOP           (vehicle session key or operator, "stop") session_id[16] | party text | sequence u64 |
                 last_pg text | time_ms u64
  GET            (vehicle session key or operator, "session-get") session_id[16] | party text | expiry u64
  progress       (enclave, "progress", P-256) session_id[16] | state | energy_kwh text | bill_minor u64 |
                 deposit_minor u64 | remaining_minor u64 | readings u64 | last_pg | coverage_limit | time_ms
                 sealed as [body, signature[64]] to the vehicle's refund address view key, context
                 (chain, "progress", session_id, 0); GET answers it to the vehicle while the session is live
  receipt        (enclave, "receipt", P-256) session_id[16] | party | outcome | bill_minor u64 |
                 note_amount_minor u64 | energy_kwh text | tariff_hash[32] | record_hashes list |
                 readings_salt[32] | settle_entry_hash[32] | note_id[32]
                 sealed as [receipt, signature[64], records list] to the party's address view key,
                 context (chain, "receipt", session_id, 0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from escrow.core.encoding import U64, BodyError, Bytes, Fixed, ListOf, Text, decode, encode
from escrow.core.errors import CoreError
from escrow.core.readings import MAX_RECORDS_PER_SESSION
from zk.envelope import envelope_context

PARTIES = ("vehicle", "pole")
DECISIONS = ("ATTACHED", "CONTINUE", "STOP", "SETTLED")
MAX_RECORD_BYTES = 16 * 1024


class SessionError(CoreError):
    """A session message or transition that must be refused; ``reason`` is stable (docs/sessions.md)."""


OPEN_SECRET_SCHEMA = (
    ("session_id", Fixed(16)),
    ("deposit_amount", U64),
    ("deposit_blinding", Fixed(32)),
    ("pole_id", Text(64)),
    ("tariff_hash", Fixed(32)),
    ("refund_address", Fixed(64)),
    ("session_key", Fixed(32)),
)
ATTACH_SCHEMA = (
    ("session_id", Fixed(16)),
    ("pole_id", Text(64)),
    ("evse_id", Text(64)),
    ("tariff_hash", Fixed(32)),
    ("payout_address", Fixed(64)),
    ("enclave_key_id", Fixed(32)),
    ("expiry", U64),
)
SIGNED_SCHEMA = (("body", Bytes(1024)), ("signature", Fixed(64)))
ACK_SCHEMA = (
    ("session_id", Fixed(16)),
    ("pg", Text(24)),
    ("reading_hash", Fixed(32)),
    ("decision", Text(16)),
    ("coverage_limit", Text(64)),
    ("sequence", U64),
)
STOP_SCHEMA = (
    ("session_id", Fixed(16)),
    ("party", Text(8)),
    ("sequence", U64),
    ("last_pg", Text(24)),
    ("time_ms", U64),
)
GET_SCHEMA = (("session_id", Fixed(16)), ("party", Text(8)), ("expiry", U64))
RECEIPT_SCHEMA = (
    ("session_id", Fixed(16)),
    ("party", Text(8)),
    ("outcome", Text(16)),
    ("bill_minor", U64),
    ("note_amount_minor", U64),
    ("energy_kwh", Text(64)),
    ("tariff_hash", Fixed(32)),
    ("record_hashes", ListOf(Fixed(32), MAX_RECORDS_PER_SESSION)),
    ("readings_salt", Fixed(32)),
    ("settle_entry_hash", Fixed(32)),
    ("note_id", Fixed(32)),
)
PROGRESS_SCHEMA = (
    ("session_id", Fixed(16)),
    ("state", Text(16)),
    ("energy_kwh", Text(64)),
    ("bill_minor", U64),
    ("deposit_minor", U64),
    ("remaining_minor", U64),
    ("readings", U64),
    ("last_pg", Text(24)),
    ("coverage_limit", Text(64)),
    ("time_ms", U64),
)
RECEIPT_ENVELOPE_SCHEMA = (
    ("receipt", Bytes(MAX_RECORDS_PER_SESSION * 32 + 1024)),
    ("signature", Fixed(64)),
    ("records", ListOf(Bytes(MAX_RECORD_BYTES), MAX_RECORDS_PER_SESSION)),
)


def _decode(schema: Any, data: bytes, what: str, reason: str, max_len: int = 1 << 20) -> dict[str, Any]:
    try:
        return decode(schema, data, max_len=max_len)
    except BodyError as e:
        raise SessionError(reason, f"{what}: {e}") from None


def _encode(schema: Any, values: dict[str, Any], what: str) -> bytes:
    try:
        return encode(schema, values)
    except BodyError as e:
        raise SessionError("SESSION_MALFORMED", f"{what}: {e}") from None


@dataclass(frozen=True)
class OpenSecret:
    session_id: bytes
    deposit_amount: int
    deposit_blinding: bytes
    pole_id: str
    tariff_hash: bytes
    refund_address: bytes
    session_key: bytes

    def __repr__(self) -> str:  # the opening never reaches a log
        return "OpenSecret(<secret>)"

    def to_bytes(self) -> bytes:
        return _encode(OPEN_SECRET_SCHEMA, dict(self.__dict__), "OPEN secret")

    @classmethod
    def from_bytes(cls, data: bytes) -> OpenSecret:
        return cls(**_decode(OPEN_SECRET_SCHEMA, data, "OPEN secret", "SESSION_ENVELOPE_INVALID", 512))


@dataclass(frozen=True)
class AttachBody:
    session_id: bytes
    pole_id: str
    evse_id: str
    tariff_hash: bytes
    payout_address: bytes
    enclave_key_id: bytes
    expiry: int

    def to_bytes(self) -> bytes:
        return _encode(ATTACH_SCHEMA, dict(self.__dict__), "ATTACH")

    @classmethod
    def from_bytes(cls, data: bytes) -> AttachBody:
        return cls(**_decode(ATTACH_SCHEMA, data, "ATTACH", "SESSION_MALFORMED", 1024))


@dataclass(frozen=True)
class AckBody:
    session_id: bytes
    pg: str
    reading_hash: bytes
    decision: str
    coverage_limit: str
    sequence: int

    def to_bytes(self) -> bytes:
        return _encode(ACK_SCHEMA, dict(self.__dict__), "ACK")

    @classmethod
    def from_bytes(cls, data: bytes) -> AckBody:
        ack = cls(**_decode(ACK_SCHEMA, data, "ACK", "ACK_MALFORMED", 512))
        if ack.decision not in DECISIONS:
            raise SessionError("ACK_MALFORMED", f"decision {ack.decision!r}")
        return ack


@dataclass(frozen=True)
class StopBody:
    session_id: bytes
    party: str
    sequence: int
    last_pg: str
    time_ms: int

    def to_bytes(self) -> bytes:
        return _encode(STOP_SCHEMA, dict(self.__dict__), "STOP")

    @classmethod
    def from_bytes(cls, data: bytes) -> StopBody:
        stop = cls(**_decode(STOP_SCHEMA, data, "STOP", "SESSION_MALFORMED", 512))
        if stop.party not in PARTIES:
            raise SessionError("SESSION_MALFORMED", f"party is one of {PARTIES}")
        return stop


@dataclass(frozen=True)
class GetBody:
    session_id: bytes
    party: str
    expiry: int

    def to_bytes(self) -> bytes:
        return _encode(GET_SCHEMA, dict(self.__dict__), "GET")

    @classmethod
    def from_bytes(cls, data: bytes) -> GetBody:
        get = cls(**_decode(GET_SCHEMA, data, "GET", "SESSION_MALFORMED", 512))
        if get.party not in PARTIES:
            raise SessionError("SESSION_MALFORMED", f"party is one of {PARTIES}")
        return get


@dataclass(frozen=True)
class Receipt:
    session_id: bytes
    party: str
    outcome: str
    bill_minor: int
    note_amount_minor: int
    energy_kwh: str
    tariff_hash: bytes
    record_hashes: list[bytes]
    readings_salt: bytes
    settle_entry_hash: bytes
    note_id: bytes

    def to_bytes(self) -> bytes:
        return _encode(RECEIPT_SCHEMA, dict(self.__dict__), "receipt")

    @classmethod
    def from_bytes(cls, data: bytes) -> Receipt:
        return cls(**_decode(RECEIPT_SCHEMA, data, "receipt", "RECEIPT_MALFORMED"))


@dataclass(frozen=True)
class Progress:
    """A live session as the enclave sees it, for the vehicle only (the bill so far is capped at D)."""

    session_id: bytes
    state: str
    energy_kwh: str
    bill_minor: int
    deposit_minor: int
    remaining_minor: int
    readings: int
    last_pg: str
    coverage_limit: str
    time_ms: int

    def to_bytes(self) -> bytes:
        return _encode(PROGRESS_SCHEMA, dict(self.__dict__), "progress")

    @classmethod
    def from_bytes(cls, data: bytes) -> Progress:
        return cls(**_decode(PROGRESS_SCHEMA, data, "progress", "PROGRESS_MALFORMED", 1024))


def signed_pair(body: bytes, signature: bytes) -> bytes:
    """[body, signature]: what an ATTACH envelope carries."""
    return _encode(SIGNED_SCHEMA, {"body": body, "signature": signature}, "signed body")


def split_signed_pair(data: bytes) -> tuple[bytes, bytes]:
    v = _decode(SIGNED_SCHEMA, data, "signed body", "SESSION_ENVELOPE_INVALID", 2048)
    return v["body"], v["signature"]


def receipt_plaintext(receipt: bytes, signature: bytes, records: list[bytes]) -> bytes:
    return _encode(
        RECEIPT_ENVELOPE_SCHEMA, {"receipt": receipt, "signature": signature, "records": records}, "receipt"
    )


def split_receipt_plaintext(data: bytes) -> tuple[bytes, bytes, list[bytes]]:
    v = _decode(RECEIPT_ENVELOPE_SCHEMA, data, "receipt envelope", "RECEIPT_MALFORMED", 200 << 20)
    return v["receipt"], v["signature"], v["records"]


def open_context(chain_id: bytes, session_tag: bytes) -> bytes:
    return envelope_context(chain_id, "open", session_tag, 0)


def attach_context(chain_id: bytes, session_id: bytes) -> bytes:
    return envelope_context(chain_id, "attach", session_id, 0)


def reading_context(chain_id: bytes, session_id: bytes, sequence: int) -> bytes:
    return envelope_context(chain_id, "reading", session_id, sequence)


def progress_context(chain_id: bytes, session_id: bytes) -> bytes:
    return envelope_context(chain_id, "progress", session_id, 0)


def receipt_context(chain_id: bytes, session_id: bytes, party: str) -> bytes:
    return envelope_context(chain_id, "receipt/" + party, session_id, 0)
