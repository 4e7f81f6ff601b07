"""Admission control in front of the servicers: per-peer request rate, streaming slots, idle streams.

- **Streams per connection**: a connection may have at most ``connection_streams`` calls open at once
  (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS). The client's transport holds any further call until one
  ends, so it waits (DEADLINE_EXCEEDED if none ends in time); other connections are not affected.
- **Calls in flight**: the server runs each call on one of ``rpc_threads`` threads, and a streaming call
  keeps its thread until it ends. Beyond the thread count (gRPC's ``maximum_concurrent_rpcs``) a call is
  refused at once with RESOURCE_EXHAUSTED ("Concurrent RPC limit exceeded!") instead of queueing behind
  streams that may never end.
- **Streaming calls** (StreamReadings, StreamEntries, health Watch, reflection) may hold at most
  ``stream_slots`` threads, fewer than there are, so unary calls always find one: the stream beyond it
  is refused with RESOURCE_EXHAUSTED ``STREAMS_LIMIT``.
- **Idle streams**: a streaming call that moves no message either way for ``stream_idle_s`` seconds,
  while the server is not working on one of its requests, is cancelled by the server (the client sees
  CANCELLED); a pole reopens the stream to go on, as it does after any refusal.
- **Per-peer request rate**: each peer host (the IP address of the connection, any port) has a token
  bucket of ``peer_burst`` requests refilled at ``peer_rate`` per second; every call and every message
  of a stream takes one. A peer that runs dry is refused with RESOURCE_EXHAUSTED ``RATE_LIMITED`` and
  nothing is done for that request.

Every refusal here happens before the request reaches the enclave, so it changes nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from escrow.host.node import HostError

MAX_TRACKED_PEERS = 10_000  # buckets kept; beyond it the full (idle) ones are forgotten


@dataclass(frozen=True)
class Limits:
    """The transport limits of one server (defaults: DESIGN §10; docs/escrow-server.md)."""

    connection_streams: int = 64  # HTTP/2 streams one connection may have open (the rest wait)
    rpc_threads: int = 128
    stream_slots: int = 96
    stream_idle_s: float = 300.0
    peer_rate: float = 1_000.0
    peer_burst: int = 2_000

    def __post_init__(self) -> None:
        if not 1 <= self.connection_streams <= 1024:
            raise ValueError("connection_streams is in [1, 1024]")
        if not 2 <= self.rpc_threads <= 4096:
            raise ValueError("rpc_threads is in [2, 4096]")
        if not 1 <= self.stream_slots < self.rpc_threads:
            raise ValueError("stream_slots is at least 1 and fewer than rpc_threads (unary calls need one)")
        if not self.stream_idle_s > 0:
            raise ValueError("stream_idle_s is positive")
        if not self.peer_rate > 0 or self.peer_burst < 1:
            raise ValueError("peer_rate is positive and peer_burst at least 1")


def peer_host(peer: str) -> str:
    """The host part of a gRPC peer string: "ipv4:1.2.3.4:5" -> "ipv4:1.2.3.4", "ipv6:[::1]:5" ->
    "ipv6:[::1]"; anything else (a unix socket, an unknown form) is its own host."""
    if peer.startswith("ipv4:") and peer.count(":") == 2:
        return peer.rsplit(":", 1)[0]
    if peer.startswith("ipv6:[") and "]:" in peer:
        return peer.rsplit(":", 1)[0]
    return peer


class RateLimiter:
    """Token buckets per peer host, refilled continuously."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self._clock = rate, burst, clock
        self._buckets: dict[str, tuple[float, float]] = {}  # host -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, host: str) -> None:
        """Take one token for ``host`` or raise HostError RATE_LIMITED."""
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.get(host, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate)
            if tokens < 1.0:
                self._buckets[host] = (tokens, now)
                wait_ms = max(1, int((1.0 - tokens) / self.rate * 1000))
                raise HostError(
                    "RATE_LIMITED",
                    f"more than {self.rate:g} requests/s (burst {self.burst}) from this peer; "
                    f"retry in {wait_ms} ms",
                )
            self._buckets[host] = (tokens - 1.0, now)
            if len(self._buckets) > MAX_TRACKED_PEERS:
                self._forget_full(now)

    def _forget_full(self, now: float) -> None:
        full = [h for h, (t, at) in self._buckets.items() if t + (now - at) * self.rate >= self.burst]
        for host in full:
            del self._buckets[host]


class StreamSlots:
    """At most ``slots`` streaming calls at once, server-wide; never waits."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._free = threading.BoundedSemaphore(slots)

    def acquire(self) -> None:
        """Take a slot or raise HostError STREAMS_LIMIT."""
        if not self._free.acquire(blocking=False):
            raise HostError(
                "STREAMS_LIMIT", f"{self.slots} streaming calls are open on this server; retry shortly"
            )

    def release(self) -> None:
        self._free.release()


class IdleWatch:
    """One stream's last activity; ``IdleMonitor`` calls its ``on_idle`` once if it goes quiet. While the
    server works on a request (``begin`` .. ``end``) the stream is not idle, however long that takes."""

    def __init__(self, on_idle: Callable[[], object]) -> None:
        self.on_idle = on_idle
        self.last = time.monotonic()
        self.busy = False

    def touch(self) -> None:
        self.last = time.monotonic()

    def begin(self) -> None:
        """A request arrived: the server is working on it."""
        self.busy, self.last = True, time.monotonic()

    def end(self) -> None:
        """Its answer went out: from now the client has to speak."""
        self.busy, self.last = False, time.monotonic()


class IdleMonitor:
    """One thread for every open stream: a stream silent for ``idle_s`` seconds gets ``on_idle`` (once)."""

    def __init__(self, idle_s: float) -> None:
        self.idle_s = idle_s
        self._period = min(1.0, idle_s / 4)
        self._watches: set[IdleWatch] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()

    def watch(self, on_idle: Callable[[], object]) -> IdleWatch:
        w = IdleWatch(on_idle)
        with self._lock:
            self._watches.add(w)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="escrow-stream-idle", daemon=True)
                self._thread.start()
        return w

    def unwatch(self, w: IdleWatch) -> None:
        with self._lock:
            self._watches.discard(w)

    def close(self) -> None:
        self._closed.set()

    def _run(self) -> None:
        while not self._closed.wait(self._period):
            cutoff = time.monotonic() - self.idle_s
            with self._lock:
                idle = [w for w in self._watches if not w.busy and w.last < cutoff]
                self._watches.difference_update(idle)
            for w in idle:
                w.on_idle()
