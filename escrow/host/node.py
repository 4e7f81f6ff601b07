"""The host side of a running escrow: the store, the enclave with the escrow engine inside, the clock.

``EscrowNode.start`` opens the data directory's store, launches the enclave with the escrow engine as its
application, replays the ledger and the sealed records into it (the engine checks the chain under its own
key and opens every sealed record), and lets it start: on an empty store the engine writes GENESIS with a
quote over its keys; after an enclave upgrade it writes KEY. The gRPC servicers call ``call`` (an ecall by
name with canonical bytes) and ``mutate`` (the same with DESIGN §8 idempotency); the engine calls back
through two ocalls, ``_persist`` (group commit: concurrent changes share one store transaction, each in
a savepoint of its own, escrow.host.groupcommit) and ``_quote`` (the platform's QE).

A ticker thread gives the engine the host's time every ``tick_interval_s`` so that deadlines and grace
periods end without a party's request. If a persist fails the engine halts, and so does the node: it
refuses every call until it is restarted, which replays the store exactly as after a crash.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enclave.host import EnclaveHost
from enclave.measurement import EnclaveConfig
from enclave.trusted.runtime import EnclaveServices
from escrow.core import engine as eng
from escrow.core import entries
from escrow.core.encoding import Bytes, Fixed, ListOf, Text, decode, encode
from escrow.core.errors import CoreError
from escrow.core.ledger import Entry
from escrow.core.spending import OpenBody
from escrow.host.groupcommit import GroupCommit
from escrow.host.store import Store, Transaction
from escrow.host.workers import ProofPool

STORE_FILE = "escrow.sqlite"
RESEAL_INTERVAL_S = 5.0  # how often the ticker seals the current ledger head into the enclave's state
IDEMPOTENCY_KEY = (("method", Text(128)), ("request_id", Text(128)), ("body_hash", Fixed(32)))
MAX_REQUEST_ID_CHARS = 128
_BATCH_BYTES = 512 * 1024


class HostError(CoreError):
    """A request the host refuses before the enclave sees it (REQUEST_ID_INVALID, ...)."""


@dataclass(frozen=True)
class GenesisConfig:
    """What a new chain is created with (ignored once GENESIS exists)."""

    issuer_keys: tuple[bytes, ...]
    currency: str = "EUR"
    decimals: int = 2
    grace_ms: int = 120_000
    max_deadline_ms: int = 24 * 3600 * 1000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class EscrowNode:
    """A started escrow on a data directory (see the module docstring)."""

    data_dir: Path
    store: Store
    host: EnclaveHost | None = None
    chain_id: bytes = bytes(32)
    clock: Callable[[], int] = now_ms
    tick_interval_s: float = 0.5
    _key_locks: dict[tuple[str, str], threading.Lock] = field(default_factory=dict)
    _key_locks_guard: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _ticker: threading.Thread | None = None
    halted: str | None = None
    on_halt: list[Callable[[], None]] = field(default_factory=list)  # e.g. health -> NOT_SERVING
    pool: ProofPool | None = None  # worker processes for the proof work (escrow.host.workers)
    _group: GroupCommit[dict[str, Any]] = field(init=False, repr=False)  # the persist ocall's commits

    def __post_init__(self) -> None:
        self._group = GroupCommit(self.store, apply_change)

    @classmethod
    def start(
        cls,
        data_dir: Path,
        genesis: GenesisConfig | None,
        *,
        config: EnclaveConfig | None = None,
        nv_dir: Path | None = None,
        clock: Callable[[], int] = now_ms,
        tick_interval_s: float = 0.5,
        work: Callable[..., Any] = eng.direct_work,
        proof_workers: int = 0,
    ) -> EscrowNode:
        data_dir = Path(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        store = Store.open(data_dir / STORE_FILE)
        node = cls(data_dir=data_dir, store=store, clock=clock, tick_interval_s=tick_interval_s)
        if proof_workers:
            node.pool = ProofPool(proof_workers)
            work = node.pool.run

        def application(services: EnclaveServices) -> eng.Ecalls:
            return eng.EscrowEngine(services, node._persist, node._quote, node._fetch, work=work).ecalls()

        try:
            node.host = EnclaveHost.start(data_dir, config, nv_dir=nv_dir, application=application)
            node._load()
            if genesis is None and store.head() is None:
                raise HostError("GENESIS_CONFIG_MISSING", "a new chain needs issuer keys (--issuer-key)")
            g = genesis or GenesisConfig(issuer_keys=())
            result = node.call(
                "start",
                encode(
                    eng.START_SCHEMA,
                    {
                        "now_ms": node.clock(),
                        "currency": g.currency,
                        "decimals": g.decimals,
                        "issuer_keys": list(g.issuer_keys),
                        "grace_ms": g.grace_ms,
                        "max_deadline_ms": g.max_deadline_ms,
                    },
                ),
            )
            node.chain_id = decode(eng.START_RESULT, result)["chain_id"]
            node.host.persist_state()  # the sealed head is now this store's head
        except BaseException:
            node.close()
            raise
        if tick_interval_s > 0:
            node._ticker = threading.Thread(target=node._tick_loop, name="escrow-ticker", daemon=True)
            node._ticker.start()
        return node

    # --- start: replay --------------------------------------------------------------------------

    def _load(self) -> None:
        height = 0
        while True:
            page = self.store.entries_from(height, 256)
            if not page:
                break
            for batch in _batches(
                [
                    encode(
                        eng.ENTRY_WIRE, {"header": e.header, "payload": e.payload, "signature": e.signature}
                    )
                    for e in page
                ]
            ):
                self.call(
                    "load_entries", encode((("entries", ListOf(Bytes(2 << 20), 4096)),), {"entries": batch})
                )
            height = page[-1].parsed.height + 1
        for kind in eng.RECORD_LOAD_ORDER:
            after = b""
            while True:
                rows = self.store.sealed_of_kind(kind, after, 256)
                if not rows:
                    break
                wire = [
                    encode(
                        eng.RECORD_WIRE,
                        {"kind": kind, "object_id": oid, "version": rec.version, "blob": rec.blob},
                    )
                    for oid, rec in rows
                ]
                for batch in _batches(wire):
                    self.call(
                        "load_records",
                        encode((("records", ListOf(Bytes(2 << 20), 4096)),), {"records": batch}),
                    )
                after = rows[-1][0]

    # --- calls ------------------------------------------------------------------------------------

    def call(self, name: str, payload: bytes) -> bytes:
        """One ecall into the escrow engine."""
        if self.host is None:
            raise HostError("ENCLAVE_NOT_READY", "the enclave is not running")
        return self.host.app_ecall(name, payload)

    def mutate(
        self, method: str, request_id: str, body: bytes, build: Callable[[bytes], bytes], ecall: str
    ) -> bytes:
        """A mutating call with DESIGN §8 idempotency: the key is (method, request_id, SHA-256 of the
        request's bytes); a retry with the same body gets the first answer, another body
        IDEMPOTENCY_KEY_REUSED. ``build(idempotency_key)`` makes the ecall payload."""
        if (
            not isinstance(request_id, str)
            or not 1 <= len(request_id) <= MAX_REQUEST_ID_CHARS
            or not all(0x21 <= ord(c) <= 0x7E for c in request_id)
        ):
            raise HostError(
                "REQUEST_ID_INVALID", f"request_id is 1 to {MAX_REQUEST_ID_CHARS} printable chars"
            )
        body_hash = hashlib.sha256(body).digest()
        with self._key_lock(method, request_id):
            stored = self.store.idempotent_response(method, request_id, body_hash)
            if stored is not None:
                return stored
            key = encode(
                IDEMPOTENCY_KEY, {"method": method, "request_id": request_id, "body_hash": body_hash}
            )
            return self.call(ecall, build(key))

    def _key_lock(self, method: str, request_id: str) -> threading.Lock:
        with self._key_locks_guard:
            if len(self._key_locks) > 10_000:
                self._key_locks = {k: v for k, v in self._key_locks.items() if v.locked()}
            return self._key_locks.setdefault((method, request_id), threading.Lock())

    # --- ocalls -----------------------------------------------------------------------------------

    def _persist(self, data: bytes) -> None:
        """Commit one change from the engine; returns once the group commit that holds it is durable
        (escrow.host.groupcommit). Any failure propagates and halts the node."""
        try:
            self._group.submit(decode(eng.PERSIST_SCHEMA, data, max_len=64 << 20))
        except BaseException as e:
            self.halted = f"persist failed: {type(e).__name__}"
            for hook in self.on_halt:
                hook()
            raise

    def _fetch(self, key: bytes) -> bytes:
        """One stored record, as the engine asks for it (it unseals and checks it)."""
        k = decode(eng.DELETE_WIRE, key)
        record = self.store.sealed(k["kind"], k["object_id"])
        if record is None:
            return b""
        return encode(
            eng.RECORD_WIRE,
            {"kind": k["kind"], "object_id": k["object_id"], "version": record.version, "blob": record.blob},
        )

    def _quote(self, report: bytes) -> bytes:
        assert self.host is not None
        quote = self.host.quote_report(report)
        return encode(
            eng.QUOTE_SCHEMA,
            {"quote": quote, "collateral_json": self.host.platform.collateral_json().encode()},
        )

    # --- time -------------------------------------------------------------------------------------

    def tick(self) -> int:
        """Give the engine the host's time; returns how many sessions it settled."""
        result = decode(eng.TICK_RESULT, self.call("tick", encode(eng.TICK_CALL, {"now_ms": self.clock()})))
        return int(result["settled"])

    def _tick_loop(self) -> None:
        last_sealed = time.monotonic()
        while not self._stop.wait(self.tick_interval_s):
            if self.halted is not None:
                return
            try:
                self.tick()
                if time.monotonic() - last_sealed >= RESEAL_INTERVAL_S and self.host is not None:
                    self.host.persist_state()
                    last_sealed = time.monotonic()
            except CoreError:
                continue  # a halted engine says so on every call; the servicers report it

    def persist_state(self) -> None:
        """Seal the enclave's current ledger head to its state file now (also done at start and by the
        ticker every RESEAL_INTERVAL_S, and at close)."""
        if self.host is not None and self.halted is None:
            self.host.persist_state()

    # --- stop -------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the ticker, release the enclave and the store (idempotent)."""
        self._stop.set()
        if self._ticker is not None and self._ticker is not threading.current_thread():
            self._ticker.join(timeout=10)
        if self.host is not None and self.halted is None and self.chain_id != bytes(32):
            with contextlib.suppress(Exception):  # closing anyway; the next start checks what was sealed last
                self.host.persist_state()
        if self.host is not None:
            self.host.close()
            self.host = None
        if self.pool is not None:
            self.pool.close()
            self.pool = None
        self.store.close()

    def __enter__(self) -> EscrowNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _batches(items: list[bytes]) -> list[list[bytes]]:
    out: list[list[bytes]] = []
    current: list[bytes] = []
    size = 0
    for item in items:
        if current and size + len(item) > _BATCH_BYTES:
            out.append(current)
            current, size = [], 0
        current.append(item)
        size += len(item) + 4
    if current:
        out.append(current)
    return out


def apply_change(tx: Transaction, v: dict[str, Any]) -> None:
    """Apply one decoded persist change (eng.PERSIST_SCHEMA) inside ``tx``: its ledger entries with the
    notes, spends, mint reference and session rows they imply, its sealed puts and deletes, and its
    idempotency record. Any refusal raises (the caller's savepoint or transaction rolls it back)."""
    for raw in v["entries"]:
        w = decode(eng.ENTRY_WIRE, raw)
        entry = Entry(w["header"], w["payload"], w["signature"])
        height = tx.append_entry(entry)
        kind = entry.parsed.kind
        fx = entries.effects(kind, entry.payload)
        for out in fx.outputs:
            tx.add_note(height, out.index, out.commitment, out.owner_key, out.envelope)
        if fx.spent:
            tx.spend_notes(list(fx.spent), height)
        if fx.mint_reference is not None:
            tx.add_mint_reference(fx.mint_reference, height)
        if kind == "OPEN" and fx.session_tag is not None:
            body = OpenBody.from_bytes(entries.decode_payload("OPEN", entry.payload)["open_body"])
            tx.open_session(fx.session_tag, height, body.deadline)
        if kind == "SETTLE" and fx.session_tag is not None:
            tx.settle_session(fx.session_tag, height)
    for raw in v["puts"]:
        r = decode(eng.RECORD_WIRE, raw)
        tx.put_sealed(r["kind"], r["object_id"], r["version"], r["blob"])
    for raw in v["deletes"]:
        d = decode(eng.DELETE_WIRE, raw)
        tx.delete_sealed(d["kind"], d["object_id"])
    if v["idempotency"]:
        k = decode(IDEMPOTENCY_KEY, v["idempotency"])
        tx.record_idempotent(k["method"], k["request_id"], k["body_hash"], v["response"])
