"""`make demo`'s story (python -m clients.demo) as a subprocess: exit 0, nothing left running, and a last
line whose numbers are consistent (pay + refund = deposit; pay = floor(energy x price) + fee, capped)."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from fractions import Fraction


def test_demo_tells_the_whole_story_and_its_numbers_add_up() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "clients.demo"], capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    for key in (
        "deposit_minor", "pole_paid_minor", "refund_minor", "energy_kwh", "price_per_kwh_minor",
        "session_fee_minor", "audit_ok", "mrenclave", "seconds",
    ):  # fmt: skip
        assert key in summary, key
    assert summary["audit_ok"] is True
    assert summary["pole_paid_minor"] + summary["refund_minor"] == summary["deposit_minor"]
    energy = Fraction(Decimal(summary["energy_kwh"]))
    price = Fraction(summary["price_numerator"], summary["price_denominator"])
    assert price == summary["price_per_kwh_minor"]
    bill = int(energy * price) + summary["session_fee_minor"]
    assert summary["pole_paid_minor"] == min(bill, summary["deposit_minor"])
    assert summary["vehicle_balance_minor"] == 5000 - summary["pole_paid_minor"]
    assert summary["pole_balance_minor"] == summary["pole_paid_minor"]
    assert "kWh" in done.stdout and "audit OK" in done.stdout and "stopped (exit 0)" in done.stdout
