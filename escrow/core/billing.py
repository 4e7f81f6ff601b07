"""Exact billing: the bill, the split of the deposit, and the coverage limit (DESIGN §7.1 steps 4 and 7).

Integers and Decimals only, never floats and never Decimal rounding: a Decimal is turned into an exact
fraction (``as_integer_ratio``) and every division is an integer floor division. With p the tariff's
price numerator, DEN = PRICE_DENOMINATOR and E the energy in kWh:

  bill(E)          = floor(E * p / DEN) + session_fee
  settle(deposit)  = (pole_pay, refund) = (min(bill, deposit), deposit - min(bill, deposit))
  coverage limit   = RV_begin + n * resolution for the largest n with bill(n * resolution) <= deposit,
                     kept below REGISTER_CEILING (a zero price is "unlimited": the last step below it)

The derivation, the limits and worked examples in euro cents are in docs/billing.md.
"""

from __future__ import annotations

from decimal import Decimal

from escrow.core.errors import CoreError
from escrow.core.tariff import PRICE_DENOMINATOR, Tariff

__all__ = [
    "BILLING_AMOUNT_INVALID",
    "BILLING_ENERGY_INVALID",
    "BILLING_ENERGY_NEGATIVE",
    "BILLING_REGISTER_INVALID",
    "BILLING_RESOLUTION_INVALID",
    "BILLING_UNIT_INVALID",
    "DECIMAL_LIMIT",
    "DEPOSIT_BELOW_FEE",
    "MIN_DECIMAL_EXPONENT",
    "REGISTER_CEILING",
    "BillingError",
    "bill_minor",
    "coverage_limit",
    "settle_amounts",
]

# --- reasons and the error ------------------------------------------------------------------------------

DEPOSIT_BELOW_FEE = "DEPOSIT_BELOW_FEE"  # the deposit cannot pay the session fee, so cannot open a session
BILLING_AMOUNT_INVALID = "BILLING_AMOUNT_INVALID"  # a deposit that is not an int in [0, 2^64)
BILLING_ENERGY_INVALID = "BILLING_ENERGY_INVALID"  # energy not a finite Decimal within the bounds below
BILLING_ENERGY_NEGATIVE = "BILLING_ENERGY_NEGATIVE"  # energy below zero (a register ran backwards)
BILLING_REGISTER_INVALID = "BILLING_REGISTER_INVALID"  # RV_begin not a non-negative bounded Decimal
BILLING_RESOLUTION_INVALID = "BILLING_RESOLUTION_INVALID"  # resolution not a positive bounded Decimal
BILLING_UNIT_INVALID = "BILLING_UNIT_INVALID"  # unit not "kWh"/"Wh", or not the tariff's RU


class BillingError(CoreError):
    """An amount, energy or register value that billing refuses; ``reason`` is one of the codes above."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason, detail)
        if not detail:
            self.args = (reason,)


# --- bounds ---------------------------------------------------------------------------------------------

DECIMAL_LIMIT = 10**16  # |value| < 10^16, as OCMF register values (escrow.core.ocmf_parse)
MIN_DECIMAL_EXPONENT = -18  # at most 18 digits after the point (OCMF: 12, plus 3 from Wh to kWh)
REGISTER_CEILING = 10**16  # exclusive: the coverage limit stays below it, as every OCMF register value does
_U64_LIMIT = 1 << 64
_WH_PER_KWH = {"kWh": 1, "Wh": 1000}


def _exact_ratio(value: object, reason: str, what: str) -> tuple[int, int]:
    """(numerator, denominator > 0) of a finite Decimal with exponent >= -18 and |value| < 10^16."""
    if not isinstance(value, Decimal) or not value.is_finite():
        raise BillingError(reason, f"{what} must be a finite Decimal (never a float)")
    exponent = value.as_tuple().exponent
    if not isinstance(exponent, int) or exponent < MIN_DECIMAL_EXPONENT or value.adjusted() >= 16:
        raise BillingError(reason, f"{what} must be below 10^16 with at most 18 decimal places")
    return value.as_integer_ratio()


def _check_amount(amount: object, what: str) -> int:
    """An int (not a bool) in [0, 2^64): amounts are u64 minor units."""
    if isinstance(amount, bool) or not isinstance(amount, int) or not 0 <= amount < _U64_LIMIT:
        raise BillingError(BILLING_AMOUNT_INVALID, f"{what} must be an integer in [0, 2^64)")
    return amount


def _check_tariff(tariff: object) -> Tariff:
    if not isinstance(tariff, Tariff):
        raise TypeError("tariff must be an escrow.core.tariff.Tariff")
    return tariff


# --- the bill and the split -----------------------------------------------------------------------------


def bill_minor(energy_kwh: Decimal, tariff: Tariff) -> int:
    """floor(energy_kwh * p / DEN) + session_fee, exactly (an int; may exceed 2^64 for absurd energies)."""
    _check_tariff(tariff)
    num, den = _exact_ratio(energy_kwh, BILLING_ENERGY_INVALID, "energy_kwh")
    if num < 0:
        raise BillingError(BILLING_ENERGY_NEGATIVE, "energy must not be negative")
    return num * tariff.price_numerator // (den * PRICE_DENOMINATOR) + tariff.session_fee_minor


def settle_amounts(deposit_minor: int, energy_kwh: Decimal, tariff: Tariff) -> tuple[int, int]:
    """(pole_pay, refund) = (min(bill, deposit), deposit - pole_pay): the bill is capped at the deposit."""
    deposit = _check_amount(deposit_minor, "deposit_minor")
    pole_pay = min(bill_minor(energy_kwh, tariff), deposit)
    return pole_pay, deposit - pole_pay


# --- the coverage limit ---------------------------------------------------------------------------------


def coverage_limit(
    deposit_minor: int, rv_begin: Decimal, tariff: Tariff, unit: str, resolution: Decimal
) -> Decimal:
    """RV_max = rv_begin + n * resolution, n largest with bill(n * resolution) <= deposit (in ``unit``).

    ``rv_begin`` and ``resolution`` are in the register's unit (``unit``, which must be the tariff's RU).
    Kept below REGISTER_CEILING (a zero price gives the last step below it). DEPOSIT_BELOW_FEE if the
    deposit is below the session fee.
    """
    deposit = _check_amount(deposit_minor, "deposit_minor")
    _check_tariff(tariff)
    if unit not in _WH_PER_KWH or unit != tariff.RU:
        raise BillingError(BILLING_UNIT_INVALID, f"unit must be the tariff's RU {tariff.RU!r}")
    begin_num, begin_den = _exact_ratio(rv_begin, BILLING_REGISTER_INVALID, "rv_begin")
    if begin_num < 0:
        raise BillingError(BILLING_REGISTER_INVALID, "rv_begin must not be negative")
    step_num, step_den = _exact_ratio(resolution, BILLING_RESOLUTION_INVALID, "resolution")
    if step_num <= 0:
        raise BillingError(BILLING_RESOLUTION_INVALID, "resolution must be positive")
    if deposit < tariff.session_fee_minor:
        raise BillingError(DEPOSIT_BELOW_FEE, "the deposit does not cover the session fee")
    # begin + n * step < CEILING  <=>  n * step_num * begin_den < (CEILING * begin_den - begin_num) * step_den
    n_ceiling = ((REGISTER_CEILING * begin_den - begin_num) * step_den - 1) // (step_num * begin_den)
    if tariff.price_numerator == 0:  # any energy costs just the fee: unlimited, the last step below the cap
        return _add_steps(rv_begin, n_ceiling, resolution)
    n_paid = _max_steps(deposit, tariff, step_num, step_den, unit)
    return _add_steps(rv_begin, min(n_paid, n_ceiling), resolution)


def _max_steps(deposit: int, tariff: Tariff, step_num: int, step_den: int, unit: str) -> int:
    """Largest n with floor(E_n * p / DEN) <= deposit - fee, E_n = n * step / WH_PER_KWH[unit] kWh.

    floor(x) <= h  <=>  x < h + 1, so n * step_num * p < (h + 1) * DEN * step_den * WH_PER_KWH, and the
    largest such integer n is (X - 1) // Y with X = (h + 1) * DEN * step_den * WH_PER_KWH, Y = step_num * p.
    """
    headroom = deposit - tariff.session_fee_minor
    bound = (headroom + 1) * PRICE_DENOMINATOR * step_den * _WH_PER_KWH[unit]
    return (bound - 1) // (step_num * tariff.price_numerator)


def _add_steps(begin: Decimal, n: int, step: Decimal) -> Decimal:
    """begin + n * step as an exact Decimal, written on the finer of the two exponents (no context used)."""
    exponent = min(_exponent(begin), _exponent(step))
    coefficient = _coefficient(begin, exponent) + n * _coefficient(step, exponent)
    return Decimal(f"{coefficient}E{exponent}")


def _exponent(value: Decimal) -> int:
    exponent = value.as_tuple().exponent
    if not isinstance(exponent, int):  # unreachable: callers pass finite Decimals only
        raise BillingError(BILLING_REGISTER_INVALID, "not a finite Decimal")
    return exponent


def _coefficient(value: Decimal, exponent: int) -> int:
    """The integer c with value = c * 10^exponent, for exponent <= the value's own exponent."""
    sign, digits, _ = value.as_tuple()
    scale: int = 10 ** (_exponent(value) - exponent)
    magnitude = int("".join(map(str, digits))) * scale
    return -magnitude if sign else magnitude
