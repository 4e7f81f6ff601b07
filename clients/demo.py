"""`make demo`: one whole charging session through the real service, from an empty machine to an audit.

1. Start `escrow-server serve` (a separate process) on a temporary data directory with a new issuer key:
   the emulated SGX platform is created, and the enclave writes GENESIS with a quote over its keys.
2. Verify its attestation the way every client does before sending a secret: a quote for a fresh nonce,
   the emulated root named explicitly, the MRENCLAVE this checkout's code measures pinned.
3. Register a pole (operator key, a simulated certified meter with its proof of possession, a signed
   tariff of 0.39 EUR/kWh and a 0.50 EUR session fee).
4. The issuer mints 50.00 EUR to the vehicle's address (a note only the vehicle can find and open).
5. The vehicle deposits 20.00 EUR (a commitment with a range proof, prepared before choosing the pole),
   the pole attaches and its meter streams signed OCMF readings; the enclave answers each with a signed
   coverage limit, and the vehicle follows its enclave-signed progress live.
6. The end reading settles: the deposit splits into the pole's pay and the vehicle's refund, two new
   range-proved notes whose sum provably equals the deposit. Both open their receipts and notes.
7. The auditor replays the public ledger: every proof, signature and balance, without learning any
   amount. The server is stopped; nothing is left running. The last line is one JSON object.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from clients.auditor import audit_target
from clients.cli import format_amount
from clients.connection import Connection, call
from clients.issuer import Issuer
from clients.meter import SimulatedMeter, charge_plan
from clients.pole import Pole, check_ack
from clients.wallet import Wallet
from enclave.measurement import EnclaveConfig, mrenclave
from enclave.verifier import Policy
from escrow.core.readings import meter_handle
from escrow.v1 import charging_pb2

CURRENCY, DECIMALS = "EUR", 2
PRICE_NUMERATOR = 39_000_000  # 0.39 EUR per kWh, in millionths of a cent
SESSION_FEE = 50  # 0.50 EUR
MINTED = 5_000  # 50.00 EUR
DEPOSIT = 2_000  # 20.00 EUR
ENERGY_KWH = Decimal("22.500")
POWER_KW, INTERVAL_S = Decimal(11), Decimal(300)  # a reading every 5 minutes of an 11 kW AC charge
START_TIMEOUT_S = 90


def eur(minor: int) -> str:
    return format_amount(minor, DECIMALS, CURRENCY)


def start_server(tmp: Path, issuer_key: bytes) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """`escrow-server serve` on 127.0.0.1:0; returns the process and its JSON announcement."""
    argv = [sys.executable, "-m", "escrow.host.server_cli", "serve", "--data-dir", str(tmp / "data")]
    argv += ["--listen", "127.0.0.1:0", "--issuer-key", issuer_key.hex(), "--json"]
    env = {**os.environ, "ESCROW_NV_DIR": str(tmp / "nv")}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline() if proc.stdout else ""))
    reader.start()
    reader.join(START_TIMEOUT_S)
    if not line or not line[0].strip():
        proc.kill()
        err = proc.stderr.read() if proc.stderr else ""
        raise SystemExit(f"demo: escrow-server did not start: {err.strip()}")
    return proc, json.loads(line[0])


def stop_server(proc: subprocess.Popen[str]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()
    return proc.returncode


def run(tmp: Path) -> dict[str, Any]:
    started = time.monotonic()
    issuer = Issuer(os.urandom(32))
    print("1. Starting escrow-server on a temporary data directory (emulated SGX platform, GENESIS)")
    proc, announced = start_server(tmp, issuer.public_key)
    try:
        print(f"   listening on {announced['address']}, MRENCLAVE {announced['mrenclave'][:16]}...")
        expected = mrenclave(EnclaveConfig())
        policy = Policy(
            root_ca_der=(tmp / "data" / "platform" / "root_ca.der").read_bytes(), expect_mrenclave=expected
        )
        with Connection(announced["address"]) as conn:
            print("2. Verifying the enclave's quote for a fresh nonce (emulated root, pinned MRENCLAVE)")
            attested = conn.attest(policy)
            report = attested.report
            print(
                f"   {sum(c.passed for c in report.checks)} checks passed, TCB {report.tcb_status}; "
                f"ledger key {attested.enclave_key_id.hex()[:16]}..., chain {attested.chain_id.hex()[:16]}..."
            )
            return _session(conn, attested, policy, issuer, announced, started)
    finally:
        code = stop_server(proc)
        print(f"7. escrow-server stopped (exit {code}); nothing left running")


def _session(
    conn: Connection, attested: Any, policy: Policy, issuer: Issuer, announced: dict[str, Any], started: float
) -> dict[str, Any]:
    chain = attested.chain_id
    payout_seed = os.urandom(32)
    pole = Pole(os.urandom(32), SimulatedMeter.generate(), "DEMO-POLE-1", "DE*ESC*E0001", payout_seed)
    call(conn.registry.RegisterPole, pole.register_request(chain))
    call(
        conn.registry.PublishTariff,
        pole.tariff_request(chain, CURRENCY, PRICE_NUMERATOR, SESSION_FEE, sequence=1),
    )
    print(
        f"3. Pole {pole.pole_id} registered: 0.39 EUR/kWh, session fee {eur(SESSION_FEE)}, meter PoP checked"
    )

    vehicle = Wallet(os.urandom(32))
    call(conn.notes.Mint, issuer.mint_request(attested, CURRENCY, vehicle.address, MINTED))
    vehicle.scan(conn, attested)
    print(
        f"4. Issuer minted {eur(MINTED)} to {vehicle.address.to_text()[:20]}...; "
        f"the vehicle's balance: {eur(vehicle.balance())}"
    )

    prepared = vehicle.prepare_deposit(attested, DEPOSIT)  # before the pole is chosen
    deadline = int((time.time() + 3600) * 1000)
    request, session = vehicle.open_request(attested, prepared, pole.pole_id, pole.tariff_body, deadline)
    call(conn.charging.Open, request)
    print(
        f"5. Deposit of {eur(DEPOSIT)} opened: session {session.session_id.hex()}, "
        f"meter handle {meter_handle(session.session_id)}"
    )
    attach = call(conn.charging.Attach, pole.attach_request(attested, session.session_id))
    check_ack(attested, session.session_id, attach.ack)
    print("   pole attached (enclave-signed ACK); charging:")

    steps = charge_plan(ENERGY_KWH, POWER_KW, INTERVAL_S)
    records = [pole.meter.begin(session.session_id)]
    for step in steps:
        pole.meter.advance(step)
        records.append(pole.meter.reading())
    records.append(pole.meter.end())
    last_progress = ""
    settled_ack = None
    for record in records:  # one reading at a time, each after the previous ACK (a real pole's pace)
        envelope = pole.reading_envelope(attested, session.session_id, record)
        (ack,) = list(conn.charging.StreamReadings(iter([envelope]), timeout=60))
        body = check_ack(attested, session.session_id, ack).body
        if body.decision == "SETTLED":
            settled_ack = body
            break
        got = call(conn.charging.GetSession, vehicle.get_request(attested, session))
        p = vehicle.open_progress(attested, session.session_id, got.progress_envelope)
        line = (
            f"   {p.energy_kwh:>8} kWh   cost {eur(p.bill_minor):>10}   "
            f"cover left {eur(p.remaining_minor):>10}   (limit {body.coverage_limit} kWh, {body.decision})"
        )
        if line != last_progress:
            print(line)
            last_progress = line
        time.sleep(0.02)
    if settled_ack is None:
        raise SystemExit("demo: the session did not settle")

    got = call(conn.charging.GetSession, vehicle.get_request(attested, session))
    if got.state != charging_pb2.SESSION_STATE_SETTLED:
        raise SystemExit("demo: the session is not settled")
    receipt = vehicle.open_receipt(attested, session.session_id, got.receipt_envelope).receipt
    pole_got = call(conn.charging.GetSession, pole.get_request(attested, session.session_id))
    pole_receipt = pole.open_receipt(attested, session.session_id, pole_got.receipt_envelope).receipt
    print(
        f"6. Settled ({receipt.outcome}): {receipt.energy_kwh} kWh, bill {eur(receipt.bill_minor)} = "
        f"floor({receipt.energy_kwh} x 0.39) + {eur(SESSION_FEE)}"
    )
    print(
        f"   pole paid {eur(pole_receipt.note_amount_minor)}, refund {eur(receipt.note_amount_minor)}; "
        f"the vehicle's receipt lists {len(receipt.record_hashes)} signed OCMF records"
    )
    vehicle.scan(conn, attested)
    payout = Wallet(payout_seed)  # the pole's payout wallet
    payout.scan(conn, attested)
    print(f"   balances: vehicle {eur(vehicle.balance())}, pole {eur(payout.balance())}")
    report = audit_target(conn, policy)
    verdict = "OK" if report.ok else f"FAILED {report.reason} at entry {report.first_bad_height}"
    print(
        f"   audit {verdict}: {report.entries_checked} entries, {report.sessions_settled} session settled, "
        f"issued {eur(report.total_issued_minor)}, redeemed {eur(report.total_redeemed_minor)}, "
        f"head {report.head_height}"
    )
    return {
        "deposit_minor": DEPOSIT,
        "pole_paid_minor": pole_receipt.note_amount_minor,
        "refund_minor": receipt.note_amount_minor,
        "bill_minor": receipt.bill_minor,
        "energy_kwh": receipt.energy_kwh,
        "price_per_kwh_minor": PRICE_NUMERATOR // 1_000_000,
        "price_numerator": PRICE_NUMERATOR,
        "price_denominator": 1_000_000,
        "session_fee_minor": SESSION_FEE,
        "currency": CURRENCY,
        "vehicle_balance_minor": vehicle.balance(),
        "pole_balance_minor": payout.balance(),
        "readings": len(receipt.record_hashes),
        "outcome": receipt.outcome,
        "audit_ok": report.ok,
        "audit_entries": report.entries_checked,
        "mrenclave": announced["mrenclave"],
        "chain_id": announced["chain_id"],
        "session_id": session.session_id.hex(),
        "seconds": round(time.monotonic() - started, 1),
    }


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="escrow-demo-") as tmp:
        summary = run(Path(tmp))
    ok = (
        summary["audit_ok"]
        and summary["pole_paid_minor"] + summary["refund_minor"] == summary["deposit_minor"]
    )
    print(json.dumps(summary, sort_keys=True))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
