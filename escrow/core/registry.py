"""Pole registration: the canonical POLE body, the meter's proof of possession, the registry's checks.

A POLE entry (DESIGN §6.2, §6.3, §7.3) registers one charge point: its pole id and EVSE id, the
certified meter's public key and OCMF algorithm, the billed register (RI) and unit (RU), and the
operator's Ed25519 key. The operator signs signed_message("pole", chain_id, body) over:

  pole_id (text <= 64) | evse_id (text <= 64) | meter_public_key (bytes <= 256, DER SubjectPublicKeyInfo)
  | meter_algorithm (text <= 48, canonical OCMF Table 22 name) | RI (text <= 32, OBIS code)
  | RU (text <= 3, "kWh" or "Wh") | operator_key (32, Ed25519) | pop_record_hash (32, SHA-256 of the
  proof-of-possession OCMF record, byte for byte) | expiry (u64, unix seconds)

Proof of possession: the meter signs an OCMF record whose ID is registration_challenge(chain_id,
pole_id, evse_id, operator_key). The challenge is deterministic rather than random: it binds the
record to this chain, this pole and this operator, so it cannot be replayed for another pole or chain;
freshness beyond that comes from the chain id and the body's expiry, and only the holder of the
meter's private key can produce the signature. Its readings must name the registered RI and RU.

Checks run cheapest first; the uniqueness of the meter key and the EVSE id among active poles is the
ledger state's to check (check_unique, given the active sets).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Collection
from dataclasses import dataclass

from escrow.core import ocmf
from escrow.core.encoding import U64, BodyError, Bytes, Fixed, Text, decode, encode
from escrow.core.errors import CoreError
from escrow.core.ocmf import OcmfError
from escrow.core.signing import (
    CHAIN_ID_BYTES,
    SignatureError,
    ed25519_check_public_key,
    ed25519_verify,
    signed_message,
)

__all__ = [
    "CHALLENGE_CHARS",
    "POLE_SCHEMA",
    "UNITS",
    "PoleBody",
    "RegistryError",
    "check_unique",
    "pole_message",
    "registration_challenge",
    "verify_pole",
]

UNITS = ("kWh", "Wh")
CHALLENGE_CHARS = 20  # fits OCPP 1.6 idTag (CiString20Type), the way an ID reaches a meter; 100 bits
MAX_IDENTIFIER_CHARS = 64
_CHALLENGE_DOMAIN = "escrow.v1/pole-challenge"
POLE_SCHEMA = (
    ("pole_id", Text(MAX_IDENTIFIER_CHARS)),
    ("evse_id", Text(MAX_IDENTIFIER_CHARS)),
    ("meter_public_key", Bytes(256)),
    ("meter_algorithm", Text(48)),
    ("RI", Text(32)),
    ("RU", Text(3)),
    ("operator_key", Fixed(32)),
    ("pop_record_hash", Fixed(32)),
    ("expiry", U64),
)
_CHALLENGE_SCHEMA = (
    ("domain", Text(32)),
    ("chain_id", Fixed(CHAIN_ID_BYTES)),
    ("pole_id", Text(MAX_IDENTIFIER_CHARS)),
    ("evse_id", Text(MAX_IDENTIFIER_CHARS)),
    ("operator_key", Fixed(32)),
)
_MAX_BODY_BYTES = 1024


class RegistryError(CoreError):
    """A POLE registration that must be refused; ``reason`` is stable (POLE_MALFORMED, POLE_EXPIRED,
    POLE_KEY_INVALID, POLE_INSECURE_CURVE, POLE_SIGNATURE_INVALID, POLE_POP_MISMATCH, POLE_POP_INVALID,
    POLE_METER_IN_USE, POLE_EVSE_IN_USE)."""


@dataclass(frozen=True)
class PoleBody:
    """A parsed POLE body."""

    pole_id: str
    evse_id: str
    meter_public_key: bytes
    meter_algorithm: str
    RI: str
    RU: str
    operator_key: bytes
    pop_record_hash: bytes
    expiry: int

    def to_bytes(self) -> bytes:
        return encode(POLE_SCHEMA, self.__dict__)

    @classmethod
    def from_bytes(cls, data: bytes) -> PoleBody:
        try:
            return cls(**decode(POLE_SCHEMA, data, max_len=_MAX_BODY_BYTES))
        except BodyError as e:
            raise RegistryError("POLE_MALFORMED", str(e)) from None


def pole_message(chain_id: bytes, body: bytes) -> bytes:
    """What the operator signs."""
    return signed_message("pole", chain_id, body)


def registration_challenge(chain_id: bytes, pole_id: str, evse_id: str, operator_key: bytes) -> str:
    """The first 20 characters of base32(SHA-256(canonical [text "escrow.v1/pole-challenge", chain_id,
    pole_id, evse_id, operator_key])) (RFC 4648 alphabet A-Z2-7): the ID of the meter's PoP record."""
    values = {
        "domain": _CHALLENGE_DOMAIN,
        "chain_id": chain_id,
        "pole_id": pole_id,
        "evse_id": evse_id,
        "operator_key": operator_key,
    }
    try:
        digest = hashlib.sha256(encode(_CHALLENGE_SCHEMA, values)).digest()
    except BodyError as e:
        raise RegistryError("POLE_MALFORMED", f"challenge input: {e}") from None
    return base64.b32encode(digest).decode("ascii")[:CHALLENGE_CHARS]


def verify_pole(
    chain_id: bytes,
    body: bytes,
    operator_signature: bytes,
    pop_record: bytes,
    now_unix: int,
    *,
    allow_insecure_192: bool = False,
) -> PoleBody:
    """Check a POLE registration (body, operator signature, the meter's PoP record); returns the parsed
    body or raises RegistryError. Uniqueness among active poles is check_unique's."""
    pole = PoleBody.from_bytes(body)
    _check_fields(pole, pop_record)
    if now_unix > pole.expiry:
        raise RegistryError("POLE_EXPIRED", f"expired at {pole.expiry}, now {now_unix}")
    _check_keys(pole)
    try:
        ocmf.check_registrable(pole.meter_algorithm, allow_insecure_192=allow_insecure_192)
    except OcmfError as e:
        raise RegistryError("POLE_INSECURE_CURVE", e.detail) from None
    try:
        ed25519_verify(pole.operator_key, pole_message(chain_id, body), operator_signature)
    except SignatureError as e:
        raise RegistryError("POLE_SIGNATURE_INVALID", f"{e.reason}: {e.detail}") from None
    if hashlib.sha256(pop_record).digest() != pole.pop_record_hash:
        raise RegistryError("POLE_POP_MISMATCH", "the PoP record does not match the signed hash")
    _check_possession(chain_id, pole, pop_record)
    return pole


def check_unique(
    pole: PoleBody, active_meter_keys: Collection[bytes], active_evse_ids: Collection[str]
) -> None:
    """Refuse a meter key or an EVSE id that an active pole already holds. Meter keys compare by their
    DER (strictly parsed, so one encoding per key); EVSE ids case-insensitively."""
    if pole.meter_public_key in active_meter_keys:
        raise RegistryError("POLE_METER_IN_USE", "the meter key belongs to an active pole")
    evse = pole.evse_id.upper()
    if any(active.upper() == evse for active in active_evse_ids):
        raise RegistryError("POLE_EVSE_IN_USE", f"EVSE {pole.evse_id} belongs to an active pole")


def _check_fields(pole: PoleBody, pop_record: bytes) -> None:
    # Non-empty identifiers without spaces, a known unit, the algorithm spelled canonically.
    for name in ("pole_id", "evse_id", "RI"):
        value = getattr(pole, name)
        if not value or " " in value:
            raise RegistryError("POLE_MALFORMED", f"{name} is non-empty and has no spaces")
    if pole.RU not in UNITS:
        raise RegistryError("POLE_MALFORMED", f"RU is one of {UNITS}")
    try:
        canonical = ocmf.normalize_algorithm(pole.meter_algorithm)
    except OcmfError as e:
        raise RegistryError("POLE_MALFORMED", e.detail) from None
    if canonical != pole.meter_algorithm:
        raise RegistryError("POLE_MALFORMED", f"meter_algorithm is spelled {canonical}")
    if not isinstance(pop_record, bytes) or len(pop_record) > ocmf.MAX_RECORD_BYTES:
        raise RegistryError("POLE_MALFORMED", f"the PoP record is bytes, at most {ocmf.MAX_RECORD_BYTES}")


def _check_keys(pole: PoleBody) -> None:
    # The operator key is a valid Ed25519 key; the meter key parses and lies on the algorithm's curve.
    try:
        ed25519_check_public_key(pole.operator_key)
    except SignatureError as e:
        raise RegistryError("POLE_KEY_INVALID", f"operator key: {e.detail}") from None
    try:
        ocmf.algorithm_for_key(pole.meter_public_key, pole.meter_algorithm)
    except OcmfError as e:
        raise RegistryError("POLE_KEY_INVALID", f"meter key: {e.reason}: {e.detail}") from None


def _check_possession(chain_id: bytes, pole: PoleBody, pop_record: bytes) -> None:
    # The record verifies under the meter key, carries the challenge as ID, and bills RI/RU.
    try:
        record = ocmf.parse_record(pop_record)
        ocmf.verify_record(record, pole.meter_public_key, algorithm=pole.meter_algorithm)
    except OcmfError as e:
        raise RegistryError("POLE_POP_INVALID", f"{e.reason}: {e.detail}") from None
    challenge = registration_challenge(chain_id, pole.pole_id, pole.evse_id, pole.operator_key)
    if challenge != record.ID:
        raise RegistryError("POLE_POP_INVALID", "the record's ID is not this registration's challenge")
    if not record.readings:
        raise RegistryError("POLE_POP_INVALID", "the record has no readings")
    if any(reading.RI != pole.RI or reading.RU != pole.RU for reading in record.readings):
        raise RegistryError("POLE_POP_INVALID", f"the readings do not all bill {pole.RI} in {pole.RU}")
