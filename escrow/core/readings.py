"""One session's accepted meter readings in the trusted core: the §7.3 acceptance rules, sealed state.

A ``SessionReadings`` holds what the enclave has accepted for one charging session: which OCMF records
(by PG and SHA-256), the billed register value at the B reading, the current billed value, and whether
billing is frozen (an X reading) or the transaction has ended. ``accept`` parses a record, verifies it
under the registered meter key and applies every rule of DESIGN §7.3 "Acceptance for a session";
a refusal raises ``ReadingRejected`` with a stable reason and leaves the state exactly as it was.
``to_bytes`` / ``from_bytes`` give the one canonical byte layout that the enclave seals.

The rules in order, their reasons, the meter handle, the PG interpretation and the byte layout are
documented in docs/readings.md. Pure logic, no I/O: the standard library and escrow.core.ocmf only.
"""

from __future__ import annotations

import base64
import decimal
import hashlib
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from escrow.core import ocmf
from escrow.core.errors import CoreError

__all__ = [
    "DEFAULT_GRACE",
    "MAX_GRACE",
    "MAX_RECORDS_PER_SESSION",
    "METER_HANDLE_CHARS",
    "READINGS_STATE_MALFORMED",
    "READING_AFTER_DEADLINE",
    "READING_AFTER_END",
    "READING_DUPLICATE_BEGIN",
    "READING_ERROR_FLAG",
    "READING_LIMIT",
    "READING_MALFORMED",
    "READING_NOT_MONOTONE",
    "READING_NOT_TRANSACTION",
    "READING_OUT_OF_ORDER",
    "READING_PG_REUSED",
    "READING_SIGNATURE_INVALID",
    "READING_STATUS_NOT_GOOD",
    "READING_TOO_LARGE",
    "READING_WRONG_REGISTER",
    "READING_WRONG_SESSION",
    "REASONS",
    "SESSION_ID_BYTES",
    "Acceptance",
    "MeterRegistration",
    "ReadingRejected",
    "ReadingsStateError",
    "SessionReadings",
    "meter_handle",
    "session_tag",
]

# Reason codes (stable: the gRPC error mapping and the pole client depend on them).
READING_TOO_LARGE = "READING_TOO_LARGE"  # the record exceeds ocmf.MAX_RECORD_BYTES
READING_MALFORMED = "READING_MALFORMED"  # not a well-formed OCMF record (ocmf's reason in ocmf_reason)
READING_LIMIT = "READING_LIMIT"  # the session already holds max_records accepted records
READING_AFTER_DEADLINE = "READING_AFTER_DEADLINE"  # past deadline + grace, or timed too late
READING_NOT_TRANSACTION = "READING_NOT_TRANSACTION"  # PG not in the T context, or a reading without TX
READING_WRONG_SESSION = "READING_WRONG_SESSION"  # ID is not this session's meter handle, or IT != LOCAL
READING_SIGNATURE_INVALID = "READING_SIGNATURE_INVALID"  # not signed by the registered meter key
READING_PG_REUSED = "READING_PG_REUSED"  # another record with an already-accepted PG
READING_AFTER_END = "READING_AFTER_END"  # anything after an end-type reading (E, L, R, A, P)
READING_OUT_OF_ORDER = "READING_OUT_OF_ORDER"  # PG not previous + 1, or a reading before the B reading
READING_DUPLICATE_BEGIN = "READING_DUPLICATE_BEGIN"  # a second B reading
READING_WRONG_REGISTER = "READING_WRONG_REGISTER"  # billed register in another unit, or no value at B
READING_NOT_MONOTONE = "READING_NOT_MONOTONE"  # TM or the billed RV decreased
READING_STATUS_NOT_GOOD = "READING_STATUS_NOT_GOOD"  # ST is not G on a billable reading
READING_ERROR_FLAG = "READING_ERROR_FLAG"  # EF contains E on a billable reading
READINGS_STATE_MALFORMED = "READINGS_STATE_MALFORMED"  # from_bytes: not a canonical sealed state

REASONS = (
    READING_TOO_LARGE, READING_MALFORMED, READING_LIMIT, READING_AFTER_DEADLINE, READING_NOT_TRANSACTION,
    READING_WRONG_SESSION, READING_SIGNATURE_INVALID, READING_PG_REUSED, READING_AFTER_END,
    READING_OUT_OF_ORDER, READING_DUPLICATE_BEGIN, READING_WRONG_REGISTER, READING_NOT_MONOTONE,
    READING_STATUS_NOT_GOOD, READING_ERROR_FLAG,
)  # fmt: skip

SESSION_ID_BYTES = 16
METER_HANDLE_CHARS = 20  # OCPP 1.6 idTag is CiString20Type
DEFAULT_GRACE = timedelta(seconds=120)
MAX_GRACE = timedelta(days=1)
MAX_RECORDS_PER_SESSION = 10_000
MAX_KEY_DER_BYTES = 512  # a brainpoolP384r1 SubjectPublicKeyInfo is 124 bytes
MAX_RI_CHARS = 64
BILLING_UNITS = ("kWh", "Wh")
END_TYPES = ocmf.END_TX_VALUES  # OCMF Table 7: the end-type readings
TIMED_STATUSES = frozenset("SR")  # OCMF Table 19: synchronised, relative (legal-metrology duration)

_SESSION_DOMAIN = b"escrow.v1/session"
_HANDLE_DOMAIN = b"escrow.v1/meter-handle"
_STATE_TAG = b"escrow.v1/session-readings"
_US = timedelta(microseconds=1)
_ORIGIN = datetime(1, 1, 1)  # instants are microseconds since 0001-01-01T00:00:00 UTC
_MIN_STATE_DECIMAL_EXPONENT = ocmf.MIN_DECIMAL_EXPONENT - 3  # Wh -> kWh adds three places
_MAX_DECIMAL_TEXT = 64
_ENTRY_BEGIN, _ENTRY_END, _ENTRY_FROZEN = 1, 2, 4
_EXACT = decimal.Context(prec=64, traps=[decimal.Inexact, decimal.Rounded, decimal.InvalidOperation])
_MAX_STATE_BYTES = 4 + len(_STATE_TAG) + 1024 + MAX_RECORDS_PER_SESSION * (8 + 32 + 1 + 1 + _MAX_DECIMAL_TEXT)


class ReadingRejected(CoreError):  # noqa: N818 (the name the session layer uses)
    """A record this session refuses; ``reason`` is a READING_* code and the state is unchanged."""

    def __init__(self, reason: str, detail: str, *, ocmf_reason: str | None = None) -> None:
        super().__init__(reason, detail)
        self.ocmf_reason = ocmf_reason  # the OcmfError reason behind READING_MALFORMED / _SIGNATURE_INVALID


class ReadingsStateError(ValueError):
    """Bytes that are not a canonical sealed SessionReadings state (reason READINGS_STATE_MALFORMED)."""

    reason = READINGS_STATE_MALFORMED


def _check_session_id(session_id: bytes) -> bytes:
    if not isinstance(session_id, bytes) or len(session_id) != SESSION_ID_BYTES:
        raise ValueError(f"a session id is exactly {SESSION_ID_BYTES} bytes")
    return session_id


def session_tag(session_id: bytes) -> bytes:
    """SHA-256("escrow.v1/session" || session_id): the only name of a session on the public ledger."""
    return hashlib.sha256(_SESSION_DOMAIN + _check_session_id(session_id)).digest()


def meter_handle(session_id: bytes) -> str:
    """The first 20 characters of base32(SHA-256("escrow.v1/meter-handle" || session_id)) (RFC 4648,
    upper case, A-Z and 2-7): the session's OCMF ID and OCPP idTag, 100 bits, unchanged by upper-casing."""
    digest = hashlib.sha256(_HANDLE_DOMAIN + _check_session_id(session_id)).digest()
    return base64.b32encode(digest).decode("ascii")[:METER_HANDLE_CHARS]


@dataclass(frozen=True)
class MeterRegistration:
    """The registered meter of the session's pole: key, algorithm (stored canonical), billed RI and RU."""

    public_key_der: bytes
    algorithm: str
    RI: str  # OBIS code of the billed register, e.g. "1-b:1.8.0"
    RU: str  # "kWh" or "Wh"

    def __post_init__(self) -> None:
        # Raises OcmfError: a key that is not a strict table-curve key of `algorithm`, an unknown unit.
        if not isinstance(self.public_key_der, bytes) or len(self.public_key_der) > MAX_KEY_DER_BYTES:
            raise ocmf.OcmfError(ocmf.OCMF_KEY_INVALID, f"a meter key is at most {MAX_KEY_DER_BYTES} bytes")
        canonical = ocmf.normalize_algorithm(self.algorithm)
        ocmf.algorithm_for_key(self.public_key_der, canonical)
        object.__setattr__(self, "algorithm", canonical)
        if not isinstance(self.RI, str) or not 0 < len(self.RI) <= MAX_RI_CHARS or not _printable(self.RI):
            raise ocmf.OcmfError(ocmf.OCMF_VALUE_INVALID, f"RI is 1 to {MAX_RI_CHARS} printable ASCII chars")
        if self.RU not in BILLING_UNITS:
            raise ocmf.OcmfError(ocmf.OCMF_UNIT_UNSUPPORTED, f"the billed unit is kWh or Wh, not {self.RU!r}")


@dataclass(frozen=True)
class Acceptance:
    """What the enclave acknowledges for one accepted record; energies are exact Decimal kWh."""

    pg: str  # the record's PG, "T<n>"
    record_sha256: bytes  # SHA-256 of the record exactly as received
    begin: bool  # the record holds the session's B reading
    end: bool  # the record holds the session's end-type reading
    rv_begin: Decimal  # billed register at the B reading, kWh
    rv_billed: Decimal  # billed register now (frozen after an X reading), kWh
    energy_kwh: Decimal  # rv_billed - rv_begin, exact, never negative
    frozen: bool  # billing is frozen by an X reading
    ended: bool  # no further record will be accepted (an end-type reading was accepted)
    duplicate: bool = False  # True when this answers a repeated identical record


@dataclass(frozen=True)
class _Entry:
    # One accepted record as sealed: its PG number, hash, flags and the billed value after it.
    pg_number: int
    record_sha256: bytes
    begin: bool
    end: bool
    frozen: bool
    rv_billed: Decimal


@dataclass
class _Cursor:
    # The running state the rules read and advance; copied per record, committed only on success.
    begun: bool = False
    frozen: bool = False
    ended: bool = False
    rv_begin: Decimal | None = None
    rv_billed: Decimal | None = None
    last_time_us: int | None = None
    last_sync_us: int | None = None


class SessionReadings:
    """The accepted readings of one session; ``accept`` applies DESIGN §7.3, ``to_bytes`` seals it."""

    def __init__(
        self,
        session_id: bytes,
        registration: MeterRegistration,
        deadline: datetime,
        *,
        grace: timedelta = DEFAULT_GRACE,
        max_records: int = MAX_RECORDS_PER_SESSION,
    ) -> None:
        if not isinstance(registration, MeterRegistration):
            raise TypeError("registration must be a MeterRegistration")
        if not isinstance(grace, timedelta) or not timedelta(0) <= grace <= MAX_GRACE:
            raise ValueError(f"grace is a timedelta in [0, {MAX_GRACE}]")
        if grace % _US:
            raise ValueError("grace has a whole number of microseconds")
        if isinstance(max_records, bool) or not isinstance(max_records, int):
            raise TypeError("max_records must be an int")
        if not 1 <= max_records <= MAX_RECORDS_PER_SESSION:
            raise ValueError(f"max_records is in [1, {MAX_RECORDS_PER_SESSION}]")
        self._session_id = _check_session_id(session_id)
        self._handle = meter_handle(session_id)
        self._registration = registration
        self._deadline_us = _instant_us(_aware(deadline, "deadline"))
        self._grace_us = grace // _US
        self._max_records = max_records
        self._cursor = _Cursor()
        self._entries: list[_Entry] = []
        self._encoded: list[bytes] = []
        self._by_hash: dict[bytes, int] = {}

    # ---- reading the state ------------------------------------------------------------------------------

    @property
    def session_id(self) -> bytes:
        return self._session_id

    @property
    def session_tag(self) -> bytes:
        return session_tag(self._session_id)

    @property
    def meter_handle(self) -> str:
        return self._handle

    @property
    def registration(self) -> MeterRegistration:
        return self._registration

    @property
    def deadline(self) -> datetime:
        return _from_instant_us(self._deadline_us)

    @property
    def grace(self) -> timedelta:
        return self._grace_us * _US

    @property
    def max_records(self) -> int:
        return self._max_records

    @property
    def begun(self) -> bool:
        """A B reading has been accepted."""
        return self._cursor.begun

    @property
    def ended(self) -> bool:
        """An end-type reading has been accepted; nothing more will be."""
        return self._cursor.ended

    @property
    def frozen(self) -> bool:
        """An X reading has frozen billing."""
        return self._cursor.frozen

    @property
    def rv_begin(self) -> Decimal | None:
        return self._cursor.rv_begin

    @property
    def rv_billed(self) -> Decimal | None:
        return self._cursor.rv_billed

    @property
    def energy_kwh(self) -> Decimal:
        """rv_billed - rv_begin exactly; 0 before the B reading."""
        if self._cursor.rv_begin is None or self._cursor.rv_billed is None:
            return Decimal(0)
        return _EXACT.subtract(self._cursor.rv_billed, self._cursor.rv_begin)

    @property
    def last_pg(self) -> str | None:
        return f"T{self._entries[-1].pg_number}" if self._entries else None

    @property
    def last_synchronised_time(self) -> datetime | None:
        """The latest accepted meter time with status S (an input to the enclave's monotone clock)."""
        sync = self._cursor.last_sync_us
        return None if sync is None else _from_instant_us(sync)

    @property
    def record_hashes(self) -> tuple[bytes, ...]:
        """SHA-256 of every accepted record, in PG order (the receipt lists these)."""
        return tuple(entry.record_sha256 for entry in self._entries)

    def acceptances(self) -> tuple[Acceptance, ...]:
        """The original Acceptance of every accepted record, in PG order."""
        return tuple(self._acceptance(entry) for entry in self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def index_of(self, record_sha256: bytes) -> int | None:
        """The position (in PG order) of the accepted record with this SHA-256, or None."""
        return self._by_hash.get(record_sha256)

    def acceptance_at(self, index: int) -> Acceptance:
        """The original Acceptance of the index-th accepted record."""
        return self._acceptance(self._entries[index])

    def copy(self) -> SessionReadings:
        """An independent copy (sharing the immutable entries): change it, keep the original."""
        clone = object.__new__(SessionReadings)
        clone.__dict__.update(self.__dict__)
        clone._cursor = replace(self._cursor)
        clone._entries = list(self._entries)
        clone._encoded = list(self._encoded)
        clone._by_hash = dict(self._by_hash)
        return clone

    # ---- accepting a record -------------------------------------------------------------------------------

    def accept(self, raw_record: bytes | str, *, now: datetime) -> Acceptance:
        """Accept one OCMF record as received, at enclave time `now`; raises ReadingRejected.

        A repeated identical record returns its original Acceptance with duplicate=True.
        """
        now_us = _instant_us(_aware(now, "now"))
        record = _parse(raw_record)
        digest = hashlib.sha256(record.raw).digest()
        if digest in self._by_hash:
            return replace(self._acceptance(self._entries[self._by_hash[digest]]), duplicate=True)
        self._check_session_open(now_us)
        self._check_identity(record)
        self._verify(record)
        self._check_pagination(record)
        cursor, has_begin = self._apply_readings(record, now_us)
        entry = _Entry(record.pagination_number, digest, has_begin, cursor.ended, cursor.frozen,
                       _required(cursor.rv_billed))  # fmt: skip
        self._commit(cursor, entry)
        return self._acceptance(entry)

    def _check_session_open(self, now_us: int) -> None:
        # State-only checks, before any work on the record: capacity, the acceptance window.
        if len(self._entries) >= self._max_records:
            raise ReadingRejected(READING_LIMIT, f"a session accepts at most {self._max_records} records")
        if now_us > self._deadline_us + self._grace_us:
            raise ReadingRejected(READING_AFTER_DEADLINE, "the deadline and grace period have passed")

    def _check_identity(self, record: ocmf.OcmfRecord) -> None:
        # PG in the transaction context; ID = this session's meter handle under IT = LOCAL.
        if record.pagination_context != "T":
            raise ReadingRejected(READING_NOT_TRANSACTION, f"PG {record.PG} is not in the T context")
        if record.IT != "LOCAL" or self._handle != record.ID:
            raise ReadingRejected(READING_WRONG_SESSION, "ID is not this session's meter handle, IT LOCAL")

    def _verify(self, record: ocmf.OcmfRecord) -> None:
        registration = self._registration
        try:
            ocmf.verify_record(record, registration.public_key_der, algorithm=registration.algorithm)
        except ocmf.OcmfError as exc:
            raise ReadingRejected(READING_SIGNATURE_INVALID, exc.detail, ocmf_reason=exc.reason) from exc

    def _check_pagination(self, record: ocmf.OcmfRecord) -> None:
        # PG identifies the record (one meter key per session); accepted records are consecutive.
        if not self._entries:
            return
        number = record.pagination_number
        first, last = self._entries[0].pg_number, self._entries[-1].pg_number
        if first <= number <= last:
            raise ReadingRejected(READING_PG_REUSED, f"PG {record.PG} was accepted with other content")
        if self._cursor.ended:
            raise ReadingRejected(READING_AFTER_END, "the transaction has ended")
        if number != last + 1:
            raise ReadingRejected(READING_OUT_OF_ORDER, f"PG {record.PG} does not follow T{last}")

    def _apply_readings(self, record: ocmf.OcmfRecord, now_us: int) -> tuple[_Cursor, bool]:
        # Every rule per reading, on a copy of the cursor; then the closing-window rule per record.
        # Readings of other registers are ignored; event-only readings (no RI) concern the whole meter.
        cursor = replace(self._cursor)
        has_begin = has_end = False
        all_timed_by_deadline = True
        relevant = 0
        for index, reading in enumerate(record.readings):
            if reading.RI is not None and reading.RI != self._registration.RI:
                continue
            relevant += 1
            timed_us = self._apply_reading(cursor, reading, f"RD[{index}]")
            has_begin |= reading.TX == "B"
            has_end |= reading.TX in END_TYPES
            all_timed_by_deadline &= timed_us is not None and timed_us <= self._deadline_us
        if not relevant:
            raise ReadingRejected(READING_WRONG_REGISTER, f"no reading of register {self._registration.RI}")
        if now_us > self._deadline_us and not (has_end or all_timed_by_deadline):
            raise ReadingRejected(
                READING_AFTER_DEADLINE,
                "after the deadline only an end-type reading or readings timed (S/R) by the deadline count",
            )
        return cursor, has_begin

    def _apply_reading(self, cursor: _Cursor, reading: ocmf.OcmfReading, where: str) -> int | None:
        # One reading: transaction order, register, time, status, value. Returns its S/R instant or None.
        tx = reading.TX
        self._check_transaction_order(cursor, tx, where)
        value = self._billed_value(reading, where)
        if tx == "B" and value is None:
            raise ReadingRejected(READING_WRONG_REGISTER, f"{where}: a B reading without a register value")
        timed_us = self._check_time(cursor, reading, where)
        billable = not cursor.frozen and tx != "X"
        if billable and reading.ST != "G":
            raise ReadingRejected(READING_STATUS_NOT_GOOD, f"{where}: meter state {reading.ST}, not G")
        if billable and "E" in (reading.EF or ""):
            raise ReadingRejected(READING_ERROR_FLAG, f"{where}: EF {reading.EF!r} voids the energy")
        if billable and value is not None:
            if cursor.rv_billed is not None and value < cursor.rv_billed:
                raise ReadingRejected(READING_NOT_MONOTONE, f"{where}: RV decreased")
            cursor.rv_billed = value
        if tx == "B":
            cursor.begun, cursor.rv_begin = True, value
        cursor.frozen |= tx == "X"
        cursor.ended |= tx in END_TYPES
        return timed_us

    @staticmethod
    def _check_transaction_order(cursor: _Cursor, tx: str | None, where: str) -> None:
        # Exactly one B, first; at most one end-type, last.
        if cursor.ended:
            raise ReadingRejected(READING_AFTER_END, f"{where}: a reading after the end-type reading")
        if tx is None:
            raise ReadingRejected(READING_NOT_TRANSACTION, f"{where}: a reading without TX")
        if tx == "B" and cursor.begun:
            raise ReadingRejected(READING_DUPLICATE_BEGIN, f"{where}: a second B reading")
        if tx != "B" and not cursor.begun:
            raise ReadingRejected(READING_OUT_OF_ORDER, f"{where}: the session's first reading must be B")

    def _billed_value(self, reading: ocmf.OcmfReading, where: str) -> Decimal | None:
        # The reading's value in exact kWh; a reading of the billed register in another unit is refused.
        unit = self._registration.RU
        if reading.RI is not None and unit != reading.RU:
            raise ReadingRejected(READING_WRONG_REGISTER, f"{where}: billed in {reading.RU}, not {unit}")
        if reading.RV is None:
            return None
        try:
            return ocmf.to_kwh(reading.RV, unit)
        except ocmf.OcmfError as exc:  # unreachable within ocmf's bounds; refused rather than rounded
            detail = f"{where}: {exc.detail}"
            raise ReadingRejected(READING_MALFORMED, detail, ocmf_reason=exc.reason) from exc

    def _check_time(self, cursor: _Cursor, reading: ocmf.OcmfReading, where: str) -> int | None:
        # TM never decreases; an S/R time past deadline + grace is refused. EF "t": the meter voids the time.
        if "t" in (reading.EF or ""):
            return None
        try:
            instant = _instant_us(reading.time.astimezone(UTC))
        except OverflowError as exc:
            raise ReadingRejected(READING_MALFORMED, f"{where}: TM lies outside 0001-9999 UTC") from exc
        if cursor.last_time_us is not None and instant < cursor.last_time_us:
            raise ReadingRejected(READING_NOT_MONOTONE, f"{where}: TM is earlier than the previous reading")
        cursor.last_time_us = instant
        if reading.time_status == "S":
            cursor.last_sync_us = instant
        if reading.time_status not in TIMED_STATUSES:
            return None
        if instant > self._deadline_us + self._grace_us:
            raise ReadingRejected(READING_AFTER_DEADLINE, f"{where}: timed after deadline + grace")
        return instant

    def _commit(self, cursor: _Cursor, entry: _Entry) -> None:
        self._by_hash[entry.record_sha256] = len(self._entries)
        self._entries.append(entry)
        self._encoded.append(_encode_entry(entry))
        self._cursor = cursor

    def _acceptance(self, entry: _Entry) -> Acceptance:
        rv_begin = _required(self._cursor.rv_begin)
        return Acceptance(
            pg=f"T{entry.pg_number}",
            record_sha256=entry.record_sha256,
            begin=entry.begin,
            end=entry.end,
            rv_begin=rv_begin,
            rv_billed=entry.rv_billed,
            energy_kwh=_EXACT.subtract(entry.rv_billed, rv_begin),
            frozen=entry.frozen,
            ended=entry.end,
        )

    # ---- the sealed state ---------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The canonical sealed layout (docs/readings.md §5); from_bytes(to_bytes()) restores it exactly."""
        registration, cursor = self._registration, self._cursor
        out = bytearray(_lp(_STATE_TAG, 4))
        out += self._session_id
        out += _lp(registration.public_key_der, 2)
        for text in (registration.algorithm, registration.RI, registration.RU):
            out += _lp(text.encode("ascii"), 1)
        out += self._deadline_us.to_bytes(8, "big", signed=True)
        out += self._grace_us.to_bytes(8, "big") + self._max_records.to_bytes(4, "big")
        out += _optional(None if cursor.rv_begin is None else _lp(str(cursor.rv_begin).encode("ascii"), 1))
        for instant in (cursor.last_time_us, cursor.last_sync_us):
            out += _optional(None if instant is None else instant.to_bytes(8, "big", signed=True))
        out += len(self._entries).to_bytes(4, "big")
        return bytes(out) + b"".join(self._encoded)

    @classmethod
    def from_bytes(cls, data: bytes) -> SessionReadings:
        """Parse a sealed state strictly; raises ReadingsStateError for anything but canonical bytes."""
        if not isinstance(data, bytes) or len(data) > _MAX_STATE_BYTES:
            raise ReadingsStateError("a sealed readings state is bytes of bounded length")
        reader = _Reader(data)
        if reader.lp(4) != _STATE_TAG:
            raise ReadingsStateError("not a sealed readings state (tag)")
        session_id = reader.take(SESSION_ID_BYTES)
        key, algorithm, ri, ru = reader.lp(2), reader.text(), reader.text(), reader.text()
        deadline_us = reader.integer(8, signed=True)
        grace_us, max_records = reader.integer(8), reader.integer(4)
        rv_begin = reader.decimal() if reader.flag() else None
        last_time_us = reader.integer(8, signed=True) if reader.flag() else None
        last_sync_us = reader.integer(8, signed=True) if reader.flag() else None
        count = reader.integer(4)
        if count > max_records:
            raise ReadingsStateError("more entries than the session's limit")
        entries = [_decode_entry(reader) for _ in range(count)]
        reader.end()
        try:
            registration = MeterRegistration(key, algorithm, ri, ru)
            state = cls(session_id, registration, _from_instant_us(deadline_us),
                        grace=grace_us * _US, max_records=max_records)  # fmt: skip
        except (ValueError, TypeError, OverflowError) as exc:
            raise ReadingsStateError(f"invalid session parameters: {exc}") from exc
        if registration.algorithm != algorithm:
            raise ReadingsStateError("the algorithm is not stored under its canonical name")
        state._restore(entries, rv_begin, last_time_us, last_sync_us)
        return state

    def _restore(
        self,
        entries: list[_Entry],
        rv_begin: Decimal | None,
        last_time_us: int | None,
        last_sync_us: int | None,
    ) -> None:
        _check_entries(entries, rv_begin)
        if not entries and last_time_us is not None:
            raise ReadingsStateError("a last time without accepted records")
        if last_sync_us is not None and (last_time_us is None or last_sync_us > last_time_us):
            raise ReadingsStateError("the last synchronised time is missing from, or after, the last time")
        for entry in entries:
            self._commit(self._cursor, entry)
        last = entries[-1] if entries else None
        self._cursor = _Cursor(
            begun=last is not None,
            frozen=last is not None and last.frozen,
            ended=last is not None and last.end,
            rv_begin=rv_begin,
            rv_billed=None if last is None else last.rv_billed,
            last_time_us=last_time_us,
            last_sync_us=last_sync_us,
        )


# ---- helpers ----------------------------------------------------------------------------------------------


def _parse(raw_record: bytes | str) -> ocmf.OcmfRecord:
    try:
        return ocmf.parse_record(raw_record)
    except ocmf.OcmfError as exc:
        reason = READING_TOO_LARGE if exc.reason == ocmf.OCMF_TOO_LARGE else READING_MALFORMED
        raise ReadingRejected(reason, exc.detail, ocmf_reason=exc.reason) from exc


def _aware(moment: datetime, name: str) -> datetime:
    if not isinstance(moment, datetime):
        raise TypeError(f"{name} must be a datetime")
    if moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")
    return moment


def _instant_us(moment: datetime) -> int:
    # Microseconds since 0001-01-01T00:00:00 UTC: local wall time minus the UTC offset.
    offset = moment.utcoffset() or timedelta(0)
    return (moment.replace(tzinfo=None) - _ORIGIN) // _US - offset // _US


def _from_instant_us(instant: int) -> datetime:
    # The inverse of _instant_us, in UTC; OverflowError outside datetime's range.
    return (_ORIGIN + instant * _US).replace(tzinfo=UTC)


def _required(value: Decimal | None) -> Decimal:
    if value is None:  # the rules guarantee a B value before any record is committed
        raise AssertionError("no billed value")
    return value


def _printable(text: str) -> bool:
    return all(" " <= char <= "~" for char in text)


def _lp(data: bytes, size: int) -> bytes:
    # A length prefix of `size` bytes, big-endian, then the data.
    return len(data).to_bytes(size, "big") + data


def _optional(encoded: bytes | None) -> bytes:
    return b"\x00" if encoded is None else b"\x01" + encoded


def _encode_entry(entry: _Entry) -> bytes:
    flags = _ENTRY_BEGIN * entry.begin | _ENTRY_END * entry.end | _ENTRY_FROZEN * entry.frozen
    return (
        entry.pg_number.to_bytes(8, "big")
        + entry.record_sha256
        + bytes([flags])
        + _lp(str(entry.rv_billed).encode("ascii"), 1)
    )


def _decode_entry(reader: _Reader) -> _Entry:
    pg_number, digest, flags = reader.integer(8), reader.take(32), reader.integer(1)
    if flags & ~(_ENTRY_BEGIN | _ENTRY_END | _ENTRY_FROZEN):
        raise ReadingsStateError("unknown entry flags")
    return _Entry(pg_number, digest, bool(flags & _ENTRY_BEGIN), bool(flags & _ENTRY_END),
                  bool(flags & _ENTRY_FROZEN), reader.decimal())  # fmt: skip


def _check_entries(entries: list[_Entry], rv_begin: Decimal | None) -> None:
    # The invariants accept() maintains: one B first, consecutive PGs, an end only last, a freeze that
    # holds the billed value, billed values never below the previous one, distinct record hashes.
    if (rv_begin is None) != (not entries):
        raise ReadingsStateError("rv_begin is present exactly when records were accepted")
    if len({entry.record_sha256 for entry in entries}) != len(entries):
        raise ReadingsStateError("a record hash appears twice")
    previous: _Entry | None = None
    for index, entry in enumerate(entries):
        if entry.begin != (index == 0) or (entry.end and index != len(entries) - 1):
            raise ReadingsStateError("B only in the first entry, an end only in the last")
        if previous is None:
            floor = _required(rv_begin)
        else:
            floor = previous.rv_billed
            if entry.pg_number != previous.pg_number + 1:
                raise ReadingsStateError("entry PGs are not consecutive")
            if previous.frozen and (not entry.frozen or entry.rv_billed != previous.rv_billed):
                raise ReadingsStateError("billing changed after it was frozen")
        if entry.rv_billed < floor or entry.pg_number >= 10**18:
            raise ReadingsStateError("a billed value below the previous one, or a PG out of range")
        previous = entry


class _Reader:
    """Strict reading of the sealed layout: every read is bounded, and end() refuses trailing bytes."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def take(self, count: int) -> bytes:
        end = self._pos + count
        if end > len(self._data):
            raise ReadingsStateError("truncated state")
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def integer(self, size: int, *, signed: bool = False) -> int:
        return int.from_bytes(self.take(size), "big", signed=signed)

    def flag(self) -> bool:
        value = self.integer(1)
        if value > 1:
            raise ReadingsStateError("a presence flag is 0 or 1")
        return value == 1

    def lp(self, size: int) -> bytes:
        return self.take(self.integer(size))

    def text(self) -> str:
        raw = self.lp(1)
        if not raw or not all(0x20 <= byte <= 0x7E for byte in raw):
            raise ReadingsStateError("a text field is non-empty printable ASCII")
        return raw.decode("ascii")

    def decimal(self) -> Decimal:
        # A non-negative finite Decimal written exactly as str() writes it, within the register bounds.
        text = self.text()
        try:
            value = Decimal(text)
        except decimal.InvalidOperation as exc:
            raise ReadingsStateError("not a decimal") from exc
        exponent = value.as_tuple().exponent
        if (
            not value.is_finite()
            or value.is_signed()
            or str(value) != text
            or not isinstance(exponent, int)
            or exponent < _MIN_STATE_DECIMAL_EXPONENT
            or value.adjusted() > ocmf.MAX_DECIMAL_ADJUSTED
        ):
            raise ReadingsStateError("a register value is not a canonical bounded decimal")
        return value

    def end(self) -> None:
        if self._pos != len(self._data):
            raise ReadingsStateError("trailing bytes after the state")
