"""End-to-end benchmarks of the escrow service over real gRPC on loopback, against DESIGN §12's targets.

The server runs in a process of its own, so the clients' CPU work does not share its interpreter:
`escrow-server serve --listen 127.0.0.1:0` when this checkout has it (pinned by the root CA that
`escrow-server quote` exports and the MRENCLAVE it prints), else (and always for ``--profile``) a
multiprocessing child running the same EscrowNode and create_server. Data and ESCROW_NV_DIR live in a
temporary directory. Measured:

  plug-in   attest (new channel, fresh quote, full verification), OPEN with a deposit prepared before
            the clock (``prepare_deposit`` excluded, ``open_request`` included), ATTACH, and the B
            reading's verified ACK carrying the coverage limit. Target <= 60 ms.
  session   a whole session with 20 readings (B, 18 C, E), proofs included: attest, prepare_deposit,
            OPEN, ATTACH, each reading sent after the previous ACK (the pole never runs ahead of its
            signed coverage), the settled receipt fetched, opened and verified by the vehicle.
            Target <= 200 ms.
  readings  durable ACKs per second over StreamReadings with records signed and sealed before the
            clock, and the latency of each ACK from the moment its envelope went to gRPC: one stream
            and four streams (four sessions at four poles, one channel each), lock-step (window 1) and
            pipelined (``--window`` readings unacknowledged), ``--stream-readings`` per session (the
            median ACK latency of the first and last tenth of each stream shows how the cost grows
            with the session). ACK signatures are checked after the clock. Target >= 1,500
            readings/s with p99 <= 5 ms.

Each figure is a median with its p99 (for a few dozen samples p99 is close to the maximum), with the
mean CPU time per operation of the server process (from /proc, all its threads) and of this client
process inside the timed sections. No assertion on timing. ``--profile DIR`` runs the server's RPC
threads under cProfile (``--profile-clock cpu``: each thread's CPU time, or ``wall``), writes one .prof
per phase and prints where the server's time goes; cProfile inflates code made of many small calls,
so the timings of such a run are not comparable and its shares lean towards that code.

    python benchmarks/service_bench.py [--sessions 30] [--readings 20] [--stream-readings 200]
                                       [--window 16] [--json] [--server auto|cli|child]
                                       [--profile DIR] [--profile-clock cpu|wall]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import multiprocessing as mp
import os
import platform
import pstats
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc

from clients.connection import Attested, Connection, call
from clients.issuer import Issuer
from clients.meter import SimulatedMeter
from clients.pole import CheckedAck, Pole, check_ack
from clients.wallet import Session, Wallet
from enclave.verifier import Policy
from escrow.v1 import charging_pb2

CURRENCY = "EUR"
PRICE_NUMERATOR = 39 * 1_000_000  # 0.39 EUR per kWh
SESSION_FEE = 50
NOTE = 1_000  # every minted note; a deposit of DEPOSIT leaves change
DEPOSIT = 800
MAX_STREAM_READINGS = 999  # the engine holds a session to 1,000 records; one is left for an E
TARGETS = {
    "plugin_ms": 60.0,
    "session_ms": 200.0,
    "readings_per_s": 1500.0,
    "ack_p99_ms": 5.0,
}


# --- the server child ---------------------------------------------------------------------------


class _Profiler:
    """Per-thread cProfile profiles around every RPC the server's thread pool runs, switched on and off
    from the pipe (cProfile sees only the thread that enabled it, so each pool thread gets its own)."""

    def __init__(self, clock: str = "cpu") -> None:
        self.active = False
        self.clock = clock
        self._generation = 0
        self._local = threading.local()
        self._profiles: list[Any] = []
        self._guard = threading.Lock()

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self.active:
            return fn(*args, **kwargs)
        if getattr(self._local, "generation", -1) != self._generation:
            timer = time.thread_time if self.clock == "cpu" else time.perf_counter
            self._local.profile = cProfile.Profile(timer)
            self._local.generation = self._generation
            with self._guard:
                self._profiles.append(self._local.profile)
        profile = self._local.profile
        profile.enable()
        try:
            return fn(*args, **kwargs)
        finally:
            profile.disable()

    def dump(self, path: str) -> int:
        """Write the merged profile of this phase to ``path`` and start a new phase; returns how many
        threads contributed."""
        self.active = False
        time.sleep(0.3)  # let a stream handler that already answered its last ACK return
        with self._guard:
            profiles, self._profiles = self._profiles, []
            self._generation += 1
        stats: pstats.Stats | None = None
        for p in profiles:
            p.create_stats()
            if stats is None:
                stats = pstats.Stats(p)
            else:
                stats.add(p)
        if stats is not None:
            stats.dump_stats(path)
        return len(profiles)


def serve(pipe: Pipe, data_dir: str, nv_dir: str, issuer_key: bytes, tick_interval_s: float) -> None:
    """The server child: start the node and the gRPC server, report the port and the pins, then obey
    the pipe (("profile_on", "cpu" or "wall"), ("profile_dump", path), "stop")."""
    os.environ["ESCROW_NV_DIR"] = nv_dir
    from concurrent import futures

    from escrow.host import grpc_server
    from escrow.host.node import EscrowNode, GenesisConfig

    profiler = _Profiler()

    class ProfilingExecutor(futures.ThreadPoolExecutor):
        def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
            return super().submit(profiler.run, fn, *args, **kwargs)

    # create_server builds its pool through this module attribute; swap it in this process only
    vars(grpc_server)["futures"] = SimpleNamespace(ThreadPoolExecutor=ProfilingExecutor)
    genesis = GenesisConfig(issuer_keys=(issuer_key,), currency=CURRENCY)
    node = EscrowNode.start(Path(data_dir), genesis, nv_dir=Path(nv_dir), tick_interval_s=tick_interval_s)
    server, port = grpc_server.create_server(node, "127.0.0.1:0")
    assert node.host is not None
    identity = node.host.identity
    pipe.send(
        {
            "port": port,
            "root_ca_der": node.host.platform.root_ca_der(),
            "mr_enclave": identity.mr_enclave,
            "debug": identity.debug,
        }
    )
    try:
        while True:
            msg = pipe.recv()
            if msg == "stop":
                break
            if isinstance(msg, tuple) and msg[0] == "profile_on":
                profiler.clock = msg[1]
                profiler.active = True
                pipe.send("ok")
            elif isinstance(msg, tuple) and msg[0] == "profile_dump":
                pipe.send(profiler.dump(msg[1]))
    finally:
        server.stop(grace=None).wait()
        node.close()


REPO = Path(__file__).resolve().parents[1]
SERVER_CLI = (sys.executable, "-m", "escrow.host.server_cli")


def cli_can_serve() -> bool:
    """Whether this checkout's `escrow-server serve` exists and takes --listen (so port 0 works)."""
    try:
        out = subprocess.run(
            [*SERVER_CLI, "serve", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "--listen" in out.stdout


@dataclass
class ServerProcess:
    """The server in a process of its own, and what a client needs to pin it: either `escrow-server
    serve --listen 127.0.0.1:0` (``kind`` "cli") or a multiprocessing child that runs the same node and
    create_server and can profile its RPC threads (``kind`` "child")."""

    kind: str
    process: Any
    pipe: Pipe | None
    port: int
    policy: Policy

    @classmethod
    def start_child(cls, tmp: Path, issuer_key: bytes) -> ServerProcess:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        process = ctx.Process(
            target=serve,
            args=(child, str(tmp / "data"), str(tmp / "nv"), issuer_key, 0.5),
            name="escrow-server",
            daemon=True,
        )
        process.start()
        if not parent.poll(120):
            process.terminate()
            raise RuntimeError("the server child did not start within 120 s")
        info = parent.recv()
        policy = Policy(
            root_ca_der=info["root_ca_der"],
            expect_mrenclave=info["mr_enclave"],
            allow_debug_insecure=info["debug"],
        )
        return cls("child", process, parent, info["port"], policy)

    @classmethod
    def start_cli(cls, tmp: Path, issuer_key: bytes) -> ServerProcess:
        """`escrow-server quote` first creates the platform and exports its root CA (the pin), then
        `escrow-server serve` starts on the same data directory."""
        data, pins = tmp / "data", tmp / "pins"
        env = {**os.environ, "ESCROW_NV_DIR": str(tmp / "nv")}
        quote = subprocess.run(
            [*SERVER_CLI, "quote", "--data-dir", str(data), "--nonce", "00", "--out", str(pins), "--json"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if quote.returncode != 0:
            raise RuntimeError(f"escrow-server quote failed: {quote.stderr.strip()}")
        exported = json.loads(quote.stdout)
        argv = [*SERVER_CLI, "serve", "--data-dir", str(data), "--listen", "127.0.0.1:0", "--json"]
        argv += ["--issuer-key", issuer_key.hex(), "--currency", CURRENCY]
        log = (tmp / "server.log").open("w")  # the server's stderr; shown if it fails to start
        process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
        log.close()
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            process.wait(timeout=10)
            raise RuntimeError(
                f"escrow-server serve exited with {process.returncode} before listening: "
                f"{(tmp / 'server.log').read_text().strip()}"
            )
        info = json.loads(line)
        if info["mrenclave"] != exported["mrenclave"]:
            process.terminate()
            raise RuntimeError("escrow-server serve runs another enclave than the one quoted")
        policy = Policy(
            root_ca_der=(pins / "root_ca.der").read_bytes(),
            expect_mrenclave=bytes.fromhex(exported["mrenclave"]),
            allow_debug_insecure=bool(info["debug"]),
        )
        return cls("cli", process, None, int(info["address"].rsplit(":", 1)[1]), policy)

    def cpu_s(self) -> float:
        """The server process's CPU time so far (user + system, all threads; Linux /proc), or NaN."""
        try:
            stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        except OSError:
            return float("nan")
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def profile_on(self, clock: str) -> None:
        assert self.pipe is not None, "profiling needs the child server"
        self.pipe.send(("profile_on", clock))
        self.pipe.recv()

    def profile_dump(self, path: Path) -> int:
        assert self.pipe is not None, "profiling needs the child server"
        self.pipe.send(("profile_dump", str(path)))
        return int(self.pipe.recv())

    def stop(self) -> None:
        if self.pipe is not None:
            with contextlib.suppress(BrokenPipeError, OSError):
                self.pipe.send("stop")
            self.process.join(timeout=20)
            if self.process.is_alive():
                self.process.terminate()
                self.process.join(timeout=5)
            return
        self.process.terminate()  # SIGTERM: escrow-server stops cleanly
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


# --- the clients ------------------------------------------------------------------------------------


class ReadingStream:
    """One StreamReadings call fed from a queue, with at most ``window`` readings unacknowledged.
    ``sent_at[i]`` is when the i-th envelope went to gRPC, ``acked_at[i]`` when its ACK was read."""

    def __init__(self, conn: Connection, window: int, timeout_s: float = 300) -> None:
        self._queue: queue.SimpleQueue[charging_pb2.ReadingEnvelope | None] = queue.SimpleQueue()
        self._slots = threading.Semaphore(window)
        self.sent_at: list[float] = []
        self.acked_at: list[float] = []
        self._responses = conn.charging.StreamReadings(self._requests(), timeout=timeout_s)

    def _requests(self) -> Iterator[charging_pb2.ReadingEnvelope]:
        while True:
            item = self._queue.get()
            if item is None:
                return
            self._slots.acquire()
            self.sent_at.append(time.perf_counter())
            yield item

    def send(self, envelope: charging_pb2.ReadingEnvelope) -> None:
        self._queue.put(envelope)

    def recv(self) -> charging_pb2.SignedAck:
        ack: charging_pb2.SignedAck = next(self._responses)
        self.acked_at.append(time.perf_counter())
        self._slots.release()
        return ack

    def close(self) -> None:
        """Half-close and wait for the server to end the call."""
        self._queue.put(None)
        for _ in self._responses:
            raise RuntimeError("an ACK nobody asked for")


@dataclass
class Bench:
    """The long-lived parties: the issuer, the operators' poles, and their attested connection."""

    server: ServerProcess
    issuer: Issuer
    conn: Connection = field(init=False)
    attested: Attested = field(init=False)

    def __post_init__(self) -> None:
        self.conn = Connection(self.target)
        self.attested = self.conn.attest(self.server.policy)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def new_pole(self) -> tuple[Pole, Connection, Attested]:
        """A registered pole with its tariff, on a channel of its own (attested once, as a pole would)."""
        meter = SimulatedMeter.generate()
        tag = os.urandom(3).hex()
        pole = Pole(os.urandom(32), meter, f"POLE-{tag}", f"DE*ESC*E{tag}", os.urandom(32))
        call(self.conn.registry.RegisterPole, pole.register_request(self.attested.chain_id))
        call(
            self.conn.registry.PublishTariff,
            pole.tariff_request(self.attested.chain_id, CURRENCY, PRICE_NUMERATOR, SESSION_FEE, sequence=1),
        )
        conn = Connection(self.target)
        return pole, conn, conn.attest(self.server.policy)

    def funded_wallet(self, notes: int) -> Wallet:
        wallet = Wallet(os.urandom(32))
        for _ in range(notes):
            call(
                self.conn.notes.Mint, self.issuer.mint_request(self.attested, CURRENCY, wallet.address, NOTE)
            )
        wallet.scan(self.conn, self.attested)
        return wallet

    def open_attached(self, wallet: Wallet, pole: Pole, pole_conn: Connection, pole_att: Attested) -> Session:
        """An opened and attached session (untimed setup for the readings phase)."""
        prepared = wallet.prepare_deposit(self.attested, DEPOSIT)
        request, session = wallet.open_request(
            self.attested, prepared, pole.pole_id, pole.tariff_body, deadline_ms()
        )
        call(self.conn.charging.Open, request)
        answer = call(pole_conn.charging.Attach, pole.attach_request(pole_att, session.session_id))
        check_ack(pole_att, session.session_id, answer.ack)
        wallet.scan(self.conn, self.attested)
        return session


def deadline_ms(seconds: float = 3600) -> int:
    return int((time.time() + seconds) * 1000)


def _ms(t0: float, t1: float) -> float:
    return (t1 - t0) * 1e3


def summary(values: list[float]) -> dict[str, float]:
    """Median and p99 (inclusive quantiles: for n < 100 samples p99 interpolates towards the maximum)."""
    if len(values) == 1:
        return {"median": values[0], "p99": values[0], "n": 1}
    p99 = statistics.quantiles(values, n=100, method="inclusive")[98]
    return {"median": statistics.median(values), "p99": p99, "n": len(values)}


class CpuMeter:
    """CPU time of the server process and of this (client) process inside the timed sections."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.server_s = self.client_s = 0.0
        self._marks = (0.0, 0.0)

    def start(self) -> None:
        self._marks = (self.server.cpu_s(), time.process_time())

    def stop(self) -> None:
        self.server_s += self.server.cpu_s() - self._marks[0]
        self.client_s += time.process_time() - self._marks[1]

    def per(self, count: int) -> dict[str, float]:
        """Mean CPU milliseconds per operation (the server's in clock ticks, so only a mean over many
        operations is meaningful)."""
        return {"server_cpu_ms": self.server_s * 1e3 / count, "client_cpu_ms": self.client_s * 1e3 / count}


# --- (a) plug-in to first coverage limit -------------------------------------------------------------


def bench_plugin(bench: Bench, sessions: int) -> dict[str, Any]:
    pole, pole_conn, pole_att = bench.new_pole()
    wallet = bench.funded_wallet(sessions)
    stages: dict[str, list[float]] = {k: [] for k in ("attest", "open", "attach", "b_ack", "total")}
    cpu = CpuMeter(bench.server)
    for _ in range(sessions):
        prepared = wallet.prepare_deposit(bench.attested, DEPOSIT)  # before the vehicle reaches the pole
        cpu.start()
        t0 = time.perf_counter()
        vehicle = Connection(bench.target)  # a vehicle that just arrived: a new channel
        attested = vehicle.attest(bench.server.policy)
        t1 = time.perf_counter()
        request, session = wallet.open_request(
            attested, prepared, pole.pole_id, pole.tariff_body, deadline_ms()
        )
        call(vehicle.charging.Open, request)
        t2 = time.perf_counter()
        answer = call(pole_conn.charging.Attach, pole.attach_request(pole_att, session.session_id))
        check_ack(pole_att, session.session_id, answer.ack)
        t3 = time.perf_counter()
        stream = ReadingStream(pole_conn, window=1)
        stream.send(pole.reading_envelope(pole_att, session.session_id, pole.meter.begin(session.session_id)))
        ack = check_ack(pole_att, session.session_id, stream.recv())
        t4 = time.perf_counter()
        cpu.stop()
        if not ack.body.coverage_limit:
            raise RuntimeError("the B reading's ACK carries no coverage limit")
        for key, a, b in (("attest", t0, t1), ("open", t1, t2), ("attach", t2, t3), ("b_ack", t3, t4)):
            stages[key].append(_ms(a, b))
        stages["total"].append(_ms(t0, t4))
        # untimed: end the session so the pole is free again
        pole.meter.advance(Decimal("0.5"))
        stream.send(pole.reading_envelope(pole_att, session.session_id, pole.meter.end()))
        if check_ack(pole_att, session.session_id, stream.recv()).body.decision != "SETTLED":
            raise RuntimeError("the E reading did not settle the session")
        stream.close()
        vehicle.close()
        wallet.scan(bench.conn, bench.attested)
    pole_conn.close()
    return {**{key: summary(v) for key, v in stages.items()}, **cpu.per(sessions)}


# --- (b) a whole session ------------------------------------------------------------------------------


def bench_session(bench: Bench, sessions: int, readings: int) -> dict[str, Any]:
    if readings < 2:
        raise SystemExit("--readings is at least 2 (a B and an E)")
    pole, pole_conn, pole_att = bench.new_pole()
    wallet = bench.funded_wallet(sessions)
    names = ("attest", "prepare_deposit", "open", "attach", "readings", "receipt", "total")
    stages: dict[str, list[float]] = {k: [] for k in names}
    step = Decimal("0.1")
    cpu = CpuMeter(bench.server)
    for _ in range(sessions):
        cpu.start()
        t0 = time.perf_counter()
        vehicle = Connection(bench.target)
        attested = vehicle.attest(bench.server.policy)
        t1 = time.perf_counter()
        prepared = wallet.prepare_deposit(attested, DEPOSIT)
        t2 = time.perf_counter()
        request, session = wallet.open_request(
            attested, prepared, pole.pole_id, pole.tariff_body, deadline_ms()
        )
        call(vehicle.charging.Open, request)
        t3 = time.perf_counter()
        sid = session.session_id
        answer = call(pole_conn.charging.Attach, pole.attach_request(pole_att, sid))
        check_ack(pole_att, sid, answer.ack)
        t4 = time.perf_counter()
        stream = ReadingStream(pole_conn, window=1)
        last: CheckedAck | None = None
        for i in range(readings):
            if i == 0:
                record = pole.meter.begin(sid)
            else:
                pole.meter.advance(step)
                record = pole.meter.end() if i == readings - 1 else pole.meter.reading()
            stream.send(pole.reading_envelope(pole_att, sid, record))
            last = check_ack(pole_att, sid, stream.recv())
        stream.close()
        assert last is not None
        if last.body.decision != "SETTLED":
            raise RuntimeError(f"the last reading answered {last.body.decision}, not SETTLED")
        t5 = time.perf_counter()
        got = call(vehicle.charging.GetSession, wallet.get_request(attested, session))
        if got.state != charging_pb2.SESSION_STATE_SETTLED:
            raise RuntimeError("the session is not settled after its E reading")
        receipt = wallet.open_receipt(attested, sid, got.receipt_envelope)
        t6 = time.perf_counter()
        cpu.stop()
        if receipt.receipt.outcome != "ENDED" or len(receipt.records) != readings:
            raise RuntimeError(
                f"unexpected receipt: {receipt.receipt.outcome}, {len(receipt.records)} records"
            )
        marks = (t0, t1, t2, t3, t4, t5, t6)
        for key, a, b in zip(names, marks, marks[1:]):
            stages[key].append(_ms(a, b))
        stages["total"].append(_ms(t0, t6))
        vehicle.close()
        wallet.scan(bench.conn, bench.attested)
    pole_conn.close()
    return {**{key: summary(v) for key, v in stages.items()}, **cpu.per(sessions)}


# --- (c) readings per second ----------------------------------------------------------------------------


@dataclass
class Prepared:
    """A session attached at its pole, and its records signed and sealed before the clock."""

    pole_conn: Connection
    pole_att: Attested
    session_id: bytes
    envelopes: list[charging_pb2.ReadingEnvelope]


def prepare_streams(bench: Bench, wallet: Wallet, count: int, readings: int) -> list[Prepared]:
    out = []
    for _ in range(count):
        pole, pole_conn, pole_att = bench.new_pole()
        session = bench.open_attached(wallet, pole, pole_conn, pole_att)
        records = [pole.meter.begin(session.session_id)]
        for _ in range(readings - 1):
            pole.meter.advance(Decimal("0.001"))
            records.append(pole.meter.reading())
        envelopes = [pole.reading_envelope(pole_att, session.session_id, r) for r in records]
        out.append(Prepared(pole_conn, pole_att, session.session_id, envelopes))
    return out


def run_streams(prepared: list[Prepared], window: int, server: ServerProcess) -> dict[str, Any]:
    """Send every stream's envelopes at once (each under its window); ACK signatures checked after."""
    cpu = CpuMeter(server)
    streams = [ReadingStream(p.pole_conn, window) for p in prepared]
    acks: list[list[charging_pb2.SignedAck]] = [[] for _ in prepared]
    barrier = threading.Barrier(len(prepared) + 1)
    errors: list[BaseException] = []

    def consume(i: int) -> None:
        try:
            barrier.wait()
            for env in prepared[i].envelopes:
                streams[i].send(env)
            for _ in prepared[i].envelopes:
                acks[i].append(streams[i].recv())
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(len(prepared))]
    for t in threads:
        t.start()
    cpu.start()
    barrier.wait()
    for t in threads:
        t.join()
    cpu.stop()
    if errors:
        raise errors[0]
    for s in streams:
        s.close()
    start = min(s.sent_at[0] for s in streams)
    end = max(s.acked_at[-1] for s in streams)
    latencies = [_ms(a, b) for s in streams for a, b in zip(s.sent_at, s.acked_at)]
    for p, answers in zip(prepared, acks):
        for n, raw in enumerate(answers, start=1):
            body = check_ack(p.pole_att, p.session_id, raw).body
            if body.sequence != n or body.decision != "CONTINUE":
                raise RuntimeError(f"ACK {n}: sequence {body.sequence}, decision {body.decision}")
    total = sum(len(p.envelopes) for p in prepared)
    per_stream = len(prepared[0].envelopes)
    tenth = max(1, per_stream // 10)
    first = [_ms(a, b) for s in streams for a, b in zip(s.sent_at[:tenth], s.acked_at[:tenth])]
    late = [_ms(a, b) for s in streams for a, b in zip(s.sent_at[-tenth:], s.acked_at[-tenth:])]
    return {
        "streams": len(prepared),
        "window": window,
        "readings": total,
        "seconds": end - start,
        "readings_per_s": total / (end - start),
        "ack_ms": summary(latencies),
        **cpu.per(total),
        "ack_ms_first_tenth_median": statistics.median(first),
        "ack_ms_last_tenth_median": statistics.median(late),
    }


def bench_readings(bench: Bench, readings: int, window: int, profile: Callable[[str], Any]) -> dict[str, Any]:
    configs = [(1, 1), (1, window), (4, 1), (4, window)]
    wallet = bench.funded_wallet(sum(n for n, _ in configs))
    out = {}
    for streams, w in configs:
        prepared = prepare_streams(bench, wallet, streams, readings)
        name = f"{streams}x_w{w}"
        with profile(f"readings_{name}"):
            out[name] = run_streams(prepared, w, bench.server)
        for p in prepared:
            p.pole_conn.close()
    return out


# --- profiles --------------------------------------------------------------------------------------------


IDLE = ("acquire", "wait", "poll", "select", "epoll")
WRAPPERS = ("run", "call", "app_ecall", "ecall", "mutate", "_guard")


def profile_report(path: Path, per: int, what: str, clock: str, top: int = 12) -> str:
    """Where a phase's server time goes, per operation: the functions with the most own time (idle
    waits set apart), then our own functions by cumulative time (thin dispatch wrappers left out).
    With the cpu clock each RPC thread's own CPU time is counted (no waits, no time other processes
    took); with the wall clock, time blocked on I/O (the commit's fsync), locks and the GIL counts too,
    added up over the threads."""
    stats = pstats.Stats(str(path), stream=io.StringIO())
    own, ours = [], []
    idle = 0.0
    root = str(Path(__file__).resolve().parents[1]) + os.sep
    for (filename, line, name), (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        label = f"{_short(filename)}:{line}({name})" if line else name
        if filename == "~" and any(word in name for word in IDLE):
            idle += tt
            continue
        own.append((tt, ct, nc, label))
        if filename.startswith(root) and os.sep + ".venv" + os.sep not in filename and name not in WRAPPERS:
            ours.append((ct, tt, nc, label))
    busy = sum(r[0] for r in own)
    unit = "reading" if what.startswith("readings") else "session"
    lines = [
        f"server profile, {what}, {clock} clock: {busy * 1e3 / per:.2f} ms in the RPC threads per {unit} "
        f"(plus {idle * 1e3 / per:.2f} ms in lock acquires and waits); {path}",
        f"  {'own ms':>9s} {'cum ms':>9s} {'calls':>8s}  (per {unit}) by own time",
    ]
    for tt, ct, nc, label in sorted(own, reverse=True)[:top]:
        lines.append(f"  {tt * 1e3 / per:9.3f} {ct * 1e3 / per:9.3f} {nc / per:8.1f}  {label}")
    lines.append(f"  {'cum ms':>9s} {'own ms':>9s} {'calls':>8s}  (per {unit}) our code by cumulative time")
    for ct, tt, nc, label in sorted(ours, reverse=True)[:top]:
        lines.append(f"  {ct * 1e3 / per:9.3f} {tt * 1e3 / per:9.3f} {nc / per:8.1f}  {label}")
    return "\n".join(lines)


def _short(filename: str) -> str:
    root = str(Path(__file__).resolve().parents[1]) + os.sep
    if filename.startswith(root):
        return filename[len(root) :]
    for marker in ("site-packages" + os.sep, "lib" + os.sep + "python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


class _Profiling:
    """A context manager per phase: profile the server child during it and keep the .prof path."""

    def __init__(self, server: ServerProcess, directory: Path | None, clock: str) -> None:
        self.server, self.directory, self.clock = server, directory, clock
        self.files: dict[str, Path] = {}

    def __call__(self, phase: str) -> Any:
        outer = self

        class Phase:
            def __enter__(self) -> None:
                if outer.directory is not None:
                    outer.server.profile_on(outer.clock)

            def __exit__(self, *exc: object) -> None:
                if outer.directory is not None and exc[0] is None:
                    path = outer.directory / f"server_{phase}.prof"
                    if outer.server.profile_dump(path):
                        outer.files[phase] = path

        return Phase()


# --- main ------------------------------------------------------------------------------------------------


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{platform.machine()} {os.cpu_count()} cores{' (' + model + ')' if model else ''}, "
        f"Python {platform.python_version()}, grpcio {grpc.__version__}"
    )


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def print_table(r: dict[str, Any]) -> None:
    print(f"escrow service over gRPC on loopback, server in its own process: {r['server']}")
    print(f"({r['machine']})")
    if r["profiled"]:
        print("RUN UNDER cProfile: the timings below are inflated and not comparable")
    p, s = r["plugin_ms"], r["session_ms"]
    cpu = "CPU ms: server / client, mean"
    print(f"  {'milliseconds':52s} {'median':>8s} {'p99':>8s}  {'target':18s}  {cpu}")
    labels = {
        "attest": "attest (new channel, fresh quote, verification)",
        "open": "OPEN (open_request + call; deposit prepared)",
        "attach": "ATTACH (+ ACK check)",
        "b_ack": "B reading -> verified ACK with coverage limit",
        "prepare_deposit": "prepare_deposit (two 64-bit values proved)",
        "readings": f"{r['session_readings']} readings, each sent after the previous ACK",
        "receipt": "GetSession + receipt opened and verified",
    }
    rows = (
        (
            f"plug-in to first coverage limit (n={p['total']['n']})",
            p,
            "plugin_ms",
            ("attest", "open", "attach", "b_ack"),
        ),
        (
            f"whole session, {r['session_readings']} readings, proofs (n={s['total']['n']})",
            s,
            "session_ms",
            ("attest", "prepare_deposit", "open", "attach", "readings", "receipt"),
        ),
    )
    for title, block, target, parts in rows:
        t = block["total"]
        verdict = f"<= {TARGETS[target]:.0f}: {_verdict(t['median'] <= TARGETS[target])}"
        print(
            f"  {title:52s} {t['median']:8.1f} {t['p99']:8.1f}  {verdict:18s}  "
            f"{block['server_cpu_ms']:.1f} / {block['client_cpu_ms']:.1f}"
        )
        for key in parts:
            print(f"    {labels[key]:50s} {block[key]['median']:8.1f} {block[key]['p99']:8.1f}")
    target = f">= {TARGETS['readings_per_s']:,.0f}/s, p99 <= {TARGETS['ack_p99_ms']:.0f} ms"
    print(f"  durable readings (each ACK after its commit), target {target}")
    print(
        f"    {'streams x readings, window':30s} {'per s':>7s} {'ACK p50':>8s} {'ACK p99':>8s} "
        f"{'first/last tenth p50':>21s}  {'verdict':7s}  CPU ms per reading: server / client"
    )
    for c in r["readings"].values():
        mode = "lock-step" if c["window"] == 1 else f"window {c['window']}"
        label = f"{c['streams']} x {c['readings'] // c['streams']}, {mode}"
        ok = c["readings_per_s"] >= TARGETS["readings_per_s"] and c["ack_ms"]["p99"] <= TARGETS["ack_p99_ms"]
        tenths = f"{c['ack_ms_first_tenth_median']:.2f} / {c['ack_ms_last_tenth_median']:.2f}"
        ack = c["ack_ms"]
        print(
            f"    {label:30s} {c['readings_per_s']:7.0f} {ack['median']:8.2f} {ack['p99']:8.2f} "
            f"{tenths:>21s}  {_verdict(ok):7s}  {c['server_cpu_ms']:.2f} / {c['client_cpu_ms']:.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=30, help="sessions for plug-in and whole session")
    parser.add_argument("--readings", type=int, default=20, help="readings in the whole-session run")
    parser.add_argument(
        "--stream-readings", type=int, default=200, help=f"readings per stream (<= {MAX_STREAM_READINGS})"
    )
    parser.add_argument("--window", type=int, default=16, help="unacknowledged readings when pipelined")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--profile", metavar="DIR", help="profile the server per phase into DIR (child server)"
    )
    parser.add_argument(
        "--profile-clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="cpu (default): each thread's CPU time; wall: also time blocked on fsync, locks, the GIL",
    )
    parser.add_argument(
        "--server",
        choices=("auto", "cli", "child"),
        default="auto",
        help="cli: `escrow-server serve`; child: a multiprocessing child running the same node and "
        "create_server; auto (default): cli when it takes --listen, else child; --profile needs child",
    )
    args = parser.parse_args()
    if not 1 <= args.stream_readings <= MAX_STREAM_READINGS:
        parser.error(f"--stream-readings is 1 to {MAX_STREAM_READINGS}")
    if args.sessions < 1 or args.window < 1:
        parser.error("--sessions and --window are at least 1")
    profile_dir = Path(args.profile).resolve() if args.profile else None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="service-bench-") as tmp:
        os.environ["ESCROW_NV_DIR"] = str(Path(tmp) / "nv")
        issuer = Issuer(os.urandom(32))
        t_boot = time.perf_counter()
        kind = args.server
        if kind == "auto":
            kind = "child" if profile_dir is not None or not cli_can_serve() else "cli"
        if kind == "cli" and profile_dir is not None:
            parser.error("--profile needs --server child (or auto)")
        start = ServerProcess.start_cli if kind == "cli" else ServerProcess.start_child
        server = start(Path(tmp), issuer.public_key)
        boot_s = time.perf_counter() - t_boot
        bench = Bench(server, issuer)
        profiling = _Profiling(server, profile_dir, args.profile_clock)
        try:
            with profiling("plugin"):
                plugin = bench_plugin(bench, args.sessions)
            with profiling("session"):
                session = bench_session(bench, args.sessions, args.readings)
            readings = bench_readings(bench, args.stream_readings, args.window, profiling)
        finally:
            bench.conn.close()
            server.stop()

    results: dict[str, Any] = {
        "machine": machine(),
        "unit": "ms (median, p99); readings per second",
        "profiled": None if profile_dir is None else f"cProfile, {args.profile_clock} clock",
        "server": "escrow-server serve" if kind == "cli" else "multiprocessing child",
        "server_start_s": boot_s,
        "session_readings": args.readings,
        "plugin_ms": plugin,
        "session_ms": session,
        "readings": readings,
        "targets": TARGETS,
    }
    if args.json:
        print(json.dumps(results, sort_keys=True))
    else:
        print_table(results)
    if profiling.files:
        out = sys.stderr if args.json else sys.stdout
        per = {"plugin": args.sessions, "session": args.sessions}
        for phase, path in profiling.files.items():
            if phase.startswith("readings_"):
                count = readings[phase.removeprefix("readings_")]["readings"]
            else:
                count = per[phase]
            print("\n" + profile_report(path, count, phase, args.profile_clock), file=out)


if __name__ == "__main__":
    main()
