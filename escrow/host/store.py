"""The host's durable store: ledger entries, notes, sessions, sealed blobs and idempotency records in SQLite.

Everything here is public or sealed (DESIGN §2): the host keeps it but is trusted with none of it.
SQLite runs in WAL mode with ``synchronous=FULL``, so a commit that returned survives a crash, and a
state change, its ledger entry and its idempotency record commit in one transaction (DESIGN §10)::

    with store.transaction() as tx:
        height = tx.append_entry(entry)
        tx.spend_notes(input_ids, height)
        tx.add_note(height, 0, commitment, owner_key, envelope)
        tx.record_idempotent("Open", request_id, body_hash, response)

Any exception inside the block rolls all of it back. A refused step (``StoreError``) aborts the
transaction at once, even if the caller catches the error: nothing in it can commit afterwards. Inside
``tx.savepoint()`` the same holds for the savepoint only: a refusal or an exception rolls back what the
savepoint did, the savepoint raises, and the transaction goes on (group commit applies each request's
change in a savepoint of its own, escrow.host.groupcommit).

Concurrency: one connection shared by all threads, guarded by a re-entrant lock held for the whole of a
transaction (``BEGIN IMMEDIATE`` also takes SQLite's write lock, so another process is serialised too).
Reads take the same lock; they are short and bounded. docs/storage.md gives the tables and the reasons.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from enclave.fsutil import fsync_dir
from escrow.core.errors import CoreError
from escrow.core.ledger import MAX_PAYLOAD_BYTES, Entry, Head, Header, LedgerError
from escrow.core.notes import note_id as make_note_id
from escrow.core.signing import P256_SIGNATURE_BYTES

SCHEMA_VERSION = 1
MAX_PAGE_ENTRIES = 256
MAX_PAGE_BYTES = 4 << 20  # a page of entries stops before this many payload bytes (at least one entry)
MAX_PAGE_NOTES = 1024
MAX_HEADER_BYTES = 256
MAX_ENVELOPE_BYTES = 4096  # a storage bound, looser than any protocol limit
MAX_BLOB_BYTES = 1 << 20  # sealed blobs and idempotent responses
MAX_SPEND_INPUTS = 1024
MAX_NAME_CHARS = 128  # method names, request ids, sealed kinds
MAX_OBJECT_ID_BYTES = 64
MAX_MINT_REFERENCE_BYTES = 64
MAX_SQL_INT = (1 << 63) - 1
BUSY_TIMEOUT_MS = 10_000

_SCHEMA = """
CREATE TABLE schema_version (id INTEGER PRIMARY KEY CHECK (id = 0), version INTEGER NOT NULL);
CREATE TABLE entries (
    height INTEGER PRIMARY KEY, entry_hash BLOB UNIQUE NOT NULL, kind TEXT NOT NULL,
    header BLOB NOT NULL, payload BLOB NOT NULL, signature BLOB NOT NULL);
CREATE TABLE notes (
    note_id BLOB PRIMARY KEY, height INTEGER NOT NULL REFERENCES entries(height),
    output_index INTEGER NOT NULL, commitment BLOB NOT NULL, owner_key BLOB NOT NULL,
    envelope BLOB NOT NULL, spent_at INTEGER NULL REFERENCES entries(height),
    UNIQUE (height, output_index), CHECK (spent_at IS NULL OR spent_at > height));
CREATE INDEX notes_spent_at ON notes(spent_at);
CREATE TABLE mint_references (reference BLOB PRIMARY KEY, height INTEGER NOT NULL REFERENCES entries(height));
CREATE TABLE idempotency (
    method TEXT, request_id TEXT, body_hash BLOB NOT NULL, response BLOB NOT NULL,
    PRIMARY KEY (method, request_id));
CREATE TABLE sealed (
    kind TEXT, object_id BLOB, version INTEGER NOT NULL, blob BLOB NOT NULL, PRIMARY KEY (kind, object_id));
CREATE TABLE sessions (
    session_tag BLOB PRIMARY KEY, open_height INTEGER NOT NULL REFERENCES entries(height),
    settle_height INTEGER NULL REFERENCES entries(height), deadline_ms INTEGER NOT NULL,
    CHECK (settle_height IS NULL OR settle_height > open_height));
"""
_TABLES = ("entries", "notes", "mint_references", "idempotency", "sealed", "sessions")


class StoreError(CoreError):
    """A refused store operation; ``reason`` is stable (the table in docs/storage.md says when each happens).

    Refusals: ARGUMENT_INVALID, TOO_LARGE, ENTRY_MALFORMED, ENTRY_HEIGHT, ENTRY_OUT_OF_PLACE,
    ENTRY_CHAIN_ID, ENTRY_CHAIN_BROKEN, ENTRY_TIME_BACKWARDS, ENTRY_PAYLOAD_HASH, ENTRY_NOT_FOUND,
    NOTE_EXISTS, NOTE_NOT_FOUND, NOTE_ALREADY_SPENT, NOTE_SPENT_TOO_EARLY, MINT_REFERENCE_REUSED,
    SEALED_VERSION_STALE, SESSION_EXISTS, SESSION_NOT_FOUND, SESSION_ALREADY_SETTLED,
    IDEMPOTENCY_KEY_REUSED, IDEMPOTENCY_KEY_RECORDED. Misuse: TRANSACTION_NESTED, TRANSACTION_CLOSED,
    TRANSACTION_ABORTED, STORE_CLOSED. The database: STORE_UNREADABLE, SCHEMA_UNKNOWN,
    SCHEMA_VERSION_UNSUPPORTED, STORE_BUSY, STORE_FAILED."""


@dataclass(frozen=True)
class NoteRecord:
    """A stored note; ``spent_at`` is the height of the entry that spent it, None while unspent."""

    note_id: bytes
    height: int
    output_index: int
    commitment: bytes
    owner_key: bytes
    envelope: bytes
    spent_at: int | None


@dataclass(frozen=True)
class SealedRecord:
    """A sealed blob and the version the enclave gave it."""

    version: int
    blob: bytes


@dataclass(frozen=True)
class SessionRecord:
    """A session's public bookkeeping: where it opened, where it settled (None while open), its deadline."""

    session_tag: bytes
    open_height: int
    settle_height: int | None
    deadline_ms: int


@dataclass(frozen=True)
class Counts:
    """Row counts, read in one snapshot."""

    entries: int
    notes: int
    unspent_notes: int
    mint_references: int
    idempotency_records: int
    sealed_objects: int
    sessions: int
    open_sessions: int


# --- argument checks: every value from a caller is bounded before it reaches SQL ---


def _blob(name: str, value: object, *, size: int | None = None, max_len: int | None = None) -> bytes:
    if not isinstance(value, bytes):
        raise StoreError("ARGUMENT_INVALID", f"{name} must be bytes")
    if size is not None and len(value) != size:
        raise StoreError("ARGUMENT_INVALID", f"{name} must be {size} bytes, got {len(value)}")
    if max_len is not None and len(value) > max_len:
        raise StoreError("TOO_LARGE", f"{name} is {len(value)} bytes, at most {max_len}")
    return value


def _name(what: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise StoreError("ARGUMENT_INVALID", f"{what} must be a non-empty string")
    if len(value) > MAX_NAME_CHARS:
        raise StoreError("TOO_LARGE", f"{what} is {len(value)} characters, at most {MAX_NAME_CHARS}")
    if not value.isprintable():
        raise StoreError("ARGUMENT_INVALID", f"{what} must be printable")
    return value


def _uint(name: str, value: object, *, minimum: int = 0) -> int:
    if type(value) is not int or not minimum <= value <= MAX_SQL_INT:
        raise StoreError("ARGUMENT_INVALID", f"{name} must be an integer in [{minimum}, 2^63-1]")
    return value


def _limit(value: object, maximum: int) -> int:
    return min(_uint("limit", value, minimum=1), maximum)


def _note(row: Sequence[Any]) -> NoteRecord:
    return NoteRecord(*row)


_NOTE_COLUMNS = "note_id, height, output_index, commitment, owner_key, envelope, spent_at"
P = ParamSpec("P")
R = TypeVar("R")


class _Reads(ABC):
    """The reads, shared by the store (which takes the lock) and a transaction (which holds it)."""

    @abstractmethod
    def _db(self) -> sqlite3.Connection:
        """The connection to read through (the subclass decides how it is guarded)."""

    def _one(self, sql: str, params: Sequence[object] = ()) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self._db().execute(sql, params).fetchone()
        return row

    def head(self) -> tuple[int, bytes] | None:
        """(height, entry_hash) of the last entry, None before GENESIS."""
        row = self._one("SELECT height, entry_hash FROM entries ORDER BY height DESC LIMIT 1")
        return None if row is None else (int(row[0]), bytes(row[1]))

    def chain_head(self) -> Head:
        """The full head (chain id, height, hash, time) for building the next entry; Head() when empty."""
        row = self._one("SELECT entry_hash, header FROM entries ORDER BY height DESC LIMIT 1")
        if row is None:
            return Head()
        entry_hash, header = bytes(row[0]), Header.from_bytes(bytes(row[1]))
        chain_id = entry_hash if header.kind == "GENESIS" else header.chain_id
        return Head(chain_id=chain_id, height=header.height, entry_hash=entry_hash, time_ms=header.time_ms)

    def entry(self, height: int) -> Entry | None:
        """The entry at ``height``, or None."""
        row = self._one(
            "SELECT header, payload, signature FROM entries WHERE height = ?", (_uint("height", height),)
        )
        return None if row is None else Entry(*row)

    def entries_from(self, height: int, limit: int) -> list[Entry]:
        """Entries from ``height`` on, at most ``limit`` (capped at MAX_PAGE_ENTRIES) and about
        MAX_PAGE_BYTES of payload (always at least one entry when there is one)."""
        cursor = self._db().execute(
            "SELECT header, payload, signature FROM entries WHERE height >= ? ORDER BY height LIMIT ?",
            (_uint("height", height), _limit(limit, MAX_PAGE_ENTRIES)),
        )
        page: list[Entry] = []
        size = 0
        for header, payload, signature in cursor:
            size += len(header) + len(payload) + len(signature)
            if page and size > MAX_PAGE_BYTES:
                break
            page.append(Entry(header, payload, signature))
        cursor.close()
        return page

    def note(self, note_id: bytes) -> NoteRecord | None:
        """The note with this id, spent or not, or None."""
        row = self._one(
            f"SELECT {_NOTE_COLUMNS} FROM notes WHERE note_id = ?", (_blob("note_id", note_id, size=32),)
        )
        return None if row is None else _note(row)

    def notes_from(self, height: int, limit: int, output_index: int = 0) -> list[NoteRecord]:
        """All notes at or after (height, output_index), in that order, at most ``limit`` (capped at
        MAX_PAGE_NOTES): what a wallet scans. Never filtered by owner; spent ones are included."""
        rows = (
            self._db()
            .execute(
                f"SELECT {_NOTE_COLUMNS} FROM notes WHERE (height, output_index) >= (?, ?)"
                " ORDER BY height, output_index LIMIT ?",
                (_uint("height", height), _uint("output_index", output_index), _limit(limit, MAX_PAGE_NOTES)),
            )
            .fetchall()
        )
        return [_note(row) for row in rows]

    def sealed(self, kind: str, object_id: bytes) -> SealedRecord | None:
        """The sealed blob stored under (kind, object_id), or None."""
        row = self._one(
            "SELECT version, blob FROM sealed WHERE kind = ? AND object_id = ?",
            (_name("kind", kind), _blob("object_id", object_id, max_len=MAX_OBJECT_ID_BYTES)),
        )
        return None if row is None else SealedRecord(*row)

    def sealed_of_kind(
        self, kind: str, after: bytes = b"", limit: int = 256
    ) -> list[tuple[bytes, SealedRecord]]:
        """(object_id, record) of every blob of ``kind`` with object_id > ``after``, in object_id order,
        at most ``limit``: how the host pages through its sealed state at start."""
        rows = (
            self._db()
            .execute(
                "SELECT object_id, version, blob FROM sealed WHERE kind = ? AND object_id > ?"
                " ORDER BY object_id LIMIT ?",
                (
                    _name("kind", kind),
                    _blob("after", after, max_len=MAX_OBJECT_ID_BYTES),
                    _limit(limit, 4096),
                ),
            )
            .fetchall()
        )
        return [(bytes(r[0]), SealedRecord(int(r[1]), bytes(r[2]))) for r in rows]

    def session(self, session_tag: bytes) -> SessionRecord | None:
        """The session with this tag, or None."""
        row = self._one(
            "SELECT session_tag, open_height, settle_height, deadline_ms FROM sessions WHERE session_tag = ?",
            (_blob("session_tag", session_tag, size=32),),
        )
        return None if row is None else SessionRecord(*row)

    def idempotent_response(self, method: str, request_id: str, body_hash: bytes) -> bytes | None:
        """The recorded response for this (method, request_id) and body, None if there is none; raises
        StoreError IDEMPOTENCY_KEY_REUSED if the key was used with another body (DESIGN §8)."""
        row = self._one(
            "SELECT body_hash, response FROM idempotency WHERE method = ? AND request_id = ?",
            (_name("method", method), _name("request_id", request_id)),
        )
        if row is None:
            return None
        if bytes(row[0]) != _blob("body_hash", body_hash, size=32):
            raise StoreError("IDEMPOTENCY_KEY_REUSED", f"{method} request_id was used with another body")
        return bytes(row[1])

    def counts(self) -> Counts:
        """How many rows of each kind (one statement, one snapshot)."""
        row = self._one(
            "SELECT (SELECT count(*) FROM entries), (SELECT count(*) FROM notes),"
            " (SELECT count(*) FROM notes WHERE spent_at IS NULL), (SELECT count(*) FROM mint_references),"
            " (SELECT count(*) FROM idempotency), (SELECT count(*) FROM sealed),"
            " (SELECT count(*) FROM sessions), (SELECT count(*) FROM sessions WHERE settle_height IS NULL)"
        )
        assert row is not None
        return Counts(*row)


def _step(method: Callable[Concatenate[Transaction, P], R]) -> Callable[Concatenate[Transaction, P], R]:
    """Run a transaction step; a refusal or a database error aborts (rolls back) the whole transaction."""

    @wraps(method)
    def run(tx: Transaction, /, *args: P.args, **kwargs: P.kwargs) -> R:
        tx._check_usable()
        try:
            return method(tx, *args, **kwargs)
        except StoreError:
            tx._abort()
            raise
        except sqlite3.Error as e:
            tx._abort()
            raise StoreError("STORE_FAILED", f"{type(e).__name__}: {e}") from e

    return run


class Transaction(_Reads):
    """One write transaction, from ``Store.transaction()``; usable only inside its ``with`` block, only
    by the thread that opened it. Its reads see its own writes."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn, self._thread = conn, threading.get_ident()
        self._active, self.aborted = True, False
        self._savepoints: list[str] = []  # open savepoints, innermost last
        self._lost = False  # the whole transaction was rolled back: nothing in it can commit

    def _db(self) -> sqlite3.Connection:
        self._check_usable()
        return self._conn

    def _check_usable(self) -> None:
        if not self._active or threading.get_ident() != self._thread:
            raise StoreError("TRANSACTION_CLOSED", "the transaction is over or belongs to another thread")
        if self.aborted:
            raise StoreError("TRANSACTION_ABORTED", "an earlier step was refused; nothing will commit")

    def _abort(self) -> None:
        """A refused step: roll back the innermost savepoint, or the whole transaction outside one (or
        when the savepoint cannot be rolled back, e.g. SQLite already rolled the transaction back)."""
        self.aborted = True
        if self._savepoints and not self._lost and self._conn.in_transaction:
            try:
                self._conn.execute(f"ROLLBACK TO {self._savepoints[-1]}")
                return
            except sqlite3.Error:
                pass
        self._lost = True
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """A part of the transaction that fails alone: if a step inside is refused (even if the caller
        catches it) or an exception leaves the block, what the block did is rolled back, the transaction
        is usable again, and the block raises (the exception, or StoreError TRANSACTION_ABORTED for a
        caught refusal). When the block ends normally its writes stay in the transaction, to commit or
        roll back with it. Savepoints nest. If the whole transaction is lost (SQLite rolled it back on an
        I/O error), the transaction stays aborted and cannot commit."""
        self._check_usable()
        name = f"sp{len(self._savepoints)}"
        try:
            self._conn.execute(f"SAVEPOINT {name}")
        except sqlite3.Error as e:
            self._abort()
            raise StoreError("STORE_FAILED", f"savepoint: {type(e).__name__}: {e}") from e
        self._savepoints.append(name)
        try:
            yield
        except BaseException:
            self._end_savepoint(name, rollback=True)  # if that fails too, the transaction is lost
            raise
        refused = self.aborted
        if not self._end_savepoint(name, rollback=refused):
            raise StoreError("STORE_FAILED", "the savepoint could not end; the transaction was rolled back")
        if refused:
            raise StoreError("TRANSACTION_ABORTED", "a step in the savepoint was refused; it was rolled back")

    def _end_savepoint(self, name: str, *, rollback: bool) -> bool:
        """Roll back (or keep) and release the innermost savepoint; False if the transaction is lost."""
        if self._lost:
            return False  # the transaction is gone (its savepoints with it) and stays aborted
        assert self._savepoints and self._savepoints[-1] == name, "savepoints end innermost first"
        self._savepoints.pop()
        try:
            if rollback:
                self._conn.execute(f"ROLLBACK TO {name}")
            self._conn.execute(f"RELEASE {name}")
        except sqlite3.Error:
            self._savepoints.clear()
            self._abort()
            return False
        if rollback:
            self.aborted = False
        return True

    def _require_entry(self, height: int) -> None:
        if self._one("SELECT 1 FROM entries WHERE height = ?", (_uint("height", height),)) is None:
            raise StoreError("ENTRY_NOT_FOUND", f"no entry at height {height}")

    @_step
    def append_entry(self, entry: Entry) -> int:
        """Append the next entry (height = head + 1, prev_hash = head hash, same chain, time not going back,
        payload matching its hash); signatures are the enclave's and the auditor's to check. Returns its
        height."""
        header_bytes = _blob("header", entry.header, max_len=MAX_HEADER_BYTES)
        payload = _blob("payload", entry.payload, max_len=MAX_PAYLOAD_BYTES)
        signature = _blob("signature", entry.signature, size=P256_SIGNATURE_BYTES)
        try:
            header = Header.from_bytes(header_bytes)
        except LedgerError as e:
            raise StoreError("ENTRY_MALFORMED", e.detail) from None
        head = self.chain_head()
        if header.height != head.height + 1:
            raise StoreError("ENTRY_HEIGHT", f"height {header.height}, expected {head.height + 1}")
        if (header.kind == "GENESIS") != (header.height == 0):
            raise StoreError("ENTRY_OUT_OF_PLACE", "GENESIS comes first and only first")
        if header.chain_id != head.chain_id:
            raise StoreError("ENTRY_CHAIN_ID", "the entry names another chain")
        if header.prev_hash != head.entry_hash:
            raise StoreError("ENTRY_CHAIN_BROKEN", "prev_hash is not the head's hash")
        if header.time_ms < head.time_ms:
            raise StoreError("ENTRY_TIME_BACKWARDS", f"{header.time_ms} < {head.time_ms}")
        if hashlib.sha256(payload).digest() != header.payload_hash:
            raise StoreError("ENTRY_PAYLOAD_HASH", "the payload does not match the header's hash")
        self._conn.execute(
            "INSERT INTO entries (height, entry_hash, kind, header, payload, signature) VALUES (?,?,?,?,?,?)",
            (header.height, entry.entry_hash, header.kind, header_bytes, payload, signature),
        )
        return header.height

    @_step
    def add_note(
        self, height: int, output_index: int, commitment: bytes, owner_key: bytes, envelope: bytes
    ) -> bytes:
        """Store output ``output_index`` of the entry at ``height``; returns its note id (computed here from
        the entry's hash, so it cannot disagree with escrow.core.notes.note_id)."""
        row = self._one("SELECT entry_hash FROM entries WHERE height = ?", (_uint("height", height),))
        if row is None:
            raise StoreError("ENTRY_NOT_FOUND", f"no entry at height {height}")
        if _uint("output_index", output_index) >= 1 << 32:
            raise StoreError("ARGUMENT_INVALID", "output_index is a u32")
        note_id = make_note_id(bytes(row[0]), output_index)
        if self._one("SELECT 1 FROM notes WHERE note_id = ?", (note_id,)) is not None:
            raise StoreError("NOTE_EXISTS", f"output {output_index} of entry {height} is already stored")
        self._conn.execute(
            f"INSERT INTO notes ({_NOTE_COLUMNS}) VALUES (?,?,?,?,?,?,NULL)",
            (
                note_id,
                height,
                output_index,
                _blob("commitment", commitment, size=32),
                _blob("owner_key", owner_key, size=32),
                _blob("envelope", envelope, max_len=MAX_ENVELOPE_BYTES),
            ),
        )
        return note_id

    @_step
    def spend_notes(self, note_ids: Sequence[bytes], at_height: int) -> None:
        """Mark every note spent by the entry at ``at_height``; all or nothing."""
        if isinstance(note_ids, bytes | str) or not 1 <= len(note_ids) <= MAX_SPEND_INPUTS:
            raise StoreError("ARGUMENT_INVALID", f"note_ids is a sequence of 1 to {MAX_SPEND_INPUTS} ids")
        self._require_entry(at_height)
        seen: set[bytes] = set()
        for raw in note_ids:
            nid = _blob("note_id", raw, size=32)
            row = self._one("SELECT height, spent_at FROM notes WHERE note_id = ?", (nid,))
            if row is None:
                raise StoreError("NOTE_NOT_FOUND", f"note {nid.hex()}")
            if row[1] is not None or nid in seen:
                raise StoreError("NOTE_ALREADY_SPENT", f"note {nid.hex()}")
            if int(row[0]) >= at_height:
                raise StoreError(
                    "NOTE_SPENT_TOO_EARLY", f"note {nid.hex()} is not older than entry {at_height}"
                )
            seen.add(nid)
        self._conn.executemany(
            "UPDATE notes SET spent_at = ? WHERE note_id = ? AND spent_at IS NULL",
            [(at_height, nid) for nid in seen],
        )

    @_step
    def add_mint_reference(self, reference: bytes, height: int) -> None:
        """Record a MINT's reference; a reference is used once per chain."""
        ref = _blob("reference", reference, max_len=MAX_MINT_REFERENCE_BYTES)
        self._require_entry(height)
        if self._one("SELECT 1 FROM mint_references WHERE reference = ?", (ref,)) is not None:
            raise StoreError("MINT_REFERENCE_REUSED", "this mint reference is already on the ledger")
        self._conn.execute("INSERT INTO mint_references (reference, height) VALUES (?, ?)", (ref, height))

    @_step
    def put_sealed(self, kind: str, object_id: bytes, version: int, blob: bytes) -> None:
        """Store or replace a sealed blob; the version must be higher than the stored one."""
        key = (_name("kind", kind), _blob("object_id", object_id, max_len=MAX_OBJECT_ID_BYTES))
        _uint("version", version)
        _blob("blob", blob, max_len=MAX_BLOB_BYTES)
        row = self._one("SELECT version FROM sealed WHERE kind = ? AND object_id = ?", key)
        if row is not None and version <= int(row[0]):
            raise StoreError("SEALED_VERSION_STALE", f"version {version} <= stored {row[0]}")
        self._conn.execute(
            "INSERT INTO sealed (kind, object_id, version, blob) VALUES (?,?,?,?)"
            " ON CONFLICT (kind, object_id)"
            " DO UPDATE SET version = excluded.version, blob = excluded.blob",
            (*key, version, blob),
        )

    @_step
    def delete_sealed(self, kind: str, object_id: bytes) -> bool:
        """Erase a sealed blob (a settled session's deposit opening); True if there was one."""
        key = (_name("kind", kind), _blob("object_id", object_id, max_len=MAX_OBJECT_ID_BYTES))
        return self._conn.execute("DELETE FROM sealed WHERE kind = ? AND object_id = ?", key).rowcount > 0

    @_step
    def open_session(self, session_tag: bytes, open_height: int, deadline_ms: int) -> None:
        """Record a session opened by the OPEN entry at ``open_height``."""
        tag = _blob("session_tag", session_tag, size=32)
        self._require_entry(open_height)
        if self._one("SELECT 1 FROM sessions WHERE session_tag = ?", (tag,)) is not None:
            raise StoreError("SESSION_EXISTS", "a session with this tag is already open or settled")
        self._conn.execute(
            "INSERT INTO sessions (session_tag, open_height, settle_height, deadline_ms) VALUES (?,?,NULL,?)",
            (tag, open_height, _uint("deadline_ms", deadline_ms)),
        )

    @_step
    def settle_session(self, session_tag: bytes, height: int) -> None:
        """Mark the session settled by the SETTLE entry at ``height``; a session settles once."""
        tag = _blob("session_tag", session_tag, size=32)
        self._require_entry(height)
        row = self._one("SELECT open_height, settle_height FROM sessions WHERE session_tag = ?", (tag,))
        if row is None:
            raise StoreError("SESSION_NOT_FOUND", "no session with this tag")
        if row[1] is not None:
            raise StoreError("SESSION_ALREADY_SETTLED", f"settled at entry {row[1]}")
        if height <= int(row[0]):
            raise StoreError("ARGUMENT_INVALID", f"settle height {height} is not after the OPEN at {row[0]}")
        self._conn.execute("UPDATE sessions SET settle_height = ? WHERE session_tag = ?", (height, tag))

    @_step
    def record_idempotent(self, method: str, request_id: str, body_hash: bytes, response: bytes) -> None:
        """Record the response to (method, request_id, body_hash), committing with the state change. If the
        key is already recorded: IDEMPOTENCY_KEY_RECORDED for the same body (a concurrent retry won; read
        its answer with ``idempotent_response``), IDEMPOTENCY_KEY_REUSED for another body."""
        key = (_name("method", method), _name("request_id", request_id))
        body_hash = _blob("body_hash", body_hash, size=32)
        if self.idempotent_response(method, request_id, body_hash) is not None:
            raise StoreError("IDEMPOTENCY_KEY_RECORDED", f"{method} request_id already has a response")
        self._conn.execute(
            "INSERT INTO idempotency (method, request_id, body_hash, response) VALUES (?,?,?,?)",
            (*key, body_hash, _blob("response", response, max_len=MAX_BLOB_BYTES)),
        )


class Store(_Reads):
    """The durable store; open with ``Store.open(path)``, share one instance between threads."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn: sqlite3.Connection | None = conn
        self.path = path
        self._lock = threading.RLock()
        self._tx: Transaction | None = None

    @classmethod
    def open(cls, path: Path) -> Store:
        """Open (creating on first use) the store at ``path``: WAL, synchronous=FULL, foreign keys on, and
        a schema this code knows (else StoreError SCHEMA_UNKNOWN / SCHEMA_VERSION_UNSUPPORTED)."""
        path = Path(path)
        try:  # mode 0600 from the start; SQLite gives the -wal and -shm files the same mode
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600))
            created = True
        except FileExistsError:
            created = False
        except OSError as e:
            raise StoreError("STORE_UNREADABLE", f"{path}: {e}") from None
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=0)
        except sqlite3.Error as e:
            raise StoreError("STORE_UNREADABLE", f"{path}: {e}") from None
        try:
            _configure(conn)
            _ensure_schema(conn)
        except BaseException:
            conn.close()
            raise
        if created:
            fsync_dir(path.parent)
        return cls(conn, path)

    def close(self) -> None:
        """Close the connection (idempotent); a transaction in progress must finish first."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("STORE_CLOSED", "the store is closed")
        return self._conn

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """One write transaction; commits when the block ends normally, rolls back on any exception."""
        with self._lock:
            if self._tx is not None:
                raise StoreError("TRANSACTION_NESTED", "this thread is already inside a transaction")
            conn = self._db()
            _begin(conn)
            tx = self._tx = Transaction(conn)
            try:
                yield tx
                if tx.aborted:
                    raise StoreError("TRANSACTION_ABORTED", "a step was refused; nothing was committed")
                try:
                    conn.execute("COMMIT")
                except sqlite3.Error as e:
                    raise StoreError("STORE_FAILED", f"commit: {e}") from e
            finally:
                tx._active, self._tx = False, None
                if conn.in_transaction:
                    conn.execute("ROLLBACK")

    def _one(self, sql: str, params: Sequence[object] = ()) -> tuple[Any, ...] | None:
        with self._lock:
            return super()._one(sql, params)

    def entries_from(self, height: int, limit: int) -> list[Entry]:
        with self._lock:
            return super().entries_from(height, limit)

    def notes_from(self, height: int, limit: int, output_index: int = 0) -> list[NoteRecord]:
        with self._lock:
            return super().notes_from(height, limit, output_index)

    def sealed_of_kind(
        self, kind: str, after: bytes = b"", limit: int = 256
    ) -> list[tuple[bytes, SealedRecord]]:
        with self._lock:
            return super().sealed_of_kind(kind, after, limit)


def _begin(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as e:
        raise StoreError("STORE_BUSY", f"could not take the write lock: {e}") from e


def _configure(conn: sqlite3.Connection) -> None:
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
    except sqlite3.DatabaseError as e:
        raise StoreError("STORE_UNREADABLE", f"not a usable SQLite database: {e}") from None
    if str(mode).lower() != "wal":
        raise StoreError("STORE_UNREADABLE", f"could not switch to WAL mode (journal_mode is {mode})")


def _ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the schema in an empty database, or check the version of an existing one."""
    _begin(conn)
    try:
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not names:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT INTO schema_version (id, version) VALUES (0, ?)", (SCHEMA_VERSION,))
        elif "schema_version" not in names:
            raise StoreError("SCHEMA_UNKNOWN", "the database has tables but no schema_version: not ours")
        else:
            row = conn.execute("SELECT version FROM schema_version WHERE id = 0").fetchone()
            if row is None or row[0] != SCHEMA_VERSION:
                found = "none" if row is None else row[0]
                newer = " (written by a newer version)" if row and row[0] > SCHEMA_VERSION else ""
                raise StoreError(
                    "SCHEMA_VERSION_UNSUPPORTED",
                    f"schema version {found}{newer}; this code reads {SCHEMA_VERSION}",
                )
            missing = set(_TABLES) - names
            if missing:
                raise StoreError("SCHEMA_UNKNOWN", f"tables missing: {sorted(missing)}")
        conn.execute("COMMIT")
    except sqlite3.DatabaseError as e:
        raise StoreError("STORE_UNREADABLE", f"reading the schema: {e}") from None
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
