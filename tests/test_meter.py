"""The pole's simulated meter (clients.meter): enclave acceptance, OCMF verification, pyocmf and Eichrecht.

The meter side (SimulatedMeter holding its private key) and the verifier side (SessionReadings and
ocmf.verify_record with the registered public key, and the independent pyocmf) only meet through the
records' text. Energies are compared exactly: the accepted energy is the sum of the advances.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from clients import meter as m
from clients.meter import MeterError, MeterIdentity, SimulatedMeter, charge_plan
from escrow.core import ocmf
from escrow.core import readings as rd
from escrow.core.readings import MeterRegistration, SessionReadings

SESSION_ID = bytes(range(16))
OTHER_SESSION_ID = bytes(range(1, 17))
T0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
DEADLINE = T0 + timedelta(hours=2)
NOW = T0 + timedelta(minutes=5)  # the enclave's time when the records arrive
START_KWH = Decimal("1234.567")
STEPS = [Decimal("0.058"), Decimal("0.058"), Decimal("1.000"), Decimal("0.024")]
TM_PATTERN = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d,\d{3}\+0000 S")
KEY = ec.generate_private_key(ec.SECP256R1())


# ---- the meter side ---------------------------------------------------------------------------------------


def _clock(
    times: list[datetime] | None = None, step: timedelta = timedelta(seconds=30)
) -> Callable[[], datetime]:
    """A clock returning `times` in turn, else T0, T0 + step, T0 + 2 step, ..."""
    calls = iter(times) if times is not None else (T0 + n * step for n in range(10**6))
    return lambda: next(calls)


def _meter(RU: str = "kWh", **settings: Any) -> SimulatedMeter:
    settings.setdefault("register_kwh", START_KWH)
    settings.setdefault("pagination", 41)
    settings.setdefault("clock", _clock())
    return SimulatedMeter(KEY, RU=RU, **settings)


def _session(meter: SimulatedMeter, steps: list[Decimal] = STEPS, kind: str = "E") -> list[str]:
    """B, then one C record after each advance, then the end record."""
    records = [meter.begin(SESSION_ID)]
    for energy in steps:
        meter.advance(energy)
        records.append(meter.reading())
    records.append(meter.end(kind))
    return records


# ---- the verifier side ------------------------------------------------------------------------------------


def _enclave(public_key_der: bytes, algorithm: str, RI: str, RU: str) -> SessionReadings:
    return SessionReadings(SESSION_ID, MeterRegistration(public_key_der, algorithm, RI, RU), DEADLINE)


# ---- the enclave accepts the session --------------------------------------------------------------------


@pytest.mark.parametrize("RU", ["kWh", "Wh"])
def test_session_is_accepted_in_order_and_bills_exactly_the_energy_advanced(RU: str) -> None:
    meter = _meter(RU)
    records = _session(meter)
    enclave = _enclave(meter.public_key_der, meter.algorithm, meter.RI, meter.RU)
    answers = [enclave.accept(record, now=NOW) for record in records]
    assert [answer.pg for answer in answers] == [f"T{41 + i}" for i in range(len(records))]
    assert answers[0].begin and answers[-1].end and answers[-1].ended
    assert all(answer.rv_begin == START_KWH for answer in answers)
    assert [answer.energy_kwh for answer in answers[1:-1]] == [sum(STEPS[: i + 1]) for i in range(len(STEPS))]
    assert answers[-1].energy_kwh == sum(STEPS) == Decimal("1.140")
    assert meter.register_kwh == START_KWH + sum(STEPS) and not meter.in_transaction


@pytest.mark.parametrize("kind", m.END_KINDS)
def test_every_end_kind_closes_the_session(kind: str) -> None:
    meter = _meter()
    records = _session(meter, [Decimal("2.5")], kind)
    enclave = _enclave(meter.public_key_der, meter.algorithm, meter.RI, meter.RU)
    answers = [enclave.accept(record, now=NOW) for record in records]
    assert answers[-1].ended and answers[-1].energy_kwh == Decimal("2.5")


def test_only_the_session_of_the_begin_record_accepts_it() -> None:
    meter = _meter()
    record = meter.begin(SESSION_ID)
    other = SessionReadings(
        OTHER_SESSION_ID, MeterRegistration(meter.public_key_der, meter.algorithm, meter.RI, "kWh"), DEADLINE
    )
    with pytest.raises(rd.ReadingRejected) as info:
        other.accept(record, now=NOW)
    assert info.value.reason == rd.READING_WRONG_SESSION


# ---- the records, read by our own verifier ----------------------------------------------------------------


@pytest.mark.parametrize(("RU", "rv_tokens"), [
    ("kWh", ["1234.567", "1234.625", "1234.683", "1235.683", "1235.707", "1235.707"]),
    ("Wh", ["1234567", "1234625", "1234683", "1235683", "1235707", "1235707"]),
])  # fmt: skip
def test_every_record_verifies_and_says_what_the_design_asks(RU: str, rv_tokens: list[str]) -> None:
    meter = _meter(RU)
    records = _session(meter)
    parsed = [ocmf.parse_record(record) for record in records]
    for record, token in zip(parsed, rv_tokens):
        ocmf.verify_record(record, meter.public_key_der, algorithm=m.ALGORITHM)
        assert f'"RV":{token},'.encode() in record.payload  # a JSON number at the register's resolution
        assert record.SA == m.ALGORITHM and record.IT == "LOCAL" and rd.meter_handle(SESSION_ID) == record.ID
        assert "SIMULATED" in (record.GI or "") and "SIMULATED" in (record.MM or "")
        (reading,) = record.readings
        assert TM_PATTERN.fullmatch(reading.TM) and reading.time_status == "S"
        assert (reading.ST, reading.EF, reading.RI, reading.RU, reading.RT) == (
            "G",
            "",
            "1-b:1.8.0",
            RU,
            "AC",
        )
    assert [record.readings[0].TX for record in parsed] == ["B", "C", "C", "C", "C", "E"]
    assert [record.PG for record in parsed] == [f"T{n}" for n in range(41, 47)]


def test_a_record_from_another_key_does_not_verify() -> None:
    record = ocmf.parse_record(_meter().begin(SESSION_ID))
    stranger = SimulatedMeter.generate()
    with pytest.raises(ocmf.OcmfError) as info:
        ocmf.verify_record(record, stranger.public_key_der)
    assert info.value.reason == ocmf.OCMF_SIGNATURE_INVALID


# ---- the independent verifier: pyocmf 0.6.0 ------------------------------------------------------------


@pytest.mark.parametrize("RU", ["kWh", "Wh"])
@pytest.mark.parametrize("kind", ["E", "R"])
def test_pyocmf_accepts_every_record_and_the_eichrecht_pair(RU: str, kind: str) -> None:
    import pyocmf  # a test-only dependency (test extras)

    meter = _meter(RU)
    records = _session(meter, kind=kind)
    with warnings.catch_warnings():
        warnings.simplefilter("error", pyocmf.SpecWarning)  # not even a tolerated spec deviation
        parsed = [pyocmf.OCMF.from_string(record, strict=True) for record in records]
    for record in parsed:
        assert record.verify_signature(meter.public_key_der.hex())
        assert record.check_eichrecht(errors_only=True) == []
    begin, end = parsed[0], parsed[-1]
    assert begin.check_eichrecht(end) == []  # no errors, and no warnings either
    assert pyocmf.validate_transaction_pair(begin, end)
    begin_rv, end_rv = begin.payload.RD[0].RV, end.payload.RD[0].RV
    assert begin_rv is not None and end_rv is not None
    assert end_rv - begin_rv == sum(STEPS) * (1000 if RU == "Wh" else 1)
    head, payload, signature = records[-1].split("|")
    tampered = pyocmf.OCMF.from_string("|".join([head, payload.replace('"RV":1235', '"RV":1236'), signature]))
    assert tampered.payload.RD[0].RV != end.payload.RD[0].RV
    assert not tampered.verify_signature(meter.public_key_der.hex())


# ---- pagination and time -------------------------------------------------------------------------------


def test_pagination_steps_by_one_across_transactions_and_time_never_runs_back() -> None:
    times = [T0, T0 + timedelta(seconds=1), T0 - timedelta(minutes=5), T0 + timedelta(seconds=2),
             T0 + timedelta(seconds=2), T0 - timedelta(days=1), T0 + timedelta(seconds=3)]  # fmt: skip
    meter = _meter(pagination=0, clock=_clock(times))
    records = _session(meter, [Decimal("0.001"), Decimal(0)])  # T0, +1 s, back 5 min, +2 s
    meter.advance(Decimal("0.5"))  # between transactions: the register is the meter's lifetime register
    records += [meter.begin(OTHER_SESSION_ID), meter.reading(), meter.end()]  # +2 s, back a day, +3 s
    parsed = [ocmf.parse_record(record) for record in records]
    assert [record.pagination_number for record in parsed] == list(range(7)) and meter.pagination == 7
    moments = [record.readings[0].time for record in parsed]
    assert moments == sorted(moments) and moments[2] == moments[1] and moments[5] == moments[4]
    assert parsed[0].readings[0].TM == "2024-05-01T10:00:00,000+0000 S"
    assert START_KWH + Decimal("0.501") == parsed[4].readings[0].RV
    assert parsed[4].ID == rd.meter_handle(OTHER_SESSION_ID) != parsed[0].ID


def test_time_is_utc_with_milliseconds_truncated() -> None:
    zone = timezone(timedelta(hours=2))
    moment = datetime(2024, 5, 1, 12, 0, 59, 999_999, tzinfo=zone)
    meter = _meter(clock=_clock([moment]))
    assert ocmf.parse_record(meter.begin(SESSION_ID)).readings[0].TM == "2024-05-01T10:00:59,999+0000 S"


def test_a_naive_clock_is_refused_and_signs_nothing() -> None:
    meter = _meter(clock=_clock([datetime(2024, 5, 1, 10, 0)]))
    with pytest.raises(MeterError):
        meter.begin(SESSION_ID)
    assert meter.pagination == 41 and not meter.in_transaction


# ---- the register -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("energy", "error"), [
    (Decimal("-0.001"), MeterError), (Decimal("0.0005"), MeterError), (Decimal("NaN"), MeterError),
    (Decimal("sNaN"), MeterError), (Decimal("Infinity"), MeterError), (Decimal(10) ** 12, MeterError),
    (1.5, TypeError), (1, TypeError), (True, TypeError), ("1.5", TypeError), (Fraction(3, 2), TypeError),
])  # fmt: skip
def test_the_register_moves_only_forward_by_exact_whole_wh(energy: Any, error: type[Exception]) -> None:
    meter = _meter()
    with pytest.raises(error):
        meter.advance(energy)
    assert meter.register_kwh == START_KWH
    meter.advance(Decimal(0))
    meter.advance(Decimal("0.001"))
    assert meter.register_kwh == Decimal("1234.568")


def test_the_register_cannot_pass_its_capacity() -> None:
    meter = _meter(register_kwh=m.MAX_REGISTER_KWH - Decimal("0.001"))
    with pytest.raises(MeterError):
        meter.advance(Decimal("0.001"))
    assert meter.register_kwh == m.MAX_REGISTER_KWH - Decimal("0.001")


# ---- refusals: order and settings -------------------------------------------------------------------------


def test_records_follow_the_transaction_order() -> None:
    meter = _meter()
    for call in (meter.reading, meter.end):
        with pytest.raises(MeterError):
            call()
    with pytest.raises(MeterError):
        meter.begin(bytes(15))  # a session id is 16 bytes
    meter.begin(SESSION_ID)
    with pytest.raises(MeterError):
        meter.begin(SESSION_ID)
    for kind in ("B", "C", "X", "e", ""):
        with pytest.raises(MeterError):
            meter.end(kind)
    assert meter.pagination == 42 and meter.meter_handle == rd.meter_handle(SESSION_ID)


@pytest.mark.parametrize("settings", [
    {"RU": "MWh"}, {"RT": "ac"}, {"RI": ""}, {"RI": "1-b:1.8.0|x"}, {"register_kwh": Decimal("-1")},
    {"register_kwh": Decimal("0.0001")}, {"pagination": -1}, {"pagination": 2**63},
])  # fmt: skip
def test_settings_the_meter_cannot_hold_are_refused(settings: dict[str, Any]) -> None:
    with pytest.raises(MeterError):
        _meter(**settings)


@pytest.mark.parametrize("settings", [{"register_kwh": 1.0}, {"pagination": True}, {"pagination": "1"}])
def test_settings_of_the_wrong_type_are_refused(settings: dict[str, Any]) -> None:
    with pytest.raises(TypeError):
        _meter(**settings)


def test_only_a_p256_key_and_clean_identification() -> None:
    with pytest.raises(MeterError):
        SimulatedMeter(ec.generate_private_key(ec.SECP384R1()))
    for bad in ("", "A|B", "é", "x" * 65):
        with pytest.raises(MeterError):
            MeterIdentity(GI=bad)
    identity = MeterIdentity(GS="POLE-7", MS="SIM-7")
    record = ocmf.parse_record(_meter(identity=identity).begin(SESSION_ID))
    assert (record.GS, record.MS, record.MM) == ("POLE-7", "SIM-7", MeterIdentity().MM)


# ---- the charge plan -------------------------------------------------------------------------------------


def test_charge_plan_examples() -> None:
    plan = charge_plan(Decimal(10), Decimal(7), Decimal(30))  # 7 kW for 30 s: 58.33 Wh, so 58 Wh steps
    assert plan == [Decimal("0.058")] * 172 + [Decimal("0.024")] and sum(plan) == 10
    assert charge_plan(Decimal("0.5"), Decimal(6), Decimal(60)) == [Decimal("0.1")] * 5  # no partial step
    assert charge_plan(Decimal("0.05"), Decimal(22), Decimal(60)) == [Decimal("0.05")]  # one partial step
    assert charge_plan(Decimal(0), Decimal(11), Decimal(1)) == []


@given(
    total_wh=st.integers(0, 200_000),
    power_kw=st.decimals("0.1", "350", places=3),
    interval_s=st.decimals("0.1", "900", places=1),
)
def test_charge_plan_sums_exactly_and_no_step_exceeds_one_interval(
    total_wh: int, power_kw: Decimal, interval_s: Decimal
) -> None:
    total = Decimal(total_wh) * m.RESOLUTION_KWH
    per_interval = Fraction(power_kw) * Fraction(interval_s) / 3600  # kWh, exact
    full_step = Fraction(int(per_interval * 1000), 1000)
    if full_step == 0 or (total_wh and -(-Fraction(total) // full_step) > m.MAX_PLAN_STEPS):
        with pytest.raises(MeterError):
            charge_plan(total, power_kw, interval_s)
        return
    plan = charge_plan(total, power_kw, interval_s)
    assert sum(plan, Decimal(0)) == total and all(isinstance(step, Decimal) for step in plan)
    assert all(
        0 < Fraction(step) <= per_interval and step == step.quantize(m.RESOLUTION_KWH) for step in plan
    )
    assert all(Fraction(step) == full_step for step in plan[:-1])  # every step full but the last
    assert len(plan) <= m.MAX_PLAN_STEPS


@pytest.mark.parametrize(("args", "error"), [
    ((10.0, Decimal(7), Decimal(30)), TypeError),
    ((Decimal(10), 7, Decimal(30)), TypeError),
    ((Decimal(10), Decimal(7), 30.0), TypeError),
    ((Decimal("10.0005"), Decimal(7), Decimal(30)), MeterError),  # not whole Wh
    ((Decimal(-1), Decimal(7), Decimal(30)), MeterError),
    ((Decimal(10), Decimal(0), Decimal(30)), MeterError),
    ((Decimal(10), Decimal(-7), Decimal(30)), MeterError),
    ((Decimal(10), Decimal("NaN"), Decimal(30)), MeterError),
    ((Decimal(10), Decimal(7), Decimal(0)), MeterError),
    ((Decimal(10), Decimal(7), Decimal("Infinity")), MeterError),
    ((Decimal(10), Decimal(10_001), Decimal(30)), MeterError),  # above MAX_POWER_KW
    ((Decimal(10), Decimal(7), Decimal(86_401)), MeterError),  # above MAX_INTERVAL_S
    ((Decimal(10), Decimal("0.01"), Decimal("0.3")), MeterError),  # under 1 Wh per interval
    ((Decimal(100), Decimal("3.6"), Decimal(1)), MeterError),  # 100,000 steps of 1 Wh
])  # fmt: skip
def test_charge_plan_refusals(args: tuple[Any, Any, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        charge_plan(*args)


def test_a_planned_session_is_accepted_and_bills_the_plan() -> None:
    plan = charge_plan(Decimal("7.5"), Decimal(11), Decimal(60))  # 183 Wh a minute
    meter = _meter(clock=_clock(step=timedelta(seconds=60)))
    records = _session(meter, plan)
    enclave = _enclave(meter.public_key_der, meter.algorithm, meter.RI, meter.RU)
    answers = [enclave.accept(record, now=NOW) for record in records]
    assert answers[-1].energy_kwh == Decimal("7.5") and len(answers) == len(plan) + 2
