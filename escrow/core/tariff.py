"""The operator-signed TARIFF (DESIGN §6.3): its canonical body, strict parsing, signing and every check.

Body (escrow.core.encoding; field order is the byte order):

  pole_id             Text(64)   printable ASCII, 1-64 characters
  evse_id             Text(64)   printable ASCII, 1-64 characters, e.g. "DE*ABC*E123456"
  currency            Text(3)    exactly three uppercase ASCII letters (ISO 4217 style), e.g. "EUR"
  price_numerator     U64        price per kWh in millionths of a minor unit (over PRICE_DENOMINATOR)
  session_fee_minor   U64        fixed fee per session, in minor units
  RI                  Text(32)   the billed register's OBIS code, 1-32 characters (as in the POLE entry)
  RU                  Text(3)    the billed register's unit: "kWh" or "Wh"
  not_before          U64        unix seconds, first second of validity (inclusive)
  not_after           U64        unix seconds, end of validity (exclusive); not_before < not_after
  sequence            U64        per (pole_id, evse_id); each new tariff has a higher one

The denominator is fixed (PRICE_DENOMINATOR = 10^6) and not in the body: a different one would be a
new kind of message. The operator signs ``signed_message("tariff", chain_id, body)`` with Ed25519.
A ``Tariff`` object is always valid (its constructor checks every field), and ``from_bytes`` accepts
only the one canonical encoding. Reasons are stable; docs/billing.md explains each.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Any

from escrow.core.encoding import U64, BodyError, Text, decode, encode
from escrow.core.errors import CoreError
from escrow.core.signing import SignatureError, ed25519_sign, ed25519_verify, signed_message

__all__ = [
    "CURRENCY_CHARS",
    "MAX_EVSE_ID_CHARS",
    "MAX_POLE_ID_CHARS",
    "MAX_RI_CHARS",
    "PRICE_DENOMINATOR",
    "TARIFF_EXPIRED",
    "TARIFF_MALFORMED",
    "TARIFF_MISMATCH",
    "TARIFF_NOT_YET_VALID",
    "TARIFF_SCHEMA",
    "TARIFF_SIGNATURE_INVALID",
    "TARIFF_SUPERSEDED",
    "UNITS",
    "Tariff",
    "TariffError",
    "check_newer",
    "check_tariff_for_pole",
    "check_tariff_hash",
    "check_valid_at",
    "sign_tariff",
    "tariff_hash",
    "verify_tariff",
]

# --- reasons and the error ------------------------------------------------------------------------------

TARIFF_MALFORMED = "TARIFF_MALFORMED"  # not the canonical body, or a field out of its documented range
TARIFF_EXPIRED = "TARIFF_EXPIRED"  # now >= not_after
TARIFF_NOT_YET_VALID = "TARIFF_NOT_YET_VALID"  # now < not_before
TARIFF_SIGNATURE_INVALID = "TARIFF_SIGNATURE_INVALID"  # not signed by this operator key for this chain
TARIFF_SUPERSEDED = "TARIFF_SUPERSEDED"  # sequence <= the latest accepted for the same pole and EVSE
TARIFF_MISMATCH = "TARIFF_MISMATCH"  # another pole/EVSE/register/unit/currency, or another tariff hash


class TariffError(CoreError):
    """A tariff was refused; ``reason`` is one of the TARIFF_* codes above, ``detail`` says why."""


# --- the body -------------------------------------------------------------------------------------------

PRICE_DENOMINATOR = 1_000_000  # price_numerator counts millionths of a minor unit per kWh
MAX_POLE_ID_CHARS = 64
MAX_EVSE_ID_CHARS = 64
MAX_RI_CHARS = 32  # OBIS codes are short: "1-b:1.8.0", "01-00:01.08.00*FF"
CURRENCY_CHARS = 3
UNITS = ("kWh", "Wh")
_U64_LIMIT = 1 << 64
_CURRENCY = re.compile(r"[A-Z]{3}")

TARIFF_SCHEMA = (
    ("pole_id", Text(MAX_POLE_ID_CHARS)),
    ("evse_id", Text(MAX_EVSE_ID_CHARS)),
    ("currency", Text(CURRENCY_CHARS)),
    ("price_numerator", U64),
    ("session_fee_minor", U64),
    ("RI", Text(MAX_RI_CHARS)),
    ("RU", Text(3)),
    ("not_before", U64),
    ("not_after", U64),
    ("sequence", U64),
)
_MAX_BODY_BYTES = 4 * 5 + MAX_POLE_ID_CHARS + MAX_EVSE_ID_CHARS + CURRENCY_CHARS + MAX_RI_CHARS + 3 + 8 * 5


@dataclass(frozen=True)
class Tariff:
    """A valid tariff (the constructor raises TARIFF_MALFORMED otherwise); RI and RU are OCMF's names."""

    pole_id: str
    evse_id: str
    currency: str
    price_numerator: int  # millionths of a minor unit per kWh
    session_fee_minor: int
    RI: str  # OBIS code of the billed register
    RU: str  # unit of the billed register: "kWh" or "Wh"
    not_before: int  # unix seconds, inclusive
    not_after: int  # unix seconds, exclusive
    sequence: int

    def __post_init__(self) -> None:
        _check_text(self.pole_id, "pole_id", MAX_POLE_ID_CHARS)
        _check_text(self.evse_id, "evse_id", MAX_EVSE_ID_CHARS)
        _check_text(self.RI, "RI", MAX_RI_CHARS)
        if not isinstance(self.currency, str) or _CURRENCY.fullmatch(self.currency) is None:
            raise TariffError(TARIFF_MALFORMED, "currency must be three uppercase ASCII letters")
        if self.RU not in UNITS:
            raise TariffError(TARIFF_MALFORMED, f"RU must be one of {UNITS}")
        for name in ("price_numerator", "session_fee_minor", "not_before", "not_after", "sequence"):
            _check_u64(getattr(self, name), name)
        if self.not_before >= self.not_after:
            raise TariffError(TARIFF_MALFORMED, "the validity window is empty (not_before >= not_after)")

    def to_bytes(self) -> bytes:
        """The canonical body (the bytes the operator signs)."""
        return encode(TARIFF_SCHEMA, self._fields())

    @classmethod
    def from_bytes(cls, body: bytes) -> Tariff:
        """Parse the canonical body strictly; anything else raises TARIFF_MALFORMED."""
        try:
            values = decode(TARIFF_SCHEMA, body, max_len=_MAX_BODY_BYTES)
        except BodyError as e:
            raise TariffError(TARIFF_MALFORMED, str(e)) from None
        return cls(**values)

    def _fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name, _ in TARIFF_SCHEMA}


def _check_text(value: object, name: str, max_chars: int) -> None:
    """1..max_chars characters, each printable ASCII (0x20-0x7e)."""
    if not isinstance(value, str) or not 1 <= len(value) <= max_chars:
        raise TariffError(TARIFF_MALFORMED, f"{name} must be 1 to {max_chars} characters")
    if not all(0x20 <= ord(c) <= 0x7E for c in value):
        raise TariffError(TARIFF_MALFORMED, f"{name} must be printable ASCII")


def _check_u64(value: object, name: str) -> None:
    """An int (not a bool) in [0, 2^64)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _U64_LIMIT:
        raise TariffError(TARIFF_MALFORMED, f"{name} must be an integer in [0, 2^64)")


# --- hashing, signing, verification --------------------------------------------------------------------


def tariff_hash(body: bytes) -> bytes:
    """SHA-256 of the canonical body (the hash OPEN's envelope and ATTACH name); refuses other bytes."""
    Tariff.from_bytes(body)
    return hashlib.sha256(body).digest()


def sign_tariff(tariff: Tariff, chain_id: bytes, operator_seed32: bytes) -> bytes:
    """The operator's 64-byte Ed25519 signature over signed_message("tariff", chain_id, body)."""
    return ed25519_sign(operator_seed32, signed_message("tariff", chain_id, tariff.to_bytes()))


def verify_tariff(
    body: bytes, signature: bytes, chain_id: bytes, operator_public32: bytes, now_unix: int
) -> Tariff:
    """Parse, check the operator's signature, then the window not_before <= now_unix < not_after.

    The window is checked after the signature: the dates of an unauthenticated body mean nothing, and
    both checks are cheap. Raises TariffError (MALFORMED, SIGNATURE_INVALID, NOT_YET_VALID, EXPIRED).
    """
    if not isinstance(body, bytes):
        raise TariffError(TARIFF_MALFORMED, "a tariff body is bytes")
    tariff = Tariff.from_bytes(body)
    try:
        ed25519_verify(operator_public32, signed_message("tariff", chain_id, body), signature)
    except SignatureError as e:
        raise TariffError(TARIFF_SIGNATURE_INVALID, f"operator signature refused ({e.reason})") from None
    check_valid_at(tariff, now_unix)
    return tariff


def check_valid_at(tariff: Tariff, now_unix: int) -> None:
    """Raise NOT_YET_VALID if now_unix < not_before, EXPIRED if now_unix >= not_after."""
    if isinstance(now_unix, bool) or not isinstance(now_unix, int) or now_unix < 0:
        raise ValueError("now_unix must be a non-negative integer (unix seconds)")
    if now_unix < tariff.not_before:
        raise TariffError(TARIFF_NOT_YET_VALID, f"valid from {tariff.not_before}, now is {now_unix}")
    if now_unix >= tariff.not_after:
        raise TariffError(TARIFF_EXPIRED, f"valid until {tariff.not_after} (exclusive), now is {now_unix}")


# --- checks against the registry and the session -------------------------------------------------------


def check_newer(tariff: Tariff, latest_accepted: Tariff | None) -> None:
    """Raise SUPERSEDED unless ``tariff`` has a higher sequence than the latest accepted one.

    ``latest_accepted`` must be for the same (pole_id, evse_id); a tariff for another pair raises
    MISMATCH. None (nothing accepted yet) accepts any sequence.
    """
    if latest_accepted is None:
        return
    if (tariff.pole_id, tariff.evse_id) != (latest_accepted.pole_id, latest_accepted.evse_id):
        raise TariffError(TARIFF_MISMATCH, "the latest accepted tariff is for another pole or EVSE")
    if tariff.sequence <= latest_accepted.sequence:
        raise TariffError(
            TARIFF_SUPERSEDED, f"sequence {tariff.sequence} <= latest accepted {latest_accepted.sequence}"
        )


def check_tariff_for_pole(
    tariff: Tariff, *, pole_id: str, evse_id: str, RI: str, RU: str, currency: str
) -> None:
    """Raise MISMATCH unless the tariff names this pole's ids, billed register and unit, and the currency."""
    expected = {"pole_id": pole_id, "evse_id": evse_id, "RI": RI, "RU": RU, "currency": currency}
    for name, value in expected.items():
        if getattr(tariff, name) != value:
            raise TariffError(TARIFF_MISMATCH, f"{name} {getattr(tariff, name)!r} is not {value!r}")


def check_tariff_hash(body: bytes, expected_hash: bytes) -> Tariff:
    """Parse ``body``; raise MISMATCH unless SHA-256(body) is ``expected_hash`` (constant-time compare)."""
    tariff = Tariff.from_bytes(body)
    actual = hashlib.sha256(body).digest()
    if not isinstance(expected_hash, bytes) or not hmac.compare_digest(actual, expected_hash):
        raise TariffError(TARIFF_MISMATCH, "the tariff hash differs from the agreed one")
    return tariff
