"""Group commit of the engine's persist ocall (escrow.host.groupcommit) and the store's savepoints.

The batches are made deterministic by holding the store's lock in the test: the first caller becomes the
leader and blocks in ``store.transaction()`` with its own change, so every change submitted meanwhile
waits in the queue and goes into the next batch, in arrival order."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from escrow.core import engine as eng
from escrow.core.encoding import encode
from escrow.core.entries import encode_payload
from escrow.core.ledger import Entry, Head, advance, make_entry
from escrow.host.groupcommit import GroupCommit
from escrow.host.node import STORE_FILE, EscrowNode
from escrow.host.store import Store, StoreError, Transaction

KEY = ec.derive_private_key(0x6C0_337, ec.SECP256R1())
T0 = 1_790_000_000_000
KIND = "test"


class CountingConnection:
    """The store's connection with its COMMITs counted, and a COMMIT or a ROLLBACK TO made to fail."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.commits = 0
        self.fail_commit = False
        self.fail_rollback_to = False

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "COMMIT" and self.fail_commit:
            raise sqlite3.OperationalError("disk I/O error (injected)")
        if sql.startswith("ROLLBACK TO") and self.fail_rollback_to:
            raise sqlite3.OperationalError("no such savepoint (injected)")
        cursor = self._conn.execute(sql, *args)
        if sql == "COMMIT":
            self.commits += 1
        return cursor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / STORE_FILE)
    yield s
    s.close()


@pytest.fixture
def conn(store: Store) -> CountingConnection:
    counting = CountingConnection(store._db())
    store._conn = counting  # type: ignore[assignment]
    return counting


@pytest.fixture
def node(tmp_path: Path, store: Store, conn: CountingConnection) -> EscrowNode:
    """A node around the store, not started: only its persist ocall is used."""
    return EscrowNode(data_dir=tmp_path, store=store, tick_interval_s=0)


def change(
    puts: list[tuple[bytes, int]] = (),  # type: ignore[assignment]
    entries: list[Entry] = (),  # type: ignore[assignment]
) -> bytes:
    """A persist ocall's bytes, as the engine encodes them: sealed puts (object_id, version) of KIND."""
    return encode(
        eng.PERSIST_SCHEMA,
        {
            "entries": [
                encode(eng.ENTRY_WIRE, {"header": e.header, "payload": e.payload, "signature": e.signature})
                for e in entries
            ],
            "puts": [
                encode(eng.RECORD_WIRE, {"kind": KIND, "object_id": o, "version": v, "blob": b"blob" + o})
                for o, v in puts
            ],
            "deletes": [],
            "idempotency": b"",
            "response": b"",
        },
    )


def committed(path: Path, object_id: bytes) -> int | None:
    """The version of a sealed blob as another connection sees it (committed, not just written)."""
    with closing(sqlite3.connect(path)) as db:
        row = db.execute("SELECT version FROM sealed WHERE kind = ? AND object_id = ?", (KIND, object_id))
        found = row.fetchone()
    return None if found is None else int(found[0])


class Calls:
    """Persist calls in threads of their own, each result (None or the exception) kept by name."""

    def __init__(self, persist: Callable[[bytes], None], group: GroupCommit[Any]) -> None:
        self.persist, self.group = persist, group
        self.results: dict[str, BaseException | None] = {}
        self.threads: list[threading.Thread] = []

    def start(self, name: str, data: bytes, *, queued: int | None = None) -> None:
        """Start a call; with ``queued``, wait until that many changes wait in the queue."""

        def run() -> None:
            try:
                self.persist(data)
                self.results[name] = None
            except BaseException as e:
                self.results[name] = e

        thread = threading.Thread(target=run, name=name)
        self.threads.append(thread)
        thread.start()
        if queued is not None:
            wait_for(lambda: self.group.pending() == queued)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=30)
            assert not thread.is_alive()


def refused(reason: str) -> Any:
    """pytest.raises for a StoreError with this reason."""
    return pytest.raises(StoreError, match=f"^{reason}:")


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


@contextmanager
def leader_blocked(store: Store, calls: Calls, data: bytes) -> Iterator[None]:
    """Hold the store's lock while a first call becomes the leader and blocks on it with its own change;
    what the block submits queues for the next batch. Releasing the lock lets both batches commit."""
    with store._lock:
        calls.start("leader", data)
        wait_for(lambda: calls.group.batches == 1)  # the leader took its batch and waits for the lock
        yield
    calls.join()


# --- (1) concurrent persists share COMMITs ------------------------------------------------------------


def test_concurrent_persists_all_land_in_fewer_commits(node: EscrowNode, conn: CountingConnection) -> None:
    n = 32
    calls = Calls(node._persist, node._group)
    with leader_blocked(node.store, calls, change([(b"leader", 1)])):
        for i in range(n - 1):
            calls.start(f"c{i}", change([(b"obj%d" % i, 1)]), queued=i + 1)
    assert calls.results == {name: None for name in ["leader", *(f"c{i}" for i in range(n - 1))]}
    for i in range(n - 1):
        assert committed(node.store.path, b"obj%d" % i) == 1
    assert committed(node.store.path, b"leader") == 1
    assert conn.commits == 2 < n  # the leader's own batch, then the other 31 in one
    assert node._group.commits == 2 and node._group.largest_batch == n - 1
    assert node.halted is None


def test_free_running_threads_all_land(node: EscrowNode, conn: CountingConnection) -> None:
    """No lock held: 8 threads x 40 persists each, versions rising per object, leaders handing over."""
    threads, per_thread = 8, 40
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def run(t: int) -> None:
        barrier.wait()
        try:
            for v in range(1, per_thread + 1):
                node._persist(change([(b"t%d" % t, v)]))
        except BaseException as e:
            errors.append(e)

    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert errors == []
    assert [committed(node.store.path, b"t%d" % t) for t in range(threads)] == [per_thread] * threads
    assert conn.commits == node._group.commits <= threads * per_thread


def test_a_batch_is_bounded(store: Store, conn: CountingConnection) -> None:
    def apply(tx: Transaction, item: int) -> None:
        tx.put_sealed(KIND, b"b%d" % item, 1, b"x")

    group: GroupCommit[int] = GroupCommit(store, apply, max_batch=4)
    calls = Calls(lambda data: group.submit(int(data)), group)
    with leader_blocked(store, calls, b"100"):
        for i in range(10):
            calls.start(f"c{i}", b"%d" % i, queued=i + 1)
    assert all(r is None for r in calls.results.values()) and len(calls.results) == 11
    assert group.largest_batch == 4
    assert conn.commits == group.commits == 1 + 3  # the leader's, then 4 + 4 + 2
    assert all(committed(store.path, b"b%d" % i) == 1 for i in range(10))


# --- (2) a bad change fails alone ----------------------------------------------------------------------


def test_a_bad_change_fails_alone_and_the_rest_of_its_batch_commits(
    node: EscrowNode, conn: CountingConnection
) -> None:
    with node.store.transaction() as tx:
        tx.put_sealed(KIND, b"stale", 5, b"v5")
    halts: list[str | None] = []
    node.on_halt.append(lambda: halts.append(node.halted))
    calls = Calls(node._persist, node._group)
    with leader_blocked(node.store, calls, change([(b"leader", 1)])):
        calls.start("a", change([(b"a", 1)]), queued=1)
        # its first put is fine, its second refused: the whole change must go, the first put with it
        calls.start("bad", change([(b"w", 1), (b"stale", 3)]), queued=2)
        calls.start("c", change([(b"c", 1)]), queued=3)
    assert calls.results["leader"] is None and calls.results["a"] is None and calls.results["c"] is None
    error = calls.results["bad"]
    assert isinstance(error, StoreError) and error.reason == "SEALED_VERSION_STALE"
    path = node.store.path
    assert (committed(path, b"a"), committed(path, b"c"), committed(path, b"leader")) == (1, 1, 1)
    assert committed(path, b"w") is None and committed(path, b"stale") == 5
    assert conn.commits == 1 + 2  # the setup's, the leader's, then a, bad and c in one
    assert halts == ["persist failed: StoreError"]  # the node halts for the bad change, once


def test_a_change_that_is_not_even_decodable_fails_alone(node: EscrowNode) -> None:
    calls = Calls(node._persist, node._group)
    bad_entry = encode(eng.PERSIST_SCHEMA, {**eng_empty(), "entries": [b"not an entry"]})
    with leader_blocked(node.store, calls, change([(b"leader", 1)])):
        calls.start("bad", bad_entry, queued=1)
        calls.start("good", change([(b"good", 1)]), queued=2)
    assert calls.results["good"] is None and calls.results["bad"] is not None
    assert committed(node.store.path, b"good") == 1 and node.halted is not None


def eng_empty() -> dict[str, Any]:
    return {"entries": [], "puts": [], "deletes": [], "idempotency": b"", "response": b""}


# --- (3) a failed COMMIT fails every change of its batch ----------------------------------------------


def test_a_failed_commit_fails_every_waiter_and_halts_the_node(
    node: EscrowNode, conn: CountingConnection
) -> None:
    halts: list[str | None] = []
    node.on_halt.append(lambda: halts.append(node.halted))
    calls = Calls(node._persist, node._group)
    with leader_blocked(node.store, calls, change([(b"leader", 1)])):
        for i in range(5):
            calls.start(f"c{i}", change([(b"c%d" % i, 1)]), queued=i + 1)
        conn.fail_commit = True
    assert set(calls.results) == {"leader", "c0", "c1", "c2", "c3", "c4"}
    for error in calls.results.values():
        assert isinstance(error, StoreError) and error.reason == "STORE_FAILED", error
    assert len({id(e) for e in calls.results.values()}) == 6  # one exception object per thread
    assert halts == ["persist failed: StoreError"] * 6 and node.halted == "persist failed: StoreError"
    assert conn.commits == 0 and node._group.commits == 0 and node._group.batches == 2
    for name in (b"leader", b"c0", b"c4"):
        assert committed(node.store.path, name) is None
    conn.fail_commit = False  # the failed transactions were rolled back: the store still works
    node._group.submit({**eng_empty(), "puts": [encode(eng.RECORD_WIRE, _record(b"after"))]})
    assert committed(node.store.path, b"after") == 1


def test_a_lost_transaction_fails_the_whole_batch(node: EscrowNode, conn: CountingConnection) -> None:
    """If a savepoint cannot be rolled back, the transaction is gone: the changes applied before the bad
    one in the same batch must not be reported committed."""
    with node.store.transaction() as tx:
        tx.put_sealed(KIND, b"stale", 5, b"v5")
    calls = Calls(node._persist, node._group)
    with leader_blocked(node.store, calls, change([(b"leader", 1)])):
        calls.start("a", change([(b"a", 1)]), queued=1)
        calls.start("bad", change([(b"stale", 3)]), queued=2)
        calls.start("c", change([(b"c", 1)]), queued=3)
        conn.fail_rollback_to = True
    assert calls.results["leader"] is None  # its batch was before
    assert all(isinstance(calls.results[name], StoreError) for name in ("a", "bad", "c"))
    assert [committed(node.store.path, n) for n in (b"leader", b"a", b"c")] == [1, None, None]
    assert conn.commits == 1 + 1 and node._group.commits == 1 and node.halted is not None


def _record(object_id: bytes) -> dict[str, Any]:
    return {"kind": KIND, "object_id": object_id, "version": 1, "blob": b"x"}


# --- (4) arrival order ------------------------------------------------------------------------------


def key_entries(head: Head, count: int) -> list[Entry]:
    """``count`` KEY entries chained after ``head``."""
    payload = encode_payload(
        "KEY",
        {
            "mr_enclave": bytes(32),
            "isv_svn": 1,
            "ledger_key": b"\x04" + bytes(64),
            "encryption_key": bytes(32),
            "instance_id": bytes(16),
            "quote": b"q",
            "collateral_json": b"{}",
        },
    )
    out = []
    for i in range(count):
        entry = make_entry(head, "KEY", payload, T0 + 1 + i, KEY)
        out.append(entry)
        head = advance(head, entry)
    return out


def test_changes_are_applied_in_arrival_order(node: EscrowNode, conn: CountingConnection) -> None:
    genesis = make_entry(Head(), "GENESIS", b"genesis", T0, KEY)
    with node.store.transaction() as tx:
        tx.append_entry(genesis)
    a, b, c = key_entries(node.store.chain_head(), 3)
    calls = Calls(node._persist, node._group)
    with leader_blocked(node.store, calls, change([(b"leader", 1)])):
        for i, (name, entry) in enumerate([("a", a), ("b", b), ("c", c)]):
            calls.start(name, change(entries=[entry]), queued=i + 1)
    assert calls.results == {"leader": None, "a": None, "b": None, "c": None}
    assert [node.store.entry(h) for h in (1, 2, 3)] == [a, b, c]
    assert conn.commits == 1 + 2  # GENESIS's, the leader's, then a, b and c in one


def test_the_queue_is_first_in_first_out(store: Store) -> None:
    applied: list[int] = []
    group: GroupCommit[int] = GroupCommit(store, lambda tx, item: applied.append(item))
    calls = Calls(lambda data: group.submit(int(data)), group)
    with leader_blocked(store, calls, b"-1"):
        for i in range(20):
            calls.start(f"c{i}", b"%d" % i, queued=i + 1)
    assert applied == [-1, *range(20)]


# --- savepoints ---------------------------------------------------------------------------------------


def test_a_savepoint_keeps_its_writes_when_it_ends_normally(store: Store) -> None:
    with store.transaction() as tx:
        with tx.savepoint():
            tx.put_sealed(KIND, b"s", 1, b"x")
        assert tx.sealed(KIND, b"s") is not None
    assert committed(store.path, b"s") == 1


def test_a_refused_step_in_a_savepoint_rolls_back_that_savepoint_only(store: Store) -> None:
    with store.transaction() as tx:
        tx.put_sealed(KIND, b"before", 1, b"x")
        with refused("TRANSACTION_ABORTED"), tx.savepoint():
            tx.put_sealed(KIND, b"inside", 1, b"x")
            with refused("SEALED_VERSION_STALE"):
                tx.put_sealed(KIND, b"before", 1, b"again")  # refused, and caught by the caller
            with refused("TRANSACTION_ABORTED"):
                tx.put_sealed(KIND, b"later", 1, b"x")  # nothing more in this savepoint
        assert not tx.aborted
        tx.put_sealed(KIND, b"after", 1, b"x")
    versions = [committed(store.path, n) for n in (b"before", b"inside", b"later", b"after")]
    assert versions == [1, None, None, 1]


def test_an_exception_in_a_savepoint_rolls_it_back_and_propagates(store: Store) -> None:
    with store.transaction() as tx:
        with refused("SEALED_VERSION_STALE"), tx.savepoint():
            tx.put_sealed(KIND, b"x", 2, b"x")
            tx.put_sealed(KIND, b"x", 1, b"x")
        with pytest.raises(RuntimeError), tx.savepoint():
            tx.put_sealed(KIND, b"y", 1, b"x")
            raise RuntimeError("not a store error")
        tx.put_sealed(KIND, b"z", 1, b"x")
    assert [committed(store.path, n) for n in (b"x", b"y", b"z")] == [None, None, 1]


def test_savepoints_nest(store: Store) -> None:
    with store.transaction() as tx, tx.savepoint():
        tx.put_sealed(KIND, b"outer", 1, b"x")
        with pytest.raises(RuntimeError), tx.savepoint():
            tx.put_sealed(KIND, b"inner", 1, b"x")
            raise RuntimeError
        with tx.savepoint():
            tx.put_sealed(KIND, b"inner2", 1, b"x")
    assert [committed(store.path, n) for n in (b"outer", b"inner", b"inner2")] == [1, None, 1]


def test_a_savepoint_that_cannot_be_rolled_back_loses_the_transaction(
    store: Store, conn: CountingConnection
) -> None:
    with refused("TRANSACTION_ABORTED"), store.transaction() as tx:
        tx.put_sealed(KIND, b"before", 1, b"x")
        tx.put_sealed(KIND, b"stale", 5, b"x")
        conn.fail_rollback_to = True
        with pytest.raises(StoreError), tx.savepoint():
            tx.put_sealed(KIND, b"stale", 1, b"x")
        assert tx.aborted
        with refused("TRANSACTION_ABORTED"):
            tx.put_sealed(KIND, b"after", 1, b"x")
    assert conn.commits == 0 and committed(store.path, b"before") is None
    with store.transaction() as tx:  # the store is usable again
        tx.put_sealed(KIND, b"next", 1, b"x")
    assert committed(store.path, b"next") == 1


def test_outside_a_savepoint_a_refusal_still_aborts_the_transaction(store: Store) -> None:
    with refused("TRANSACTION_ABORTED"), store.transaction() as tx:
        tx.put_sealed(KIND, b"x", 2, b"x")
        with refused("SEALED_VERSION_STALE"):
            tx.put_sealed(KIND, b"x", 1, b"x")
        with refused("TRANSACTION_ABORTED"), tx.savepoint():
            pass
    assert committed(store.path, b"x") is None
