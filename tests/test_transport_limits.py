"""Transport limits and back-pressure (issue 6, DESIGN §10): each limit holds, and its error is clear.

Over real gRPC on port 0 with small limits: streams per connection, calls in flight, streaming slots,
idle streams, the per-peer request rate and the minimum deadline; the message-size limit is in
test_service_bad_input (an oversized Mint). Every refusal leaves the store byte-identical. The open
session limits are in test_session_limits. Below them, unit tests of escrow.host.admission.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
from service_harness import Harness, store_digest

from clients.connection import Connection, EscrowError, call, error_from
from clients.wallet import Wallet
from escrow.host import admission
from escrow.host.admission import IdleMonitor, Limits, PeerShares, RateLimiter, StreamSlots, peer_host
from escrow.host.grpc_server import create_server
from escrow.v1 import charging_pb2, ledger_pb2

Code = grpc.StatusCode


class HeldStreams:
    """StreamReadings calls that send nothing until released: each holds its server thread and slot."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.release = threading.Event()
        self.calls: list[Any] = []

    def _quiet(self) -> Iterator[charging_pb2.ReadingEnvelope]:
        self.release.wait(30)
        return
        yield  # a generator that ends without a message once released

    def open(self, timeout: float = 30) -> Any:
        call_ = self.conn.charging.StreamReadings(self._quiet(), timeout=timeout)
        self.calls.append(call_)
        return call_

    def close(self) -> None:
        self.release.set()
        for c in self.calls:
            assert list(c) == []  # ended normally: no reading, no ACK, status OK


@pytest.fixture
def admitted(monkeypatch: pytest.MonkeyPatch) -> threading.Semaphore:
    """Released once for every streaming slot the server grants, so a test can wait for admission."""
    granted = threading.Semaphore(0)
    acquire = StreamSlots.acquire

    def counting(self: StreamSlots) -> None:
        acquire(self)
        granted.release()

    monkeypatch.setattr(StreamSlots, "acquire", counting)
    return granted


def wait_admitted(granted: threading.Semaphore, count: int) -> None:
    for _ in range(count):
        assert granted.acquire(timeout=10), "the server never admitted the stream"


def head(conn: Connection, timeout: float = 10) -> int:
    return int(conn.ledger.GetHead(ledger_pb2.GetHeadRequest(), timeout=timeout).head.height)


def refusal(fn: Any) -> EscrowError:
    try:
        fn()
    except grpc.RpcError as e:
        return error_from(e)
    except EscrowError as e:
        return e
    raise AssertionError("the call was not refused")


def unknown_reading() -> charging_pb2.ReadingEnvelope:
    return charging_pb2.ReadingEnvelope(session_id=bytes(16), sequence=1, envelope=b"x")


# --- streams per connection ---------------------------------------------------------------------


def test_a_connection_holds_at_most_its_streams_and_other_connections_go_on(
    tmp_path: Path, admitted: threading.Semaphore
) -> None:
    h = Harness.start(tmp_path, limits=Limits(connection_streams=2))
    try:
        with Connection(f"127.0.0.1:{h.port}") as busy:
            held = HeldStreams(busy)
            held.open()
            held.open()
            wait_admitted(admitted, 2)
            # the third call on the same connection waits for a stream and meets its deadline
            e = refusal(lambda: head(busy, timeout=1.0))
            assert e.code == Code.DEADLINE_EXCEEDED
            assert head(h.c) >= 0  # another connection is served meanwhile
            held.close()
            assert head(busy) >= 0  # a stream ended: the waiting kind of call goes through again
    finally:
        h.stop()


# --- streaming slots and calls in flight ----------------------------------------------------------


def test_streams_beyond_the_slots_are_refused_and_unary_calls_still_served(
    tmp_path: Path, admitted: threading.Semaphore
) -> None:
    h = Harness.start(tmp_path, limits=Limits(rpc_threads=4, stream_slots=2))
    try:
        before = store_digest(h)
        held = HeldStreams(h.c)
        held.open()
        held.open()
        wait_admitted(admitted, 2)
        e = refusal(lambda: list(h.c.charging.StreamReadings(iter([unknown_reading()]), timeout=10)))
        assert (e.code, e.reason) == (Code.RESOURCE_EXHAUSTED, "STREAMS_LIMIT"), e.message
        assert "2 streaming calls" in e.message
        e = refusal(lambda: list(h.c.ledger.StreamEntries(ledger_pb2.StreamEntriesRequest(), timeout=10)))
        assert e.reason == "STREAMS_LIMIT"  # server streams share the slots
        assert head(h.c) >= 0  # the threads kept back for unary calls serve them
        assert store_digest(h) == before
        held.close()
        # the slots are free again: a stream is admitted (and refused for its content, not the limit)
        e = refusal(lambda: list(h.c.charging.StreamReadings(iter([unknown_reading()]), timeout=10)))
        assert e.reason != "STREAMS_LIMIT" and e.code != Code.RESOURCE_EXHAUSTED
    finally:
        h.stop()


def test_calls_beyond_the_threads_are_refused_at_once_not_queued(
    tmp_path: Path, admitted: threading.Semaphore, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = Harness.start(tmp_path, limits=Limits(rpc_threads=3, stream_slots=2))
    try:
        assert h.node is not None
        store = h.node.store
        entered, unblock = threading.Semaphore(0), threading.Event()
        chain_head = store.chain_head

        def slow_head() -> Any:
            entered.release()
            unblock.wait(30)
            return chain_head()

        monkeypatch.setattr(store, "chain_head", slow_head)
        held = HeldStreams(h.c)
        held.open()
        held.open()
        wait_admitted(admitted, 2)
        slow = threading.Thread(target=head, args=(h.c,))
        slow.start()
        assert entered.acquire(timeout=10)  # three calls hold all three threads
        t = time.monotonic()
        e = refusal(lambda: head(h.c, timeout=20))
        assert e.code == Code.RESOURCE_EXHAUSTED and "Concurrent RPC limit exceeded" in e.message
        assert time.monotonic() - t < 5  # refused at once, not after waiting for a thread
        unblock.set()
        slow.join(10)
        held.close()
        monkeypatch.setattr(store, "chain_head", chain_head)
        assert head(h.c) >= 0
    finally:
        h.stop()


# --- calls that never send, per-peer shares ------------------------------------------------------


def quiet_unary(conn: Connection, method: str, release: threading.Event, timeout: float = 30) -> Any:
    """A unary method called as a stream whose one message never comes (what a slow-loris client does)."""

    def nothing() -> Iterator[bytes]:
        release.wait(timeout)
        return
        yield

    return conn.channel.stream_stream(method)(nothing(), timeout=timeout)


def test_a_call_whose_request_never_comes_is_cancelled_and_frees_its_thread(tmp_path: Path) -> None:
    limits = Limits(rpc_threads=4, stream_slots=2, message_wait_s=0.5)
    h = Harness.start(tmp_path, limits=limits)
    release = threading.Event()
    try:
        with Connection(f"127.0.0.1:{h.port}") as attacker:
            t = time.monotonic()
            calls = [quiet_unary(attacker, "/escrow.v1.Ledger/GetHead", release) for _ in range(4)]
            for c in calls:
                e = refusal(lambda c=c: list(c))
                assert e.code == Code.CANCELLED
            assert time.monotonic() - t < 10  # each held a thread for about message_wait_s, no longer
            for _ in range(8):  # every thread is free again
                assert head(h.c) >= 0
    finally:
        release.set()
        h.stop()


def test_one_peer_cannot_hold_more_than_its_share_of_the_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = Harness.start(tmp_path, limits=Limits(peer_calls=2, message_wait_s=30))
    granted = threading.Semaphore(0)
    acquire = PeerShares.acquire

    def counting(self: PeerShares, host: str) -> None:
        acquire(self, host)
        granted.release()

    monkeypatch.setattr(PeerShares, "acquire", counting)
    release = threading.Event()
    try:
        with Connection(f"127.0.0.1:{h.port}") as attacker:
            held = [quiet_unary(attacker, "/escrow.v1.Ledger/GetHead", release) for _ in range(2)]
            wait_admitted(granted, 2)  # both hold their share (they start asynchronously)
            e = refusal(lambda: head(h.c))
            assert (e.code, e.reason) == (Code.RESOURCE_EXHAUSTED, "CALLS_LIMIT"), e.message
            assert "2 calls are open from this peer" in e.message
            for c in held:
                c.cancel()
            deadline = time.monotonic() + 10
            while True:  # the cancelled calls give their share back
                try:
                    assert head(h.c) >= 0
                    break
                except grpc.RpcError:
                    assert time.monotonic() < deadline, "a cancelled call kept its share"
                    time.sleep(0.05)
    finally:
        release.set()
        h.stop()


def test_one_peer_cannot_hold_more_than_its_share_of_the_streams(
    tmp_path: Path, admitted: threading.Semaphore
) -> None:
    h = Harness.start(tmp_path, limits=Limits(stream_slots=8, peer_streams=2))
    try:
        held = HeldStreams(h.c)
        held.open()
        held.open()
        wait_admitted(admitted, 2)
        e = refusal(lambda: list(h.c.charging.StreamReadings(iter([unknown_reading()]), timeout=10)))
        assert (e.code, e.reason) == (Code.RESOURCE_EXHAUSTED, "STREAMS_LIMIT"), e.message
        assert "from this peer" in e.message
        assert head(h.c) >= 0  # unary calls go on
        held.close()
    finally:
        h.stop()


def test_a_stream_cancelled_by_its_client_gives_its_slot_back(
    tmp_path: Path, admitted: threading.Semaphore
) -> None:
    h = Harness.start(tmp_path, limits=Limits(rpc_threads=4, stream_slots=1))
    try:
        held = HeldStreams(h.c)
        quiet = held.open()
        wait_admitted(admitted, 1)
        quiet.cancel()
        deadline = time.monotonic() + 10
        while True:
            e = refusal(lambda: list(h.c.charging.StreamReadings(iter([unknown_reading()]), timeout=10)))
            if e.reason != "STREAMS_LIMIT":
                break  # admitted, and judged on its content
            assert time.monotonic() < deadline, "the cancelled stream kept its slot"
            time.sleep(0.05)
        held.release.set()
    finally:
        h.stop()


def test_a_client_that_stops_reading_its_answers_is_cancelled(tmp_path: Path) -> None:
    # Reflection needs no credentials: a client that keeps asking and never reads blocks the server on
    # flow control. That is the client's silence: the stream is cancelled and its slot comes back.
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    h = Harness.start(tmp_path, limits=Limits(rpc_threads=4, stream_slots=1, stream_idle_s=1.0))
    stop = threading.Event()
    try:
        request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="escrow.v1.Charging")

        def asking() -> Iterator[Any]:
            for _ in range(20_000):
                if stop.is_set():
                    return
                yield request
                time.sleep(0.0015)  # under the default per-peer rate
            stop.wait(60)

        with Connection(f"127.0.0.1:{h.port}") as greedy:
            unread = reflection_pb2_grpc.ServerReflectionStub(greedy.channel).ServerReflectionInfo(
                asking(), timeout=60
            )
            other = reflection_pb2_grpc.ServerReflectionStub(h.c.channel)
            time.sleep(0.5)
            deadline = time.monotonic() + 30
            while True:  # the one slot is the greedy stream's until the server cancels it
                try:
                    answers = list(other.ServerReflectionInfo(iter([request]), timeout=10))
                    break
                except grpc.RpcError as rpc_error:
                    assert error_from(rpc_error).reason == "STREAMS_LIMIT"
                    assert time.monotonic() < deadline, "a stream that is never read was never cancelled"
                    time.sleep(0.2)
            stop.set()
            unread.cancel()
        assert len(answers) == 1  # the slot is free again
    finally:
        stop.set()
        h.stop()


def test_health_watch_is_served_through_the_gate(tmp_path: Path) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    h = Harness.start(tmp_path)
    try:
        watch = health_pb2_grpc.HealthStub(h.c.channel).Watch(
            health_pb2.HealthCheckRequest(service="escrow.v1.Charging"), timeout=10
        )
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
    finally:
        h.stop()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback")
def test_the_rate_is_per_host_over_ipv6_too_not_per_connection(tmp_path: Path) -> None:
    h = Harness.start(tmp_path)
    assert h.node is not None
    server, port = create_server(h.node, "[::1]:0", Limits(peer_rate=0.5, peer_burst=3))
    try:
        served = limited = 0
        for _ in range(6):  # six connections, one host: one bucket of 3
            with Connection(f"[::1]:{port}") as conn:
                try:
                    head(conn)
                    served += 1
                except grpc.RpcError as rpc_error:
                    assert error_from(rpc_error).reason == "RATE_LIMITED"
                    limited += 1
        assert (served, limited) == (3, 3)
    finally:
        server.stop(None)
        h.stop()


# --- idle streams ---------------------------------------------------------------------------------


def test_an_idle_stream_is_cancelled_and_its_slot_freed(
    tmp_path: Path, admitted: threading.Semaphore
) -> None:
    h = Harness.start(tmp_path, limits=Limits(rpc_threads=4, stream_slots=1, stream_idle_s=0.5))
    try:
        held = HeldStreams(h.c)
        quiet = held.open(timeout=20)
        wait_admitted(admitted, 1)
        t = time.monotonic()
        e = refusal(lambda: list(quiet))
        assert e.code == Code.CANCELLED
        assert time.monotonic() - t < 10
        held.release.set()
        # its slot is back: the next stream is admitted and judged on its content
        e = refusal(lambda: list(h.c.charging.StreamReadings(iter([unknown_reading()]), timeout=10)))
        assert e.reason != "STREAMS_LIMIT"
    finally:
        h.stop()


def test_a_stream_that_keeps_talking_is_not_idle(tmp_path: Path) -> None:
    h = Harness.start(tmp_path, limits=Limits(stream_idle_s=1.0))
    try:
        wallet = Wallet(bytes(range(32)))
        h.fund(wallet, 500)
        pole = h.new_pole()
        session = h.open_session(wallet, pole, 300)
        call(h.c.charging.Attach, pole.attach_request(h.a, session.session_id))
        records = [pole.meter.begin(session.session_id)]
        for _ in range(3):
            pole.meter.advance(Decimal("0.1"))
            records.append(pole.meter.reading())

        def paced() -> Iterator[charging_pb2.ReadingEnvelope]:
            for r in records:  # 0.4 s apart: 1.6 s in all, beyond the idle limit, never 1 s quiet
                yield pole.reading_envelope(h.a, session.session_id, r)
                time.sleep(0.4)

        acks = list(h.c.charging.StreamReadings(paced(), timeout=30))
        assert len(acks) == len(records)
    finally:
        h.stop()


# --- the per-peer request rate --------------------------------------------------------------------


def test_a_peer_over_its_rate_is_refused_and_nothing_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = FakeClock()  # the buckets' clock stands still unless the test moves it: exact refills
    monkeypatch.setattr(admission, "clock", now)
    h = Harness.start(tmp_path, limits=Limits(peer_rate=2, peer_burst=12))
    try:
        wallet = Wallet(bytes(32))
        for _ in range(20):  # the burst runs out within these
            try:
                head(h.c)
            except grpc.RpcError as rpc_error:
                e = error_from(rpc_error)
                break
        else:
            raise AssertionError("12 requests in a burst, then 2/s: the peer was never limited")
        assert (e.code, e.reason) == (Code.RESOURCE_EXHAUSTED, "RATE_LIMITED"), e.message
        assert "2 requests/s" in e.message and "retry in 500 ms" in e.message
        before = store_digest(h)
        mint = h.issuer.mint_request(h.a, "EUR", wallet.address, 100)
        e = refusal(lambda: call(h.c.notes.Mint, mint))  # a mutating call: refused before the enclave
        assert e.reason == "RATE_LIMITED"
        e = refusal(lambda: list(h.c.charging.StreamReadings(iter([unknown_reading()]), timeout=10)))
        assert e.reason == "RATE_LIMITED"  # opening a stream takes a token
        release = threading.Event()
        e = refusal(lambda: list(quiet_unary(h.c, "/escrow.v1.Ledger/GetHead", release, timeout=10)))
        release.set()
        assert e.reason == "RATE_LIMITED"  # so does a call before its message has arrived
        assert store_digest(h) == before
        now.t += 0.5  # one token back at 2/s
        call(h.c.notes.Mint, mint)
        assert store_digest(h) != before
        e = refusal(lambda: head(h.c))  # and it was the only one
        assert e.reason == "RATE_LIMITED"
    finally:
        h.stop()


# --- deadlines ------------------------------------------------------------------------------------


def test_a_call_whose_deadline_cannot_be_met_is_refused_before_any_work(tmp_path: Path) -> None:
    h = Harness.start(tmp_path)
    try:
        before = store_digest(h)
        for _ in range(10):  # the client's own timer may fire first on a loaded machine: try again
            try:
                h.c.charging.Open(charging_pb2.OpenRequest(), timeout=0.045)
            except grpc.RpcError as rpc_error:
                e = error_from(rpc_error)
                if e.reason is not None:
                    break
        else:
            raise AssertionError("the server's refusal never arrived before the client's deadline")
        assert (e.code, e.reason) == (Code.DEADLINE_EXCEEDED, "DEADLINE_TOO_SHORT"), e.message
        assert store_digest(h) == before
    finally:
        h.stop()


# --- admission, unit by unit ----------------------------------------------------------------------


def test_peer_shares_never_exceed_the_whole() -> None:
    limits = Limits(rpc_threads=4, stream_slots=2)
    assert (limits.peer_calls, limits.peer_streams) == (4, 2)


@pytest.mark.parametrize(
    "bad",
    [
        {"connection_streams": 0},
        {"connection_streams": 2000},
        {"rpc_threads": 1},
        {"rpc_threads": 10_000},
        {"stream_slots": 0},
        {"rpc_threads": 8, "stream_slots": 8},  # no thread left for unary calls
        {"stream_idle_s": 0},
        {"message_wait_s": 0},
        {"peer_calls": 0},
        {"peer_streams": 0},
        {"peer_rate": 0},
        {"peer_burst": 0},
    ],
)
def test_limits_refuse_settings_that_cannot_work(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Limits(**bad)


@pytest.mark.parametrize(
    ("peer", "host"),
    [
        ("ipv4:127.0.0.1:50123", "ipv4:127.0.0.1"),
        ("ipv4:10.0.0.7:1", "ipv4:10.0.0.7"),
        # grpcio percent-encodes IPv6 peers; a host is its /64, an IPv4-mapped address its IPv4 address
        ("ipv6:%5B::1%5D:53392", "ipv6:::/64"),
        ("ipv6:[::1]:50123", "ipv6:::/64"),
        ("ipv6:%5B2001:db8::5%5D:443", "ipv6:2001:db8::/64"),
        ("ipv6:%5B2001:db8::ffff:1:2%5D:9", "ipv6:2001:db8::/64"),
        ("ipv6:%5B2001:db8:0:1::5%5D:443", "ipv6:2001:db8:0:1::/64"),
        ("ipv6:%5Bfe80::1%25eth0%5D:7", "ipv6:fe80::/64"),
        ("ipv6:%5B::ffff:10.0.0.7%5D:5", "ipv4:10.0.0.7"),
        ("unix:/tmp/sock", "unix:/tmp/sock"),
        ("ipv4:not-an-address:1", "ipv4:not-an-address:1"),
        ("ipv6:%5Bzz%5D:1", "ipv6:%5Bzz%5D:1"),
        ("", ""),
    ],
)
def test_peer_host_ignores_the_port(peer: str, host: str) -> None:
    assert peer_host(peer) == host


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_rate_limiter_burst_refill_and_separate_peers() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=4, burst=3, clock=clock)
    for _ in range(3):
        limiter.take("a")
    with pytest.raises(admission.HostError) as caught:
        limiter.take("a")
    assert caught.value.reason == "RATE_LIMITED" and "retry in 250 ms" in caught.value.detail
    limiter.take("b")  # another peer has its own bucket
    clock.t += 0.25
    limiter.take("a")  # one token back after 1/rate s
    with pytest.raises(admission.HostError):
        limiter.take("a")
    clock.t += 100
    for _ in range(3):  # refilled to the burst, never beyond it
        limiter.take("a")
    with pytest.raises(admission.HostError):
        limiter.take("a")


def test_rate_limiter_keeps_a_bounded_number_of_peers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admission, "MAX_TRACKED_PEERS", 10)
    clock = FakeClock()
    limiter = RateLimiter(rate=1, burst=2, clock=clock)
    limiter.take("old")
    limiter.take("old")
    for i in range(10):  # ten newer peers push the least recently used one out
        limiter.take(f"p{i}")
    assert limiter.tracked() == 10
    limiter.take("old")  # forgotten, so it starts again from a full burst (the price of the bound)
    t = time.perf_counter()
    for i in range(2_000):
        limiter.take(f"q{i}")
    assert limiter.tracked() == 10 and time.perf_counter() - t < 5  # no rescan of every bucket per call


def test_peer_shares_count_per_host_and_release() -> None:
    shares = PeerShares(2)
    shares.acquire("a")
    shares.acquire("a")
    shares.acquire("b")
    with pytest.raises(admission.HostError) as caught:
        shares.acquire("a")
    assert caught.value.reason == "CALLS_LIMIT" and "2 calls are open from this peer" in caught.value.detail
    shares.release("a")
    shares.acquire("a")
    assert shares.held("a") == 2 and shares.held("b") == 1
    streams = PeerShares(1, streams=True)
    streams.acquire("a")
    with pytest.raises(admission.HostError) as caught:
        streams.acquire("a")
    assert caught.value.reason == "STREAMS_LIMIT" and "1 streaming calls are open" in caught.value.detail


def test_a_stream_whose_request_the_server_is_working_on_is_not_idle() -> None:
    monitor = IdleMonitor(0.05)
    calls: list[int] = []
    working = monitor.watch(lambda: calls.append(1), 0.2)
    working.begin()  # a settlement proof may take longer than the idle limit
    time.sleep(0.6)
    assert calls == []
    working.end()  # answered: now the client's silence counts
    time.sleep(0.6)
    assert calls == [1]


def test_idle_monitor_calls_only_the_quiet_stream_once() -> None:
    monitor = IdleMonitor(0.05)
    quiet_calls: list[int] = []
    busy_calls: list[int] = []
    quiet = monitor.watch(lambda: quiet_calls.append(1), 0.3)
    busy = monitor.watch(lambda: busy_calls.append(1), 0.3)
    for _ in range(10):
        busy.touch()
        time.sleep(0.1)
    monitor.unwatch(busy)
    assert quiet_calls == [1] and busy_calls == []
    assert quiet is not busy
    deadline = time.monotonic() + 5
    while monitor._thread is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert monitor._thread is None  # nothing left to watch: its thread is gone, not polling forever


def test_stream_slots_never_wait() -> None:
    slots = StreamSlots(1)
    slots.acquire()
    t = time.monotonic()
    with pytest.raises(admission.HostError) as caught:
        slots.acquire()
    assert caught.value.reason == "STREAMS_LIMIT" and time.monotonic() - t < 0.5
    slots.release()
    slots.acquire()


def test_a_service_registered_only_generically_is_refused_not_silently_dropped() -> None:
    from escrow.host import grpc_server

    class FakeServer:
        def add_generic_rpc_handlers(self, handlers: Any) -> None:
            pass

        def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
            pass

    registrar = grpc_server._Registrar(FakeServer(), grpc_server._Gate(Limits()))  # type: ignore[arg-type]
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    registrar.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("x.Both", {"M": handler}),))
    registrar.add_registered_method_handlers("x.Both", {"M": handler})
    registrar.check()  # both ways: wrapped
    registrar.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("x.Old", {"M": handler}),))
    with pytest.raises(RuntimeError, match=r"x\.Old"):
        registrar.check()
