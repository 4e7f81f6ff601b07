"""Session acceptance of OCMF readings (DESIGN §7.3): every rule and reason, the sealed state, energies.

The meter side (a P-256 private key, payload JSON, ocmf.sign_payload) and the enclave side
(SessionReadings with the registered public key) only meet through the records' bytes. Every refusal is
checked to leave the sealed state byte for byte as it was.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from escrow.core import ocmf
from escrow.core import readings as rd
from escrow.core.readings import Acceptance, MeterRegistration, ReadingRejected, SessionReadings

ALGORITHM = "ECDSA-secp256r1-SHA256"
SESSION_ID = bytes(range(16))
HANDLE = rd.meter_handle(SESSION_ID)
REGISTER = "1-b:1.8.0"
T0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)  # the B reading
DEADLINE = T0 + timedelta(hours=1)
NOW = T0 + timedelta(minutes=5)
GRACE = rd.DEFAULT_GRACE


# ---- the meter side ---------------------------------------------------------------------------------------


def _new_key() -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    private_key = ec.generate_private_key(ec.SECP256R1())
    der = private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_key, der


METER_KEY, METER_DER = _new_key()
OTHER_KEY, _ = _new_key()


def _tm(minutes: float, status: str = "S", offset_minutes: int = 0) -> str:
    """TM for T0 + minutes, written in a zone offset_minutes east of UTC."""
    zone = timezone(timedelta(minutes=offset_minutes))
    moment = (T0 + timedelta(minutes=minutes)).astimezone(zone)
    sign = "-" if offset_minutes < 0 else "+"
    hours, mins = divmod(abs(offset_minutes), 60)
    millis = moment.microsecond // 1000
    return f"{moment:%Y-%m-%dT%H:%M:%S},{millis:03d}{sign}{hours:02d}{mins:02d} {status}"


def _reading(
    tx: str | None, rv: str | None, minutes: float = 0, status: str = "S", **fields: Any
) -> dict[str, Any]:
    """One RD entry; rv is the raw JSON number token (None: an event-only reading without RV/RI/RU)."""
    reading: dict[str, Any] = {"TM": _tm(minutes, status)}
    if tx is not None:
        reading["TX"] = tx
    if rv is not None:
        reading.update({"RV": "#" + rv, "RI": REGISTER, "RU": "kWh", "RT": "AC"})
    reading.update({"EF": "", "ST": "G"})
    reading.update(fields)
    return {key: value for key, value in reading.items() if value is not None}


def _record(
    pg: int | str, readings: list[dict[str, Any]], key: ec.EllipticCurvePrivateKey = METER_KEY, **header: Any
) -> str:
    """A signed record; header keys override (None removes one), RV tokens go into the JSON raw."""
    body: dict[str, Any] = {
        "FV": "1.0", "GI": "ESCROW-SIM", "GS": "POLE-0001", "PG": pg if isinstance(pg, str) else f"T{pg}",
        "MV": "Sim", "MS": "SM-0001", "IS": True, "IL": "VERIFIED", "IT": "LOCAL", "ID": HANDLE,
    }  # fmt: skip
    body.update(header)
    body = {k: v for k, v in body.items() if v is not None}
    body["RD"] = readings
    text = re.sub(r'"#([0-9.eE+-]+)"', r"\1", json.dumps(body, separators=(",", ":")))
    return ocmf.sign_payload(text.encode(), key, ALGORITHM)


def _registration(unit: str = "kWh", register: str = REGISTER) -> MeterRegistration:
    return MeterRegistration(METER_DER, ALGORITHM, register, unit)


def _session(**kwargs: Any) -> SessionReadings:
    return SessionReadings(SESSION_ID, kwargs.pop("registration", _registration()), DEADLINE, **kwargs)


def _begun(**kwargs: Any) -> SessionReadings:
    """A session whose B record (T7, 100.00 kWh at T0) has been accepted."""
    session = _session(**kwargs)
    session.accept(_record(7, [_reading("B", "100.00")]), now=NOW)
    return session


def _refused(
    session: SessionReadings, record: str | bytes, reason: str, now: datetime = NOW
) -> ReadingRejected:
    """Assert that the record is refused with `reason` and that the state did not change."""
    before = session.to_bytes()
    with pytest.raises(ReadingRejected) as info:
        session.accept(record, now=now)
    assert info.value.reason == reason, info.value
    assert session.to_bytes() == before
    return info.value


# ---- session tag and meter handle -------------------------------------------------------------------------


def test_session_tag_and_meter_handle_definitions() -> None:
    assert rd.session_tag(SESSION_ID) == hashlib.sha256(b"escrow.v1/session" + SESSION_ID).digest()
    digest = hashlib.sha256(b"escrow.v1/meter-handle" + SESSION_ID).digest()
    assert base64.b32encode(digest).decode()[:20] == HANDLE
    assert len(HANDLE) == rd.METER_HANDLE_CHARS
    assert re.fullmatch(r"[A-Z2-7]{20}", HANDLE)
    assert HANDLE.upper() == HANDLE
    assert rd.meter_handle(bytes(16)) != rd.meter_handle(bytes(15) + b"\x01")
    assert _session().meter_handle == HANDLE
    assert _session().session_tag == rd.session_tag(SESSION_ID)


@pytest.mark.parametrize("bad", [b"", bytes(15), bytes(17), bytearray(16), "0" * 16, None])
def test_session_id_must_be_16_bytes(bad: Any) -> None:
    for function in (rd.session_tag, rd.meter_handle):
        with pytest.raises(ValueError):
            function(bad)
    with pytest.raises(ValueError):
        SessionReadings(bad, _registration(), DEADLINE)


# ---- registration and construction ------------------------------------------------------------------------


def test_registration_is_checked_and_canonical() -> None:
    assert _registration().algorithm == ALGORITHM
    with pytest.raises(ocmf.OcmfError) as info:
        MeterRegistration(METER_DER, "ECDSA-secp384r1-SHA256", REGISTER, "kWh")
    assert info.value.reason == ocmf.OCMF_ALGORITHM_MISMATCH
    with pytest.raises(ocmf.OcmfError) as info:
        MeterRegistration(METER_DER, ALGORITHM, REGISTER, "sec")
    assert info.value.reason == ocmf.OCMF_UNIT_UNSUPPORTED
    for register in ("", "x" * 65, "1-b:1.8.0\n"):
        with pytest.raises(ocmf.OcmfError):
            MeterRegistration(METER_DER, ALGORITHM, register, "kWh")
    with pytest.raises(ocmf.OcmfError):
        MeterRegistration(METER_DER[:-1], ALGORITHM, REGISTER, "kWh")


def test_brainpool_spelling_is_stored_canonically() -> None:
    private_key = ec.generate_private_key(ec.BrainpoolP256R1())
    der = private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    registration = MeterRegistration(der, "ECDSA-brainpoolP256r1-SHA256", REGISTER, "kWh")
    assert registration.algorithm == "ECDSA-brainpool256r1-SHA256"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"grace": timedelta(seconds=-1)},
        {"grace": rd.MAX_GRACE + timedelta(microseconds=1)},
        {"max_records": 0},
        {"max_records": rd.MAX_RECORDS_PER_SESSION + 1},
    ],
)
def test_construction_limits(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        _session(**kwargs)


def test_times_must_be_aware() -> None:
    with pytest.raises(ValueError):
        SessionReadings(SESSION_ID, _registration(), DEADLINE.replace(tzinfo=None))
    session = _session()
    with pytest.raises(ValueError):
        session.accept(_record(7, [_reading("B", "1")]), now=NOW.replace(tzinfo=None))


# ---- the happy paths ---------------------------------------------------------------------------------------


def test_begin_readings_end() -> None:
    session = _session()
    records = [
        _record(7, [_reading("B", "100.00", 0)]),
        _record(8, [_reading("C", "101.25", 5)]),
        _record(9, [_reading("C", "103.50", 10), _reading("T", "104.00", 11)]),
        _record(10, [_reading("E", "107.75", 20)]),
    ]
    first = session.accept(records[0], now=NOW)
    assert first == Acceptance(
        pg="T7",
        record_sha256=hashlib.sha256(records[0].encode()).digest(),
        begin=True,
        end=False,
        rv_begin=Decimal("100.00"),
        rv_billed=Decimal("100.00"),
        energy_kwh=Decimal("0.00"),
        frozen=False,
        ended=False,
    )
    assert session.accept(records[1], now=NOW).energy_kwh == Decimal("1.25")
    assert session.accept(records[2], now=NOW).rv_billed == Decimal("104.00")
    last = session.accept(records[3], now=NOW)
    assert (last.pg, last.begin, last.end, last.ended, last.duplicate) == ("T10", False, True, True, False)
    assert last.energy_kwh == Decimal("7.75") and str(last.energy_kwh) == "7.75"
    assert session.ended and session.begun and not session.frozen
    assert session.energy_kwh == Decimal("7.75")
    assert session.last_pg == "T10" and len(session) == 4
    assert session.record_hashes == tuple(hashlib.sha256(r.encode()).digest() for r in records)
    assert [a.pg for a in session.acceptances()] == ["T7", "T8", "T9", "T10"]
    assert session.last_synchronised_time == T0 + timedelta(minutes=20)


def test_copy_is_independent_and_lookups_match_the_acceptances() -> None:
    original = _begun()
    before = original.to_bytes()
    clone = original.copy()
    record = _record(8, [_reading("C", "101.25", 5)])
    accepted = clone.accept(record, now=NOW)
    assert (
        original.to_bytes() == before
        and len(original) == 1
        and original.index_of(accepted.record_sha256) is None
    )
    assert len(clone) == 2 and clone.index_of(accepted.record_sha256) == 1
    assert clone.acceptance_at(1) == accepted
    assert SessionReadings.from_bytes(clone.to_bytes()).to_bytes() == clone.to_bytes()
    assert original.copy().to_bytes() == before


def test_begin_and_end_in_one_record() -> None:
    session = _session()
    acceptance = session.accept(
        _record(41, [_reading("B", "2935.6", 0), _reading("E", "2965.1", 4, CL="#0.5")]), now=NOW
    )
    assert acceptance.begin and acceptance.end and acceptance.ended
    assert acceptance.energy_kwh == Decimal("29.5")
    _refused(session, _record(42, [_reading("C", "2966")]), rd.READING_AFTER_END)


def test_bytes_and_str_records_are_the_same_record() -> None:
    session = _session()
    record = _record(7, [_reading("B", "1")])
    original = session.accept(record, now=NOW)
    assert session.accept(record.encode(), now=NOW) == Acceptance(**{**original.__dict__, "duplicate": True})


def test_readings_inherit_fields_within_a_record() -> None:
    # OCMF inheritance: RI/RU/TX/TM omitted from later readings come from the previous one.
    session = _session()
    session.accept(_record(7, [_reading("B", "5"), {"TX": "C", "RV": "#6"}, {"RV": "#6.5"}]), now=NOW)
    assert session.rv_billed == Decimal("6.5")


def test_other_registers_are_ignored() -> None:
    # LEM-style: an export register in the same record, decreasing and in Wh, does not matter.
    session = _session()
    other = {"RV": "#9", "RI": "1-b:2.8.0", "RU": "Wh", "ST": "E", "EF": "E"}
    session.accept(_record(7, [_reading("B", "10"), other]), now=NOW)
    session.accept(_record(8, [_reading("E", "12", 3), {**other, "RV": "#1"}]), now=NOW)
    assert session.energy_kwh == Decimal("2")


def test_event_only_end_reading() -> None:
    # A power-failure end reported as an event (no RV/RI/RU) ends the session at the last billed value.
    session = _begun()
    session.accept(_record(8, [_reading("C", "104.5", 2)]), now=NOW)
    acceptance = session.accept(_record(9, [_reading("P", None, 3)]), now=NOW)
    assert acceptance.ended and acceptance.rv_billed == Decimal("104.5")
    assert acceptance.energy_kwh == Decimal("4.50")


def test_wh_register_converts_exactly() -> None:
    session = _session(registration=_registration(unit="Wh"))
    session.accept(_record(7, [_reading("B", "1234567", RU="Wh")]), now=NOW)
    acceptance = session.accept(_record(8, [_reading("E", "1.2345679e6", 1, RU="Wh")]), now=NOW)
    assert acceptance.rv_begin == Decimal("1234.567")
    assert acceptance.rv_billed == Decimal("1234.5679")
    assert acceptance.energy_kwh == Decimal("0.0009")
    _refused(_session(), _record(7, [_reading("B", "1", RU="Wh")]), rd.READING_WRONG_REGISTER)


# ---- duplicates --------------------------------------------------------------------------------------------


def test_identical_record_returns_the_original_acceptance() -> None:
    session = _begun()
    record = _record(8, [_reading("E", "101", 1)])
    original = session.accept(record, now=NOW)
    before = session.to_bytes()
    # also after the end, and after the deadline and grace period: the answer never changes
    for now in (NOW, DEADLINE + GRACE + timedelta(days=1)):
        again = session.accept(record, now=now)
        assert again.duplicate and not original.duplicate
        assert again == Acceptance(**{**original.__dict__, "duplicate": True})
    first = session.accept(_record(7, [_reading("B", "100.00")]), now=NOW)
    assert first.duplicate and first.begin and not first.ended  # as it was answered then
    assert session.to_bytes() == before


def test_identical_record_is_answered_even_at_the_limit() -> None:
    session = _begun(max_records=1)
    assert session.accept(_record(7, [_reading("B", "100.00")]), now=NOW).duplicate
    _refused(session, _record(8, [_reading("C", "101")]), rd.READING_LIMIT)


# ---- every refusal, state unchanged ------------------------------------------------------------------------

Case = tuple[str, Callable[[], SessionReadings], Callable[[], str | bytes], str]


def _cases() -> list[Case]:
    fresh, begun, r, rec = _session, _begun, _reading, _record
    c1 = [r("C", "101", 1)]
    return [
        ("garbage", fresh, lambda: b"OCMF|{}", rd.READING_MALFORMED),
        ("too large", fresh, lambda: b"OCMF|" + b" " * ocmf.MAX_RECORD_BYTES, rd.READING_TOO_LARGE),
        ("TM before year 1 in UTC", fresh,
         lambda: rec(7, [r("B", "1", TM="0001-01-01T00:30:00,000+0100 S")]), rd.READING_MALFORMED),
        ("wrong ID", begun, lambda: rec(8, c1, ID=rd.meter_handle(bytes(16))), rd.READING_WRONG_SESSION),
        ("lower-case ID", begun, lambda: rec(8, c1, ID=HANDLE.lower()), rd.READING_WRONG_SESSION),
        ("no ID", begun, lambda: rec(8, c1, ID=None), rd.READING_WRONG_SESSION),
        ("IT not LOCAL", begun, lambda: rec(8, c1, IT="ISO14443"), rd.READING_WRONG_SESSION),
        ("fiscal PG", begun, lambda: rec("F8", c1), rd.READING_NOT_TRANSACTION),
        ("no TX", begun, lambda: rec(8, [r(None, "101", 1)]), rd.READING_NOT_TRANSACTION),
        ("other key", begun, lambda: rec(8, c1, key=OTHER_KEY), rd.READING_SIGNATURE_INVALID),
        ("first not B", fresh, lambda: rec(7, [r("C", "100")]), rd.READING_OUT_OF_ORDER),
        ("C before B", fresh, lambda: rec(7, [r("C", "9"), r("B", "10")]), rd.READING_OUT_OF_ORDER),
        ("X first", fresh, lambda: rec(7, [r("X", "100")]), rd.READING_OUT_OF_ORDER),
        ("PG gap", begun, lambda: rec(9, c1), rd.READING_OUT_OF_ORDER),
        ("PG before B", begun, lambda: rec(6, c1), rd.READING_OUT_OF_ORDER),
        ("PG reused", begun, lambda: rec(7, [r("B", "100.01")]), rd.READING_PG_REUSED),
        ("second B", begun, lambda: rec(8, [r("B", "101", 1)]), rd.READING_DUPLICATE_BEGIN),
        ("two B", fresh, lambda: rec(7, [r("B", "1"), r("B", "2")]), rd.READING_DUPLICATE_BEGIN),
        ("two ends", begun, lambda: rec(8, [r("E", "101"), r("L", "102")]), rd.READING_AFTER_END),
        ("C after E", begun, lambda: rec(8, [r("E", "101"), r("C", "102")]), rd.READING_AFTER_END),
        ("other unit", begun, lambda: rec(8, [r("C", "101", RU="Wh")]), rd.READING_WRONG_REGISTER),
        ("other RI only", begun, lambda: rec(8, [r("C", "101", RI="1-b:2.8.0")]), rd.READING_WRONG_REGISTER),
        ("B without RV", fresh, lambda: rec(7, [r("B", None)]), rd.READING_WRONG_REGISTER),
        ("RV decreases", begun, lambda: rec(8, [r("C", "99.99", 1)]), rd.READING_NOT_MONOTONE),
        ("RV decreases inside", fresh, lambda: rec(7, [r("B", "5"), r("C", "4.9")]), rd.READING_NOT_MONOTONE),
        ("TM decreases", begun, lambda: rec(8, [r("C", "101", -0.001)]), rd.READING_NOT_MONOTONE),
        ("TM decreases, U status", begun, lambda: rec(8, [r("C", "101", -1, "U")]), rd.READING_NOT_MONOTONE),
        ("TM decreases in another zone", begun,
         lambda: rec(8, [r("C", "101", TM=_tm(-30, offset_minutes=60))]), rd.READING_NOT_MONOTONE),
        ("ST not G", begun, lambda: rec(8, [r("C", "101", 1, ST="E")]), rd.READING_STATUS_NOT_GOOD),
        ("ST not G at B", fresh, lambda: rec(7, [r("B", "1", ST="S")]), rd.READING_STATUS_NOT_GOOD),
        ("EF E", begun, lambda: rec(8, [r("C", "101", 1, EF="E")]), rd.READING_ERROR_FLAG),
        ("EF tE", begun, lambda: rec(8, [r("C", "101", 1, EF="tE")]), rd.READING_ERROR_FLAG),
        ("S time after deadline + grace", begun,
         lambda: rec(8, [r("C", "101", 62.01)]), rd.READING_AFTER_DEADLINE),
        ("R time after deadline + grace", begun,
         lambda: rec(8, [r("C", "101", 62.01, "R")]), rd.READING_AFTER_DEADLINE),
    ]  # fmt: skip


@pytest.mark.parametrize("case", _cases(), ids=lambda case: case[0])
def test_every_refusal_leaves_the_state_unchanged(case: Case) -> None:
    _, make_session, make_record, reason = case
    _refused(make_session(), make_record(), reason)


def test_all_reasons_are_exercised() -> None:
    shown = {case[3] for case in _cases()} | {rd.READING_LIMIT}
    assert shown == set(rd.REASONS)


def test_malformed_and_signature_refusals_keep_the_ocmf_reason() -> None:
    session = _begun()
    record = _record(8, [_reading("C", "101", 1)])
    head, payload, signature = record.split("|")
    tampered = f"{head}|{payload.replace('101', '102')}|{signature}"
    assert (
        _refused(session, tampered, rd.READING_SIGNATURE_INVALID).ocmf_reason == ocmf.OCMF_SIGNATURE_INVALID
    )
    duplicate_key = f'{head}|{payload[:-1]},"PG":"T8"}}|{signature}'
    assert _refused(session, duplicate_key, rd.READING_MALFORMED).ocmf_reason == ocmf.OCMF_DUPLICATE_KEY
    assert _refused(session, 12345, rd.READING_MALFORMED).ocmf_reason == ocmf.OCMF_FORMAT  # type: ignore[arg-type]


def test_record_limit() -> None:
    session = _begun(max_records=2)
    session.accept(_record(8, [_reading("C", "101", 1)]), now=NOW)
    error = _refused(session, _record(9, [_reading("E", "102", 2)]), rd.READING_LIMIT)
    assert "2" in error.detail


def test_refused_record_breaks_the_chain() -> None:
    # The meter's T counter moved on: after a refused record the next one does not follow the last accepted.
    session = _begun()
    _refused(session, _record(8, [_reading("C", "101", 1, ST="E")]), rd.READING_STATUS_NOT_GOOD)
    _refused(session, _record(9, [_reading("E", "102", 2)]), rd.READING_OUT_OF_ORDER)
    assert session.rv_billed == Decimal("100.00")


def test_instants_are_compared_after_offsets() -> None:
    # 11:01+0100 is 10:01Z: later than the B reading at 10:00Z although the wall time "looks" far later,
    # and 10:30-0100 is 11:30Z: still later than 10:01Z although its wall time is earlier.
    session = _begun()
    session.accept(_record(8, [_reading("C", "101", TM=_tm(1, offset_minutes=60))]), now=NOW)
    session.accept(_record(9, [_reading("C", "102", TM=_tm(90, offset_minutes=-60, status="I"))]), now=NOW)
    assert session.rv_billed == Decimal("102")


def test_time_flagged_unusable_is_not_compared() -> None:
    # EF "t": the meter voids the time, so it is neither compared nor used for deadlines.
    session = _begun()
    session.accept(_record(8, [_reading("C", "101", -10, EF="t")]), now=NOW)
    session.accept(_record(9, [_reading("C", "102", 1)]), now=NOW)
    assert session.rv_billed == Decimal("102")


# ---- X freezes billing -------------------------------------------------------------------------------------


def test_x_reading_freezes_billing() -> None:
    session = _begun()
    session.accept(_record(8, [_reading("C", "102", 1)]), now=NOW)
    # the exception reading itself may carry error flags and a bad state: it is not billed
    x = session.accept(_record(9, [_reading("X", "103", 2, EF="E", ST="E")]), now=NOW)
    assert x.frozen and x.rv_billed == Decimal("102") and x.energy_kwh == Decimal("2.00")
    later = session.accept(_record(10, [_reading("C", "150", 3, EF="E")]), now=NOW)
    assert later.rv_billed == Decimal("102") and later.frozen
    lower = session.accept(_record(11, [_reading("S", "50", 4, ST="F")]), now=NOW)  # values no longer matter
    assert lower.rv_billed == Decimal("102")
    end = session.accept(_record(12, [_reading("E", "160", 5)]), now=NOW)
    assert end.ended and end.frozen and end.energy_kwh == Decimal("2.00")
    _refused(session, _record(13, [_reading("C", "161", 6)]), rd.READING_AFTER_END)
    assert SessionReadings.from_bytes(session.to_bytes()).to_bytes() == session.to_bytes()


def test_x_inside_the_begin_record() -> None:
    session = _session()
    acceptance = session.accept(
        _record(7, [_reading("B", "10"), _reading("C", "11"), _reading("X", "12"), _reading("C", "13")]),
        now=NOW,
    )
    assert (
        acceptance.frozen and acceptance.rv_billed == Decimal("11") and acceptance.energy_kwh == Decimal("1")
    )


def test_frozen_session_still_orders_and_times_readings() -> None:
    session = _begun()
    session.accept(_record(8, [_reading("X", "100.5", 1)]), now=NOW)
    _refused(session, _record(9, [_reading("C", "101", 0.5)]), rd.READING_NOT_MONOTONE)
    _refused(session, _record(9, [_reading("B", "101", 2)]), rd.READING_DUPLICATE_BEGIN)
    _refused(session, _record(9, [_reading("C", "101", 70)]), rd.READING_AFTER_DEADLINE)


# ---- the deadline ------------------------------------------------------------------------------------------


def test_nothing_after_deadline_plus_grace() -> None:
    session = _begun()
    record = _record(8, [_reading("E", "101", 1)])
    _refused(session, record, rd.READING_AFTER_DEADLINE, now=DEADLINE + GRACE + timedelta(microseconds=1))
    assert session.accept(record, now=DEADLINE + GRACE).ended


def test_grace_is_a_parameter() -> None:
    session = _begun(grace=timedelta(0))
    late = DEADLINE + timedelta(seconds=1)
    _refused(session, _record(8, [_reading("E", "101", 1)]), rd.READING_AFTER_DEADLINE, now=late)
    assert session.grace == timedelta(0)


@pytest.mark.parametrize("status", ["I", "U"])
def test_untimed_status_is_not_used_for_deadlines(status: str) -> None:
    # An informative or unknown clock says nothing about the deadline: far "late" readings are accepted
    # while the session is open, and an end-type reading in the grace period.
    session = _begun()
    session.accept(_record(8, [_reading("C", "101", 600, status)]), now=NOW)
    closing = DEADLINE + timedelta(seconds=30)
    assert session.accept(_record(9, [_reading("E", "102", 900, status)]), now=closing).ended


@pytest.mark.parametrize("status", ["S", "R"])
def test_timed_status_is_used_for_deadlines(status: str) -> None:
    session = _begun()
    session.accept(_record(8, [_reading("C", "101", 61, status)]), now=NOW)  # by deadline + grace: fine
    closing = DEADLINE + timedelta(seconds=30)
    _refused(
        session, _record(9, [_reading("E", "102", 62.5, status)]), rd.READING_AFTER_DEADLINE, now=closing
    )
    assert session.accept(_record(9, [_reading("E", "102", 61.5, status)]), now=closing).ended


def test_closing_accepts_an_end_or_readings_timed_by_the_deadline() -> None:
    closing = DEADLINE + timedelta(seconds=30)
    session = _begun()
    session.accept(_record(8, [_reading("C", "101", 59)]), now=closing)  # timed before the deadline
    _refused(session, _record(9, [_reading("C", "102", 61)]), rd.READING_AFTER_DEADLINE, now=closing)
    _refused(session, _record(9, [_reading("C", "102", 59.5, "I")]), rd.READING_AFTER_DEADLINE, now=closing)
    _refused(
        session, _record(9, [_reading("C", "102", 59.5, EF="t")]), rd.READING_AFTER_DEADLINE, now=closing
    )
    assert session.accept(_record(9, [_reading("C", "102", 60)]), now=closing).rv_billed == Decimal("102")
    assert session.accept(_record(10, [_reading("E", "103", 61)]), now=closing).ended


# ---- exact energy (property) -------------------------------------------------------------------------------


@given(
    start=st.decimals(min_value=0, max_value=10**9, places=3, allow_nan=False, allow_infinity=False),
    steps=st.lists(
        st.decimals(min_value=0, max_value=10**4, places=3, allow_nan=False, allow_infinity=False),
        min_size=0,
        max_size=6,
    ),
    unit=st.sampled_from(["kWh", "Wh"]),
    end_with_e=st.booleans(),
)
def test_energy_is_last_minus_first_exactly(
    start: Decimal, steps: list[Decimal], unit: str, end_with_e: bool
) -> None:
    values = [start]
    for step in steps:
        values.append(values[-1] + step)
    session = _session(registration=_registration(unit=unit))
    acceptance = None
    for index, value in enumerate(values):
        tx = "B" if index == 0 else ("E" if end_with_e and index == len(values) - 1 else "C")
        record = _record(100 + index, [_reading(tx, str(value), index, RU=unit)])
        acceptance = session.accept(record, now=NOW)
    assert acceptance is not None
    first, last = ocmf.to_kwh(values[0], unit), ocmf.to_kwh(values[-1], unit)
    assert acceptance.energy_kwh == last - first == session.energy_kwh
    assert acceptance.energy_kwh >= 0
    assert acceptance.rv_begin == first and acceptance.rv_billed == last
    assert SessionReadings.from_bytes(session.to_bytes()).to_bytes() == session.to_bytes()


# ---- the sealed state --------------------------------------------------------------------------------------


def _states() -> dict[str, SessionReadings]:
    fresh = _session()
    begun = _begun()
    frozen = _begun()
    frozen.accept(_record(8, [_reading("C", "100.5", 1, status="I")]), now=NOW)
    frozen.accept(_record(9, [_reading("X", "101", 2)]), now=NOW)
    ended = _session(registration=_registration(unit="Wh"), grace=timedelta(seconds=7), max_records=9)
    ended.accept(_record(3, [_reading("B", "1.606848e7", RU="Wh")]), now=NOW)
    ended.accept(_record(4, [_reading("C", "16068490.5", 1, RU="Wh", EF="t")]), now=NOW)
    ended.accept(_record(5, [_reading("E", "16068500", 2, RU="Wh")]), now=NOW)
    return {"fresh": fresh, "begun": begun, "frozen": frozen, "ended": ended}


@pytest.mark.parametrize("name", ["fresh", "begun", "frozen", "ended"])
def test_state_round_trip(name: str) -> None:
    state = _states()[name]
    data = state.to_bytes()
    restored = SessionReadings.from_bytes(data)
    assert restored.to_bytes() == data
    assert restored.acceptances() == state.acceptances()
    for attribute in ("session_id", "registration", "deadline", "grace", "max_records", "begun", "ended",
                      "frozen", "rv_begin", "rv_billed", "energy_kwh", "last_pg", "record_hashes",
                      "last_synchronised_time"):  # fmt: skip
        assert getattr(restored, attribute) == getattr(state, attribute), attribute


def test_restored_state_continues_identically() -> None:
    original = _begun()
    original.accept(_record(8, [_reading("C", "101", 1)]), now=NOW)
    restored = SessionReadings.from_bytes(original.to_bytes())
    nxt = _record(9, [_reading("E", "102", 2)])
    assert restored.accept(nxt, now=NOW) == original.accept(nxt, now=NOW)
    assert restored.to_bytes() == original.to_bytes()
    # the restored state remembers the last time and refuses what the original refuses
    again = SessionReadings.from_bytes(_begun().to_bytes())
    _refused(again, _record(8, [_reading("C", "101", -1)]), rd.READING_NOT_MONOTONE)
    _refused(again, _record(7, [_reading("B", "100.01")]), rd.READING_PG_REUSED)


def test_every_truncation_and_extension_is_refused() -> None:
    for state in _states().values():
        data = state.to_bytes()
        for length in range(len(data)):
            with pytest.raises(rd.ReadingsStateError):
                SessionReadings.from_bytes(data[:length])
        with pytest.raises(rd.ReadingsStateError):
            SessionReadings.from_bytes(data + b"\x00")


def _entry_offset(data: bytes, state: SessionReadings) -> int:
    """Offset of the first entry: the state's length minus its encoded entries."""
    return len(data) - sum(len(entry) for entry in state._encoded)


def test_corrupted_states_are_refused() -> None:
    state = _states()["ended"]
    data = state.to_bytes()
    start = _entry_offset(data, state)
    first_flags = start + 8 + 32
    second_pg = start + len(state._encoded[0])
    mutations = {
        "tag": data.replace(b"escrow.v1/session-readings", b"escrow.v2/session-readings"),
        "reserved entry flag": data[:first_flags] + bytes([data[first_flags] | 8]) + data[first_flags + 1 :],
        "B flag cleared": data[:first_flags] + bytes([data[first_flags] & ~1]) + data[first_flags + 1 :],
        "PG not consecutive": data[:second_pg] + (5).to_bytes(8, "big") + data[second_pg + 8 :],
        "count above limit": data[: start - 4] + (10).to_bytes(4, "big") + data[start:],
        "bytearray": bytearray(data),
    }
    for name, mutated in mutations.items():
        with pytest.raises(rd.ReadingsStateError):
            SessionReadings.from_bytes(mutated)  # type: ignore[arg-type]
        assert name


def test_non_canonical_decimal_is_refused() -> None:
    state = _states()["begun"]
    data = state.to_bytes()
    text = b"100.00"
    assert data.count(bytes([len(text)]) + text) == 2  # rv_begin and the entry's billed value
    for bad in (
        b"0100.00",
        b" 100.00",
        b"+100.00",
        b"-100.00",
        b"1e2",
        b"NaN",
        b"Infinity",
        b"100.0000000000000000",
    ):
        mutated = data.replace(bytes([len(text)]) + text, bytes([len(bad)]) + bad, 1)
        with pytest.raises(rd.ReadingsStateError):
            SessionReadings.from_bytes(mutated)


def test_state_tampering_with_session_parameters_is_refused() -> None:
    data = _session().to_bytes()
    offset = 4 + len(b"escrow.v1/session-readings") + 16
    key_length = int.from_bytes(data[offset : offset + 2], "big")
    bad_key = data[: offset + 2] + bytes(key_length) + data[offset + 2 + key_length :]
    with pytest.raises(rd.ReadingsStateError):
        SessionReadings.from_bytes(bad_key)
    algorithm_at = offset + 2 + key_length
    spelled = b"ECDSA-secp256r1-SHA256"
    assert data[algorithm_at + 1 : algorithm_at + 1 + len(spelled)] == spelled
    with pytest.raises(rd.ReadingsStateError):
        SessionReadings.from_bytes(data.replace(b"kWh", b"MWh"))
