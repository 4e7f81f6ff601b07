"""Parsing OCMF records exactly as received: the three sections, strict JSON, exact decimals, times.

The rules and their reason codes are listed in docs/ocmf.md. In short: a record is
``OCMF|<payload JSON>|<signature JSON>`` in UTF-8, at most MAX_RECORD_BYTES long, with exactly two
'|' (the OCMF spec forbids the pipe inside the sections, even inside JSON strings, so the split never
depends on the JSON). The payload is kept byte for byte, because the signature covers exactly those
bytes. JSON objects with a repeated key are refused, numbers are never converted to float (they stay
raw tokens; RV and CL become exact Decimals), NaN and Infinity are refused, nesting is bounded.
Readings inherit omitted fields from the previous reading of the same record (OCMF "Readings").

Only the standard library is used: this module runs inside the enclave.
"""

from __future__ import annotations

import base64
import binascii
import decimal
import functools
import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from escrow.core.errors import CoreError

# Reason codes (stable; clients and the gRPC error mapping depend on them).
OCMF_TOO_LARGE = "OCMF_TOO_LARGE"
OCMF_FORMAT = "OCMF_FORMAT"
OCMF_DUPLICATE_KEY = "OCMF_DUPLICATE_KEY"
OCMF_VALUE_INVALID = "OCMF_VALUE_INVALID"
OCMF_TIME_INVALID = "OCMF_TIME_INVALID"
OCMF_UNIT_UNSUPPORTED = "OCMF_UNIT_UNSUPPORTED"
OCMF_SIGNATURE_ENCODING = "OCMF_SIGNATURE_ENCODING"
OCMF_DER_NONCANONICAL = "OCMF_DER_NONCANONICAL"
OCMF_SIGNATURE_INVALID = "OCMF_SIGNATURE_INVALID"
OCMF_UNSUPPORTED_ALGORITHM = "OCMF_UNSUPPORTED_ALGORITHM"
OCMF_ALGORITHM_MISMATCH = "OCMF_ALGORITHM_MISMATCH"
OCMF_KEY_INVALID = "OCMF_KEY_INVALID"
OCMF_INSECURE_CURVE = "OCMF_INSECURE_CURVE"

MAX_RECORD_BYTES = 16 * 1024  # a whole record as received
MAX_NUMBER_CHARS = 32  # an RV or CL token (or padded string), sign and exponent included
MIN_DECIMAL_EXPONENT = -12  # at most 12 digits after the decimal point
MAX_DECIMAL_ADJUSTED = 15  # |value| < 10**16
MAX_JSON_DEPTH = 8  # nesting of objects and arrays; real records use 4
MAX_TT_CHARS = 250  # OCMF Table 4: tariff text

TX_VALUES = frozenset("BCXELRAPST")  # OCMF Table 7
END_TX_VALUES = ("E", "L", "R", "A", "P")  # end, local stop, remote stop, abort, power failure
ST_VALUES = frozenset("NGTDRMXIOSEF")  # OCMF Table 10
EF_CHARACTERS = frozenset("Et")  # OCMF Table 7: E = energy, t = time
TIME_STATUS_VALUES = frozenset("UISR")  # OCMF Table 19
INHERITED_READING_FIELDS = ("TM", "TX", "RV", "RI", "RU", "RT", "CL", "EF", "ST")

_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_PADDED_NUMBER = re.compile(r" *[0-9]+(?:\.[0-9]+)?")
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")
_PAGINATION = re.compile(r"([TF])(0|[1-9][0-9]{0,17})")
_TIME = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2}),([0-9]{3})"
    r"([+-])([0-9]{2})([0-9]{2}) ([A-Z])"
)
_HEX = re.compile(r"(?:[0-9A-Fa-f]{2})+")
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_EXACT = decimal.Context(
    prec=100,
    traps=[decimal.Inexact, decimal.Rounded, decimal.InvalidOperation, decimal.Overflow, decimal.Underflow],
)


class OcmfError(CoreError):
    """An OCMF record, key or value that is refused; ``reason`` is a stable code such as OCMF_FORMAT."""


@dataclass(frozen=True)
class JsonNumber:
    """A JSON number kept as its raw token text; it is never converted to float."""

    token: str


@dataclass(frozen=True)
class OcmfReading:
    """One entry of RD after field inheritance; attribute names are OCMF's keys (Table 7)."""

    TM: str  # raw, e.g. "2019-08-13T10:03:15,000+0000 I"
    time: datetime  # TM's instant, timezone-aware with TM's own offset
    time_status: str  # U unknown, I informative, S synchronised, R relative (Table 19)
    TX: str | None  # B, C, X, E, L, R, A, P, S, T; None outside a transaction (fiscal metering)
    RV: Decimal | None  # exact, from the raw token; None for an event-only reading
    RI: str | None  # OBIS code of the register
    RU: str | None  # unit, e.g. "kWh" or "Wh"
    RT: str | None  # AC or DC
    CL: Decimal | None  # cumulated loss, in RU
    EF: str | None  # error flags: "E" energy, "t" time
    ST: str  # meter state, "G" = good (Table 10)


@dataclass(frozen=True)
class OcmfRecord:
    """A parsed OCMF record; header attributes carry OCMF's keys (Tables 1-6, 8)."""

    raw: bytes  # the whole record as received
    payload: bytes  # the payload section, byte for byte: what the signature covers
    signature: bytes  # SD decoded from hex or base64: DER, checked when verified
    SA: str | None  # signature algorithm as written; None means ECDSA-secp256r1-SHA256
    SE: str | None  # signature encoding as written: None, "hex" or "base64"
    FV: str | None
    GI: str | None
    GS: str | None
    GV: str | None
    PG: str  # pagination, "T<n>" or "F<n>"
    MV: str | None
    MM: str | None
    MS: str | None
    MF: str | None
    IS: bool | None
    IL: str | None
    IF: tuple[str, ...] | None
    IT: str | None
    ID: str | None
    TT: str | None
    CT: str | None
    CI: str | None
    readings: tuple[OcmfReading, ...]  # RD, inheritance applied

    @property
    def pagination_context(self) -> str:
        """'T' (transaction) or 'F' (fiscal)."""
        return self.PG[0]

    @property
    def pagination_number(self) -> int:
        """The counter of PG's context."""
        return int(self.PG[1:])


def parse_record(data: bytes | bytearray | memoryview | str) -> OcmfRecord:
    """Parse an OCMF record as received; raises OcmfError. The signature is not checked here."""
    raw = _as_bytes(data)
    sections = raw.split(b"|")
    if len(sections) != 3 or sections[0] != b"OCMF":
        raise OcmfError(OCMF_FORMAT, "a record is OCMF|<payload>|<signature> with exactly two '|'")
    payload = _load_object(sections[1], "payload")
    signature, sa, se = _signature_fields(_load_object(sections[2], "signature section"))
    text = functools.partial(_header_string, payload)
    return OcmfRecord(
        raw=raw,
        payload=sections[1],
        signature=signature,
        SA=sa,
        SE=se,
        FV=text("FV", numbers_allowed=True),
        GI=text("GI"),
        GS=text("GS"),
        GV=text("GV"),
        PG=_pagination(payload.get("PG")),
        MV=text("MV"),
        MM=text("MM"),
        MS=text("MS"),
        MF=text("MF"),
        IS=_identification_status(payload),
        IL=text("IL"),
        IF=_flags(payload),
        IT=text("IT"),
        ID=text("ID"),
        TT=text("TT", max_chars=MAX_TT_CHARS),
        CT=text("CT", numbers_allowed=True),
        CI=text("CI"),
        readings=_readings(payload.get("RD")),
    )


def decimal_from_token(token: str) -> Decimal:
    """An exact, bounded, non-negative Decimal from a raw JSON number token such as "1.606848e7"."""
    if not isinstance(token, str) or len(token) > MAX_NUMBER_CHARS:
        raise OcmfError(OCMF_VALUE_INVALID, f"a number token has at most {MAX_NUMBER_CHARS} characters")
    if _JSON_NUMBER.fullmatch(token) is None:
        raise OcmfError(OCMF_VALUE_INVALID, "not a JSON number token")
    return _bounded(Decimal(token))


def decimal_from_padded_string(text: str) -> Decimal:
    """An exact Decimal from a numeric string, optionally left-padded with spaces or zeros ("  0009.038")."""
    if not isinstance(text, str) or len(text) > MAX_NUMBER_CHARS:
        raise OcmfError(OCMF_VALUE_INVALID, f"a numeric string has at most {MAX_NUMBER_CHARS} characters")
    if _PADDED_NUMBER.fullmatch(text) is None:
        raise OcmfError(OCMF_VALUE_INVALID, "a numeric string is [spaces]digits[.digits]")
    return _bounded(Decimal(text.lstrip(" ")))


def to_kwh(value: Decimal, unit: str) -> Decimal:
    """The exact energy in kWh of a register value in "kWh" or "Wh" (Wh / 1000); never rounds."""
    if not isinstance(value, Decimal) or not value.is_finite():
        raise OcmfError(OCMF_VALUE_INVALID, "energy must be a finite Decimal")
    if unit == "kWh":
        return value
    if unit != "Wh":
        raise OcmfError(OCMF_UNIT_UNSUPPORTED, f"unit {unit!r} is not an energy unit (kWh or Wh)")
    try:
        return _EXACT.divide(value, Decimal(1000))
    except decimal.DecimalException as exc:
        raise OcmfError(OCMF_VALUE_INVALID, "Wh to kWh would round") from exc


def parse_time(text: str) -> tuple[datetime, str]:
    """TM as (aware datetime, time status letter): "YYYY-MM-DDThh:mm:ss,fff+hhmm S" exactly."""
    match = _TIME.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise OcmfError(
            OCMF_TIME_INVALID, "TM is YYYY-MM-DDThh:mm:ss,fff+hhmm followed by ' ' and U, I, S or R"
        )
    year, month, day, hour, minute, second, millis, sign, off_h, off_m, status = match.groups()
    if status not in TIME_STATUS_VALUES or int(off_h) > 23 or int(off_m) > 59:
        raise OcmfError(OCMF_TIME_INVALID, "TM has an unknown time status or an offset out of range")
    offset = timedelta(hours=int(off_h), minutes=int(off_m)) * (-1 if sign == "-" else 1)
    try:
        moment = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second),
            int(millis) * 1000, tzinfo=timezone(offset),
        )  # fmt: skip
    except ValueError as exc:
        raise OcmfError(OCMF_TIME_INVALID, f"TM is not a calendar time: {exc}") from exc
    return moment, status


def _as_bytes(data: bytes | bytearray | memoryview | str) -> bytes:
    # Copy what arrived and bound it before anything else looks at it.
    if isinstance(data, str):
        if len(data) > MAX_RECORD_BYTES:
            raise OcmfError(OCMF_TOO_LARGE, f"a record has at most {MAX_RECORD_BYTES} bytes")
        try:
            data = data.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise OcmfError(OCMF_FORMAT, "the record is not encodable as UTF-8") from exc
    if not isinstance(data, bytes | bytearray | memoryview):
        raise OcmfError(OCMF_FORMAT, "a record is bytes or str")
    if memoryview(data).nbytes > MAX_RECORD_BYTES:
        raise OcmfError(OCMF_TOO_LARGE, f"a record has at most {MAX_RECORD_BYTES} bytes")
    return bytes(data)


def _load_object(section: bytes, what: str) -> dict[str, object]:
    # Strict JSON: UTF-8, bounded nesting, no repeated key, numbers as raw tokens, no NaN/Infinity.
    try:
        text = section.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OcmfError(OCMF_FORMAT, f"the {what} is not UTF-8") from exc
    _check_depth(text, what)
    try:
        value = json.loads(
            text,
            object_pairs_hook=_object_without_duplicates,
            parse_float=JsonNumber,
            parse_int=JsonNumber,
            parse_constant=_refuse_constant,
        )
    except (json.JSONDecodeError, RecursionError) as exc:
        raise OcmfError(OCMF_FORMAT, f"the {what} is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise OcmfError(OCMF_FORMAT, f"the {what} is not a JSON object")
    return value


def _check_depth(text: str, what: str) -> None:
    # Depth of [ and { outside strings, so that deep nesting never reaches the recursive parser.
    depth = 0
    for bracket in _BRACKET.findall(_JSON_STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        if depth > MAX_JSON_DEPTH:
            raise OcmfError(OCMF_FORMAT, f"the {what} nests deeper than {MAX_JSON_DEPTH}")


def _object_without_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise OcmfError(OCMF_DUPLICATE_KEY, f"JSON key {key!r} appears twice in one object")
        result[key] = value
    return result


def _refuse_constant(name: str) -> object:
    raise OcmfError(OCMF_VALUE_INVALID, f"{name} is not a number")


def _bounded(value: Decimal) -> Decimal:
    # Non-negative, at most 12 fractional digits, below 10**16.
    exponent = value.as_tuple().exponent
    if value.is_signed():
        raise OcmfError(OCMF_VALUE_INVALID, "a register value is never negative")
    if not isinstance(exponent, int) or exponent < MIN_DECIMAL_EXPONENT:
        raise OcmfError(OCMF_VALUE_INVALID, f"a value has at most {-MIN_DECIMAL_EXPONENT} decimal places")
    if value.adjusted() > MAX_DECIMAL_ADJUSTED:
        raise OcmfError(OCMF_VALUE_INVALID, f"a value is below 10**{MAX_DECIMAL_ADJUSTED + 1}")
    return value


def _exact_value(value: object, field: str) -> Decimal:
    # RV and CL: a JSON number token, or a numeric string (some meters pad RV: "       9.038").
    if isinstance(value, JsonNumber):
        return decimal_from_token(value.token)
    if isinstance(value, str):
        return decimal_from_padded_string(value)
    raise OcmfError(OCMF_FORMAT, f"{field} must be a number")


def _signature_fields(section: dict[str, object]) -> tuple[bytes, str | None, str | None]:
    # SD decoded per SE (hex by default); SM, when present, must be DER.
    sd, sa, se, sm = (section.get(key) for key in ("SD", "SA", "SE", "SM"))
    if not isinstance(sd, str):
        raise OcmfError(OCMF_FORMAT, "the signature section needs SD as a string")
    for key, value in (("SA", sa), ("SE", se), ("SM", sm)):
        if key in section and not isinstance(value, str):
            raise OcmfError(OCMF_FORMAT, f"{key} must be a string")
    if sm is not None and sm != "application/x-der":
        raise OcmfError(OCMF_SIGNATURE_ENCODING, f"SM {sm!r} is not application/x-der")
    signature = _decode_signature(sd, se)
    return signature, _optional_str(sa), _optional_str(se)


def _decode_signature(sd: str, se: object) -> bytes:
    if se is None or se == "hex":
        if _HEX.fullmatch(sd) is None:
            raise OcmfError(OCMF_SIGNATURE_ENCODING, "SD is not an even number of hex digits")
        return bytes.fromhex(sd)
    if se == "base64":
        if _BASE64.fullmatch(sd) is None or len(sd) % 4:
            raise OcmfError(OCMF_SIGNATURE_ENCODING, "SD is not padded standard base64")
        try:
            decoded = base64.b64decode(sd, validate=True)
        except binascii.Error as exc:
            raise OcmfError(OCMF_SIGNATURE_ENCODING, "SD is not base64") from exc
        if base64.b64encode(decoded).decode("ascii") != sd:
            raise OcmfError(OCMF_SIGNATURE_ENCODING, "SD is not canonical base64")
        return decoded
    raise OcmfError(OCMF_SIGNATURE_ENCODING, f"SE {se!r} is neither hex nor base64")


def _optional_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _header_string(
    payload: dict[str, object], key: str, *, numbers_allowed: bool = False, max_chars: int = MAX_RECORD_BYTES
) -> str | None:
    # Types per OCMF Tables 1-6; FV and CT are also accepted as numbers (seen in the field: "FV": 1.0).
    if key not in payload:
        return None
    value = payload[key]
    if numbers_allowed and isinstance(value, JsonNumber):
        return value.token
    if not isinstance(value, str):
        raise OcmfError(OCMF_FORMAT, f"{key} must be a string")
    if len(value) > max_chars:
        raise OcmfError(OCMF_VALUE_INVALID, f"{key} has at most {max_chars} characters")
    return value


def _identification_status(payload: dict[str, object]) -> bool | None:
    value = payload.get("IS")
    if "IS" in payload and not isinstance(value, bool):
        raise OcmfError(OCMF_FORMAT, "IS must be true or false")
    return value if isinstance(value, bool) else None


def _pagination(value: object) -> str:
    if not isinstance(value, str):
        raise OcmfError(OCMF_FORMAT, "PG is mandatory and a string")
    if _PAGINATION.fullmatch(value) is None:
        raise OcmfError(OCMF_VALUE_INVALID, "PG is T or F followed by a number without leading zeros")
    return value


def _flags(payload: dict[str, object]) -> tuple[str, ...] | None:
    value = payload.get("IF")
    if "IF" not in payload:
        return None
    if not isinstance(value, list) or not all(isinstance(flag, str) for flag in value):
        raise OcmfError(OCMF_FORMAT, "IF must be an array of strings")
    return tuple(value)


def _readings(items: object) -> tuple[OcmfReading, ...]:
    # OCMF "Readings": a field omitted from a reading takes the previous reading's value.
    if not isinstance(items, list) or not items:
        raise OcmfError(OCMF_FORMAT, "RD is mandatory and a non-empty array")
    previous: dict[str, object] = {}
    readings = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise OcmfError(OCMF_FORMAT, f"RD[{index}] is not an object")
        if any(item.get(key, "") is None for key in INHERITED_READING_FIELDS):
            raise OcmfError(OCMF_FORMAT, f"RD[{index}]: a reading field is never null")
        if ("RI" in item) != ("RU" in item):
            raise OcmfError(OCMF_FORMAT, f"RD[{index}]: RI and RU are given together or not at all")
        current = {key: item[key] if key in item else previous.get(key) for key in INHERITED_READING_FIELDS}
        readings.append(_reading(current, index))
        previous = current
    return tuple(readings)


def _reading(fields: dict[str, object], index: int) -> OcmfReading:
    where = f"RD[{index}]"
    tm, st = fields["TM"], fields["ST"]
    if not isinstance(tm, str) or not isinstance(st, str):
        raise OcmfError(OCMF_FORMAT, f"{where}: TM and ST are mandatory strings")
    moment, status = parse_time(tm)
    if st not in ST_VALUES:
        raise OcmfError(OCMF_VALUE_INVALID, f"{where}: ST must be one of {''.join(sorted(ST_VALUES))}")
    tx, ef, ri, ru, rt = (_reading_string(fields, key, where) for key in ("TX", "EF", "RI", "RU", "RT"))
    if tx is not None and tx not in TX_VALUES:
        raise OcmfError(OCMF_VALUE_INVALID, f"{where}: TX must be one of {''.join(sorted(TX_VALUES))}")
    if ef is not None and not set(ef) <= EF_CHARACTERS:
        raise OcmfError(OCMF_VALUE_INVALID, f"{where}: EF holds only the characters E and t")
    rv = None if fields["RV"] is None else _exact_value(fields["RV"], f"{where}.RV")
    cl = None if fields["CL"] is None else _exact_value(fields["CL"], f"{where}.CL")
    if rv is not None and ru is None:
        raise OcmfError(OCMF_FORMAT, f"{where}: RV needs RU")
    return OcmfReading(
        TM=tm, time=moment, time_status=status, TX=tx, RV=rv, RI=ri, RU=ru, RT=rt, CL=cl, EF=ef, ST=st
    )


def _reading_string(fields: dict[str, object], key: str, where: str) -> str | None:
    value = fields[key]
    if value is not None and not isinstance(value, str):
        raise OcmfError(OCMF_FORMAT, f"{where}: {key} must be a string")
    return value
