"""Admission control in front of the servicers: per-peer rate and shares, streaming slots, idle calls.

The server is grpcio's synchronous server: a call holds one of ``rpc_threads`` threads for its whole life,
including while it waits for a client that sends nothing. Every handler is therefore registered
server-side as a bidirectional stream (the same bytes on the wire as unary calls and server streams), so
that admission runs the moment a call starts, before its request message has arrived:

- **Streams per connection**: a connection may have at most ``connection_streams`` calls open at once
  (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS). The client's transport holds any further call until one
  ends, so it waits (DEADLINE_EXCEEDED if none ends in time); other connections are not affected.
- **Calls in flight**: beyond ``rpc_threads`` (gRPC's ``maximum_concurrent_rpcs``) a call is refused at
  once with RESOURCE_EXHAUSTED ("Concurrent RPC limit exceeded!") instead of queueing.
- **Per-peer share of the calls**: one peer host may have at most ``peer_calls`` calls in flight
  (RESOURCE_EXHAUSTED ``CALLS_LIMIT``), so no single address can hold every thread.
- **Streaming calls** (StreamReadings, StreamEntries, health Watch, reflection) may hold at most
  ``stream_slots`` threads, fewer than there are, so unary calls always find one, and at most
  ``peer_streams`` of them per peer host: RESOURCE_EXHAUSTED ``STREAMS_LIMIT`` beyond either.
- **A request that does not come**: a unary call or server stream whose request message has not arrived
  ``message_wait_s`` seconds after the call started is cancelled by the server (the client sees
  CANCELLED); it held a thread for that long and no more.
- **Idle streams**: a streaming call that moves no message for ``stream_idle_s`` seconds while the server
  is not working on one of its requests is cancelled the same way; that includes a client that stops
  reading its answers (the server is then blocked on flow control, which is the client's silence). A pole
  reopens the stream to go on, as it does after any refusal.
- **Per-peer request rate**: each peer host has a token bucket of ``peer_burst`` requests refilled at
  ``peer_rate`` per second; every call and every further message of a stream takes one. A peer that runs
  dry is refused with RESOURCE_EXHAUSTED ``RATE_LIMITED`` and nothing is done for that request.

A peer host is the connection's IPv4 address, or its IPv6 /64 (one subscriber's usual allocation, so that
the 2^64 addresses of one network share one bucket and one share); an IPv4-mapped IPv6 address counts as
its IPv4 address. Every refusal here happens before the request reaches the enclave, so it changes nothing.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote

from escrow.host.node import HostError

MAX_TRACKED_PEERS = 10_000  # rate buckets kept; beyond it the least recently used is forgotten


@dataclass(frozen=True)
class Limits:
    """The transport limits of one server (defaults: DESIGN §10; docs/escrow-server.md, Limits)."""

    connection_streams: int = 64  # HTTP/2 streams one connection may have open (the rest wait)
    rpc_threads: int = 128
    stream_slots: int = 96
    peer_calls: int = 32
    peer_streams: int = 24
    message_wait_s: float = 10.0
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
        if self.peer_calls < 1 or self.peer_streams < 1:
            raise ValueError("peer_calls and peer_streams are at least 1")
        # a peer's share is at most the whole: lowering the threads or slots lowers the shares with them
        object.__setattr__(self, "peer_calls", min(self.peer_calls, self.rpc_threads))
        object.__setattr__(self, "peer_streams", min(self.peer_streams, self.stream_slots))
        if not self.message_wait_s > 0 or not self.stream_idle_s > 0:
            raise ValueError("message_wait_s and stream_idle_s are positive")
        if not self.peer_rate > 0 or self.peer_burst < 1:
            raise ValueError("peer_rate is positive and peer_burst at least 1")


def peer_host(peer: str) -> str:
    """The host a gRPC peer string counts as (see the module docstring). grpcio percent-encodes IPv6
    peers ("ipv6:%5B::1%5D:50123"); the port is dropped. Anything unparsable is its own host."""
    text = unquote(peer)
    if text.startswith("ipv4:"):
        address, _, port = text[5:].rpartition(":")
        try:
            return "ipv4:" + str(ipaddress.IPv4Address(address)) if port.isdigit() else peer
        except ValueError:
            return peer
    if text.startswith("ipv6:[") and "]" in text:
        address = text[6 : text.index("]")].split("%", 1)[0]  # drop a zone index
        try:
            ip = ipaddress.IPv6Address(address)
        except ValueError:
            return peer
        if ip.ipv4_mapped is not None:
            return "ipv4:" + str(ip.ipv4_mapped)
        return "ipv6:" + str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return peer


def clock() -> float:
    """The rate buckets' clock (seconds, monotonic); a test may replace it to make refills exact."""
    return time.monotonic()


class RateLimiter:
    """Token buckets per peer host, refilled continuously; at most MAX_TRACKED_PEERS kept (LRU)."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] | None = None) -> None:
        self.rate, self.burst, self._clock = rate, burst, clock  # None: the module's clock, looked up
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # host -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, host: str) -> None:
        """Take one token for ``host`` or raise HostError RATE_LIMITED."""
        now = self._clock() if self._clock is not None else clock()
        with self._lock:
            tokens, at = self._buckets.get(host, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate)
            ok = tokens >= 1.0
            self._buckets[host] = (tokens - 1.0 if ok else tokens, now)
            self._buckets.move_to_end(host)
            while len(self._buckets) > MAX_TRACKED_PEERS:
                self._buckets.popitem(last=False)  # forgotten: it comes back with a full burst
            if not ok:
                wait_ms = max(1, int((1.0 - tokens) / self.rate * 1000))
                raise HostError(
                    "RATE_LIMITED",
                    f"more than {self.rate:g} requests/s (burst {self.burst}) from this peer; "
                    f"retry in {wait_ms} ms",
                )

    def tracked(self) -> int:
        with self._lock:
            return len(self._buckets)


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


class PeerShares:
    """At most ``share`` calls (with ``streams``: streaming calls) in flight per peer host; never waits."""

    def __init__(self, share: int, *, streams: bool = False) -> None:
        self.share, self.streams = share, streams
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, host: str) -> None:
        """Count one more for ``host`` or raise HostError CALLS_LIMIT (STREAMS_LIMIT for streams)."""
        with self._lock:
            held = self._held.get(host, 0)
            if held >= self.share:
                if self.streams:
                    raise HostError("STREAMS_LIMIT", f"{self.share} streaming calls are open from this peer")
                raise HostError("CALLS_LIMIT", f"{self.share} calls are open from this peer")
            self._held[host] = held + 1

    def release(self, host: str) -> None:
        with self._lock:
            held = self._held[host] - 1
            if held:
                self._held[host] = held
            else:
                del self._held[host]

    def held(self, host: str) -> int:
        with self._lock:
            return self._held.get(host, 0)


class IdleWatch:
    """One call's last activity; ``IdleMonitor`` calls its ``on_idle`` once if it stays quiet for
    ``limit_s``. While the server works on a request (``begin`` .. ``end``) the call is not idle."""

    def __init__(self, on_idle: Callable[[], object], limit_s: float) -> None:
        self.on_idle, self.limit_s = on_idle, limit_s
        self.last = time.monotonic()
        self.busy = False

    def touch(self) -> None:
        self.last = time.monotonic()

    def begin(self) -> None:
        """A request arrived: the server is working on it."""
        self.busy, self.last = True, time.monotonic()

    def end(self) -> None:
        """Its answer is ready: from now on waiting is the client's (to read it, or to speak)."""
        self.busy, self.last = False, time.monotonic()


class IdleMonitor:
    """One thread for every watched call (started when the first is watched, gone when none is left): a
    call quiet for its watch's limit gets ``on_idle``, once."""

    def __init__(self, period_s: float = 1.0) -> None:
        self._period = period_s
        self._watches: set[IdleWatch] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, on_idle: Callable[[], object], limit_s: float) -> IdleWatch:
        w = IdleWatch(on_idle, limit_s)
        with self._lock:
            self._watches.add(w)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="escrow-idle-calls", daemon=True)
                self._thread.start()
        return w

    def unwatch(self, w: IdleWatch) -> None:
        with self._lock:
            self._watches.discard(w)

    def _run(self) -> None:
        while True:
            time.sleep(self._period)
            now = time.monotonic()
            with self._lock:
                idle = [w for w in self._watches if not w.busy and now - w.last > w.limit_s]
                self._watches.difference_update(idle)
                if not self._watches and not idle:
                    self._thread = None  # nothing to watch: end; the next watch starts a new thread
                    return
            for w in idle:
                w.on_idle()
