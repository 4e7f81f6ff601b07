"""The escrow engine inside the enclave: notes, the ledger, sessions, settlement (DESIGN §6, §7).

The host reaches it only through byte-oriented ecalls (``ecalls()``, dispatched by the enclave runtime
as ``app.<name>``); it reaches the host only through two ocalls given at construction:

  persist(bytes)  commit one change durably: ledger entries, sealed records to put and delete, and the
                  idempotency record, all in one store transaction (PERSIST_SCHEMA). It returns only
                  after the commit; if it raises, the engine halts (every later ecall refuses with
                  ENCLAVE_HALTED) and the host must restart, which replays the store as after a crash.
  quote(bytes)    have the platform's quoting enclave quote a report (body || MAC); returns
                  [quote, collateral_json] (QUOTE_SCHEMA). Used for GENESIS and KEY only.
  fetch(bytes)    read one stored record [kind, object_id] (DELETE_WIRE): RECORD_WIRE bytes, or b"" if
                  there is none. Settled sessions' receipts are read this way when asked for, so memory
                  holds only live sessions; what comes back is unsealed and checked like anything else.

State in memory is rebuilt at every start from the store (``load_entries`` replays and checks the chain
under the enclave's own key; ``load_records`` opens the sealed records) and then only changes after a
successful persist, so what the engine believes is always what the store holds.

Concurrency: one ledger lock guards the chain head, the note set, the registry and the clock; each live
session has its own lock. CPU-bound work (proof verification and the settlement's proofs) runs outside
the ledger lock through ``work`` (default: in this thread), a pure function call that a process pool
can serve, so nothing in it depends on this interpreter's state.
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from escrow.core import entries as E  # noqa: N812 (the payload formats, used on every page)
from escrow.core.billing import BillingError, coverage_limit, settle_amounts
from escrow.core.clock import MonotoneClock
from escrow.core.encoding import U8, U32, U64, BodyError, Bytes, Fixed, ListOf, Optional, Text, decode, encode
from escrow.core.errors import CoreError
from escrow.core.ledger import Entry, Head, advance, check_entry, make_entry
from escrow.core.notes import MintError, note_id, seal_note, verify_mint
from escrow.core.readings import (
    MeterRegistration,
    ReadingRejected,
    ReadingsStateError,
    SessionReadings,
    session_tag,
)
from escrow.core.registry import PoleBody, RegistryError, check_unique, verify_pole
from escrow.core.session import (
    AckBody,
    AttachBody,
    GetBody,
    OpenSecret,
    Progress,
    Receipt,
    SessionError,
    StopBody,
    attach_context,
    open_context,
    progress_context,
    reading_context,
    receipt_context,
    receipt_plaintext,
    signed_pair,
    split_signed_pair,
)
from escrow.core.settlement import Split, proof_context, split_deposit
from escrow.core.signing import (
    SignatureError,
    ed25519_check_public_key,
    ed25519_verify,
    p256_key_id,
    p256_sign,
    signed_message,
)
from escrow.core.spending import InputNote, OpenBody, RedeemBody, SpendError, verify_open, verify_redeem
from escrow.core.tariff import (
    TARIFF_MISMATCH,
    TARIFF_SUPERSEDED,
    Tariff,
    TariffError,
    check_newer,
    check_tariff_for_pole,
    check_valid_at,
    tariff_hash,
    verify_tariff,
)
from zk import bn254, envelope, generators, pedersen, stealth
from zk.errors import EnvelopeError

T = TypeVar("T")
Ecalls = dict[str, Callable[[bytes], bytes]]

GENERATOR_COUNT = 128  # 64-bit values, two per aggregated proof
MAX_RECORDS_PER_SESSION = 1_000  # the limit a session's readings are held to (DESIGN §10)
MAX_DEADLINE_MS = 7 * 24 * 3600 * 1000
MAX_LIVE_SESSIONS = 10_000  # open sessions in all (each is held in enclave memory)
MAX_LIVE_SESSIONS_PER_POLE = 16  # open sessions per pole: a pole charges one car per EVSE at a time
# open sessions over all the poles registered with one operator key (DESIGN §10 "per key": the only
# stable public key in a session; vehicles use one-time keys), so one operator's poles cannot fill the
# enclave
MAX_LIVE_SESSIONS_PER_OPERATOR = 1_024
SETTLED_CACHE = 256  # settled sessions' receipts kept in memory after being read
REGISTER_RESOLUTION = {"kWh": Decimal("0.001"), "Wh": Decimal(1)}  # the coverage limit's step: 1 Wh

# --- wire formats between the host and the engine ----------------------------------------------------

ENTRY_WIRE = (("header", Bytes(256)), ("payload", Bytes(1 << 20)), ("signature", Fixed(64)))
RECORD_WIRE = (("kind", Text(32)), ("object_id", Bytes(64)), ("version", U64), ("blob", Bytes(2 << 20)))
DELETE_WIRE = (("kind", Text(32)), ("object_id", Bytes(64)))
PERSIST_SCHEMA = (
    ("entries", ListOf(Bytes(2 << 20), 64)),
    ("puts", ListOf(Bytes(2 << 20), 4096)),
    ("deletes", ListOf(Bytes(256), 4096)),
    ("idempotency", Bytes(4096)),
    ("response", Bytes(1 << 20)),
)
QUOTE_SCHEMA = (("quote", Bytes(E.MAX_QUOTE_BYTES)), ("collateral_json", Bytes(E.MAX_COLLATERAL_BYTES)))
START_SCHEMA = (
    ("now_ms", U64),
    ("currency", Text(3)),
    ("decimals", U8),
    ("issuer_keys", ListOf(Fixed(32), E.MAX_ISSUER_KEYS)),
    ("grace_ms", U64),
    ("max_deadline_ms", U64),
)
START_RESULT = (("chain_id", Fixed(32)), ("height", U64), ("entry_hash", Fixed(32)))
ENTRY_REF = (("height", U64), ("entry_hash", Fixed(32)))
IDEM = ("idempotency", Bytes(4096))
NOW = ("now_ms", U64)
REGISTER_CALL = (
    IDEM,
    NOW,
    ("pole_body", Bytes(1024)),
    ("operator_signature", Bytes(64)),
    ("pop_record", Bytes(16384)),
)
TARIFF_CALL = (IDEM, NOW, ("tariff_body", Bytes(1024)), ("operator_signature", Bytes(64)))
MINT_CALL = (
    IDEM,
    NOW,
    ("mint_body", Bytes(512)),
    ("issuer_signature", Bytes(64)),
    ("amount_proof", Bytes(64)),
    ("envelope", Bytes(4096)),
)
MINT_RESULT = (("height", U64), ("entry_hash", Fixed(32)), ("note_id", Fixed(32)))
REDEEM_CALL = (
    IDEM,
    NOW,
    ("redeem_body", Bytes(1024)),
    ("owner_signatures", ListOf(Bytes(64), 16)),
    ("amount_proof", Bytes(64)),
)
OPEN_CALL = (
    IDEM,
    NOW,
    ("open_body", Bytes(1024)),
    ("owner_signatures", ListOf(Bytes(64), 16)),
    ("range_proof", Bytes(1024)),
    ("change_envelope", Bytes(4096)),
    ("enclave_envelope", Bytes(4096)),
)
OPEN_RESULT = (("height", U64), ("entry_hash", Fixed(32)), ("session_tag", Fixed(32)))
ATTACH_CALL = (IDEM, NOW, ("session_id", Bytes(16)), ("attach_envelope", Bytes(4096)))
SIGNED_ACK = (("ack_body", Bytes(512)), ("signature", Fixed(64)))
READING_CALL = (NOW, ("session_id", Bytes(16)), ("sequence", U64), ("envelope", Bytes(20000)))
STOP_CALL = (IDEM, NOW, ("stop_body", Bytes(512)), ("signature", Bytes(64)))
STATE_RESULT = (
    ("state", Text(16)),
    ("receipt_envelope", Bytes(1 << 20)),
    ("last_ack", Optional(Bytes(1024))),
    ("progress_envelope", Bytes(4096)),
)
GET_CALL = (NOW, ("session_id", Bytes(16)), ("get_body", Bytes(512)), ("signature", Bytes(64)))
POLES_PAGE = (("after", Text(64)), ("limit", U32))
POLES_RESULT = (("poles", ListOf(Bytes(64 << 10), 1024)), ("next", Text(64)))
POLE_LISTING = (
    ("pole_body", Bytes(1024)),
    ("operator_signature", Fixed(64)),
    ("height", U64),
    ("entry_hash", Fixed(32)),
    ("tariff_body", Bytes(1024)),
    ("tariff_signature", Bytes(64)),
)
TICK_CALL = (NOW,)
TICK_RESULT = (("settled", U64), ("next_due_ms", U64))

# --- sealed records ------------------------------------------------------------------------------------

SESSION_KIND, RECORD_KIND, SETTLED_KIND, TARIFF_KIND = "session", "record", "settled", "tariff"
RECORD_LOAD_ORDER = (TARIFF_KIND, SESSION_KIND, RECORD_KIND)  # loaded at start, in this order
LIVE_SCHEMA = (
    ("session_id", Fixed(16)),
    ("state", Text(16)),
    ("open_entry_hash", Fixed(32)),
    ("deposit", Fixed(32)),
    ("deposit_amount", U64),
    ("deposit_blinding", Fixed(32)),
    ("pole_id", Text(64)),
    ("tariff_body", Bytes(1024)),
    ("refund_address", Fixed(64)),
    ("session_key", Fixed(32)),
    ("deadline_ms", U64),
    ("payout_address", Optional(Fixed(64))),
    ("closing_since_ms", Optional(U64)),
    ("closed_by", Text(16)),
    ("coverage_limit", Text(64)),
    ("decisions", Bytes(MAX_RECORDS_PER_SESSION)),
    ("stop_sequences", ListOf(U64, 2)),
    ("readings", Bytes(1 << 20)),
    ("salt", Fixed(32)),
    ("last_ack", Optional(Bytes(1024))),
)
SETTLED_SCHEMA = (
    ("session_id", Fixed(16)),
    ("session_key", Fixed(32)),
    ("operator_key", Fixed(32)),
    ("vehicle_receipt", Bytes(1 << 20)),
    ("pole_receipt", Bytes(1 << 20)),
    ("last_ack", Optional(Bytes(1024))),
)
TARIFF_SCHEMA = (
    ("tariff_body", Bytes(1024)),
    ("signature", Fixed(64)),
    ("superseded", ListOf(Fixed(32), 4096)),
)
_DECISION_CODES = {"ATTACHED": b"A", "CONTINUE": b"C", "STOP": b"S", "SETTLED": b"X"}
_DECISION_NAMES = {v[0]: k for k, v in _DECISION_CODES.items()}


@functools.lru_cache(maxsize=1024)
def _parse_tariff(body: bytes) -> Tariff:
    """Tariffs are immutable: parse each body once."""
    return Tariff.from_bytes(body)


class EngineError(CoreError):
    """A request the engine refuses; ``reason`` is stable (docs/errors.md maps each to a gRPC status)."""


def _dec(schema: Any, data: bytes, what: str) -> dict[str, Any]:
    try:
        return decode(schema, data, max_len=4 << 20)
    except BodyError as e:
        raise EngineError("REQUEST_MALFORMED", f"{what}: {e}") from None


def _enc(schema: Any, values: Mapping[str, Any]) -> bytes:
    return encode(schema, values)


def _ms_datetime(ms: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)


def direct_work(fn: Callable[..., T], *args: Any) -> T:
    """Run CPU-bound work in the calling thread (the default ``work``)."""
    return fn(*args)


@dataclass
class _Note:
    commitment: bytes
    owner_key: bytes
    spent: bool
    is_deposit: bool


@dataclass
class _Pole:
    body: PoleBody
    entry_hash: bytes
    height: int
    operator_signature: bytes
    tariff: Tariff | None = None
    tariff_body: bytes = b""
    tariff_signature: bytes = b""
    superseded: list[bytes] = field(default_factory=list)
    tariff_version: int = 0

    @property
    def current_tariff_hash(self) -> bytes | None:
        return hashlib.sha256(self.tariff_body).digest() if self.tariff_body else None


@dataclass
class _Live:
    """A session between OPEN and SETTLE; every field is sealed (LIVE_SCHEMA) after each change."""

    session_id: bytes
    state: str
    open_entry_hash: bytes
    deposit: bytes
    deposit_amount: int
    deposit_blinding: bytes
    pole_id: str
    tariff_body: bytes
    refund_address: bytes
    session_key: bytes
    deadline_ms: int
    payout_address: bytes | None
    closing_since_ms: int | None
    closed_by: str
    coverage_limit: str
    decisions: bytes
    stop_sequences: list[int]
    readings: SessionReadings
    salt: bytes
    last_ack: bytes | None
    records: list[bytes] = field(default_factory=list)
    version: int = 0
    lock: threading.RLock = field(default_factory=threading.RLock)
    settling: bool = False

    def __repr__(self) -> str:
        return f"_Live(state={self.state}, records={len(self.records)})"

    @property
    def tag(self) -> bytes:
        return session_tag(self.session_id)

    @property
    def tariff(self) -> Tariff:
        return _parse_tariff(self.tariff_body)

    def to_bytes(self) -> bytes:
        values = {name: getattr(self, name) for name, _ in LIVE_SCHEMA if name != "readings"}
        values["readings"] = self.readings.to_bytes()
        return encode(LIVE_SCHEMA, values)


@dataclass
class _Settled:
    session_id: bytes
    session_key: bytes
    operator_key: bytes
    vehicle_receipt: bytes
    pole_receipt: bytes
    last_ack: bytes | None

    def to_bytes(self) -> bytes:
        return encode(SETTLED_SCHEMA, dict(self.__dict__))


class EscrowEngine:
    """The trusted escrow. Build with the enclave services and the host's ocalls; hand ``ecalls()`` to
    the runtime."""

    def __init__(
        self,
        services: Any,
        persist: Callable[[bytes], None],
        quote: Callable[[bytes], bytes],
        fetch: Callable[[bytes], bytes],
        *,
        work: Callable[..., Any] = direct_work,
        host_time_ms: Callable[[], int] | None = None,
    ) -> None:
        self._svc = services
        self._persist_ocall = persist
        self._quote_ocall = quote
        self._fetch_ocall = fetch
        self._settled_cache: dict[bytes, _Settled] = {}
        self._work = work
        self._lock = threading.RLock()
        self._halted: str | None = None
        self._started = False
        self._head = Head()
        self._params: dict[str, Any] = {}
        self._ledger_key_in_force: bytes | None = None
        self._identity_in_force: tuple[bytes, int] | None = None
        self._notes: dict[bytes, _Note] = {}
        self._mint_refs: set[bytes] = set()
        self._poles: dict[str, _Pole] = {}
        self._open_tags: dict[bytes, bytes] = {}  # session tag -> OPEN entry hash, unsettled
        self._settled_tags: set[bytes] = set()
        self._live: dict[bytes, _Live] = {}  # by session id
        self._clock = MonotoneClock()
        self._own_key = services.ledger_public_key()
        self._sealed_head = services.sealed_head()  # the store must still hold it (rollback check)
        self._sealed_head_seen: bytes | None = None
        self._enc_priv = services.encryption_private_key()

    # --- the ecall table --------------------------------------------------------------------------

    def ecalls(self) -> dict[str, Callable[[bytes], bytes]]:
        table: dict[str, Callable[[bytes], bytes]] = {
            "load_entries": self._load_entries,
            "load_records": self._load_records,
            "start": self._start,
            "register_pole": self._register_pole,
            "publish_tariff": self._publish_tariff,
            "mint": self._mint,
            "redeem": self._redeem,
            "open": self._open,
            "attach": self._attach,
            "reading": self._reading,
            "stop": self._stop,
            "get": self._get,
            "tick": self._tick,
            "list_poles": self._list_poles,
        }
        return {name: self._guard(fn) for name, fn in table.items()}

    def _guard(self, fn: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
        def call(payload: bytes) -> bytes:
            if self._halted is not None:
                raise EngineError("ENCLAVE_HALTED", f"the enclave halted: {self._halted}; restart the server")
            if fn not in (self._load_entries, self._load_records, self._start) and not self._started:
                raise EngineError("ENCLAVE_NOT_READY", "the escrow has not started")
            return fn(payload)

        call.__name__ = fn.__name__
        return call

    # --- ocalls -----------------------------------------------------------------------------------

    def _persist(
        self,
        entries: list[Entry] = (),  # type: ignore[assignment]
        puts: list[tuple[str, bytes, int, bytes]] = (),  # type: ignore[assignment]
        deletes: list[tuple[str, bytes]] = (),  # type: ignore[assignment]
        idempotency: bytes = b"",
        response: bytes = b"",
    ) -> None:
        data = encode(
            PERSIST_SCHEMA,
            {
                "entries": [
                    encode(ENTRY_WIRE, {"header": e.header, "payload": e.payload, "signature": e.signature})
                    for e in entries
                ],
                "puts": [
                    encode(RECORD_WIRE, {"kind": k, "object_id": o, "version": v, "blob": b})
                    for k, o, v, b in puts
                ],
                "deletes": [encode(DELETE_WIRE, {"kind": k, "object_id": o}) for k, o in deletes],
                "idempotency": idempotency,
                "response": response,
            },
        )
        try:
            self._persist_ocall(data)
        except BaseException as e:
            self._halted = f"persist failed ({type(e).__name__})"
            raise

    # --- start: replay the store --------------------------------------------------------------------

    def _load_entries(self, payload: bytes) -> bytes:
        if self._started:
            raise EngineError("ENCLAVE_STARTED", "entries are loaded before start")
        batch = _dec((("entries", ListOf(Bytes(2 << 20), 4096)),), payload, "entries")["entries"]
        with self._lock:
            for raw in batch:
                v = _dec(ENTRY_WIRE, raw, "entry")
                self._replay(Entry(v["header"], v["payload"], v["signature"]))
        return b""

    def _replay(self, entry: Entry) -> None:
        kind = entry.parsed.kind
        if kind == "GENESIS":
            g = E.decode_payload("GENESIS", entry.payload)
            key = g["ledger_key"]
        else:
            key = self._ledger_key_in_force
            if key is None:
                raise EngineError("STORE_INVALID", "entries before GENESIS")
        self._head = check_entry(self._head, entry, key)
        if self._sealed_head is not None and self._head.height == self._sealed_head[1]:
            self._sealed_head_seen = self._head.entry_hash
        self._apply_entry(entry)

    def _apply_entry(self, entry: Entry) -> None:
        """Update the in-memory index for an entry already on the chain (replay and live)."""
        header = entry.parsed
        kind = header.kind
        if kind == "GENESIS":
            g = E.decode_payload("GENESIS", entry.payload)
            self._params = g
            self._ledger_key_in_force = g["ledger_key"]
            self._identity_in_force = (g["mr_enclave"], g["isv_svn"])
        elif kind == "KEY":
            k = E.decode_payload("KEY", entry.payload)
            self._ledger_key_in_force = k["ledger_key"]
            self._identity_in_force = (k["mr_enclave"], k["isv_svn"])
        elif kind == "POLE":
            p = E.decode_payload("POLE", entry.payload)
            body = PoleBody.from_bytes(p["pole_body"])
            self._poles[body.pole_id] = _Pole(body, entry.entry_hash, header.height, p["operator_signature"])
        fx = E.effects(kind, entry.payload)
        for spent in fx.spent:
            self._notes[spent].spent = True
        for out in fx.outputs:
            self._notes[note_id(entry.entry_hash, out.index)] = _Note(
                out.commitment, out.owner_key, False, out.is_deposit
            )
        if fx.mint_reference is not None:
            self._mint_refs.add(fx.mint_reference)
        if kind == "OPEN" and fx.session_tag is not None:
            self._open_tags[fx.session_tag] = entry.entry_hash
        if kind == "SETTLE" and fx.session_tag is not None:
            self._open_tags.pop(fx.session_tag, None)
            self._settled_tags.add(fx.session_tag)
        self._clock.observe_host(header.time_ms)

    def _load_records(self, payload: bytes) -> bytes:
        if self._started:
            raise EngineError("ENCLAVE_STARTED", "records are loaded before start")
        batch = _dec((("records", ListOf(Bytes(2 << 20), 4096)),), payload, "records")["records"]
        with self._lock:
            for raw in batch:
                r = _dec(RECORD_WIRE, raw, "record")
                data = self._svc.unseal(r["kind"], r["object_id"], r["version"], r["blob"])
                self._restore(r["kind"], r["object_id"], r["version"], data)
        return b""

    def _restore(self, kind: str, object_id: bytes, version: int, data: bytes) -> None:
        if kind == TARIFF_KIND:
            t = decode(TARIFF_SCHEMA, data)
            tariff = Tariff.from_bytes(t["tariff_body"])
            pole = self._poles.get(tariff.pole_id)
            if pole is None or object_id != tariff.pole_id.encode():
                raise EngineError("STORE_INVALID", "a tariff for an unknown pole")
            pole.tariff, pole.tariff_body, pole.tariff_signature = tariff, t["tariff_body"], t["signature"]
            pole.superseded = list(t["superseded"])
            pole.tariff_version = version
        elif kind == SESSION_KIND:
            live = self._live_from_bytes(data, version)
            if live.tag != object_id or live.tag not in self._open_tags:
                raise EngineError("STORE_INVALID", "a session record without its unsettled OPEN")
            self._live[live.session_id] = live
        elif kind == RECORD_KIND:
            session = next((s for s in self._live.values() if s.tag == object_id[:32]), None)
            if session is None:
                raise EngineError("STORE_INVALID", "a reading record without its live session")
            index = int.from_bytes(object_id[32:], "big")
            if index != len(session.records):
                raise EngineError("STORE_INVALID", "reading records out of order")
            session.records.append(data)
        else:
            raise EngineError("STORE_INVALID", f"unknown record kind {kind!r}")

    def _live_from_bytes(self, data: bytes, version: int) -> _Live:
        v = decode(LIVE_SCHEMA, data)
        try:
            v["readings"] = SessionReadings.from_bytes(v["readings"])
        except ReadingsStateError as e:
            raise EngineError("STORE_INVALID", f"session readings: {e}") from None
        return _Live(**v, version=version)

    def _start(self, payload: bytes) -> bytes:
        if self._started:
            raise EngineError("ENCLAVE_STARTED", "start is called once")
        v = _dec(START_SCHEMA, payload, "start")
        # The G and H tables this interpreter needs for every OPEN (the deposit's opening) are built
        # now, not by the first requests (with a proof pool, no proof ever runs here to build them).
        pedersen.commit(0, 1)
        with self._lock:
            self._clock.observe_host(v["now_ms"])
            for live in self._live.values():
                if len(live.records) != len(live.readings):
                    raise EngineError("STORE_INVALID", "a live session lost reading records")
            missing = set(self._open_tags) - {s.tag for s in self._live.values()}
            if missing:
                raise EngineError("STORE_INVALID", f"{len(missing)} open session(s) have no sealed state")
            self._check_not_rolled_back()
            if self._head.height < 0:
                self._genesis(v)
            else:
                if self._ledger_key_in_force != self._own_key:
                    raise EngineError("STORE_FOREIGN", "the ledger is signed by another enclave's key")
                identity = (self._svc.identity.mr_enclave, self._svc.identity.isv_svn)
                if identity != self._identity_in_force:
                    self._key_entry()
            self._svc.set_head(self._head.chain_id, self._head.height, self._head.entry_hash)
            self._started = True
            return encode(
                START_RESULT,
                {
                    "chain_id": self._head.chain_id,
                    "height": self._head.height,
                    "entry_hash": self._head.entry_hash,
                },
            )

    def _check_not_rolled_back(self) -> None:
        """The store must contain the head the enclave's sealed state last recorded (DESIGN §5)."""
        if self._sealed_head is None:
            return
        chain_id, height, entry_hash = self._sealed_head
        if (
            self._head.chain_id != chain_id
            or self._head.height < height
            or self._sealed_head_seen != entry_hash
        ):
            raise EngineError(
                "STORE_ROLLED_BACK",
                f"the store does not contain the ledger head {height} the enclave last sealed: "
                "it was rolled back or replaced",
            )

    def _quote(self, nonce: bytes) -> dict[str, Any]:
        report = self._svc.report(nonce)
        return decode(QUOTE_SCHEMA, self._quote_ocall(report))

    def _genesis(self, v: dict[str, Any]) -> None:
        if not v["issuer_keys"]:
            raise EngineError("GENESIS_INVALID", "a new chain needs at least one issuer key")
        for key in v["issuer_keys"]:
            try:
                ed25519_check_public_key(key)
            except SignatureError as e:
                raise EngineError("GENESIS_INVALID", f"issuer key: {e.detail}") from None
        if not 0 < v["max_deadline_ms"] <= MAX_DEADLINE_MS or v["grace_ms"] > 24 * 3600 * 1000:
            raise EngineError("GENESIS_INVALID", "deadline and grace out of range")
        if v["decimals"] > 8:
            raise EngineError("GENESIS_INVALID", "at most 8 decimals")
        identity = self._svc.identity
        params = {
            "protocol": E.PROTOCOL,
            "currency": v["currency"],
            "decimals": v["decimals"],
            "issuer_keys": list(v["issuer_keys"]),
            "generator_set_hash": generators.generator_set_hash(GENERATOR_COUNT),
            "generator_count": GENERATOR_COUNT,
            "grace_ms": v["grace_ms"],
            "max_deadline_ms": v["max_deadline_ms"],
            "mr_enclave": identity.mr_enclave,
            "ledger_key": self._own_key,
            "encryption_key": self._svc.encryption_public_key(),
            "instance_id": self._svc.instance_id(),
            "isv_svn": identity.isv_svn,
        }
        self._svc.set_head(bytes(32), 0, bytes(32))
        q = self._quote(E.genesis_nonce(params))
        payload = E.encode_payload("GENESIS", {**params, **q})
        entry = make_entry(self._head, "GENESIS", payload, self._clock.now(), self._svc.ledger_key)
        self._append([entry])

    def _key_entry(self) -> None:
        identity = self._svc.identity
        self._svc.set_head(self._head.chain_id, self._head.height, self._head.entry_hash)
        q = self._quote(E.key_nonce(self._head.chain_id, self._head.entry_hash))
        payload = E.encode_payload(
            "KEY",
            {
                "mr_enclave": identity.mr_enclave,
                "isv_svn": identity.isv_svn,
                "ledger_key": self._own_key,
                "encryption_key": self._svc.encryption_public_key(),
                "instance_id": self._svc.instance_id(),
                **q,
            },
        )
        entry = make_entry(self._head, "KEY", payload, self._clock.now(), self._svc.ledger_key)
        self._append([entry])

    def _append(
        self,
        new_entries: list[Entry],
        puts: list[tuple[str, bytes, int, bytes]] = (),  # type: ignore[assignment]
        deletes: list[tuple[str, bytes]] = (),  # type: ignore[assignment]
        idempotency: bytes = b"",
        response: bytes = b"",
    ) -> None:
        """Persist entries (made against the current head, in order) and apply them; ledger lock held."""
        self._persist(new_entries, puts, deletes, idempotency, response)
        for entry in new_entries:
            self._head = advance(self._head, entry)
            self._apply_entry(entry)
        self._svc.set_head(self._head.chain_id, self._head.height, self._head.entry_hash)

    def _entry(self, kind: str, payload: bytes) -> Entry:
        return make_entry(self._head, kind, payload, self._clock.now(), self._svc.ledger_key)

    @property
    def _chain_id(self) -> bytes:
        return self._head.chain_id

    @property
    def _enclave_key_id(self) -> bytes:
        return p256_key_id(self._own_key)

    def _now(self, now_ms: int) -> int:
        with self._lock:
            return self._clock.observe_host(now_ms)

    # --- registry ---------------------------------------------------------------------------------

    def _register_pole(self, payload: bytes) -> bytes:
        v = _dec(REGISTER_CALL, payload, "RegisterPole")
        now = self._now(v["now_ms"])
        pole = self._work(
            verify_pole, self._chain_id, v["pole_body"], v["operator_signature"], v["pop_record"], now // 1000
        )
        with self._lock:
            self._check_pole_free(pole)
            if self._clock.now() // 1000 > pole.expiry:  # judged again at the entry's own time
                raise RegistryError("POLE_EXPIRED", f"expired at {pole.expiry}")
            entry = self._entry(
                "POLE",
                E.encode_payload(
                    "POLE",
                    {
                        "pole_body": v["pole_body"],
                        "operator_signature": v["operator_signature"],
                        "pop_record": v["pop_record"],
                    },
                ),
            )
            response = encode(ENTRY_REF, {"height": entry.parsed.height, "entry_hash": entry.entry_hash})
            self._append([entry], idempotency=v["idempotency"], response=response)
            return response

    def _check_pole_free(self, pole: PoleBody) -> None:
        if pole.pole_id in self._poles:
            raise RegistryError("POLE_ID_IN_USE", f"pole {pole.pole_id} is registered")
        active = list(self._poles.values())
        check_unique(pole, [p.body.meter_public_key for p in active], [p.body.evse_id for p in active])

    def _publish_tariff(self, payload: bytes) -> bytes:
        v = _dec(TARIFF_CALL, payload, "PublishTariff")
        now = self._now(v["now_ms"])
        tariff = Tariff.from_bytes(v["tariff_body"])
        with self._lock:
            pole = self._poles.get(tariff.pole_id)
            if pole is None:
                raise EngineError("POLE_NOT_FOUND", f"no pole {tariff.pole_id}")
            body = pole.body
            verify_tariff(
                v["tariff_body"], v["operator_signature"], self._chain_id, body.operator_key, now // 1000
            )
            check_tariff_for_pole(
                tariff,
                pole_id=body.pole_id,
                evse_id=body.evse_id,
                RI=body.RI,
                RU=body.RU,
                currency=self._params["currency"],
            )
            check_newer(tariff, pole.tariff)
            superseded = pole.superseded + ([pole.current_tariff_hash] if pole.current_tariff_hash else [])
            superseded = superseded[-4096:]
            record = encode(
                TARIFF_SCHEMA,
                {
                    "tariff_body": v["tariff_body"],
                    "signature": v["operator_signature"],
                    "superseded": superseded,
                },
            )
            digest = tariff_hash(v["tariff_body"])
            object_id = tariff.pole_id.encode()
            version = pole.tariff_version + 1
            blob = self._svc.seal(TARIFF_KIND, object_id, version, record)
            self._persist([], [(TARIFF_KIND, object_id, version, blob)], [], v["idempotency"], digest)
            pole.tariff_version = version
            pole.tariff, pole.tariff_body, pole.tariff_signature = (
                tariff,
                v["tariff_body"],
                v["operator_signature"],
            )
            pole.superseded = superseded
            return digest

    def _list_poles(self, payload: bytes) -> bytes:
        v = _dec(POLES_PAGE, payload, "ListPoles")
        limit = max(1, min(v["limit"], 1024))
        with self._lock:
            ids = sorted(i for i in self._poles if i > v["after"])
            page = ids[:limit]
            listing = [
                encode(
                    POLE_LISTING,
                    {
                        "pole_body": (p := self._poles[i]).body.to_bytes(),
                        "operator_signature": p.operator_signature,
                        "height": p.height,
                        "entry_hash": p.entry_hash,
                        "tariff_body": p.tariff_body,
                        "tariff_signature": p.tariff_signature,
                    },
                )
                for i in page
            ]
        return encode(POLES_RESULT, {"poles": listing, "next": page[-1] if len(ids) > limit else ""})

    # --- notes ------------------------------------------------------------------------------------

    def _mint(self, payload: bytes) -> bytes:
        v = _dec(MINT_CALL, payload, "Mint")
        now = self._now(v["now_ms"])
        with self._lock:
            issuers = {hashlib.sha256(k).digest(): k for k in self._params["issuer_keys"]}
            currency = self._params["currency"]
            chain_id = self._chain_id
        mint = self._work(
            verify_mint,
            chain_id,
            issuers,
            currency,
            v["mint_body"],
            v["issuer_signature"],
            v["envelope"],
            v["amount_proof"],
            now // 1000,
        )
        with self._lock:
            if mint.mint_reference in self._mint_refs:
                raise MintError("MINT_REFERENCE_USED", "this mint reference is on the ledger")
            if self._clock.now() // 1000 > mint.expiry:  # judged again at the entry's own time
                raise MintError("MINT_EXPIRED", f"expired at {mint.expiry}")
            entry = self._entry(
                "MINT",
                E.encode_payload(
                    "MINT",
                    {
                        "mint_body": v["mint_body"],
                        "issuer_signature": v["issuer_signature"],
                        "amount_proof": v["amount_proof"],
                        "envelope": v["envelope"],
                    },
                ),
            )
            response = encode(
                MINT_RESULT,
                {
                    "height": entry.parsed.height,
                    "entry_hash": entry.entry_hash,
                    "note_id": note_id(entry.entry_hash, 0),
                },
            )
            self._append([entry], idempotency=v["idempotency"], response=response)
            return response

    def _inputs(self, ids: list[bytes]) -> dict[bytes, InputNote]:
        out = {}
        for i in ids:
            note = self._notes.get(i)
            if note is not None:
                out[i] = InputNote(note.commitment, note.owner_key, note.spent, note.is_deposit)
        return out

    def _recheck_unspent(self, ids: list[bytes]) -> None:
        if any(self._notes[i].spent for i in ids):
            raise SpendError("SPEND_NOTE_SPENT", "an input note is already spent")

    def _redeem(self, payload: bytes) -> bytes:
        v = _dec(REDEEM_CALL, payload, "Redeem")
        now = self._now(v["now_ms"])
        body = RedeemBody.from_bytes(v["redeem_body"])
        with self._lock:
            inputs = self._inputs(body.input_note_ids)
            currency, chain_id = self._params["currency"], self._chain_id
        self._work(
            verify_redeem,
            chain_id,
            currency,
            v["redeem_body"],
            v["owner_signatures"],
            v["amount_proof"],
            inputs,
            now // 1000,
        )
        with self._lock:
            self._recheck_unspent(body.input_note_ids)
            if self._clock.now() // 1000 > body.expiry:  # judged again at the entry's own time
                raise SpendError("SPEND_EXPIRED", f"expired at {body.expiry}")
            entry = self._entry(
                "REDEEM",
                E.encode_payload(
                    "REDEEM",
                    {
                        "redeem_body": v["redeem_body"],
                        "owner_signatures": v["owner_signatures"],
                        "amount_proof": v["amount_proof"],
                    },
                ),
            )
            response = encode(ENTRY_REF, {"height": entry.parsed.height, "entry_hash": entry.entry_hash})
            self._append([entry], idempotency=v["idempotency"], response=response)
            return response

    # --- sessions: open -----------------------------------------------------------------------------

    def _open(self, payload: bytes) -> bytes:
        v = _dec(OPEN_CALL, payload, "Open")
        now = self._now(v["now_ms"])
        body = OpenBody.from_bytes(v["open_body"])
        with self._lock:
            self._check_tag_free(body.session_tag)
            inputs = self._inputs(body.input_note_ids)
            chain_id = self._chain_id
            max_deadline = self._params["max_deadline_ms"]
        self._work(
            verify_open,
            chain_id,
            v["open_body"],
            v["owner_signatures"],
            v["range_proof"],
            v["change_envelope"],
            v["enclave_envelope"],
            inputs,
            self._enclave_key_id,
            now // 1000,
            max_deadline,
        )
        secret = self._open_secret(body, v["enclave_envelope"])
        with self._lock:
            self._check_tag_free(body.session_tag)
            self._recheck_unspent(body.input_note_ids)
            entry_s = self._clock.now() // 1000  # the time rules, judged again at the entry's own time
            if entry_s > body.expiry:
                raise SpendError("SPEND_EXPIRED", f"expired at {body.expiry}")
            if not entry_s * 1000 < body.deadline <= entry_s * 1000 + max_deadline:
                raise SpendError("SPEND_DEADLINE_INVALID", "the deadline passed while the OPEN was checked")
            pole, _tariff = self._session_pole(secret, now)
            self._check_session_limits(secret.pole_id)
            entry = self._entry(
                "OPEN",
                E.encode_payload(
                    "OPEN",
                    {
                        "open_body": v["open_body"],
                        "owner_signatures": v["owner_signatures"],
                        "range_proof": v["range_proof"],
                        "change_envelope": v["change_envelope"],
                    },
                ),
            )
            body_ = pole.body
            registration = MeterRegistration(
                body_.meter_public_key, body_.meter_algorithm, body_.RI, body_.RU
            )
            readings = SessionReadings(
                secret.session_id,
                registration,
                _ms_datetime(body.deadline),
                grace=timedelta(milliseconds=self._params["grace_ms"]),
                max_records=MAX_RECORDS_PER_SESSION,
            )
            live = _Live(
                session_id=secret.session_id,
                state="OPENED",
                open_entry_hash=entry.entry_hash,
                deposit=body.deposit,
                deposit_amount=secret.deposit_amount,
                deposit_blinding=secret.deposit_blinding,
                pole_id=secret.pole_id,
                tariff_body=pole.tariff_body,
                refund_address=secret.refund_address,
                session_key=secret.session_key,
                deadline_ms=body.deadline,
                payout_address=None,
                closing_since_ms=None,
                closed_by="",
                coverage_limit="",
                decisions=b"",
                stop_sequences=[0, 0],
                readings=readings,
                salt=os.urandom(32),
                last_ack=None,
                version=1,
            )
            response = encode(
                OPEN_RESULT,
                {
                    "height": entry.parsed.height,
                    "entry_hash": entry.entry_hash,
                    "session_tag": body.session_tag,
                },
            )
            self._append([entry], [self._sealed_live(live)], [], v["idempotency"], response)
            self._live[live.session_id] = live
            return response

    def _check_session_limits(self, pole_id: str) -> None:
        """The open-session limits of DESIGN §10: in all, per pole, per operator key. Counted over the live
        set (every OPEN not yet settled, reloaded ones included), so a settled session frees its place.
        The limits are read at each call (the module's globals). Global lock held; the pole exists."""
        if len(self._live) >= MAX_LIVE_SESSIONS:
            raise EngineError("SESSIONS_LIMIT", f"{MAX_LIVE_SESSIONS} sessions are open; try again later")
        poles = self._poles
        operator_key = poles[pole_id].body.operator_key
        at_pole = at_operator = 0
        for s in self._live.values():
            if s.pole_id == pole_id:
                at_pole += 1
                at_operator += 1
            elif poles[s.pole_id].body.operator_key == operator_key:
                at_operator += 1
        if at_pole >= MAX_LIVE_SESSIONS_PER_POLE:
            raise EngineError("SESSIONS_LIMIT", f"the pole has {MAX_LIVE_SESSIONS_PER_POLE} open sessions")
        if at_operator >= MAX_LIVE_SESSIONS_PER_OPERATOR:
            raise EngineError(
                "SESSIONS_LIMIT",
                f"the poles of this pole's operator have {MAX_LIVE_SESSIONS_PER_OPERATOR} open sessions",
            )

    def _check_tag_free(self, tag: bytes) -> None:
        if tag in self._open_tags or tag in self._settled_tags:
            raise EngineError("SESSION_EXISTS", "a session with this tag exists")

    def _open_secret(self, body: OpenBody, sealed: bytes) -> OpenSecret:
        try:
            plain = envelope.open_envelope(
                self._enc_priv, sealed, open_context(self._chain_id, body.session_tag)
            )
        except (EnvelopeError, ValueError, TypeError):
            raise SessionError("SESSION_ENVELOPE_INVALID", "the enclave envelope does not open") from None
        secret = OpenSecret.from_bytes(plain)
        if session_tag(secret.session_id) != body.session_tag:
            raise SessionError("SESSION_ENVELOPE_INVALID", "the envelope names another session")
        blinding = int.from_bytes(secret.deposit_blinding, "big")
        if (
            blinding >= bn254.ORDER
            or bn254.point_to_bytes(pedersen.commit(secret.deposit_amount, blinding)) != body.deposit
        ):
            raise SessionError("SESSION_DEPOSIT_MISMATCH", "the envelope's opening is not D's")
        try:
            stealth.Address.from_bytes(secret.refund_address)
            ed25519_check_public_key(secret.session_key)
        except (stealth.StealthError, SignatureError, ValueError) as e:
            raise SessionError("SESSION_MALFORMED", f"refund address or session key: {e}") from None
        return secret

    def _session_pole(self, secret: OpenSecret, now_ms: int) -> tuple[_Pole, Tariff]:
        pole = self._poles.get(secret.pole_id)
        if pole is None:
            raise EngineError("POLE_NOT_FOUND", f"no pole {secret.pole_id}")
        if pole.tariff is None:
            raise TariffError(TARIFF_MISMATCH, "the pole has published no tariff")
        if pole.current_tariff_hash != secret.tariff_hash:
            if secret.tariff_hash in pole.superseded:
                raise TariffError(TARIFF_SUPERSEDED, "the pole has published a newer tariff")
            raise TariffError(TARIFF_MISMATCH, "not the pole's tariff")
        check_valid_at(pole.tariff, now_ms // 1000)
        if secret.deposit_amount < pole.tariff.session_fee_minor:
            raise BillingError("DEPOSIT_BELOW_FEE", "the deposit does not cover the session fee")
        return pole, pole.tariff

    def _sealed_live(self, live: _Live) -> tuple[str, bytes, int, bytes]:
        return (
            SESSION_KIND,
            live.tag,
            live.version,
            self._svc.seal(SESSION_KIND, live.tag, live.version, live.to_bytes()),
        )

    # --- sessions: attach, readings, stop -----------------------------------------------------------

    def _session(self, session_id: bytes) -> _Live:
        if len(session_id) != 16:
            raise EngineError("REQUEST_MALFORMED", "a session id is 16 bytes")
        with self._lock:
            live = self._live.get(session_id)
            if live is None:
                if session_tag(session_id) in self._settled_tags:
                    raise EngineError("SESSION_SETTLED", "the session is settled")
                raise EngineError("SESSION_NOT_FOUND", "no such session")
            return live

    def _sign_ack(self, live: _Live, pg: str, reading_hash: bytes, decision: str, sequence: int) -> bytes:
        body = AckBody(live.session_id, pg, reading_hash, decision, live.coverage_limit, sequence).to_bytes()
        signature = p256_sign(self._svc.ledger_key, signed_message("ack", self._chain_id, body))
        return encode(SIGNED_ACK, {"ack_body": body, "signature": signature})

    def _attach(self, payload: bytes) -> bytes:
        v = _dec(ATTACH_CALL, payload, "Attach")
        now = self._now(v["now_ms"])
        live = self._session(v["session_id"])
        with live.lock:
            if live.state != "OPENED" or live.settling:
                reason = (
                    "SESSION_ALREADY_ATTACHED"
                    if live.state in ("ATTACHED", "CHARGING")
                    else "SESSION_WRONG_STATE"
                )
                raise SessionError(reason, f"the session is {live.state}")
            if now > live.deadline_ms:
                raise SessionError("SESSION_WRONG_STATE", "the session's deadline has passed")
            try:
                plain = envelope.open_envelope(
                    self._enc_priv, v["attach_envelope"], attach_context(self._chain_id, live.session_id)
                )
            except (EnvelopeError, ValueError, TypeError):
                raise SessionError("SESSION_ENVELOPE_INVALID", "the attach envelope does not open") from None
            body_bytes, signature = split_signed_pair(plain)
            attach = AttachBody.from_bytes(body_bytes)
            pole = self._poles[live.pole_id]
            if attach.session_id != live.session_id:
                raise SessionError("SESSION_MALFORMED", "the ATTACH names another session")
            if attach.pole_id != live.pole_id or attach.evse_id != pole.body.evse_id:
                raise SessionError("ATTACH_WRONG_POLE", "the vehicle chose another pole")
            if attach.tariff_hash != hashlib.sha256(live.tariff_body).digest():
                raise TariffError(TARIFF_MISMATCH, "the ATTACH agrees to another tariff")
            if attach.enclave_key_id != self._enclave_key_id:
                raise SessionError("SESSION_WRONG_ENCLAVE_KEY", "the ATTACH is for another enclave key")
            if now // 1000 > attach.expiry:
                raise SessionError("SESSION_EXPIRED", "the ATTACH expired")
            try:
                stealth.Address.from_bytes(attach.payout_address)
            except (stealth.StealthError, ValueError) as e:
                raise SessionError("SESSION_MALFORMED", f"payout address: {e}") from None
            try:
                ed25519_verify(
                    pole.body.operator_key, signed_message("attach", self._chain_id, body_bytes), signature
                )
            except SignatureError as e:
                raise SessionError("ATTACH_SIGNATURE_INVALID", f"operator signature: {e.reason}") from None
            new = self._copy(live)
            new.state, new.payout_address = "ATTACHED", attach.payout_address
            ack = self._sign_ack(new, "", bytes(32), "ATTACHED", 0)
            new.last_ack = ack
            self._persist([], [self._sealed_live(new)], [], v["idempotency"], ack)
            self._commit_live(live, new)
            return ack

    def _copy(self, live: _Live) -> _Live:
        """A copy to change; the original stays as it is until the change is persisted. O(readings)
        pointer copies, no re-encoding: the accepted entries themselves are immutable and shared."""
        return replace(
            live,
            readings=live.readings.copy(),
            records=list(live.records),
            stop_sequences=list(live.stop_sequences),
            version=live.version + 1,
        )

    def _commit_live(self, old: _Live, new: _Live) -> None:
        """Make the persisted copy the session's state (one object per session, under its lock)."""
        old.__dict__.update(new.__dict__)

    def _reading(self, payload: bytes) -> bytes:
        v = _dec(READING_CALL, payload, "Reading")
        now = self._now(v["now_ms"])
        settled = self._settled_record(v["session_id"])
        if settled is not None:
            return self._settled_reading(settled, v)
        live = self._session(v["session_id"])
        with live.lock:
            if live.state not in ("ATTACHED", "CHARGING", "CLOSING") or live.settling:
                raise SessionError("SESSION_WRONG_STATE", f"the session is {live.state}")
            try:
                raw = envelope.open_envelope(
                    self._enc_priv,
                    v["envelope"],
                    reading_context(self._chain_id, live.session_id, v["sequence"]),
                )
            except (EnvelopeError, ValueError, TypeError):
                raise SessionError("READING_ENVELOPE_INVALID", "the reading envelope does not open") from None
            digest = hashlib.sha256(raw).digest()
            index = live.readings.index_of(digest)
            if index is not None:  # a repeated record: its original ACK
                acceptance = live.readings.acceptance_at(index)
                decision = _DECISION_NAMES[live.decisions[index]]
                return self._sign_ack(live, acceptance.pg, digest, decision, index + 1)
            closing = (
                live.state == "CLOSING" and live.closing_since_ms is not None and live.closed_by != "deadline"
            )
            if closing and now > (live.closing_since_ms or 0) + self._params["grace_ms"]:
                raise ReadingRejected("READING_AFTER_DEADLINE", "the session's grace period is over")
            new = self._copy(live)
            acceptance = new.readings.accept(raw, now=_ms_datetime(now))
            sync = new.readings.last_synchronised_time
            if sync is not None:
                with self._lock:
                    self._clock.observe_meter(int((sync - _ms_datetime(0)) // timedelta(milliseconds=1)), "S")
            new.records.append(raw)
            tariff = new.tariff
            if acceptance.begin and new.coverage_limit == "":
                unit = tariff.RU
                rv_begin = acceptance.rv_begin * (1000 if unit == "Wh" else 1)
                try:
                    limit = coverage_limit(
                        new.deposit_amount, rv_begin, tariff, unit, REGISTER_RESOLUTION[unit]
                    )
                except BillingError as e:
                    raise ReadingRejected("READING_MALFORMED", f"coverage: {e.reason}") from None
                new.coverage_limit = str(limit)
            limit_kwh = self._limit_kwh(new)
            if new.state in ("ATTACHED",):
                new.state = "CHARGING"
            settle = acceptance.ended
            if settle:
                decision = "SETTLED"
            elif limit_kwh is not None and acceptance.rv_billed >= limit_kwh:
                decision = "STOP"
                if new.state != "CLOSING":
                    new.state, new.closing_since_ms, new.closed_by = "CLOSING", now, "exhausted"
            elif new.state == "CLOSING":
                decision = "STOP"
            else:
                decision = "CONTINUE"
            sequence = len(new.readings)
            new.decisions = new.decisions + _DECISION_CODES[decision]
            ack = self._sign_ack(new, acceptance.pg, digest, decision, sequence)
            new.last_ack = ack
            if settle:  # the records go into the vehicle's receipt; no record blob outlives the session
                self._settle(live, new, "ENDED")
                return ack
            record_id = new.tag + (sequence - 1).to_bytes(8, "big")
            record_put = (RECORD_KIND, record_id, 1, self._svc.seal(RECORD_KIND, record_id, 1, raw))
            self._persist([], [self._sealed_live(new), record_put], [], b"", ack)
            self._commit_live(live, new)
            return ack

    def _settled_reading(self, settled: _Settled, v: dict[str, Any]) -> bytes:
        """A reading for a settled session: the repeated final record gets its ACK again; others refused."""
        try:
            raw = envelope.open_envelope(
                self._enc_priv,
                v["envelope"],
                reading_context(self._chain_id, settled.session_id, v["sequence"]),
            )
        except (EnvelopeError, ValueError, TypeError):
            raise SessionError("READING_ENVELOPE_INVALID", "the reading envelope does not open") from None
        if settled.last_ack is not None:
            ack = AckBody.from_bytes(decode(SIGNED_ACK, settled.last_ack)["ack_body"])
            if ack.reading_hash == hashlib.sha256(raw).digest():
                return settled.last_ack
        raise EngineError("SESSION_SETTLED", "the session is settled")

    def _settled_record(self, session_id: bytes) -> _Settled | None:
        """A settled session's receipts, read back from the store (sealed) when asked for."""
        if len(session_id) != 16:
            return None
        tag = session_tag(session_id)
        with self._lock:
            if tag not in self._settled_tags:
                return None
            cached = self._settled_cache.get(session_id)
        if cached is not None:
            return cached
        raw = self._fetch_ocall(encode(DELETE_WIRE, {"kind": SETTLED_KIND, "object_id": tag}))
        if not raw:
            raise EngineError("STORE_INVALID", "a settled session's receipts are missing")
        r = _dec(RECORD_WIRE, raw, "record")
        if (r["kind"], r["object_id"]) != (SETTLED_KIND, tag):
            raise EngineError("STORE_INVALID", "the host returned another record")
        s = decode(SETTLED_SCHEMA, self._svc.unseal(SETTLED_KIND, tag, r["version"], r["blob"]))
        if s["session_id"] != session_id:
            raise EngineError("STORE_INVALID", "the receipts name another session")
        settled = _Settled(**s)
        with self._lock:
            if len(self._settled_cache) >= SETTLED_CACHE:
                self._settled_cache.pop(next(iter(self._settled_cache)))
            self._settled_cache[session_id] = settled
        return settled

    def _limit_kwh(self, live: _Live) -> Decimal | None:
        if not live.coverage_limit:
            return None
        limit = Decimal(live.coverage_limit)
        return limit / 1000 if live.tariff.RU == "Wh" else limit

    def _stop(self, payload: bytes) -> bytes:
        v = _dec(STOP_CALL, payload, "Stop")
        now = self._now(v["now_ms"])
        stop = StopBody.from_bytes(v["stop_body"])
        live = self._session(stop.session_id)
        with live.lock:
            if live.settling or live.state == "SETTLED":
                raise EngineError("SESSION_SETTLED", "the session is settled")
            key = live.session_key if stop.party == "vehicle" else self._poles[live.pole_id].body.operator_key
            try:
                ed25519_verify(key, signed_message("stop", self._chain_id, v["stop_body"]), v["signature"])
            except SignatureError as e:
                raise SessionError("STOP_SIGNATURE_INVALID", f"{stop.party} signature: {e.reason}") from None
            index = 0 if stop.party == "vehicle" else 1
            if stop.sequence <= live.stop_sequences[index]:
                raise SessionError("STOP_REPLAYED", "a STOP with this sequence was already applied")
            with self._lock:
                now = self._clock.observe_signed(stop.time_ms)
            new = self._copy(live)
            new.stop_sequences[index] = stop.sequence
            if not new.readings.begun:
                result = self._settle(live, new, "REFUNDED", idempotency=v["idempotency"], party=stop.party)
                return result
            if new.state != "CLOSING":
                new.state, new.closing_since_ms, new.closed_by = "CLOSING", now, stop.party
            response = encode(
                STATE_RESULT,
                {
                    "state": new.state,
                    "receipt_envelope": b"",
                    "last_ack": new.last_ack,
                    "progress_envelope": b"",
                },
            )
            self._persist([], [self._sealed_live(new)], [], v["idempotency"], response)
            self._commit_live(live, new)
            return response

    def _get(self, payload: bytes) -> bytes:
        v = _dec(GET_CALL, payload, "GetSession")
        now = self._now(v["now_ms"])
        get = GetBody.from_bytes(v["get_body"])
        if get.session_id != v["session_id"]:
            raise SessionError("SESSION_MALFORMED", "the GET names another session")
        if now // 1000 > get.expiry:
            raise SessionError("SESSION_EXPIRED", "the GET expired")
        with self._lock:
            live = self._live.get(get.session_id)
        if live is not None:
            with live.lock:  # a settlement in progress finishes first; then the session is settled
                if not live.settling and live.state != "SETTLED":
                    party_key = live.session_key if get.party == "vehicle" else self._operator_key(live)
                    self._check_get_signature(party_key, get, v)
                    progress = self._progress(live, now) if get.party == "vehicle" else b""
                    return encode(
                        STATE_RESULT,
                        {
                            "state": live.state,
                            "receipt_envelope": b"",
                            "last_ack": live.last_ack,
                            "progress_envelope": progress,
                        },
                    )
        settled = self._settled_record(get.session_id)
        if settled is None:
            raise EngineError("SESSION_NOT_FOUND", "no such session")
        self._check_get_signature(
            settled.session_key if get.party == "vehicle" else settled.operator_key, get, v
        )
        receipt = settled.vehicle_receipt if get.party == "vehicle" else settled.pole_receipt
        return encode(
            STATE_RESULT,
            {
                "state": "SETTLED",
                "receipt_envelope": receipt,
                "last_ack": settled.last_ack,
                "progress_envelope": b"",
            },
        )

    def _operator_key(self, live: _Live) -> bytes:
        return self._poles[live.pole_id].body.operator_key

    def _check_get_signature(self, key: bytes, get: GetBody, v: dict[str, Any]) -> None:
        try:
            ed25519_verify(key, signed_message("session-get", self._chain_id, v["get_body"]), v["signature"])
        except SignatureError as e:
            raise SessionError("GET_SIGNATURE_INVALID", f"{get.party} signature: {e.reason}") from None

    def _progress(self, live: _Live, now: int) -> bytes:
        """The vehicle's signed progress, sealed to its refund address; session lock held."""
        energy = live.readings.energy_kwh
        bill = settle_amounts(live.deposit_amount, energy, live.tariff)[0] if live.readings.begun else 0
        body = Progress(
            live.session_id, live.state, str(energy), bill, live.deposit_amount, live.deposit_amount - bill,
            len(live.readings), live.readings.last_pg or "", live.coverage_limit, now,
        ).to_bytes()  # fmt: skip
        signature = p256_sign(self._svc.ledger_key, signed_message("progress", self._chain_id, body))
        view = stealth.Address.from_bytes(live.refund_address).view_public
        return envelope.seal(
            view, signed_pair(body, signature), progress_context(self._chain_id, live.session_id)
        )

    # --- deadlines ----------------------------------------------------------------------------------

    def _tick(self, payload: bytes) -> bytes:
        v = _dec(TICK_CALL, payload, "tick")
        now = self._now(v["now_ms"])
        grace = self._params["grace_ms"]
        settled = 0
        with self._lock:
            sessions = list(self._live.values())
        next_due = 0
        for live in sessions:
            with live.lock:
                if live.session_id not in self._live or live.settling:
                    continue
                if live.state == "OPENED" and now > live.deadline_ms:
                    self._settle(live, self._copy(live), "REFUNDED")
                    settled += 1
                    continue
                if live.state in ("ATTACHED", "CHARGING") and now > live.deadline_ms:
                    new = self._copy(live)
                    new.state, new.closing_since_ms, new.closed_by = "CLOSING", live.deadline_ms, "deadline"
                    self._persist([], [self._sealed_live(new)])
                    self._commit_live(live, new)
                if live.state == "CLOSING" and live.closing_since_ms is not None:
                    if now >= live.closing_since_ms + grace:
                        outcome = {"deadline": "DEADLINE", "exhausted": "EXHAUSTED"}.get(
                            live.closed_by, "STOPPED"
                        )
                        if not live.readings.begun:
                            outcome = "REFUNDED"
                        self._settle(live, self._copy(live), outcome)
                        settled += 1
                        continue
                    due = live.closing_since_ms + grace
                else:
                    due = live.deadline_ms + 1
                next_due = due if next_due == 0 else min(next_due, due)
        return encode(TICK_RESULT, {"settled": settled, "next_due_ms": next_due})

    # --- settlement -----------------------------------------------------------------------------------

    def _settle(
        self,
        old: _Live,
        live: _Live,
        outcome: str,
        *,
        idempotency: bytes = b"",
        party: str | None = None,
    ) -> bytes:
        """Split the deposit, append SETTLE, seal both receipts; session lock held. Returns the response
        for a STOP by ``party`` (or b"" when settled by a reading or the clock)."""
        tariff = live.tariff
        if live.readings.begun:
            pole_amount, refund_amount = settle_amounts(live.deposit_amount, live.readings.energy_kwh, tariff)
            energy = live.readings.energy_kwh
        else:
            pole_amount, refund_amount, energy = 0, live.deposit_amount, Decimal(0)
        chain_id = self._chain_id
        context = proof_context("SETTLE", chain_id, live.tag, [live.open_entry_hash])
        blinding = int.from_bytes(live.deposit_blinding, "big")
        old.settling = True
        try:
            split: Split = self._work(split_deposit, live.deposit_amount, blinding, pole_amount, context)
            refund_to = stealth.Address.from_bytes(live.refund_address)
            pole_to = stealth.Address.from_bytes(live.payout_address) if live.payout_address else refund_to
            pole_key, pole_env = seal_note(chain_id, pole_to, split.pole_commitment, *split.pole_opening)
            refund_key, refund_env = seal_note(
                chain_id, refund_to, split.refund_commitment, *split.refund_opening
            )
            record_hashes = live.readings.record_hashes
            payload = E.encode_payload(
                "SETTLE",
                {
                    "open_entry_hash": live.open_entry_hash,
                    "session_tag": live.tag,
                    "pole_commitment": split.pole_commitment,
                    "pole_owner_key": pole_key,
                    "pole_envelope": pole_env,
                    "refund_commitment": split.refund_commitment,
                    "refund_owner_key": refund_key,
                    "refund_envelope": refund_env,
                    "range_proof": split.range_proof,
                    "excess": split.excess,
                    "excess_proof": split.excess_proof,
                    "outcome": outcome,
                    "readings_digest": E.readings_digest(live.salt, record_hashes),
                },
            )
            with self._lock:
                entry = self._entry("SETTLE", payload)
                receipts = {}
                for who, amount, index in (("vehicle", refund_amount, 1), ("pole", pole_amount, 0)):
                    receipt = Receipt(
                        live.session_id,
                        who,
                        outcome,
                        pole_amount,
                        amount,
                        str(energy),
                        hashlib.sha256(live.tariff_body).digest(),
                        list(record_hashes),
                        live.salt,
                        entry.entry_hash,
                        note_id(entry.entry_hash, index),
                    ).to_bytes()
                    signature = p256_sign(self._svc.ledger_key, signed_message("receipt", chain_id, receipt))
                    records = list(live.records) if who == "vehicle" else []
                    to = refund_to if who == "vehicle" else pole_to
                    receipts[who] = envelope.seal(
                        to.view_public,
                        receipt_plaintext(receipt, signature, records),
                        receipt_context(chain_id, live.session_id, who),
                    )
                operator_key = self._poles[live.pole_id].body.operator_key
                settled = _Settled(
                    live.session_id,
                    live.session_key,
                    operator_key,
                    receipts["vehicle"],
                    receipts["pole"],
                    live.last_ack,
                )
                response = b""
                if party is not None:
                    response = encode(
                        STATE_RESULT,
                        {
                            "state": "SETTLED",
                            "receipt_envelope": receipts[party],
                            "last_ack": live.last_ack,
                            "progress_envelope": b"",
                        },
                    )
                settled_put = (
                    SETTLED_KIND,
                    live.tag,
                    1,
                    self._svc.seal(SETTLED_KIND, live.tag, 1, settled.to_bytes()),
                )
                deletes = [(SESSION_KIND, live.tag)] + [
                    (RECORD_KIND, live.tag + i.to_bytes(8, "big")) for i in range(len(old.records))
                ]
                self._append([entry], [settled_put], deletes, idempotency, response)
                self._live.pop(live.session_id, None)
                self._settled_cache[live.session_id] = settled
            old.state = "SETTLED"
            return response
        finally:
            old.settling = False
