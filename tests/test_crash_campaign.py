"""Crash consistency campaign (issue 6 item 2): SIGKILL `escrow-server serve` at many random instants while
a workload runs, restart it on the same data and NV directories each time, and prove at the end that
nothing was lost or applied twice.

The workload threads mint, open sessions, attach, stream readings, send end readings (settlements), stop
sessions and redeem notes over real gRPC. They tolerate the server dying: a failed call waits for the next
server, reconnects, attests it again (same chain, same keys) and retries the *same* request (same
request_id), so idempotency is exercised; a reading stream is resent from the first record without an ACK
(a repeated record gets its original ACK). Meanwhile the main loop kills the server at random delays, some
timed right after an end reading or a STOP goes out so the kill lands inside a settlement. Every other
server runs with a proof-worker process (``--proof-workers 1``), so some kills land inside pool calls.

At the end (after a clean SIGTERM restart) the whole ledger is checked: the chain verifies entry by entry,
the auditor passes it (every proof), a replay of every entry's effects shows each note created once and
spent at most once, each OPEN settled at most once, every session the workload opened is on the ledger once
and settled exactly once (sessions left open are finished first), every receipt lists exactly the records
the pole sent, and the wallets' balances (vehicles plus pole payout wallets) add up to issued - redeemed.

CI runs a short campaign (CRASH_KILLS kills); ``--run-slow`` runs 60 kills. The random seed is printed
(and may be forced with CRASH_SEED=...) so a failure reproduces.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from server_process import Server, kill_leftovers, serve

from clients.auditor import audit
from clients.connection import Attested, Connection, EscrowError, call, error_from
from clients.issuer import Issuer
from clients.meter import SimulatedMeter
from clients.pole import Pole, check_ack
from clients.wallet import LedgerScanner, Session, Wallet
from enclave.verifier import Policy
from escrow.core import entries as core_entries
from escrow.core.notes import note_id
from escrow.core.session import AckBody
from escrow.v1 import charging_pb2

CURRENCY = "EUR"
PRICE_NUMERATOR = 39 * 1_000_000  # 39 cents per kWh
SESSION_FEE = 50
SETTLED = charging_pb2.SESSION_STATE_SETTLED
CALL_TIMEOUT_S = 20.0
T = TypeVar("T")


@pytest.fixture(autouse=True)
def _no_leftover_servers() -> Iterator[None]:
    yield
    kill_leftovers()


class StoppedError(Exception):
    """The campaign is over and the link is closed for good (a worker gives up)."""


# --- the server, and the link the workers follow across restarts --------------------------------------


class Link:
    """The current server: workers block while it is down and reconnect when its generation changes."""

    def __init__(self, data_dir: Path, nv_dir: Path, issuer_key: bytes) -> None:
        self.data_dir, self.nv_dir, self.issuer_key = data_dir, nv_dir, issuer_key
        self.cond = threading.Condition()
        self.generation = 0
        self.server: Server | None = None
        self.chain_id: bytes | None = None
        self.ledger_key: bytes | None = None
        self.closed = False

    def start(self) -> None:
        # every other server runs its proofs in a worker process, so kills land inside pool calls too
        pool = ["--proof-workers", "1"] if self.generation % 2 else []
        server = serve(self.data_dir, self.nv_dir, "--issuer-key", self.issuer_key.hex(), *pool, as_json=True)
        with self.cond:
            self.server = server
            self.generation += 1
            self.cond.notify_all()

    def kill(self) -> None:
        with self.cond:
            server, self.server = self.server, None
        assert server is not None
        server.proc.kill()
        assert server.proc.wait(timeout=10) == -9

    def stop_clean(self) -> None:
        with self.cond:
            server, self.server = self.server, None
        assert server is not None
        assert server.stop() == 0, server.stderr()

    def policy(self, server: Server, *, pin: bool = True) -> Policy:
        root = (self.data_dir / "platform" / "root_ca.der").read_bytes()
        mrenclave = bytes.fromhex(server.printed["mrenclave"]) if pin else None
        return Policy(root_ca_der=root, expect_mrenclave=mrenclave)

    def current(self) -> tuple[int, Server]:
        with self.cond:
            while self.server is None:
                if self.closed:
                    raise StoppedError()
                self.cond.wait(0.5)
            return self.generation, self.server


class Client:
    """One worker's connection; ``retry`` runs an operation until it goes through a live server."""

    def __init__(self, link: Link, log: Callable[[str], None]) -> None:
        self.link, self.log = link, log
        self.generation = -1
        self.conn: Connection | None = None
        self.a: Attested | None = None
        self.transport_failures = 0
        self.retried: Counter[str] = Counter()  # operations run again after a transport failure

    def ensure(self) -> tuple[Connection, Attested]:
        generation, server = self.link.current()
        if generation != self.generation or self.conn is None or self.a is None:
            if self.conn is not None:
                self.conn.close()
            self.conn = Connection(server.address, timeout_s=CALL_TIMEOUT_S)
            self.generation = generation
            self.a = None
            a = self.conn.attest(self.link.policy(server))
            with self.link.cond:
                if self.link.chain_id is None:
                    self.link.chain_id, self.link.ledger_key = a.chain_id, a.ledger_key
            # the restarted enclave is the same escrow: same chain, same keys (old requests stay valid)
            assert a.chain_id == self.link.chain_id and a.ledger_key == self.link.ledger_key
            self.a = a
        return self.conn, self.a

    def retry(self, what: str, op: Callable[[Connection, Attested], T]) -> T:
        """Run ``op`` until it returns. A transport failure (the server died) waits for the next server
        and runs ``op`` again; a refusal with a reason is not expected and propagates."""
        deadline = time.monotonic() + 240
        while True:
            try:
                conn, a = self.ensure()
                return op(conn, a)
            except grpc.RpcError as e:
                err = error_from(e)
            except EscrowError as e:
                err = e
            if err.reason is not None:
                raise AssertionError(f"{what}: refused after retry: {err}")
            self.transport_failures += 1
            self.retried[what] += 1
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: no live server for 240 s ({err})")
            self.generation = -1 if self.link.server is None else self.generation
            time.sleep(0.05)


# --- the workload -------------------------------------------------------------------------------------


@dataclass
class Tracked:
    """A session the workload opened, and everything the pole sent for it."""

    session: Session
    wallet: Wallet
    pole: Pole
    payout_seed: bytes
    deposit: int
    records: list[str] = field(default_factory=list)
    acked: int = 0
    settled_by: str = ""  # "end", "stop" or "" (still open)


@dataclass
class Tally:
    issued: int = 0
    redeemed: int = 0
    mints: int = 0
    redeems: int = 0
    settlements: int = 0
    ops: int = 0


class Worker:
    def __init__(
        self, index: int, link: Link, issuer: Issuer, rng: random.Random, settle_event: threading.Event
    ) -> None:
        self.index = index
        self.rng = rng
        self.issuer = issuer
        self.settle_event = settle_event
        self.log_lines: list[str] = []
        self.client = Client(link, self.log_lines.append)
        self.vehicle_seeds = [rng.randbytes(32) for _ in range(2)]
        self.vehicles = [Wallet(s) for s in self.vehicle_seeds]
        self.payout_seeds: list[bytes] = []
        self.sessions: list[Tracked] = []
        self.tally = Tally()
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.pole: tuple[Pole, bytes] | None = None
        self.thread = threading.Thread(target=self.run, name=f"crash-worker-{index}", daemon=True)

    # --- helpers, each retried across crashes with the same request ---

    def scan(self, wallet: Wallet) -> None:
        self.client.retry("scan", lambda c, a: wallet.scan(c, a))

    def new_pole(self) -> tuple[Pole, bytes]:
        payout_seed = self.rng.randbytes(32)
        self.payout_seeds.append(payout_seed)
        pole = Pole(
            self.rng.randbytes(32),
            SimulatedMeter.generate(),
            f"POLE-{self.rng.randbytes(4).hex()}",
            f"DE*ESC*E{self.rng.randbytes(4).hex()}",
            payout_seed,
        )
        a = self.attested()
        register = pole.register_request(a.chain_id)
        self.client.retry("RegisterPole", lambda c, _a: call(c.registry.RegisterPole, register))
        tariff = pole.tariff_request(a.chain_id, CURRENCY, PRICE_NUMERATOR, SESSION_FEE, sequence=1)
        self.client.retry("PublishTariff", lambda c, _a: call(c.registry.PublishTariff, tariff))
        return pole, payout_seed

    def attested(self) -> Attested:
        return self.client.retry("attest", lambda _c, a: a)

    def mint(self, wallet: Wallet, amount: int) -> None:
        request = self.issuer.mint_request(self.attested(), CURRENCY, wallet.address, amount)
        self.client.retry("Mint", lambda c, _a: call(c.notes.Mint, request))
        self.tally.issued += amount
        self.tally.mints += 1
        self.scan(wallet)

    def redeem(self, wallet: Wallet) -> None:
        notes = [n for n in wallet.unspent() if n.value > 0]
        if not notes:
            return
        amount = self.rng.choice(notes).value
        request = wallet.redeem_request(self.attested(), CURRENCY, amount, self.rng.randbytes(8))
        first = self.client.retry("Redeem", lambda c, _a: call(c.notes.Redeem, request))
        again = self.client.retry("Redeem again", lambda c, _a: call(c.notes.Redeem, request))
        assert again == first, "a retried REDEEM got another answer"
        self.tally.redeemed += amount
        self.tally.redeems += 1
        self.scan(wallet)

    def send(self, t: Tracked, upto: int) -> list[AckBody]:
        """Stream records[acked:upto]; after a crash resend from the first record without an ACK. Every
        ACK is checked: enclave signature, session, sequence and the record it covers."""
        acks: list[AckBody] = []

        def stream(c: Connection, a: Attested) -> None:
            start = t.acked
            envelopes = [t.pole.reading_envelope(a, t.session.session_id, r) for r in t.records[start:upto]]
            for signed in c.charging.StreamReadings(iter(envelopes), timeout=CALL_TIMEOUT_S):
                body = check_ack(a, t.session.session_id, signed).body
                record = t.records[t.acked]
                assert body.sequence == t.acked + 1, (body.sequence, t.acked)
                assert body.reading_hash == hashlib.sha256(record.encode()).digest()
                acks.append(body)
                t.acked += 1

        while t.acked < upto:
            self.client.retry("StreamReadings", stream)
        return acks

    def open_session(self, wallet: Wallet, pole: Pole, payout_seed: bytes, deposit: int) -> Tracked:
        a = self.attested()
        prepared = wallet.prepare_deposit(a, deposit)
        deadline_ms = int((time.time() + 3600) * 1000)
        request, session = wallet.open_request(a, prepared, pole.pole_id, pole.tariff_body, deadline_ms)
        first = self.client.retry("Open", lambda c, _a: call(c.charging.Open, request))
        t = Tracked(session, wallet, pole, payout_seed, deposit)
        self.sessions.append(t)
        if self.rng.random() < 0.3:  # a retry of the same OPEN: the first answer, not a second session
            again = self.client.retry("Open again", lambda c, _a: call(c.charging.Open, request))
            assert again == first, "a retried OPEN got another answer"
        self.scan(wallet)
        attach = pole.attach_request(a, session.session_id)
        answer = self.client.retry("Attach", lambda c, _a: call(c.charging.Attach, attach))
        assert check_ack(a, session.session_id, answer.ack).body.decision == "ATTACHED"
        return t

    def end(self, t: Tracked, kind: str = "E") -> None:
        """The end reading: the enclave settles the session (the main loop may kill it right now)."""
        t.records.append(t.pole.meter.end(kind))
        self.settle_event.set()
        final = self.send(t, len(t.records))
        assert final[-1].decision == "SETTLED", final[-1]
        t.settled_by = "end"
        self.tally.settlements += 1

    def stop_session(self, t: Tracked) -> Any:
        """A vehicle STOP (before any reading: the session settles at once as REFUNDED)."""
        request = t.wallet.stop_request(self.attested(), t.session)
        self.settle_event.set()
        answer = self.client.retry("Stop", lambda c, _a: call(c.charging.Stop, request))
        again = self.client.retry("Stop again", lambda c, _a: call(c.charging.Stop, request))
        assert answer.state == again.state
        return answer

    # --- one round ---

    def round(self) -> None:
        rng = self.rng
        wallet = rng.choice(self.vehicles)
        if wallet.balance() < 400 or rng.random() < 0.3:
            self.mint(wallet, rng.randint(300, 1500))
        if rng.random() < 0.15:
            self.redeem(wallet)
            if wallet.balance() < 100:
                self.mint(wallet, rng.randint(300, 1500))
        assert self.pole is not None
        pole, payout_seed = self.pole if rng.random() < 0.8 else self.new_pole()
        deposit = rng.randint(100, min(wallet.balance(), 700))
        leave_open = rng.random() < 0.1 or self.tally.ops == 0  # the first round's session stays open
        if leave_open:  # its meter stays in a transaction: it gets a pole of its own
            pole, payout_seed = self.new_pole()
        t = self.open_session(wallet, pole, payout_seed, deposit)
        mode = rng.random()
        if mode < 0.15 and not leave_open:  # STOP before any reading: refunded and settled at once
            answer = self.stop_session(t)
            assert answer.state == SETTLED, answer.state
            t.settled_by = "stop"
            self.tally.settlements += 1
        else:
            t.records.append(pole.meter.begin(t.session.session_id))
            for _ in range(rng.randint(1, 5)):
                # a session left open stays within its deposit: an exhausted one is CLOSING and the
                # enclave settles it by itself (EXHAUSTED) once the grace period (120 s) is over
                pole.meter.advance(
                    Decimal(rng.randint(10, 100) if leave_open else rng.randint(100, 1500)) / 1000
                )
                t.records.append(pole.meter.reading())
            self.send(t, len(t.records))
            if leave_open:
                pass
            elif mode < 0.3:  # the vehicle stops, the pole sends its last reading and the end
                request = t.wallet.stop_request(self.attested(), t.session)
                self.client.retry("Stop", lambda c, _a: call(c.charging.Stop, request))
                self.end(t, "L")
            else:
                self.end(t)
        if not leave_open:
            self.pole = (pole, payout_seed)
        self.scan(wallet)
        self.tally.ops += 1

    def run(self) -> None:
        try:
            self.pole = self.new_pole()
            while not self.stop.is_set():
                self.round()
        except StoppedError:
            pass
        except BaseException as e:  # reported by the test
            self.error = e


# --- the campaign -------------------------------------------------------------------------------------


def run_campaign(tmp_path: Path, kills: int, workers: int, budget_s: float) -> None:
    seed = int(os.environ.get("CRASH_SEED", str(random.SystemRandom().randrange(1 << 32))))
    print(f"crash campaign: CRASH_SEED={seed} kills={kills} workers={workers}")
    rng = random.Random(seed)
    issuer = Issuer(rng.randbytes(32))
    link = Link(tmp_path / "data", tmp_path / "nv", issuer.public_key)
    settle_event = threading.Event()
    link.start()
    pool = [
        Worker(i, link, issuer, random.Random(rng.randrange(1 << 62)), settle_event) for i in range(workers)
    ]
    for w in pool:
        w.thread.start()
    started = time.monotonic()
    done, in_settlement = 0, 0
    try:
        while done < kills:
            if any(w.error is not None for w in pool):
                break
            if rng.random() < 0.4:  # right after an end reading or STOP goes out: inside a settlement
                settle_event.clear()
                if settle_event.wait(10):
                    time.sleep(rng.uniform(0, 0.03))
                    in_settlement += 1
            else:
                time.sleep(rng.uniform(0.2, 2.0))
            link.kill()
            done += 1
            time.sleep(rng.uniform(0, 0.2))
            link.start()
            assert time.monotonic() - started < budget_s, f"campaign over budget after {done} kills"
        time.sleep(0.5)
    finally:
        for w in pool:
            w.stop.set()
        for w in pool:
            w.thread.join(timeout=120)
        link.closed = True
    elapsed = time.monotonic() - started
    tallies = [w.tally for w in pool]
    print(
        f"crash campaign: {done} kills ({in_settlement} timed at a settlement) in {elapsed:.1f} s; "
        f"rounds={sum(t.ops for t in tallies)} mints={sum(t.mints for t in tallies)} "
        f"redeems={sum(t.redeems for t in tallies)} settlements={sum(t.settlements for t in tallies)} "
        f"transport failures={sum(w.client.transport_failures for w in pool)}"
    )
    print(f"crash campaign: retried after a crash: {dict(sum((w.client.retried for w in pool), Counter()))}")
    for w in pool:
        assert not w.thread.is_alive(), f"worker {w.index} hung"
        if w.error is not None:
            raise AssertionError(f"worker {w.index} failed (CRASH_SEED={seed})") from w.error
    assert done == kills

    # a clean restart, then every invariant
    link.stop_clean()
    link.closed = False
    link.start()
    try:
        verify(link, pool, seed)
    finally:
        link.stop_clean()


def verify(link: Link, pool: list[Worker], seed: int) -> None:
    client = Client(link, print)
    conn, a = client.ensure()
    sessions = [t for w in pool for t in w.sessions]

    # sessions left open are still live and can still settle: finish them now
    finisher = pool[0]
    finisher.client = client
    left_open = [t for t in sessions if not t.settled_by]
    assert left_open, "the workload left no session open"
    for i, t in enumerate(left_open):
        state = call(conn.charging.GetSession, t.wallet.get_request(a, t.session))
        assert state.state != SETTLED, "a session the workload left open is settled"
        if i % 2:  # the vehicle stops it, then the pole's last reading and end settle it
            request = t.wallet.stop_request(a, t.session)
            assert call(conn.charging.Stop, request).state == charging_pb2.SESSION_STATE_CLOSING
            finisher.end(t, "L")
        else:
            finisher.end(t)
    for t in sessions:
        state = call(conn.charging.GetSession, t.wallet.get_request(a, t.session))
        assert state.state == SETTLED
        vehicle = t.wallet.open_receipt(a, t.session.session_id, state.receipt_envelope)
        for_pole = call(conn.charging.GetSession, t.pole.get_request(a, t.session.session_id))
        operator = t.pole.open_receipt(a, t.session.session_id, for_pole.receipt_envelope)
        assert vehicle.receipt.bill_minor == operator.receipt.bill_minor == operator.receipt.note_amount_minor
        assert vehicle.receipt.note_amount_minor + operator.receipt.note_amount_minor == t.deposit
        # every record the pole sent, exactly once, in order
        assert vehicle.records == [r.encode() for r in t.records], t.session.session_id.hex()

    entries = list(conn.entries())
    scanner = LedgerScanner()
    for entry in entries:
        scanner.check(entry)
    assert scanner.head.chain_id == a.chain_id and scanner.key == a.ledger_key
    report = audit(
        entries,
        link.policy(link.server, pin=False),
        expect_ledger_key=a.ledger_key,  # type: ignore[arg-type]
        expect_chain_id=a.chain_id,
    )
    assert report.ok, report.to_dict()

    # replay: each note created once, spent at most once and only after it exists; each OPEN settled at
    # most once and only after it opened
    created: dict[bytes, int] = {}
    spent: Counter[bytes] = Counter()
    opens: Counter[bytes] = Counter()
    settles: Counter[bytes] = Counter()
    for entry in entries:
        kind = entry.parsed.kind
        fx = core_entries.effects(kind, entry.payload)
        for nid in fx.spent:
            assert nid in created, f"height {entry.parsed.height}: spends a note that does not exist"
            spent[nid] += 1
            assert spent[nid] == 1, f"height {entry.parsed.height}: note {nid.hex()} spent twice"
        for out in fx.outputs:
            nid = note_id(entry.entry_hash, out.index)
            assert nid not in created
            created[nid] = entry.parsed.height
        if kind == "OPEN":
            opens[fx.session_tag] += 1
        if kind == "SETTLE":
            assert opens[fx.session_tag] == 1, "a SETTLE without its OPEN"
            settles[fx.session_tag] += 1
    assert all(n == 1 for n in opens.values()), "a session opened twice"
    assert all(n <= 1 for n in settles.values()), "a session settled twice"
    tags = [t.session.tag for t in sessions]
    assert len(set(tags)) == len(tags)
    for tag in tags:
        assert opens[tag] == 1 and settles[tag] == 1, "a workload session lost or not settled exactly once"
    assert set(opens) == set(tags) and set(settles) == set(tags), "a session the workload never opened"
    assert report.sessions_open == 0 and report.sessions_settled == len(tags)

    # value: what the wallets hold (rescanned from their seeds) = issued - redeemed
    issued = sum(w.tally.issued for w in pool)
    redeemed = sum(w.tally.redeemed for w in pool)
    assert (report.total_issued_minor, report.total_redeemed_minor) == (issued, redeemed)
    assert report.mints == sum(w.tally.mints for w in pool)
    assert report.redeems == sum(w.tally.redeems for w in pool)
    wallets = [Wallet(s) for w in pool for s in [*w.vehicle_seeds, *w.payout_seeds]]
    for wallet in wallets:
        wallet.scan(conn, a)
    held = sum(wallet.balance() for wallet in wallets)
    assert held == issued - redeemed, (held, issued, redeemed)
    unspent = {n.note_id for wallet in wallets for n in wallet.unspent()}
    assert unspent == {nid for nid in created if nid not in spent and not _is_deposit(nid, entries)}
    assert report.notes_unspent == len(unspent)
    print(
        f"crash campaign: verified {len(entries)} entries, {len(tags)} sessions "
        f"({len(left_open)} finished at the end), issued {issued}, "
        f"redeemed {redeemed}, held {held} (CRASH_SEED={seed})"
    )
    conn.close()


def _is_deposit(nid: bytes, entries: list[Any]) -> bool:
    return any(entry.parsed.kind == "OPEN" and note_id(entry.entry_hash, 1) == nid for entry in entries)


def test_crash_campaign_ci(tmp_path: Path) -> None:
    run_campaign(tmp_path, kills=int(os.environ.get("CRASH_KILLS", "7")), workers=2, budget_s=150)


@pytest.mark.slow
def test_crash_campaign_long(tmp_path: Path) -> None:
    run_campaign(tmp_path, kills=int(os.environ.get("CRASH_KILLS_LONG", "60")), workers=3, budget_s=1500)
