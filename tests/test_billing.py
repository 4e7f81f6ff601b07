"""Tariffs, exact billing, coverage limits and the monotone clock: known answers, every reason, properties."""

from __future__ import annotations

import ast
import dataclasses
import decimal
import hashlib
import math
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from escrow.core import billing, clock, ocmf_parse, tariff
from escrow.core.billing import (
    BILLING_AMOUNT_INVALID,
    BILLING_ENERGY_INVALID,
    BILLING_ENERGY_NEGATIVE,
    BILLING_REGISTER_INVALID,
    BILLING_RESOLUTION_INVALID,
    BILLING_UNIT_INVALID,
    DEPOSIT_BELOW_FEE,
    REGISTER_CEILING,
    BillingError,
    bill_minor,
    coverage_limit,
    settle_amounts,
)
from escrow.core.clock import DEFAULT_MAX_LEAD_MS, MonotoneClock
from escrow.core.signing import ed25519_public_key
from escrow.core.tariff import (
    PRICE_DENOMINATOR,
    TARIFF_EXPIRED,
    TARIFF_MALFORMED,
    TARIFF_MISMATCH,
    TARIFF_NOT_YET_VALID,
    TARIFF_SIGNATURE_INVALID,
    TARIFF_SUPERSEDED,
    Tariff,
    TariffError,
    check_newer,
    check_tariff_for_pole,
    check_tariff_hash,
    sign_tariff,
    tariff_hash,
    verify_tariff,
)

CHAIN = hashlib.sha256(b"test chain").digest()
OTHER_CHAIN = hashlib.sha256(b"other chain").digest()
OPERATOR_SEED = hashlib.sha256(b"operator seed").digest()
OPERATOR_KEY = ed25519_public_key(OPERATOR_SEED)
STRANGER_KEY = ed25519_public_key(hashlib.sha256(b"stranger seed").digest())
NOW = 1_750_000_000  # unix seconds, inside the window of TARIFF below
WH = {"kWh": 1, "Wh": 1000}

# 0.39 EUR/kWh = 39 cents/kWh = 39_000_000 millionths of a cent per kWh, 0.50 EUR session fee
TARIFF = Tariff(
    pole_id="POLE-0001",
    evse_id="DE*ABC*E123456",
    currency="EUR",
    price_numerator=39_000_000,
    session_fee_minor=50,
    RI="1-b:1.8.0",
    RU="kWh",
    not_before=1_700_000_000,
    not_after=1_800_000_000,
    sequence=7,
)


def _reason(call: Callable[[], object], error: type[ValueError] = TariffError) -> str:
    with pytest.raises(error) as info:
        call()
    reason: str = info.value.reason  # type: ignore[attr-defined]
    return reason


def _with(**changes: Any) -> Tariff:
    return dataclasses.replace(TARIFF, **changes)


def _exact(value: Fraction) -> Decimal:
    """A Fraction whose denominator divides a power of ten, as an exact Decimal (test helper)."""
    context = decimal.Context(prec=100, traps=[decimal.Inexact, decimal.Rounded])
    return context.divide(Decimal(value.numerator), Decimal(value.denominator))


def _energy_kwh(rv_from: Decimal, rv_to: Decimal, unit: str) -> Decimal:
    return _exact((Fraction(rv_to) - Fraction(rv_from)) / WH[unit])


def _reference_bill(energy_kwh: Decimal, t: Tariff) -> int:
    return math.floor(Fraction(energy_kwh) * t.price_numerator / PRICE_DENOMINATOR) + t.session_fee_minor


# --- strategies -----------------------------------------------------------------------------------------

printable = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
u64 = st.integers(0, 2**64 - 1)
prices = st.one_of(st.integers(0, 10**9), u64)
amounts = st.one_of(st.integers(0, 10**6), u64)
# exact decimals c * 10^-e below 10^16 with at most 15 places (OCMF register values, also after Wh -> kWh)
energies = st.builds(lambda c, e: Decimal(f"{c}E-{e}"), st.integers(0, 10**16 - 1), st.integers(0, 15))
small_energies = st.builds(lambda c, e: Decimal(f"{c}E-{e}"), st.integers(0, 10**9), st.integers(0, 12))
register_values = st.builds(lambda c, e: Decimal(f"{c}E-{e}"), st.integers(0, 10**12), st.integers(0, 12))
resolutions = st.sampled_from(
    [Decimal(s) for s in ("1E-12", "0.0001", "0.001", "0.01", "0.1", "1", "10", "0.5", "0.25", "1E+3")]
)


@st.composite
def tariffs(draw: st.DrawFn, price: st.SearchStrategy[int] = prices) -> Tariff:
    not_before, not_after = sorted(draw(st.lists(u64, min_size=2, max_size=2, unique=True)))
    return Tariff(
        pole_id=draw(st.text(printable, min_size=1, max_size=64)),
        evse_id=draw(st.text(printable, min_size=1, max_size=64)),
        currency=draw(st.from_regex(r"[A-Z]{3}", fullmatch=True)),
        price_numerator=draw(price),
        session_fee_minor=draw(amounts),
        RI=draw(st.text(printable, min_size=1, max_size=32)),
        RU=draw(st.sampled_from(["kWh", "Wh"])),
        not_before=not_before,
        not_after=not_after,
        sequence=draw(u64),
    )


# --- the tariff body ------------------------------------------------------------------------------------


def test_tariff_body_layout_is_frozen() -> None:
    def lp(text: str) -> bytes:
        return len(text).to_bytes(4, "big") + text.encode("ascii")

    expected = (
        lp("POLE-0001")
        + lp("DE*ABC*E123456")
        + lp("EUR")
        + (39_000_000).to_bytes(8, "big")
        + (50).to_bytes(8, "big")
        + lp("1-b:1.8.0")
        + lp("kWh")
        + (1_700_000_000).to_bytes(8, "big")
        + (1_800_000_000).to_bytes(8, "big")
        + (7).to_bytes(8, "big")
    )
    assert TARIFF.to_bytes() == expected
    assert tariff_hash(expected) == hashlib.sha256(expected).digest()
    assert tariff_hash(expected).hex() == "abf73cf3dea79e3da299f71ebffb16d77133ec8ec1ecc56dc09ceab2985e9fc9"


@given(tariffs())
def test_tariff_round_trip(t: Tariff) -> None:
    body = t.to_bytes()
    assert Tariff.from_bytes(body) == t
    assert Tariff.from_bytes(body).to_bytes() == body
    assert tariff_hash(body) == hashlib.sha256(body).digest()


@pytest.mark.parametrize(
    "changes",
    [
        {"pole_id": ""},
        {"pole_id": "P" * 65},
        {"pole_id": "Pöle"},
        {"pole_id": "P\n1"},
        {"evse_id": ""},
        {"evse_id": "E" * 65},
        {"currency": "eur"},
        {"currency": "EU"},
        {"currency": "EURO"},
        {"currency": "E1R"},
        {"RI": ""},
        {"RI": "R" * 33},
        {"RU": "MWh"},
        {"RU": "kwh"},
        {"price_numerator": -1},
        {"price_numerator": 2**64},
        {"price_numerator": True},
        {"session_fee_minor": 2**64},
        {"session_fee_minor": 1.0},
        {"sequence": -1},
        {"not_before": 1_800_000_000},  # empty window: not_before == not_after
        {"not_after": 1_600_000_000},
    ],
)
def test_tariff_fields_are_checked(changes: dict[str, object]) -> None:
    assert _reason(lambda: _with(**changes)) == TARIFF_MALFORMED


def test_tariff_limits_are_inclusive() -> None:
    t = _with(pole_id="P" * 64, evse_id="E" * 64, RI="R" * 32, price_numerator=2**64 - 1)
    assert Tariff.from_bytes(t.to_bytes()) == t


def test_tariff_parsing_is_strict() -> None:
    body = TARIFF.to_bytes()
    for bad in (body + b"\x00", body[:-1], b"", body[:10]):
        with pytest.raises(TariffError) as info:
            Tariff.from_bytes(bad)
        assert info.value.reason == TARIFF_MALFORMED
    # a valid encoding whose currency is lowercase, and one with an empty window
    assert _reason(lambda: Tariff.from_bytes(body.replace(b"EUR", b"eur"))) == TARIFF_MALFORMED
    empty_window = body[:-24] + (5).to_bytes(8, "big") * 2 + body[-8:]
    assert _reason(lambda: Tariff.from_bytes(empty_window)) == TARIFF_MALFORMED
    not_bytes: Any = "text"
    assert _reason(lambda: Tariff.from_bytes(not_bytes)) == TARIFF_MALFORMED
    assert _reason(lambda: tariff_hash(body + b"\x00")) == TARIFF_MALFORMED


# --- signatures and validity ----------------------------------------------------------------------------


def test_sign_and_verify() -> None:
    body = TARIFF.to_bytes()
    signature = sign_tariff(TARIFF, CHAIN, OPERATOR_SEED)
    assert len(signature) == 64
    assert verify_tariff(body, signature, CHAIN, OPERATOR_KEY, NOW) == TARIFF


def test_signature_is_checked() -> None:
    body = TARIFF.to_bytes()
    signature = sign_tariff(TARIFF, CHAIN, OPERATOR_SEED)
    other_price = _with(price_numerator=39_000_001).to_bytes()
    cases = [
        (body, signature, CHAIN, STRANGER_KEY),  # another operator
        (body, signature, OTHER_CHAIN, OPERATOR_KEY),  # another chain
        (other_price, signature, CHAIN, OPERATOR_KEY),  # another body
        (body, signature[:32] + bytes([signature[32] ^ 1]) + signature[33:], CHAIN, OPERATOR_KEY),
        (body, signature[:63], CHAIN, OPERATOR_KEY),  # malformed signature
        (body, signature, CHAIN, bytes(32)),  # small-order key
    ]
    for signed_body, sig, chain, key in cases:
        with pytest.raises(TariffError) as info:
            verify_tariff(signed_body, sig, chain, key, NOW)
        assert info.value.reason == TARIFF_SIGNATURE_INVALID


def test_validity_window_boundaries() -> None:
    body = TARIFF.to_bytes()
    signature = sign_tariff(TARIFF, CHAIN, OPERATOR_SEED)

    def at(now: int) -> Tariff:
        return verify_tariff(body, signature, CHAIN, OPERATOR_KEY, now)

    assert at(TARIFF.not_before) == TARIFF
    assert at(TARIFF.not_after - 1) == TARIFF
    assert _reason(lambda: at(TARIFF.not_before - 1)) == TARIFF_NOT_YET_VALID
    assert _reason(lambda: at(0)) == TARIFF_NOT_YET_VALID
    assert _reason(lambda: at(TARIFF.not_after)) == TARIFF_EXPIRED
    with pytest.raises(ValueError):
        at(-1)


def test_sequence_must_increase() -> None:
    check_newer(TARIFF, None)
    check_newer(_with(sequence=8), TARIFF)
    assert _reason(lambda: check_newer(_with(sequence=7), TARIFF)) == TARIFF_SUPERSEDED
    assert _reason(lambda: check_newer(_with(sequence=0), TARIFF)) == TARIFF_SUPERSEDED
    assert _reason(lambda: check_newer(_with(sequence=8, evse_id="DE*ABC*E9"), TARIFF)) == TARIFF_MISMATCH


def test_tariff_must_match_pole_and_session() -> None:
    pole = {"pole_id": "POLE-0001", "evse_id": "DE*ABC*E123456", "RI": "1-b:1.8.0", "RU": "kWh"}
    check_tariff_for_pole(TARIFF, currency="EUR", **pole)
    for name, value in {**pole, "currency": "EUR"}.items():
        wrong = {**pole, "currency": "EUR", name: value + "X"}
        with pytest.raises(TariffError) as info:
            check_tariff_for_pole(TARIFF, **wrong)
        assert info.value.reason == TARIFF_MISMATCH
    body, other = TARIFF.to_bytes(), _with(sequence=8).to_bytes()
    assert check_tariff_hash(body, tariff_hash(body)) == TARIFF
    assert _reason(lambda: check_tariff_hash(body, bytes(32))) == TARIFF_MISMATCH
    assert _reason(lambda: check_tariff_hash(other, tariff_hash(body))) == TARIFF_MISMATCH


def test_every_tariff_reason_is_exercised() -> None:
    reasons = {
        value
        for name, value in vars(tariff).items()
        if name.startswith("TARIFF_") and name != "TARIFF_SCHEMA"
    }
    tested = {
        TARIFF_MALFORMED,
        TARIFF_EXPIRED,
        TARIFF_NOT_YET_VALID,
        TARIFF_SIGNATURE_INVALID,
        TARIFF_SUPERSEDED,
        TARIFF_MISMATCH,
    }
    assert reasons == tested


# --- the bill: known answers ----------------------------------------------------------------------------


def test_worked_examples() -> None:
    # 12.345 kWh * 39 c/kWh = 481.455 c -> 481 c, plus the 50 c fee
    assert bill_minor(Decimal("12.345"), TARIFF) == 531
    assert settle_amounts(2000, Decimal("12.345"), TARIFF) == (531, 1469)
    assert settle_amounts(500, Decimal("12.345"), TARIFF) == (500, 0)  # capped at the deposit
    assert bill_minor(Decimal("0"), TARIFF) == 50  # the fee alone
    assert bill_minor(Decimal("0.025"), TARIFF) == 50  # 0.975 c rounds down to nothing
    assert bill_minor(Decimal("0.026"), TARIFF) == 51  # 1.014 c
    # 0.3456789 EUR/kWh, 7.5 kWh: 259.259175 c -> 259 c, no fee
    assert bill_minor(Decimal("7.5"), _with(price_numerator=34_567_890, session_fee_minor=0)) == 259
    # Wh registers: 12345 Wh is converted to 12.345 kWh by the caller before billing
    assert bill_minor(ocmf_parse.to_kwh(Decimal("12345"), "Wh"), TARIFF) == 531


def test_coverage_worked_examples() -> None:
    # deposit 20.00 EUR, fee 0.50 EUR: 19.50 EUR of energy = 50.0256... kWh -> 50.025 kWh on a 1 Wh meter
    assert coverage_limit(2000, Decimal("1234.567"), TARIFF, "kWh", Decimal("0.001")) == Decimal("1284.592")
    assert bill_minor(Decimal("50.025"), TARIFF) == 2000
    assert bill_minor(Decimal("50.026"), TARIFF) == 2001
    wh = _with(RU="Wh")
    assert coverage_limit(2000, Decimal("1234567"), wh, "Wh", Decimal("1")) == Decimal("1284592")
    assert coverage_limit(2000, Decimal("1234567"), wh, "Wh", Decimal("10")) == Decimal("1284587")
    # a deposit that pays only the fee still covers the energy worth less than one cent
    assert coverage_limit(50, Decimal("0"), TARIFF, "kWh", Decimal("0.001")) == Decimal("0.025")
    # a zero price is unlimited: the last step below the ceiling
    free = _with(price_numerator=0)
    assert coverage_limit(50, Decimal("0"), free, "kWh", Decimal("0.001")) == Decimal("9999999999999999.999")
    assert coverage_limit(50, Decimal("12.5"), free, "kWh", Decimal("1")) == Decimal("9999999999999999.5")


def test_coverage_refuses_a_deposit_below_the_fee() -> None:
    error = _reason(lambda: coverage_limit(49, Decimal("0"), TARIFF, "kWh", Decimal("0.001")), BillingError)
    assert error == DEPOSIT_BELOW_FEE


# --- the bill: bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("energy", "reason"),
    [
        (Decimal("-0.001"), BILLING_ENERGY_NEGATIVE),
        (Decimal("-1E+3"), BILLING_ENERGY_NEGATIVE),
        (0.5, BILLING_ENERGY_INVALID),
        (1, BILLING_ENERGY_INVALID),
        ("1.0", BILLING_ENERGY_INVALID),
        (Decimal("NaN"), BILLING_ENERGY_INVALID),
        (Decimal("sNaN"), BILLING_ENERGY_INVALID),
        (Decimal("Infinity"), BILLING_ENERGY_INVALID),
        (Decimal("1E+16"), BILLING_ENERGY_INVALID),
        (Decimal("1E-19"), BILLING_ENERGY_INVALID),
        (Decimal("1E+999999999"), BILLING_ENERGY_INVALID),
    ],
)
def test_energy_is_checked(energy: Any, reason: str) -> None:
    assert _reason(lambda: bill_minor(energy, TARIFF), BillingError) == reason
    assert _reason(lambda: settle_amounts(2000, energy, TARIFF), BillingError) == reason


def test_negative_energy_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        bill_minor(Decimal("-1"), TARIFF)
    assert bill_minor(Decimal("-0"), TARIFF) == 50  # negative zero is zero


@pytest.mark.parametrize("deposit", [-1, 2**64, True, 1.0, Decimal(5), None])
def test_deposit_is_checked(deposit: Any) -> None:
    assert (
        _reason(lambda: settle_amounts(deposit, Decimal(1), TARIFF), BillingError) == BILLING_AMOUNT_INVALID
    )
    limit = _reason(
        lambda: coverage_limit(deposit, Decimal(0), TARIFF, "kWh", Decimal("0.001")), BillingError
    )
    assert limit == BILLING_AMOUNT_INVALID


@pytest.mark.parametrize(
    ("rv_begin", "unit", "resolution", "reason"),
    [
        (Decimal("-0.001"), "kWh", Decimal("0.001"), BILLING_REGISTER_INVALID),
        (Decimal("1E+16"), "kWh", Decimal("0.001"), BILLING_REGISTER_INVALID),
        (1.5, "kWh", Decimal("0.001"), BILLING_REGISTER_INVALID),
        (Decimal(0), "kWh", Decimal(0), BILLING_RESOLUTION_INVALID),
        (Decimal(0), "kWh", Decimal("-0.001"), BILLING_RESOLUTION_INVALID),
        (Decimal(0), "kWh", Decimal("1E-19"), BILLING_RESOLUTION_INVALID),
        (Decimal(0), "kWh", 0.001, BILLING_RESOLUTION_INVALID),
        (Decimal(0), "Wh", Decimal("1"), BILLING_UNIT_INVALID),  # not the tariff's RU
        (Decimal(0), "MWh", Decimal("1"), BILLING_UNIT_INVALID),
    ],
)
def test_coverage_inputs_are_checked(rv_begin: Any, unit: str, resolution: Any, reason: str) -> None:
    assert _reason(lambda: coverage_limit(2000, rv_begin, TARIFF, unit, resolution), BillingError) == reason


# --- the bill: properties -------------------------------------------------------------------------------


@given(energies, tariffs())
def test_bill_is_exact(energy: Decimal, t: Tariff) -> None:
    bill = bill_minor(energy, t)
    assert type(bill) is int
    assert bill == _reference_bill(energy, t)


@given(energies, energies, tariffs())
def test_bill_is_monotone_in_energy(a: Decimal, b: Decimal, t: Tariff) -> None:
    low, high = sorted((a, b))
    assert bill_minor(low, t) <= bill_minor(high, t)


@given(amounts, energies, tariffs())
def test_settlement_conserves_the_deposit(deposit: int, energy: Decimal, t: Tariff) -> None:
    pole_pay, refund = settle_amounts(deposit, energy, t)
    assert type(pole_pay) is int and type(refund) is int
    assert pole_pay + refund == deposit
    assert 0 <= pole_pay <= deposit and refund >= 0
    assert pole_pay == min(_reference_bill(energy, t), deposit)


@given(st.data(), tariffs(), register_values, resolutions)
def test_coverage_limit_is_tight(data: st.DataObject, t: Tariff, rv_begin: Decimal, step: Decimal) -> None:
    deposit = data.draw(st.integers(t.session_fee_minor, max(t.session_fee_minor, 2**64 - 1)), "deposit")
    limit = coverage_limit(deposit, rv_begin, t, t.RU, step)
    assert type(limit) is Decimal
    steps = (Fraction(limit) - Fraction(rv_begin)) / Fraction(step)
    assert steps.denominator == 1 and steps >= 0  # on the grid rv_begin + n * resolution
    assert limit < REGISTER_CEILING
    assert bill_minor(_energy_kwh(rv_begin, limit, t.RU), t) <= deposit
    next_step = _exact(Fraction(limit) + Fraction(step))
    if next_step < REGISTER_CEILING:  # not capped: one more step would cost more than the deposit
        assert t.price_numerator > 0
        assert bill_minor(_energy_kwh(rv_begin, next_step, t.RU), t) > deposit


@given(st.data(), tariffs(price=st.integers(1, 10**9)), register_values, resolutions)
def test_coverage_limit_with_realistic_prices(
    data: st.DataObject, t: Tariff, rv_begin: Decimal, step: Decimal
) -> None:
    fee = t.session_fee_minor % 1000
    t = dataclasses.replace(t, session_fee_minor=fee)
    deposit = data.draw(st.integers(fee, fee + 100_000), "deposit")
    limit = coverage_limit(deposit, rv_begin, t, t.RU, step)
    assert bill_minor(_energy_kwh(rv_begin, limit, t.RU), t) <= deposit
    next_step = _exact(Fraction(limit) + Fraction(step))
    assert next_step >= REGISTER_CEILING or bill_minor(_energy_kwh(rv_begin, next_step, t.RU), t) > deposit


@given(amounts, tariffs())
def test_coverage_below_fee_is_refused(deposit: int, t: Tariff) -> None:
    if deposit < t.session_fee_minor:
        with pytest.raises(BillingError) as info:
            coverage_limit(deposit, Decimal(0), t, t.RU, Decimal(1))
        assert info.value.reason == DEPOSIT_BELOW_FEE
    else:
        assert coverage_limit(deposit, Decimal(0), t, t.RU, Decimal(1)) >= 0


def test_bounds_match_ocmf_parsing() -> None:
    assert 10 ** (ocmf_parse.MAX_DECIMAL_ADJUSTED + 1) == billing.DECIMAL_LIMIT == REGISTER_CEILING
    assert billing.MIN_DECIMAL_EXPONENT <= ocmf_parse.MIN_DECIMAL_EXPONENT - 3  # Wh -> kWh adds 3 places


# --- no floats anywhere ---------------------------------------------------------------------------------


@pytest.mark.parametrize("module", [tariff, billing, clock])
def test_no_float_in_source(module: Any) -> None:
    source = Path(module.__file__).read_text(encoding="utf-8")
    for node in ast.walk(ast.parse(source)):
        assert not (isinstance(node, ast.Constant) and isinstance(node.value, float)), "float literal"
        assert not (isinstance(node, ast.Name) and node.id == "float"), "float()"
        assert not isinstance(node, ast.Div), "true division"


# --- the monotone clock ---------------------------------------------------------------------------------

times = st.one_of(st.integers(0, 10**7), st.integers(0, 2**63 - 1))
observations = st.lists(
    st.one_of(
        st.tuples(st.just("host"), times, st.just("")),
        st.tuples(st.just("signed"), times, st.just("")),
        st.tuples(st.just("meter"), times, st.sampled_from(["U", "I", "S", "R"])),
    ),
    max_size=30,
)


def _observe(c: MonotoneClock, kind: str, ms: int, status: str) -> int:
    if kind == "host":
        return c.observe_host(ms)
    if kind == "signed":
        return c.observe_signed(ms)
    return c.observe_meter(ms, status)


@given(times, observations, st.one_of(st.none(), st.integers(0, 10**6)))
def test_clock_is_monotone_and_matches_the_model(
    start: int, steps: list[tuple[str, int, str]], lead: int | None
) -> None:
    c = MonotoneClock(start, max_lead_ms=lead)
    model_now = model_host = start
    for kind, ms, status in steps:
        before = c.now()
        if kind == "host":
            model_host = max(model_host, ms)
            model_now = max(model_now, model_host)
        elif kind == "signed" or status == "S":
            model_now = max(model_now, ms if lead is None else min(ms, model_host + lead))
        assert _observe(c, kind, ms, status) == c.now() == model_now
        assert type(c.now()) is int and before <= c.now() < 2**63
        assert c.now() >= model_host
        assert MonotoneClock.from_bytes(c.to_bytes(), max_lead_ms=lead).now() == c.now()


@given(times, observations)
def test_unbounded_clock_is_the_maximum(start: int, steps: list[tuple[str, int, str]]) -> None:
    c = MonotoneClock(start, max_lead_ms=None)
    for kind, ms, status in steps:
        _observe(c, kind, ms, status)
    counted = [ms for kind, ms, status in steps if kind != "meter" or status == "S"]
    assert c.now() == max([start, *counted])


def test_clock_known_answers() -> None:
    c = MonotoneClock()
    assert c.now() == 0
    assert c.observe_host(1_750_000_000_000) == 1_750_000_000_000
    assert c.observe_host(1_740_000_000_000) == 1_750_000_000_000  # the host cannot move it back
    assert c.observe_meter(1_750_000_500_000, "U") == 1_750_000_000_000  # unsynchronised: ignored
    assert c.observe_meter(1_750_000_001_000, "S") == 1_750_000_001_000
    assert c.observe_signed(1_750_000_002_000) == 1_750_000_002_000
    # a party cannot push the shared clock far ahead of the host: it leads by at most DEFAULT_MAX_LEAD_MS
    assert c.observe_signed(4_000_000_000_000) == 1_750_000_000_000 + DEFAULT_MAX_LEAD_MS
    assert c.now_seconds() == 1_750_000_060
    assert c.to_bytes() == (1_750_000_060_000).to_bytes(8, "big")


@pytest.mark.parametrize("bad", [-1, 2**63, True, 1.5, Decimal(1), None])
def test_clock_refuses_bad_times(bad: Any) -> None:
    c = MonotoneClock(5)
    calls: list[Callable[[Any], object]] = [
        c.observe_host,
        c.observe_signed,
        lambda ms: c.observe_meter(ms, "S"),
        MonotoneClock,
    ]
    if bad is not None:  # max_lead_ms=None is the (insecure) unbounded lead, not an error
        calls.append(lambda ms: MonotoneClock(0, max_lead_ms=ms))
    for call in calls:
        with pytest.raises(ValueError):
            call(bad)
    assert c.now() == 5


def test_clock_state_is_strict() -> None:
    with pytest.raises(ValueError):
        MonotoneClock(5).observe_meter(10, "X")
    for bad in (b"", bytes(7), bytes(9), (2**63).to_bytes(8, "big")):
        with pytest.raises(ValueError):
            MonotoneClock.from_bytes(bad)
    restored = MonotoneClock.from_bytes((2**63 - 1).to_bytes(8, "big"))
    assert restored.observe_host(0) == 2**63 - 1
