"""The host's store: one transaction per state change, refusals that leave nothing behind, and a database
that survives kill -9 in a consistent state."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from escrow.core.ledger import Entry, Head, Header, check_chain, make_entry
from escrow.core.notes import note_id
from escrow.core.signing import p256_public_key_bytes
from escrow.host.store import MAX_PAGE_ENTRIES, SCHEMA_VERSION, Store, StoreError, Transaction

KEY = ec.derive_private_key(0x5EED_0F_57_0BE, ec.SECP256R1())
PUB = p256_public_key_bytes(KEY)
T0 = 1_790_000_000_000
REPO = Path(__file__).resolve().parents[1]


def next_entry(head: Head, payload: bytes = b"", kind: str = "MINT") -> Entry:
    """A real signed entry after ``head`` (GENESIS when the chain is empty)."""
    if head.height < 0:
        return make_entry(head, "GENESIS", b"genesis", T0, KEY)
    return make_entry(head, kind, payload or b"p%d" % (head.height + 1), T0 + head.height + 1, KEY)


def append(tx: Transaction, payload: bytes = b"") -> int:
    """Append the next entry inside ``tx``; its height."""
    return tx.append_entry(next_entry(tx.chain_head(), payload))


def add_note(tx: Transaction, height: int, index: int) -> bytes:
    return tx.add_note(height, index, bytes([index]) * 32, bytes([height % 256]) * 32, b"envelope")


def dump(path: Path) -> list[str]:
    """Every row of every table, through a connection of its own."""
    conn = sqlite3.connect(path)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def refused(reason: str) -> Any:
    """pytest.raises for a StoreError with this reason."""
    return pytest.raises(StoreError, match=f"^{reason}:")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """A store holding GENESIS (height 0) and one MINT (height 1) with notes 0 and 1."""
    s = Store.open(tmp_path / "store.db")
    with s.transaction() as tx:
        append(tx)
        height = append(tx)
        add_note(tx, height, 0)
        add_note(tx, height, 1)
    return s


def test_open_sets_wal_full_sync_foreign_keys_and_a_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with Store.open(path) as s:
        conn = s._db()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("SELECT version FROM schema_version").fetchone()[0] == SCHEMA_VERSION
        assert s.head() is None and s.chain_head() == Head()
    assert path.stat().st_mode & 0o777 == 0o600
    Store.open(path).close()  # reopening an existing store is fine


def test_open_refuses_a_newer_schema_a_foreign_database_and_garbage(tmp_path: Path) -> None:
    newer = tmp_path / "newer.db"
    Store.open(newer).close()
    with sqlite3.connect(newer) as conn:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with refused("SCHEMA_VERSION_UNSUPPORTED"):
        Store.open(newer)
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE t (x)")
    with refused("SCHEMA_UNKNOWN"):
        Store.open(foreign)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database, just bytes" * 100)
    with refused("STORE_UNREADABLE"):
        Store.open(garbage)


def test_entries_append_in_order_and_read_back_as_a_valid_chain(store: Store) -> None:
    with store.transaction() as tx:
        for _ in range(8):
            append(tx, os.urandom(100))
    head = store.chain_head()
    assert store.head() == (9, head.entry_hash) and head.height == 9
    entries = store.entries_from(0, 100)
    assert check_chain(entries, lambda h: PUB) == head
    assert store.entry(3) == entries[3] and store.entry(10) is None
    assert store.entries_from(4, 3) == entries[4:7] and store.entries_from(10, 5) == []
    assert len(store.entries_from(0, 10**9)) == 10  # capped, not refused
    with refused("ARGUMENT_INVALID"):
        store.entries_from(0, 0)


def test_a_page_of_entries_is_bounded_by_count_and_bytes(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.db") as s, s.transaction() as tx:
        for _ in range(MAX_PAGE_ENTRIES + 10):
            append(tx)
        for _ in range(6):
            append(tx, b"x" * 1_000_000)
        assert len(tx.entries_from(0, 10**6)) == MAX_PAGE_ENTRIES
        big = tx.entries_from(MAX_PAGE_ENTRIES + 11, 100)
        assert len(big) == 4  # about 4 MiB of payload per page, at least one entry


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda e, h: e, "ENTRY_HEIGHT"),  # the current head again
        (lambda e, h: next_entry(Head(h.chain_id, h.height, bytes(32), h.time_ms)), "ENTRY_CHAIN_BROKEN"),
        (lambda e, h: next_entry(Head(bytes(32), h.height, h.entry_hash, h.time_ms)), "ENTRY_CHAIN_ID"),
        (lambda e, h: make_entry(h, "MINT", b"x", h.time_ms, KEY), None),  # same time is fine
        (
            lambda e, h: make_entry(Head(h.chain_id, h.height, h.entry_hash), "MINT", b"x", 5, KEY),
            "ENTRY_TIME_BACKWARDS",
        ),
        (lambda e, h: Entry(next_entry(h).header, b"other payload", e.signature), "ENTRY_PAYLOAD_HASH"),
        (lambda e, h: Entry(b"\x00" * 40, b"", e.signature), "ENTRY_MALFORMED"),
        (lambda e, h: Entry(next_entry(h).header, b"x", b"short"), "ARGUMENT_INVALID"),
        (lambda e, h: Entry(next_entry(h).header, b"x" * ((1 << 20) + 1), e.signature), "TOO_LARGE"),
        (lambda e, h: make_entry(Head(), "GENESIS", b"g", T0, KEY), "ENTRY_HEIGHT"),
    ],
)
def test_append_rechecks_linkage_and_bounds(store: Store, mutate: Any, reason: str | None) -> None:
    head = store.chain_head()
    entry = mutate(store.entry(head.height), head)
    before = store.head()
    if reason is None:
        with store.transaction() as tx:
            tx.append_entry(entry)
        assert store.head() == (head.height + 1, entry.entry_hash)
        return
    with refused(reason), store.transaction() as tx:
        tx.append_entry(entry)
    assert store.head() == before


def test_genesis_comes_first_and_only_first(tmp_path: Path) -> None:
    def forged(kind: str, height: int, chain_id: bytes, prev_hash: bytes) -> Entry:
        header = Header(chain_id, height, prev_hash, T0, kind, hashlib.sha256(b"x").digest())
        return Entry(header.to_bytes(), b"x", bytes(64))  # the store does not check signatures

    with Store.open(tmp_path / "s.db") as s:
        with refused("ENTRY_OUT_OF_PLACE"), s.transaction() as tx:
            tx.append_entry(forged("MINT", 0, bytes(32), bytes(32)))
        with s.transaction() as tx:
            genesis = tx.append_entry(next_entry(Head()))
        chain_id = s.chain_head().chain_id
        assert genesis == 0 and chain_id == s.entry(0).entry_hash
        with refused("ENTRY_OUT_OF_PLACE"), s.transaction() as tx:
            tx.append_entry(forged("GENESIS", 1, chain_id, chain_id))
        with s.transaction() as tx:
            tx.append_entry(forged("MINT", 1, chain_id, chain_id))


def test_a_raising_transaction_leaves_nothing_behind(store: Store) -> None:
    path = store.path
    with store.transaction() as tx:
        tx.record_idempotent("Mint", "req-1", bytes(32), b"first answer")
        tx.put_sealed("session", b"s1", 1, b"sealed v1")
        tx.open_session(bytes(32), 1, T0 + 60_000)
    before = dump(path)
    with pytest.raises(RuntimeError), store.transaction() as tx:
        height = append(tx)
        new_note = add_note(tx, height, 0)
        tx.spend_notes([note_id(store.entry(1).entry_hash, 0)], height)
        tx.add_mint_reference(b"ref", height)
        tx.put_sealed("session", b"s1", 2, b"sealed v2")
        tx.delete_sealed("session", b"s1")
        tx.settle_session(bytes(32), height)
        tx.open_session(b"\x01" * 32, height, T0)
        tx.record_idempotent("Mint", "req-2", bytes(32), b"second answer")
        assert tx.note(new_note) is not None and store.head() == (height, tx.entry(height).entry_hash)
        raise RuntimeError("the enclave refused after the writes")
    assert dump(path) == before
    assert store.counts().entries == 2 and store.sealed("session", b"s1") is not None


def test_a_refused_step_aborts_the_transaction_even_if_the_caller_catches_it(store: Store) -> None:
    before = dump(store.path)
    with refused("TRANSACTION_ABORTED"), store.transaction() as tx:
        append(tx)
        with refused("NOTE_NOT_FOUND"):
            tx.spend_notes([b"\x07" * 32], 2)
        with refused("TRANSACTION_ABORTED"):
            append(tx)
    assert dump(store.path) == before


def test_idempotency_same_body_gets_the_first_answer_another_body_is_refused(store: Store) -> None:
    body, other = hashlib.sha256(b"body").digest(), hashlib.sha256(b"other").digest()
    assert store.idempotent_response("Mint", "req-1", body) is None
    with store.transaction() as tx:
        height = append(tx)
        tx.record_idempotent("Mint", "req-1", body, height.to_bytes(8, "big"))
    assert store.idempotent_response("Mint", "req-1", body) == (2).to_bytes(8, "big")
    with refused("IDEMPOTENCY_KEY_REUSED"):
        store.idempotent_response("Mint", "req-1", other)
    assert store.idempotent_response("Redeem", "req-1", other) is None  # the key includes the method
    before = dump(store.path)
    for body_hash, reason in ((body, "IDEMPOTENCY_KEY_RECORDED"), (other, "IDEMPOTENCY_KEY_REUSED")):
        with refused(reason), store.transaction() as tx:  # a concurrent retry that lost the race
            append(tx)
            tx.record_idempotent("Mint", "req-1", body_hash, b"late")
    assert dump(store.path) == before
    with refused("ARGUMENT_INVALID"):
        store.idempotent_response("Mint", "", body)
    with refused("TOO_LARGE"):
        store.idempotent_response("Mint", "r" * 129, body)


def test_a_double_spend_is_refused_and_rolled_back(store: Store) -> None:
    entry_hash = store.entry(1).entry_hash
    n0, n1 = note_id(entry_hash, 0), note_id(entry_hash, 1)
    with store.transaction() as tx:
        height = append(tx)
        tx.spend_notes([n0], height)
        change = add_note(tx, height, 0)
    assert store.note(n0).spent_at == 2 and store.note(n1).spent_at is None
    before = dump(store.path)
    for inputs, reason in (
        ([n1, n0], "NOTE_ALREADY_SPENT"),  # n1 would be spent first: it must come back unspent
        ([n1, n1], "NOTE_ALREADY_SPENT"),
        ([n1, b"\x09" * 32], "NOTE_NOT_FOUND"),
        ([], "ARGUMENT_INVALID"),
    ):
        with refused(reason), store.transaction() as tx:
            h = append(tx)
            tx.spend_notes(inputs, h)
        assert dump(store.path) == before
    with refused("NOTE_SPENT_TOO_EARLY"), store.transaction() as tx:
        tx.spend_notes([change], 2)  # created and spent by the same entry
    with refused("ENTRY_NOT_FOUND"), store.transaction() as tx:
        tx.spend_notes([n1], 99)
    assert dump(store.path) == before


def test_mint_references_sealed_versions_and_sessions_refuse_reuse(store: Store) -> None:
    with store.transaction() as tx:
        tx.add_mint_reference(b"ref-1", 1)
        tx.put_sealed("session", b"s", 5, b"v5")
        tx.open_session(b"\x01" * 32, 1, T0 + 1000)
    for step, reason in (
        (lambda tx: tx.add_mint_reference(b"ref-1", 1), "MINT_REFERENCE_REUSED"),
        (lambda tx: tx.put_sealed("session", b"s", 5, b"again"), "SEALED_VERSION_STALE"),
        (lambda tx: tx.put_sealed("session", b"s", 4, b"older"), "SEALED_VERSION_STALE"),
        (lambda tx: tx.open_session(b"\x01" * 32, 1, T0), "SESSION_EXISTS"),
        (lambda tx: tx.settle_session(b"\x02" * 32, 1), "SESSION_NOT_FOUND"),
        (lambda tx: tx.add_note(1, 0, bytes(32), bytes(32), b""), "NOTE_EXISTS"),
        (lambda tx: tx.add_note(7, 0, bytes(32), bytes(32), b""), "ENTRY_NOT_FOUND"),
        (lambda tx: tx.add_note(1, 5, bytes(32), bytes(32), b"e" * 5000), "TOO_LARGE"),
        (lambda tx: tx.put_sealed("session", b"t", 1, b"b" * ((1 << 20) + 1)), "TOO_LARGE"),
        (lambda tx: tx.add_mint_reference(b"r" * 65, 1), "TOO_LARGE"),
    ):
        with refused(reason), store.transaction() as tx:
            step(tx)
    with store.transaction() as tx:
        tx.put_sealed("session", b"s", 6, b"v6")
        height = append(tx)
        tx.settle_session(b"\x01" * 32, height)
        assert tx.delete_sealed("session", b"s") and not tx.delete_sealed("session", b"s")
    assert store.session(b"\x01" * 32).settle_height == height
    with refused("SESSION_ALREADY_SETTLED"), store.transaction() as tx:
        tx.settle_session(b"\x01" * 32, append(tx))
    assert store.sealed("session", b"s") is None
    counts = store.counts()
    assert (counts.entries, counts.notes, counts.unspent_notes, counts.mint_references) == (3, 2, 2, 1)
    assert (counts.sessions, counts.open_sessions, counts.sealed_objects) == (1, 0, 0)


def test_notes_from_pages_through_every_note_in_order(store: Store) -> None:
    with store.transaction() as tx:
        for _ in range(5):
            height = append(tx)
            for index in range(3):
                add_note(tx, height, index)
    every = store.notes_from(0, 1000)
    assert [(n.height, n.output_index) for n in every] == [(1, 0), (1, 1)] + [
        (h, i) for h in range(2, 7) for i in range(3)
    ]
    assert all(n.note_id == note_id(store.entry(n.height).entry_hash, n.output_index) for n in every)
    page, cursor = [], (0, 0)
    while batch := store.notes_from(cursor[0], 4, cursor[1]):
        page += batch
        cursor = (batch[-1].height, batch[-1].output_index + 1)
    assert page == every


def test_transactions_do_not_nest_and_die_with_their_block(store: Store) -> None:
    with store.transaction() as tx:
        with refused("TRANSACTION_NESTED"), store.transaction():
            pass
        errors: list[StoreError] = []

        def use_from_another_thread() -> None:
            try:
                tx.head()
            except StoreError as e:
                errors.append(e)

        worker = threading.Thread(target=use_from_another_thread)
        worker.start()
        worker.join()
        assert errors[0].reason == "TRANSACTION_CLOSED"  # another thread may not use it
    with refused("TRANSACTION_CLOSED"):
        append(tx)
    store.close()
    with refused("STORE_CLOSED"):
        store.head()


def test_concurrent_writers_serialise_without_lost_updates(store: Store) -> None:
    threads, per_thread = 8, 25
    errors: list[BaseException] = []

    def writer(worker: int) -> None:
        try:
            for i in range(per_thread):
                with store.transaction() as tx:
                    height = append(tx, b"worker %d item %d" % (worker, i))  # reads the head inside
                    add_note(tx, height, 0)
                    tx.record_idempotent("Append", f"{worker}-{i}", bytes(32), height.to_bytes(8, "big"))
                store.entries_from(max(0, height - 5), 10)  # readers interleave
        except BaseException as e:
            errors.append(e)

    pool = [threading.Thread(target=writer, args=(w,)) for w in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not errors
    head = store.chain_head()
    assert head.height == 1 + threads * per_thread
    chain: list[Entry] = []
    while page := store.entries_from(len(chain), 100):
        chain += page
    assert check_chain(chain, lambda h: PUB) == head
    payloads = {e.payload for e in chain[2:]}
    assert payloads == {b"worker %d item %d" % (w, i) for w in range(threads) for i in range(per_thread)}
    assert store.counts().idempotency_records == threads * per_thread


# --- kill -9 ---------------------------------------------------------------------------------------------


def kill_workload(path: str) -> None:
    """Run in a child process: append entries forever, each with its notes, a spend, a mint reference,
    a sealed version, a session and an idempotency record, printing each height once committed."""
    store = Store.open(Path(path))
    print("ready", flush=True)
    while True:
        with store.transaction() as tx:
            height = append(tx, os.urandom(random.randrange(64, 4096)))
            if height > 0:
                previous = [n for n in tx.notes_from(height - 1, 2) if n.height == height - 1]
                if previous:  # spend output 0 of the entry before
                    tx.spend_notes([previous[0].note_id], height)
                add_note(tx, height, 0)
                add_note(tx, height, 1)
                tx.add_mint_reference(b"ref-%d" % height, height)
                tx.put_sealed("counter", b"c", height, b"sealed %d" % height)
                tx.open_session(hashlib.sha256(b"%d" % height).digest(), height, T0 + height)
                if height > 1:
                    tx.settle_session(hashlib.sha256(b"%d" % (height - 1)).digest(), height)
            body = hashlib.sha256(b"%d" % height).digest()
            tx.record_idempotent("Append", f"req-{height}", body, height.to_bytes(8, "big"))
        print(height, flush=True)  # acknowledged only after the commit returned
        if height and height % 5 == 0:  # a refused double spend between good transactions: rolled back
            try:
                with store.transaction() as tx:
                    h = append(tx)
                    unspent = tx.notes_from(height, 2)[1].note_id
                    already_spent = tx.notes_from(1, 1)[0].note_id
                    tx.spend_notes([unspent, already_spent], h)
                raise AssertionError("a double spend committed")
            except StoreError as e:
                assert e.reason == "NOTE_ALREADY_SPENT"


def check_invariants(path: Path) -> int:
    """Check the whole database with plain SQL (not through the store); returns the head height."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT height, entry_hash, header FROM entries ORDER BY height").fetchall()
        prev = bytes(32)
        for expected, (height, entry_hash, header_bytes) in enumerate(rows):
            header = Header.from_bytes(header_bytes)
            assert height == expected == header.height, "entries contiguous from 0"
            assert header.prev_hash == prev and hashlib.sha256(header_bytes).digest() == entry_hash
            prev = entry_hash
        top = len(rows) - 1
        for h in range(1, top + 1):  # every transaction all or nothing
            assert conn.execute("SELECT count(*) FROM notes WHERE height = ?", (h,)).fetchone()[0] == 2
            assert (
                conn.execute("SELECT count(*) FROM mint_references WHERE height = ?", (h,)).fetchone()[0] == 1
            )
            spent = conn.execute("SELECT height, output_index FROM notes WHERE spent_at = ?", (h,)).fetchall()
            assert spent == ([(h - 1, 0)] if h > 1 else []), "each entry spent exactly its one input"
        orphans = "SELECT count(*) FROM notes WHERE height > ? OR spent_at > ? OR spent_at <= height"
        assert conn.execute(orphans, (top, top)).fetchone()[0] == 0
        for request_id, body_hash, response in conn.execute(
            "SELECT request_id, body_hash, response FROM idempotency"
        ):
            height = int.from_bytes(response, "big")
            assert 0 <= height <= top and request_id == f"req-{height}"
            assert body_hash == hashlib.sha256(b"%d" % height).digest()
        assert conn.execute("SELECT count(*) FROM idempotency").fetchone()[0] == top + 1
        if top > 0:
            assert conn.execute("SELECT version FROM sealed").fetchall() == [(top,)]
            settled = conn.execute("SELECT count(*) FROM sessions WHERE settle_height IS NOT NULL").fetchone()
            assert settled[0] == top - 1
        return top
    finally:
        conn.close()


def test_kill_9_at_random_moments_leaves_a_consistent_store(tmp_path: Path) -> None:
    path, seed = tmp_path / "store.db", int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    child = (
        "import sys; sys.path[:0] = sys.argv[2:4]; import test_store; test_store.kill_workload(sys.argv[1])"
    )
    acknowledged, heads, report = -1, [], []
    for _ in range(5):
        proc = subprocess.Popen(
            [sys.executable, "-c", child, str(path), str(REPO), str(REPO / "tests")],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
            time.sleep(rng.uniform(0.05, 0.3))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL, f"seed {seed}: the workload died on its own"
        lines = proc.stdout.read().split()
        proc.stdout.close()
        acknowledged = max([acknowledged, *map(int, lines)])
        top = check_invariants(path)
        assert top >= acknowledged, f"seed {seed}: an acknowledged commit was lost"
        heads.append(top)
        report.append(f"{acknowledged}/{top}")
    assert heads == sorted(heads) and heads[-1] > 5, f"seed {seed}: the workload made no progress: {heads}"
    with Store.open(path) as s:  # the store reopens, and the chain verifies
        chain: list[Entry] = []
        while page := s.entries_from(len(chain), MAX_PAGE_ENTRIES):
            chain += page
        assert check_chain(chain, lambda h: PUB).height == heads[-1]
        with s.transaction() as tx:  # and carries on
            assert append(tx) == heads[-1] + 1
    print(f"kill -9 seed {seed}: acknowledged/recovered head after each kill: {' '.join(report)}")
