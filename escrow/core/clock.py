"""The enclave's monotone clock (DESIGN §7.2): it never runs backwards, whatever the host reports.

The host supplies the time and is not trusted, so the enclave keeps the largest time it has been shown:

  now() = max(start, every host time, every party-signed time, every meter time with status "S")

capped in one respect (docs/billing.md, "Time"): a party-signed or meter time counts only up to
``max_lead_ms`` beyond the largest host time seen, so that one party cannot push the shared clock
years ahead and expire every other session's deadline and every tariff for good. The host can still
move the clock forward at will (it can always deny service); nobody can move it back. Deadlines
therefore cannot move backwards, and settling a session before its deadline + grace needs a signed
request from a party (a STOP), never just a clock reading.

All times are unix milliseconds, as ints in [0, 2^63). The state is the 8-byte big-endian u64 of now().
"""

from __future__ import annotations

from escrow.core.encoding import U64, BodyError, decode, encode

__all__ = [
    "CLOCK_SCHEMA",
    "DEFAULT_MAX_LEAD_MS",
    "MAX_TIME_MS",
    "METER_TIME_STATUSES",
    "MonotoneClock",
]

MAX_TIME_MS = 1 << 63  # exclusive: times fit a signed 64-bit integer
DEFAULT_MAX_LEAD_MS = 60_000  # how far a signed or meter time may run ahead of the host's
METER_TIME_STATUSES = ("U", "I", "S", "R")  # OCMF Table 19: unknown, informative, synchronised, relative
CLOCK_SCHEMA = (("now_ms", U64),)


def _check_ms(value: object, what: str) -> int:
    """An int (not a bool) in [0, 2^63)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_TIME_MS:
        raise ValueError(f"{what} must be an integer in [0, 2^63) milliseconds")
    return value


class MonotoneClock:
    """The largest time observed, in unix milliseconds; ``now()`` never decreases."""

    def __init__(self, start_ms: int = 0, *, max_lead_ms: int | None = DEFAULT_MAX_LEAD_MS) -> None:
        """Start at ``start_ms``; ``max_lead_ms=None`` lets signed times lead without bound (insecure)."""
        self._now = _check_ms(start_ms, "start_ms")
        self._host_ms = self._now  # the largest host time, or the restored state, anchors the lead
        self._max_lead_ms = None if max_lead_ms is None else _check_ms(max_lead_ms, "max_lead_ms")

    def now(self) -> int:
        """The current time: the maximum of everything counted so far."""
        return self._now

    def now_seconds(self) -> int:
        """now() in whole unix seconds (floor), e.g. for a tariff's validity window."""
        return self._now // 1000

    def observe_host(self, ms: int) -> int:
        """Count a time reported by the host; return now()."""
        self._host_ms = max(self._host_ms, _check_ms(ms, "host time"))
        self._now = max(self._now, self._host_ms)
        return self._now

    def observe_signed(self, ms: int) -> int:
        """Count a time signed by a party (after its signature was checked); return now()."""
        return self._advance_to(_check_ms(ms, "signed time"))

    def observe_meter(self, ms: int, status: str) -> int:
        """Count a meter time if its OCMF time status is "S" (synchronised); other statuses are ignored."""
        _check_ms(ms, "meter time")
        if status not in METER_TIME_STATUSES:
            raise ValueError(f"meter time status must be one of {METER_TIME_STATUSES}")
        return self._advance_to(ms) if status == "S" else self._now

    def _advance_to(self, ms: int) -> int:
        """now = max(now, min(ms, largest host time + max lead))."""
        if self._max_lead_ms is not None:
            ms = min(ms, self._host_ms + self._max_lead_ms)
        self._now = max(self._now, ms)
        return self._now

    def to_bytes(self) -> bytes:
        """The state: now() as an 8-byte big-endian u64."""
        return encode(CLOCK_SCHEMA, {"now_ms": self._now})

    @classmethod
    def from_bytes(cls, data: bytes, *, max_lead_ms: int | None = DEFAULT_MAX_LEAD_MS) -> MonotoneClock:
        """Restore from to_bytes(); anything but 8 bytes holding a value < 2^63 raises ValueError."""
        try:
            now_ms = decode(CLOCK_SCHEMA, data, max_len=8)["now_ms"]
        except BodyError as e:
            raise ValueError(f"clock state: {e}") from None
        return cls(_check_ms(now_ms, "clock state"), max_lead_ms=max_lead_ms)

    def __repr__(self) -> str:
        return f"MonotoneClock(now_ms={self._now}, max_lead_ms={self._max_lead_ms})"
