"""The pole's simulated certified meter: signed OCMF records (B, C, end) over an exact energy register.

A real Eichrecht meter signs each reading itself and the pole only forwards the records; this simulation
does the same in software, for the pole CLI, demos and tests. It holds the meter's P-256 key, a register
in exact Decimal kWh with a resolution of 1 Wh, a pagination counter that steps by one for every record it
signs (across transactions, as real meters count) and a legal clock that never runs backwards. Its
records pass the enclave's acceptance rules (DESIGN §7.3, docs/readings.md) and the independent pyocmf
verifier with its Eichrecht transaction-pair check. Its identification says SIMULATED: it is not a
calibrated meter and must never bill real energy.

Every record carries one reading of the billed register:
``OCMF|{"FV":"1.0","GI":..,"GS":..,"GV":..,"PG":"T<n>","MV":..,"MM":..,"MS":..,"MF":..,"IS":true,
"IL":"TRUSTED","IF":[..._NONE],"IT":"LOCAL","ID":<meter handle>,"RD":[{"TM":"<UTC ms> S","TX":..,
"RV":<number>,"RI":..,"RU":..,"RT":..,"EF":"","ST":"G"}]}|{"SA":"ECDSA-secp256r1-SHA256","SD":<DER hex>}``.
RV is a JSON number at the register's resolution: three decimals in kWh, an integer in Wh.

Boundary: clients depend on zk, enclave's verifier and the proto code, never on server internals. This
module imports two things from escrow.core all the same: ``ocmf.sign_payload`` (the OCMF record format
and its signature) and ``readings.meter_handle`` (session id -> OCMF ID, which the vehicle derives too).
Both are formats every party shares, not server state; if the boundary is tightened they should move to
a shared package that the clients and the enclave both import.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from escrow.core import ocmf
from escrow.core.readings import meter_handle

__all__ = [
    "ALGORITHM",
    "CURRENT_TYPES",
    "DEFAULT_RI",
    "END_KINDS",
    "MAX_INTERVAL_S",
    "MAX_PAGINATION",
    "MAX_PLAN_STEPS",
    "MAX_POWER_KW",
    "MAX_REGISTER_KWH",
    "RESOLUTION_KWH",
    "UNITS",
    "MeterError",
    "MeterIdentity",
    "SimulatedMeter",
    "charge_plan",
]

ALGORITHM = "ECDSA-secp256r1-SHA256"  # SA of every record; the meter key is P-256
DEFAULT_RI = "1-b:1.8.0"  # OBIS: electricity, active energy import (+A), total
UNITS = ("kWh", "Wh")
CURRENT_TYPES = ("AC", "DC")  # RT, OCMF Table 21
END_KINDS = ocmf.END_TX_VALUES  # OCMF Table 7: end, local stop, remote stop, abort, power failure
RESOLUTION_KWH = Decimal("0.001")  # 1 Wh: RV has three decimals in kWh, none in Wh
MAX_REGISTER_KWH = Decimal(10) ** 12  # 13 digits of kWh, 16 of Wh: inside OCMF parsing's bounds
MAX_PAGINATION = 2**63 - 1  # the sealed session state stores PG counters in 8 bytes
MAX_PLAN_STEPS = 10_000 - 2  # a session accepts at most 10,000 records: B, one C per step, the end
MAX_POWER_KW = Decimal(10_000)  # 10 MW, beyond any charger
MAX_INTERVAL_S = Decimal(86_400)  # one reading a day at least
MAX_FIELD_CHARS = 64
_SECONDS_PER_HOUR = 3600
_FORMAT_VERSION = "1.0"
# User assignment (OCMF Tables 2-5): the ID is the session's meter handle, handed to the pole locally by
# the vehicle (cable or QR code) and confirmed by the enclave's ACK of ATTACH, so a trusted source; no
# RFID, OCPP, ISO 15118 or PLMN assignment took place.
_USER_ASSIGNMENT = {
    "IS": True,
    "IL": "TRUSTED",
    "IF": ["RFID_NONE", "OCPP_NONE", "ISO15118_NONE", "PLMN_NONE"],
    "IT": "LOCAL",
}


class MeterError(ValueError):
    """The meter refuses: an amount or setting it cannot hold, or a record out of transaction order."""


@dataclass(frozen=True)
class MeterIdentity:
    """Gateway and meter identification written into every record (OCMF payload header, Tables 1 and 3)."""

    GI: str = "ESCROW-POLE SIMULATED GATEWAY"  # gateway identification
    GS: str = "SIMGW00000001"  # gateway serial
    GV: str = "1.0.0"  # gateway version
    MV: str = "Escrow Simulation"  # meter vendor
    MM: str = "EM-1 SIMULATED"  # meter model
    MS: str = "SIM00000001"  # meter serial
    MF: str = "1.0.0"  # meter firmware

    def __post_init__(self) -> None:
        for field in fields(self):
            _check_text(getattr(self, field.name), field.name)


def _check_text(value: object, name: str) -> str:
    # Printable ASCII without "|" (OCMF's section separator), 1 to MAX_FIELD_CHARS characters.
    if not isinstance(value, str) or not 0 < len(value) <= MAX_FIELD_CHARS:
        raise MeterError(f"{name} is 1 to {MAX_FIELD_CHARS} characters")
    if not all(" " <= char <= "~" for char in value) or "|" in value:
        raise MeterError(f"{name} is printable ASCII without '|'")
    return value


def _check_energy(value: object, name: str, limit: Decimal = MAX_REGISTER_KWH) -> Decimal:
    # An exact Decimal in [0, limit) and a whole number of register steps (1 Wh).
    if not isinstance(value, Decimal):
        raise TypeError(f"{name} is an exact Decimal in kWh, never a float or an int")
    if not value.is_finite() or value < 0:
        raise MeterError(f"{name} must be a finite, non-negative Decimal, not {value}")
    if value >= limit:
        raise MeterError(f"{name} must be below {limit} kWh")
    if value != value.quantize(RESOLUTION_KWH):
        raise MeterError(f"{name} must be a whole number of {RESOLUTION_KWH} kWh (1 Wh), not {value}")
    return value


def _check_positive(value: object, name: str, limit: Decimal) -> Decimal:
    # An exact Decimal in (0, limit].
    if not isinstance(value, Decimal):
        raise TypeError(f"{name} is an exact Decimal, never a float or an int")
    if not value.is_finite() or not 0 < value <= limit:
        raise MeterError(f"{name} must be in (0, {limit}], not {value}")
    return value


def _tm(moment: datetime) -> str:
    """OCMF TM of a UTC instant with millisecond precision, synchronised: YYYY-MM-DDThh:mm:ss,fff+0000 S."""
    date = f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
    time = f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d},{moment.microsecond // 1000:03d}"
    return f"{date}T{time}+0000 S"


def _json_object(members: list[tuple[str, str]]) -> str:
    """A compact JSON object from (key, JSON text of the value) pairs, in order."""
    return "{" + ",".join(f"{json.dumps(key)}:{value}" for key, value in members) + "}"


def _system_clock() -> datetime:
    # The default clock: the host's time in UTC.
    return datetime.now(UTC)


class SimulatedMeter:
    """A software meter that signs OCMF records for one transaction at a time.

    ``begin(session_id)`` opens a transaction (TX B), ``reading()`` reports the register while charging
    (TX C), ``end(kind)`` closes it (TX E, L, R, A or P); ``advance(energy)`` moves the register. Each
    record takes the next pagination counter; TM is the clock's time, never earlier than the last
    record's.
    """

    def __init__(
        self,
        private_key: ec.EllipticCurvePrivateKey,
        *,
        identity: MeterIdentity | None = None,
        RI: str = DEFAULT_RI,
        RU: str = "kWh",
        RT: str = "AC",
        register_kwh: Decimal = Decimal("0.000"),
        pagination: int = 1,
        clock: Callable[[], datetime] = _system_clock,
    ) -> None:
        if not isinstance(private_key, ec.EllipticCurvePrivateKey) or not isinstance(
            private_key.curve, ec.SECP256R1
        ):
            raise MeterError("the meter key is a P-256 (secp256r1) private key")
        if identity is not None and not isinstance(identity, MeterIdentity):
            raise TypeError("identity must be a MeterIdentity")
        if RU not in UNITS or RT not in CURRENT_TYPES:
            raise MeterError(f"RU is one of {UNITS} and RT one of {CURRENT_TYPES}")
        if isinstance(pagination, bool) or not isinstance(pagination, int):
            raise TypeError("pagination is an int")
        if not 0 <= pagination <= MAX_PAGINATION:
            raise MeterError(f"pagination is in [0, {MAX_PAGINATION}]")
        if not callable(clock):
            raise TypeError("clock is a function returning an aware datetime")
        self._private_key = private_key
        self._identity = identity if identity is not None else MeterIdentity()
        self._RI = _check_text(RI, "RI")
        self._RU = RU
        self._RT = RT
        self._register = _check_energy(register_kwh, "register_kwh")
        self._pagination = pagination
        self._clock = clock
        self._last_time: datetime | None = None
        self._handle: str | None = None  # the open transaction's meter handle

    @classmethod
    def generate(cls, **settings: Any) -> SimulatedMeter:
        """A meter with a fresh random P-256 key; `settings` are the constructor's keyword arguments."""
        return cls(ec.generate_private_key(ec.SECP256R1()), **settings)

    # ---- what the registry and the pole need ------------------------------------------------------------

    @property
    def public_key_der(self) -> bytes:
        """The meter key as DER SubjectPublicKeyInfo: what the pole registers."""
        return self._private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @property
    def algorithm(self) -> str:
        return ALGORITHM

    @property
    def identity(self) -> MeterIdentity:
        return self._identity

    @property
    def RI(self) -> str:
        """OBIS code of the billed register."""
        return self._RI

    @property
    def RU(self) -> str:
        """Unit of RV in the records: "kWh" or "Wh"."""
        return self._RU

    @property
    def register_kwh(self) -> Decimal:
        """The register now, exact, in kWh whatever RU is."""
        return self._register

    @property
    def pagination(self) -> int:
        """The counter the next record will carry in PG "T<n>"."""
        return self._pagination

    @property
    def meter_handle(self) -> str | None:
        """The open transaction's OCMF ID, or None between transactions."""
        return self._handle

    @property
    def in_transaction(self) -> bool:
        return self._handle is not None

    # ---- the register --------------------------------------------------------------------------------------

    def advance(self, energy: Decimal) -> None:
        """Move the register forward by `energy` kWh exactly: a non-negative Decimal of whole Wh."""
        energy = _check_energy(energy, "energy")
        register = self._register + energy  # exact: both below 10^12 with three decimals
        if register >= MAX_REGISTER_KWH:
            raise MeterError(f"the register would pass {MAX_REGISTER_KWH} kWh")
        self._register = register

    # ---- records -------------------------------------------------------------------------------------------

    def begin(self, session_id: bytes) -> str:
        """The signed B record that opens the transaction of `session_id` (ID = its meter handle)."""
        if self._handle is not None:
            raise MeterError("a transaction is open: end it before beginning another")
        try:
            handle = meter_handle(session_id)
        except ValueError as exc:
            raise MeterError(str(exc)) from exc
        record = self._sign("B", handle)
        self._handle = handle
        return record

    def reading(self) -> str:
        """A signed C (charging) record of the register now."""
        return self._sign("C", self._open_handle())

    def end(self, kind: str = "E") -> str:
        """The signed end-type record (E, L, R, A or P) that closes the transaction."""
        if kind not in END_KINDS:
            raise MeterError(f"an end-type reading is one of {', '.join(END_KINDS)}, not {kind!r}")
        record = self._sign(kind, self._open_handle())
        self._handle = None
        return record

    def proof_of_possession(self, challenge: str) -> str:
        """A signed record whose ID is a registry's challenge (DESIGN §7.3): proves the pole holds this
        meter. It is a C record outside any transaction; it takes a pagination number like any other."""
        if self._handle is not None:
            raise MeterError("a transaction is open: end it before signing a registration record")
        return self._sign("C", _check_text(challenge, "challenge"))

    def _open_handle(self) -> str:
        if self._handle is None:
            raise MeterError("no transaction is open: begin one first")
        return self._handle

    def _sign(self, tx: str, handle: str) -> str:
        # Sign the next record; the counter and the clock's floor move only once it is signed.
        if self._pagination > MAX_PAGINATION:
            raise MeterError("the pagination counter is exhausted")
        moment = self._now()
        payload = self._payload(tx, handle, moment)
        record = ocmf.sign_payload(payload, self._private_key, ALGORITHM)
        self._pagination += 1
        self._last_time = moment
        return record

    def _now(self) -> datetime:
        # The clock in UTC, truncated to the millisecond TM shows, and never before the last record's TM.
        moment = self._clock()
        if not isinstance(moment, datetime) or moment.utcoffset() is None:
            raise MeterError("the clock must return an aware datetime")
        moment = moment.astimezone(UTC)
        moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
        if self._last_time is not None and moment < self._last_time:
            return self._last_time
        return moment

    def _rv(self) -> str:
        # The register as a JSON number at its resolution: "1234.567" kWh or "1234567" Wh.
        if self._RU == "kWh":
            return f"{self._register.quantize(RESOLUTION_KWH):f}"
        return f"{(self._register * 1000).quantize(Decimal(1)):f}"

    def _payload(self, tx: str, handle: str, moment: datetime) -> bytes:
        identity = self._identity
        header: list[tuple[str, object]] = [
            ("FV", _FORMAT_VERSION), ("GI", identity.GI), ("GS", identity.GS), ("GV", identity.GV),
            ("PG", f"T{self._pagination}"), ("MV", identity.MV), ("MM", identity.MM), ("MS", identity.MS),
            ("MF", identity.MF), *_USER_ASSIGNMENT.items(), ("ID", handle),
        ]  # fmt: skip
        reading = _json_object([
            ("TM", json.dumps(_tm(moment))), ("TX", json.dumps(tx)), ("RV", self._rv()),
            ("RI", json.dumps(self._RI)), ("RU", json.dumps(self._RU)), ("RT", json.dumps(self._RT)),
            ("EF", json.dumps("")), ("ST", json.dumps("G")),
        ])  # fmt: skip
        members = [(key, json.dumps(value, separators=(",", ":"))) for key, value in header]
        return _json_object([*members, ("RD", f"[{reading}]")]).encode("ascii")


def charge_plan(total_kwh: Decimal, power_kw: Decimal, interval_s: Decimal) -> list[Decimal]:
    """The register increments of a session delivering `total_kwh` at `power_kw`, one reading every
    `interval_s` seconds: exact Decimal kWh of whole Wh that sum to `total_kwh`.

    Each step but the last is floor(power_kw * interval_s / 3600 / 1 Wh) Wh, so no step exceeds what
    the power delivers in one interval; the last step is the remainder (partial, or a full step). A
    total of zero gives no steps. Raises MeterError if one interval delivers less than 1 Wh or the plan
    needs more than MAX_PLAN_STEPS readings.
    """
    total_kwh = _check_energy(total_kwh, "total_kwh")
    power_kw = _check_positive(power_kw, "power_kw", MAX_POWER_KW)
    interval_s = _check_positive(interval_s, "interval_s", MAX_INTERVAL_S)
    resolution = Fraction(RESOLUTION_KWH)
    step_units = math.floor(Fraction(power_kw) * Fraction(interval_s) / _SECONDS_PER_HOUR / resolution)
    if step_units == 0:
        raise MeterError(f"{power_kw} kW for {interval_s} s delivers less than the register's 1 Wh")
    total_units = Fraction(total_kwh) / resolution  # whole, checked above
    full, rest = divmod(total_units.numerator, step_units)
    if full + (rest > 0) > MAX_PLAN_STEPS:
        raise MeterError(f"the plan needs more than {MAX_PLAN_STEPS} readings; raise the interval")
    steps = [Decimal(step_units) * RESOLUTION_KWH] * full  # exact: fewer than 16 digits
    return [*steps, Decimal(rest) * RESOLUTION_KWH] if rest else steps
