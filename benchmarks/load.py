"""Load: N concurrent vehicles and poles against one escrow server over loopback (issue 6).

    python benchmarks/load.py [--sessions 50] [--readings 20] [--server-cores N] [--compare] [--json]

The server is `escrow-server serve` in its own process, pinned to N cores (sched_setaffinity) with N
proof-worker processes when N > 1 (escrow.host.workers; with N = 1 the proofs run in the server's own
interpreter). Everything the clients prove or sign is prepared before the clock starts: the issuer's
mints, one pole per session with its registration and tariff, each vehicle's deposit proof and OPEN,
each pole's ATTACH, and every OCMF record signed and sealed. The timed phase runs every session at once,
one thread per session: OPEN, ATTACH, then the readings one at a time (each after the previous ACK)
until the end reading's ACK says SETTLED. It reports sessions and acknowledged readings per second,
p50/p99 per RPC, the errors (they must be zero), the audit of the whole ledger at the end, and the CPU
seconds the server (with its workers) and the load generator used in the timed phase. Each vehicle and
pole is its own connection (clients.connection.Connection keeps a TCP connection per channel).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clients.auditor import audit_target  # noqa: E402
from clients.connection import Connection, call  # noqa: E402
from clients.issuer import Issuer  # noqa: E402
from clients.meter import SimulatedMeter  # noqa: E402
from clients.pole import Pole, check_ack  # noqa: E402
from clients.wallet import Wallet  # noqa: E402
from enclave.verifier import Policy  # noqa: E402
from escrow.host.admission import Limits  # noqa: E402
from escrow.v1 import charging_pb2  # noqa: E402

DEPOSIT, MINT = 2_000, 2_500
PRICE, FEE = 39_000_000, 50


@dataclass
class Prepared:
    """One session, ready to run: every request built, every record signed and sealed."""

    open_request: charging_pb2.OpenRequest
    attach_request: charging_pb2.AttachRequest
    readings: list[charging_pb2.ReadingEnvelope]
    session_id: bytes


@dataclass
class Results:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: list[str] = field(default_factory=list)
    readings: int = 0
    settled: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, rpc: str, seconds: float) -> None:
        with self.lock:
            self.latencies[rpc].append(seconds * 1000)


def start_server(tmp: Path, issuer_key: bytes, cores: int) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    argv = [sys.executable, "-m", "escrow.host.server_cli", "serve", "--data-dir", str(tmp / "data")]
    argv += ["--listen", "127.0.0.1:0", "--issuer-key", issuer_key.hex(), "--json"]
    argv += ["--proof-workers", str(cores if cores > 1 else 0)]
    # every party runs here, on one loopback address: the per-peer shares are lifted to the whole server
    argv += ["--peer-calls", str(Limits.rpc_threads), "--peer-streams", str(Limits.stream_slots)]
    env = {**os.environ, "ESCROW_NV_DIR": str(tmp / "nv")}
    available = sorted(os.sched_getaffinity(0))
    if cores > len(available):
        raise SystemExit(f"load: --server-cores {cores}, but this machine offers {len(available)}")
    chosen = set(available[:cores])
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
        preexec_fn=lambda: os.sched_setaffinity(0, chosen),
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise SystemExit("load: escrow-server did not start")
    return proc, json.loads(line)


def prepare(conn: Connection, policy: Policy, issuer: Issuer, sessions: int, readings: int) -> list[Prepared]:
    attested = conn.attest(policy)
    out = []
    for i in range(sessions):
        pole = Pole(
            os.urandom(32), SimulatedMeter.generate(), f"LOAD-{i}", f"DE*LOAD*E{i:05d}", os.urandom(32)
        )
        call(conn.registry.RegisterPole, pole.register_request(attested.chain_id))
        call(
            conn.registry.PublishTariff, pole.tariff_request(attested.chain_id, "EUR", PRICE, FEE, sequence=1)
        )
        car = Wallet(os.urandom(32))
        call(conn.notes.Mint, issuer.mint_request(attested, "EUR", car.address, MINT))
        car.scan(conn, attested)
        deposit = car.prepare_deposit(attested, DEPOSIT)
        deadline = int((time.time() + 3600) * 1000)
        open_request, session = car.open_request(attested, deposit, pole.pole_id, pole.tariff_body, deadline)
        attach = pole.attach_request(attested, session.session_id)
        records = [pole.meter.begin(session.session_id)]
        for _ in range(readings - 2):
            pole.meter.advance(Decimal("0.250"))
            records.append(pole.meter.reading())
        records.append(pole.meter.end())
        envelopes = [pole.reading_envelope(attested, session.session_id, r) for r in records]
        out.append(Prepared(open_request, attach, envelopes, session.session_id))
    return out


def run_session(
    target: str, prepared: Prepared, attested: Any, results: Results, start: threading.Event
) -> None:
    with Connection(target) as conn:
        start.wait()
        try:
            t = time.perf_counter()
            call(conn.charging.Open, prepared.open_request)
            results.record("Open", time.perf_counter() - t)
            t = time.perf_counter()
            call(conn.charging.Attach, prepared.attach_request)
            results.record("Attach", time.perf_counter() - t)
            outbox: queue.Queue[charging_pb2.ReadingEnvelope | None] = queue.Queue()

            def requests() -> Any:
                while (item := outbox.get()) is not None:
                    yield item

            pending = iter(prepared.readings)
            outbox.put(next(pending))
            sent_at = time.perf_counter()
            for ack in conn.charging.StreamReadings(requests(), timeout=600):
                results.record("Reading", time.perf_counter() - sent_at)
                body = check_ack(attested, prepared.session_id, ack).body
                with results.lock:
                    results.readings += 1
                    results.settled += body.decision == "SETTLED"
                following = None if body.decision == "SETTLED" else next(pending, None)
                sent_at = time.perf_counter()
                outbox.put(following)  # the next record only after this ACK: a real pole's pace
                if following is None:
                    break
        except Exception as e:  # counted, never hidden
            with results.lock:
                results.errors.append(f"{type(e).__name__}: {e}")


def server_cpu_s(pid: int) -> float:
    """CPU seconds used so far by the server and its live children (the proof workers), from /proc."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    pids = [pid] + [int(c) for c in children.read_text().split()] if children.exists() else [pid]
    total = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # a child that just ended
        total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_load(sessions: int, readings: int, cores: int, timeout_s: float = 900) -> dict[str, Any]:
    """One server on ``cores`` cores running ``sessions`` concurrent sessions of ``readings`` records."""
    issuer = Issuer(os.urandom(32))
    with tempfile.TemporaryDirectory(prefix="escrow-load-") as tmp_name:
        tmp = Path(tmp_name)
        proc, announced = start_server(tmp, issuer.public_key, cores)
        try:
            policy = Policy(
                root_ca_der=(tmp / "data" / "platform" / "root_ca.der").read_bytes(),
                expect_mrenclave=bytes.fromhex(announced["mrenclave"]),
            )
            target = announced["address"]
            with Connection(target) as conn:
                prepared = prepare(conn, policy, issuer, sessions, readings)
                attested = conn.attest(policy)
            results, start = Results(), threading.Event()
            threads = [
                threading.Thread(target=run_session, args=(target, p, attested, results, start))
                for p in prepared
            ]
            for thread in threads:
                thread.start()
            time.sleep(0.5)  # every client connected
            client0, server0 = os.times(), server_cpu_s(proc.pid)
            t0 = time.perf_counter()
            start.set()
            for thread in threads:
                thread.join(timeout=max(0.0, t0 + timeout_s - time.perf_counter()))
            elapsed = time.perf_counter() - t0
            late = sum(thread.is_alive() for thread in threads)
            if late:
                results.errors.append(f"{late} session(s) not settled within {timeout_s:g} s")
            if results.settled + late < sessions:
                results.errors.append(f"{sessions - results.settled} session(s) ended without SETTLED")
            client1, server1 = os.times(), server_cpu_s(proc.pid)
            with Connection(target) as conn:
                report = audit_target(conn, policy)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    return {
        "server_cores": cores,
        "sessions": sessions,
        "readings_per_session": readings,
        "seconds": round(elapsed, 3),
        "sessions_per_s": round(results.settled / elapsed, 3),
        "readings_per_s": round(results.readings / elapsed, 1),
        "errors": len(results.errors),
        "error_samples": results.errors[:5],
        "audit_ok": report.ok,
        "audit_reason": report.reason,
        "p50_ms": {rpc: round(statistics.median(v), 2) for rpc, v in results.latencies.items()},
        "p99_ms": {rpc: round(percentile(v, 0.99), 2) for rpc, v in results.latencies.items()},
        "server_cpu_s": round(server1 - server0, 2),
        "server_cores_busy": round((server1 - server0) / elapsed, 2),
        "client_cpu_s": round(client1.user + client1.system - client0.user - client0.system, 2),
    }


def describe(summary: dict[str, Any]) -> None:
    print(
        f"load: {summary['sessions']} sessions x {summary['readings_per_session']} readings, "
        f"server on {summary['server_cores']} core(s)"
    )
    print(
        f"  {summary['sessions_per_s']} sessions/s, {summary['readings_per_s']} readings/s "
        f"in {summary['seconds']:.1f} s"
    )
    print(
        f"  server CPU {summary['server_cpu_s']} s ({summary['server_cores_busy']} cores busy), "
        f"load generator CPU {summary['client_cpu_s']} s"
    )
    for rpc in sorted(summary["p50_ms"]):
        print(f"  {rpc:8s} p50 {summary['p50_ms'][rpc]:8.2f} ms   p99 {summary['p99_ms'][rpc]:8.2f} ms")
    audit = "OK" if summary["audit_ok"] else f"FAILED {summary['audit_reason']}"
    print(f"  errors {summary['errors']}, audit {audit}")
    for error in summary["error_samples"]:
        print(f"  error: {error}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--readings", type=int, default=20, help="records per session, B and end included")
    parser.add_argument("--server-cores", type=int, default=1)
    parser.add_argument("--timeout-s", type=float, default=900, help="bound on the timed phase (default 900)")
    parser.add_argument(
        "--compare",
        action="store_true",
        help="first run the baseline on one core, then on --server-cores, and print the ratio",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.readings < 2 or not 1 <= args.sessions <= Limits.stream_slots:
        parser.error(f"1 to {Limits.stream_slots} sessions (one reading stream each) of at least 2 readings")
    if not args.timeout_s > 0:
        parser.error("--timeout-s is positive")
    runs = [run_load(args.sessions, args.readings, 1, args.timeout_s)] if args.compare else []
    runs.append(run_load(args.sessions, args.readings, args.server_cores, args.timeout_s))
    ok = all(r["errors"] == 0 and r["audit_ok"] for r in runs)
    ratio = round(runs[-1]["sessions_per_s"] / runs[0]["sessions_per_s"], 2) if args.compare else None
    if args.json:
        out = runs[-1] if not args.compare else {"baseline": runs[0], "run": runs[1], "ratio": ratio}
        print(json.dumps(out, sort_keys=True))
    else:
        for summary in runs:
            describe(summary)
        if args.compare:
            print(f"sessions/s on {args.server_cores} cores vs 1: {ratio}x")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
