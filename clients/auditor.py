"""The auditor: replay a ledger from GENESIS and check every rule of DESIGN §6 (docs/ledger.md).

    report = audit(entries, policy, expect_ledger_key=attested.ledger_key)   # an AuditReport, never raises
    report = audit_target(connection, policy)                                  # attest, stream, audit
    export_ledger(entries, path); entries = read_ledger(path)                  # the export file

``audit`` checks each entry in order and stops at the first failure: the chain (header, height, links,
time, payload hash, the signature of the ledger key in force: GENESIS's, then each KEY's), the payload's
canonical form, and the rules of its kind (docs/ledger.md, "What the auditor checks"): the GENESIS and
KEY quotes under an attestation policy evaluated at the entry's own time, pole registrations and their
uniqueness, the issuer's signature and amount proof of every MINT and the uniqueness of its reference,
every OPEN's inputs (they exist, are unspent and are no deposit), owner signatures, balance and range
proof, every SETTLE against the one unsettled OPEN it names (D = pole + refund + X, the excess proof,
the range proof), and every REDEEM. Time-dependent rules (expiries, the OPEN deadline window,
certificate validity) are judged at the entry's time. It learns no amount but the public ones (MINT,
REDEEM) and no identity.

Range proofs, most of the cost, are checked in batches (``rangeproof.verify_batch``, one multi-scalar
multiplication per batch with random weights), optionally in worker processes (``workers``) while the
replay goes on. Every batch is settled before a failure is reported and at the end, so the verdict is
the same as checking each proof with its entry: the first bad entry, with the counts as they stood
before it. ``batch=False`` checks OPEN and SETTLE with ``verify_open`` and ``verify_split`` one by one
(the reference path; the tests hold the two to the same verdicts).

Errors that come from the entries' source (a file that does not read, a connection that fails)
propagate unchanged: the report judges only the entries it was given.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import struct
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from clients.connection import Connection
from enclave.errors import AttestationError
from enclave.fsutil import atomic_write
from enclave.trusted.keybundle import KeyBundle, KeyBundleError
from enclave.verifier import Policy, verify_quote
from escrow.core import entries as E  # noqa: N812 (the payload formats)
from escrow.core import spending
from escrow.core.errors import CoreError
from escrow.core.ledger import MAX_PAYLOAD_BYTES, ZERO32, Entry, Head, LedgerError, check_entry
from escrow.core.notes import note_id, verify_mint
from escrow.core.registry import RegistryError, verify_pole
from escrow.core.settlement import AMOUNT_BITS, SettlementError, proof_context, verify_split
from escrow.core.signing import (
    SignatureError,
    ed25519_check_public_key,
    p256_check_public_key,
    p256_key_id,
)
from escrow.core.spending import InputNote, OpenBody, SpendError, verify_open, verify_redeem
from zk import bn254, generators, rangeproof, schnorr
from zk.errors import EncodingError, ProofError

__all__ = [
    "EXPORT_MAGIC",
    "REASONS",
    "AuditReport",
    "LedgerFileError",
    "audit",
    "audit_target",
    "export_ledger",
    "read_ledger",
]

BATCH_SIZE = 128  # range proofs per batch verification (larger batches measured no faster)
MIN_GENERATORS = 2 * AMOUNT_BITS  # an OPEN or SETTLE proof aggregates two 64-bit values
MAX_GENERATORS = rangeproof.MAX_VALUES * AMOUNT_BITS
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# The auditor's own reasons (the rest are the checks' own: LedgerError, PayloadError, MintError,
# RegistryError, SpendError, SettlementError reasons, documented in docs/ledger.md).
REASONS = {
    "LEDGER_EMPTY": "no entry at all (not even GENESIS)",
    "AUDIT_GENESIS_INVALID": "GENESIS names another protocol, no or invalid issuer keys, or bad limits",
    "AUDIT_GENERATORS_MISMATCH": "GENESIS's generator-set hash is not that of our generators",
    "AUDIT_QUOTE_INVALID": "a GENESIS or KEY quote fails the policy (the detail names the verifier's reason)",
    "AUDIT_KEY_INVALID": "a KEY entry names a ledger key that is not a P-256 point",
    "AUDIT_CHAIN_MISMATCH": "GENESIS is not the expected (attested) chain",
    "AUDIT_HEAD_MISMATCH": "the ledger does not contain the attested head",
    "AUDIT_LEDGER_KEY_MISMATCH": "the ledger key in force at the end is not the expected (attested) one",
    "AUDIT_DUPLICATE_REFERENCE": "a MINT reference used before",
    "AUDIT_DUPLICATE_SESSION": "an OPEN with a session tag used before",
    "AUDIT_NOTE_UNKNOWN": "an input note that no earlier entry created",
    "AUDIT_NOTE_SPENT_TWICE": "an input note already spent",
    "AUDIT_DEPOSIT_AS_INPUT": "an OPEN's deposit D spent by OPEN or REDEEM (only its SETTLE may)",
    "AUDIT_SETTLE_UNKNOWN_OPEN": "a SETTLE names no OPEN entry",
    "AUDIT_SETTLED_TWICE": "a SETTLE names an OPEN already settled",
    "AUDIT_SETTLE_TAG_MISMATCH": "a SETTLE's session tag is not its OPEN's",
    "AUDIT_SETTLE_MALFORMED": "a SETTLE output's owner key is not a valid Ed25519 key",
    "AUDIT_ENTRY_INVALID": "an entry made a check fail in an unexpected way (detail says how)",
}
_SPEND_REASONS = {  # what a spend check's reason means on a replayed ledger
    "SPEND_NOTE_NOT_FOUND": "AUDIT_NOTE_UNKNOWN",
    "SPEND_NOTE_SPENT": "AUDIT_NOTE_SPENT_TWICE",
    "SPEND_DEPOSIT_AS_INPUT": "AUDIT_DEPOSIT_AS_INPUT",
}
_BALANCE_TO_SPEND = {"BALANCE_MALFORMED": "SPEND_MALFORMED", "BALANCE_UNBALANCED": "SPEND_UNBALANCED"}


# --- the report ------------------------------------------------------------------------------------


@dataclass
class AuditReport:
    """What an audit found. On failure the counts and the head cover the entries before
    ``first_bad_height`` (all of which passed); ``reason`` is a stable code, ``detail`` says more."""

    ok: bool
    entries_checked: int = 0
    sessions_opened: int = 0
    sessions_settled: int = 0
    sessions_open: int = 0
    notes_unspent: int = 0  # spendable notes (deposits of open sessions are not counted)
    total_issued_minor: int = 0
    total_redeemed_minor: int = 0
    mints: int = 0
    redeems: int = 0
    poles: int = 0
    key_entries: int = 0
    quotes_verified: int = 0  # GENESIS and KEY quotes checked under a policy (0 without one)
    outcomes: dict[str, int] = field(default_factory=dict)  # SETTLE outcomes
    head_height: int = -1
    head_hash: str = ZERO32.hex()
    chain_id: str = ZERO32.hex()
    currency: str = ""
    decimals: int = 0
    ledger_key: str = ""  # the key in force after the last checked entry (hex)
    first_bad_height: int | None = None
    reason: str | None = None
    detail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (bytes as hex, amounts as integers in minor units)."""
        return asdict(self)


# --- failures ----------------------------------------------------------------------------------------


class _CheckError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def _fail(reason: str, detail: str) -> _CheckError:
    return _CheckError(reason, detail)


def _from_core(e: CoreError) -> _CheckError:
    reason = _SPEND_REASONS.get(e.reason, e.reason)
    return _CheckError(reason, e.detail)


@dataclass
class _Pending:
    """A range proof whose check is deferred to the next batch."""

    height: int
    reason: str
    item: tuple[list[bytes], bytes, int, bytes]
    before: AuditReport  # the tally before this entry, reported if the proof fails


@dataclass
class _Open:
    session_tag: bytes
    deposit: bytes
    settled: bool = False


def _at(time_ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=time_ms)


# --- the replay --------------------------------------------------------------------------------------


class _Auditor:
    def __init__(
        self,
        policy: Policy | None,
        expect_chain_id: bytes | None,
        expect_head: tuple[int, bytes] | None,
        batch: bool,
        batch_size: int,
        workers: int,
    ) -> None:
        self.policy = policy
        self.workers = workers
        self.pool: ProcessPoolExecutor | None = None
        self.inflight: deque[tuple[Future[tuple[int, str] | None], list[_Pending]]] = deque()
        self.expect_chain_id = expect_chain_id
        self.expect_head = expect_head
        self.batch = batch
        self.batch_size = batch_size
        self.head = Head()
        self.key: bytes | None = None  # the ledger key in force
        self.key_height = -1  # the entry that put it in force
        self.key_id = b""
        self.params: dict[str, Any] = {}
        self.issuers: dict[bytes, bytes] = {}
        self.notes: dict[bytes, InputNote] = {}
        self.mint_refs: set[bytes] = set()
        self.pole_ids: set[str] = set()
        self.meter_keys: set[bytes] = set()
        self.evse_ids: set[str] = set()  # upper case: EVSE ids compare case-insensitively
        self.tags: set[bytes] = set()
        self.opens: dict[bytes, _Open] = {}
        self.tally = AuditReport(ok=True)
        self.pending: list[_Pending] = []

    # -- driving --

    def run(self, entries: Iterable[Entry]) -> AuditReport:
        try:
            try:
                for entry in entries:
                    height = self.head.height + 1
                    try:
                        self._step(entry)
                    except _CheckError as f:
                        self._flush()  # an earlier proof that fails comes first
                        self._drain()
                        return self._failed(self.tally, height, f.reason, f.detail)
                    if len(self.pending) >= self.batch_size:
                        self._flush()
                self._flush()
                self._drain()
            except _DeferredProofError as d:
                return self._failed(d.pending.before, d.pending.height, d.pending.reason, d.detail)
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True, cancel_futures=True)
        try:
            self._finish()
        except _FinalError as f:
            return self._failed(self.tally, f.height, f.reason, f.detail)
        return self.tally

    def _failed(self, tally: AuditReport, height: int | None, reason: str, detail: str) -> AuditReport:
        return replace(tally, ok=False, first_bad_height=height, reason=reason, detail=detail)

    def _finish(self) -> None:
        if self.head.height < 0:
            raise _FinalError("LEDGER_EMPTY", "no GENESIS entry", 0)
        if self.expect_head is not None and self.head.height < self.expect_head[0]:
            raise _FinalError(
                "AUDIT_HEAD_MISMATCH",
                f"the ledger ends at {self.head.height}, before the attested head {self.expect_head[0]}",
                self.head.height + 1,
            )

    # -- one entry --

    def _step(self, entry: Entry) -> None:
        try:
            self._check(entry)
        except _CheckError:
            raise
        except CoreError as e:
            raise _from_core(e) from None
        except (ProofError, EncodingError, KeyBundleError) as e:
            raise _fail("AUDIT_ENTRY_INVALID", f"{type(e).__name__}: {e}") from None
        except Exception as e:  # fail closed: a check that breaks unexpectedly fails the entry
            raise _fail("AUDIT_ENTRY_INVALID", f"unexpected {type(e).__name__}: {e}") from None

    def _check(self, entry: Entry) -> None:
        header = entry.parsed
        kind = header.kind
        genesis: dict[str, Any] | None = None
        if kind == "GENESIS" and self.head.height < 0:
            genesis = self._genesis_payload(entry)
            key = genesis["ledger_key"]
        else:
            key = self.key if self.key is not None else b""
        new_head = check_entry(self.head, entry, key)
        height, now_ms = header.height, header.time_ms
        now_s = now_ms // 1000
        expect = self.expect_head
        if expect is not None and height == expect[0] and entry.entry_hash != expect[1]:
            raise _fail("AUDIT_HEAD_MISMATCH", "the entry at the attested head's height has another hash")
        if genesis is not None:
            self._check_genesis(entry, genesis)
        else:
            values = E.decode_payload(kind, entry.payload)
            chain_id = self.head.chain_id
            check = getattr(self, f"_check_{kind.lower()}")
            check(entry, values, chain_id, now_ms, now_s)
        self._apply(entry, new_head)

    def _apply(self, entry: Entry, new_head: Head) -> None:
        header = entry.parsed
        kind, t = header.kind, self.tally
        fx = E.effects(kind, entry.payload)
        for spent in fx.spent:
            note = self.notes[spent]
            self.notes[spent] = replace(note, spent=True)
            if not note.is_deposit:
                t.notes_unspent -= 1
        for out in fx.outputs:
            self.notes[note_id(entry.entry_hash, out.index)] = InputNote(
                out.commitment, out.owner_key, False, out.is_deposit
            )
            if not out.is_deposit:
                t.notes_unspent += 1
        if fx.mint_reference is not None:
            self.mint_refs.add(fx.mint_reference)
        self.head = new_head
        t.entries_checked += 1
        t.head_height, t.head_hash, t.chain_id = (
            new_head.height,
            new_head.entry_hash.hex(),
            new_head.chain_id.hex(),
        )
        t.ledger_key = (self.key or b"").hex()

    def _defer(self, height: int, reason: str, item: tuple[list[bytes], bytes, int, bytes]) -> None:
        before = replace(self.tally, outcomes=dict(self.tally.outcomes))
        self.pending.append(_Pending(height, reason, item, before))

    def _flush(self) -> None:
        """Check the pending range proofs as one batch: here, or in a worker process (then the verdict
        is collected by ``_drain``, oldest batch first)."""
        pending, self.pending = self.pending, []
        if not pending:
            return
        items = [p.item for p in pending]
        if self.workers == 0:
            self._verdict(pending, _first_failure(items))
            return
        if self.pool is None:
            context = multiprocessing.get_context("spawn")  # no fork: the caller may run threads
            self.pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=context)
        self.inflight.append((self.pool.submit(_first_failure, items), pending))
        while len(self.inflight) > 2 * self.workers:  # enough queued to keep every worker busy
            self._collect_oldest()

    def _drain(self) -> None:
        while self.inflight:
            self._collect_oldest()

    def _collect_oldest(self) -> None:
        future, pending = self.inflight.popleft()
        try:
            failure = future.result()
        except BrokenProcessPool:  # a worker died (or could not start): check the batch here instead
            failure = _first_failure([p.item for p in pending])
        self._verdict(pending, failure)

    def _verdict(self, pending: list[_Pending], failure: tuple[int, str] | None) -> None:
        if failure is not None:
            index, detail = failure
            raise _DeferredProofError(pending[index], detail)

    # -- GENESIS and KEY --

    def _genesis_payload(self, entry: Entry) -> dict[str, Any]:
        try:
            return E.decode_payload("GENESIS", entry.payload)
        except E.PayloadError as e:
            # No key to check the signature with: report the chain's own faults first, if any.
            try:
                check_entry(self.head, entry, bytes(65))
            except LedgerError as chain_error:
                if chain_error.reason != "ENTRY_SIGNATURE_INVALID":
                    raise
            raise _from_core(e) from None

    def _check_genesis(self, entry: Entry, g: dict[str, Any]) -> None:
        if self.expect_chain_id is not None and entry.entry_hash != self.expect_chain_id:
            raise _fail("AUDIT_CHAIN_MISMATCH", "GENESIS is not the expected chain's")
        if g["protocol"] != E.PROTOCOL:
            raise _fail("AUDIT_GENESIS_INVALID", f"protocol {g['protocol']!r}, expected {E.PROTOCOL!r}")
        count = g["generator_count"]
        if not MIN_GENERATORS <= count <= MAX_GENERATORS:
            bounds = f"[{MIN_GENERATORS}, {MAX_GENERATORS}]"
            raise _fail("AUDIT_GENESIS_INVALID", f"generator_count {count} not in {bounds}")
        if generators.generator_set_hash(count) != g["generator_set_hash"]:
            raise _fail("AUDIT_GENERATORS_MISMATCH", "the generator-set hash is not that of our generators")
        keys = g["issuer_keys"]
        if not keys or len(set(keys)) != len(keys):
            raise _fail("AUDIT_GENESIS_INVALID", "at least one issuer key, no duplicates")
        for key in keys:
            try:
                ed25519_check_public_key(key)
            except SignatureError as e:
                raise _fail("AUDIT_GENESIS_INVALID", f"issuer key: {e.detail}") from None
        if g["max_deadline_ms"] == 0:
            raise _fail("AUDIT_GENESIS_INVALID", "max_deadline_ms must be positive")
        if self.policy is not None:
            params = {name: g[name] for name, _ in E.GENESIS_PARAMS_SCHEMA}
            bundle = KeyBundle(ZERO32, g["ledger_key"], g["encryption_key"], g["instance_id"], g["isv_svn"])
            self._check_quote(g, bundle, E.genesis_nonce(params), entry.parsed.time_ms)
        self.params = g
        self.issuers = {hashlib.sha256(k).digest(): k for k in keys}
        self.key, self.key_height, self.key_id = g["ledger_key"], 0, p256_key_id(g["ledger_key"])
        self.tally.currency, self.tally.decimals = g["currency"], g["decimals"]

    def _check_key(self, entry: Entry, k: dict[str, Any], chain_id: bytes, now_ms: int, now_s: int) -> None:
        try:
            p256_check_public_key(k["ledger_key"])
        except SignatureError as e:
            raise _fail("AUDIT_KEY_INVALID", e.detail) from None
        header = entry.parsed
        if self.policy is not None:
            bundle = KeyBundle(
                chain_id,
                k["ledger_key"],
                k["encryption_key"],
                k["instance_id"],
                k["isv_svn"],
                head_height=header.height - 1,
                head_hash=header.prev_hash,
            )
            self._check_quote(k, bundle, E.key_nonce(chain_id, header.prev_hash), now_ms)
        self.key, self.key_height, self.key_id = k["ledger_key"], header.height, p256_key_id(k["ledger_key"])
        self.tally.key_entries += 1

    def _check_quote(self, v: Mapping[str, Any], bundle: KeyBundle, nonce: bytes, time_ms: int) -> None:
        assert self.policy is not None
        policy = replace(self.policy, at=_at(time_ms), nonce=nonce, key_bundle=bundle.to_bytes())
        try:
            collateral = v["collateral_json"].decode("utf-8")
        except UnicodeDecodeError:
            raise _fail("AUDIT_QUOTE_INVALID", "COLLATERAL_INVALID: the collateral is not UTF-8") from None
        try:
            report = verify_quote(v["quote"], collateral, policy)
        except AttestationError as e:
            raise _fail("AUDIT_QUOTE_INVALID", f"{e.reason}: {e.detail}") from None
        identity = report.identity
        claimed = (v["mr_enclave"].hex(), v["isv_svn"])
        if identity is None or (identity.mr_enclave, identity.isv_svn) != claimed:
            raise _fail("AUDIT_QUOTE_INVALID", "the quote's MRENCLAVE or ISVSVN is not the entry's")
        self.tally.quotes_verified += 1

    # -- the registry and notes --

    def _check_pole(self, entry: Entry, p: dict[str, Any], chain_id: bytes, now_ms: int, now_s: int) -> None:
        pole = verify_pole(chain_id, p["pole_body"], p["operator_signature"], p["pop_record"], now_s)
        if pole.pole_id in self.pole_ids:
            raise RegistryError("POLE_ID_IN_USE", f"pole {pole.pole_id} is registered")
        if pole.meter_public_key in self.meter_keys:
            raise RegistryError("POLE_METER_IN_USE", "the meter key belongs to an active pole")
        if pole.evse_id.upper() in self.evse_ids:
            raise RegistryError("POLE_EVSE_IN_USE", f"EVSE {pole.evse_id} belongs to an active pole")
        self.pole_ids.add(pole.pole_id)
        self.meter_keys.add(pole.meter_public_key)
        self.evse_ids.add(pole.evse_id.upper())
        self.tally.poles += 1

    def _check_mint(self, entry: Entry, m: dict[str, Any], chain_id: bytes, now_ms: int, now_s: int) -> None:
        mint = verify_mint(
            chain_id,
            self.issuers,
            self.params["currency"],
            m["mint_body"],
            m["issuer_signature"],
            m["envelope"],
            m["amount_proof"],
            now_s,
        )
        if mint.mint_reference in self.mint_refs:
            raise _fail("AUDIT_DUPLICATE_REFERENCE", f"reference {mint.mint_reference.hex()} used before")
        self.tally.mints += 1
        self.tally.total_issued_minor += mint.amount

    def _check_redeem(
        self, entry: Entry, r: dict[str, Any], chain_id: bytes, now_ms: int, now_s: int
    ) -> None:
        redeem = verify_redeem(
            chain_id,
            self.params["currency"],
            r["redeem_body"],
            r["owner_signatures"],
            r["amount_proof"],
            self.notes,
            now_s,
        )
        self.tally.redeems += 1
        self.tally.total_redeemed_minor += redeem.amount

    # -- sessions --

    def _check_open(self, entry: Entry, o: dict[str, Any], chain_id: bytes, now_ms: int, now_s: int) -> None:
        body = OpenBody.from_bytes(o["open_body"])
        if body.session_tag in self.tags:
            raise _fail("AUDIT_DUPLICATE_SESSION", "an OPEN with this session tag is on the ledger")
        args = (
            chain_id,
            o["open_body"],
            o["owner_signatures"],
            o["range_proof"],
            o["change_envelope"],
            None,  # the enclave envelope never reaches the ledger
            self.notes,
            self.key_id,
            now_s,
            self.params["max_deadline_ms"],
        )
        if self.batch:
            item = _open_without_range_proof(*args)
            self._defer(entry.parsed.height, "SPEND_PROOF_INVALID", item)
        else:
            verify_open(*args)
        self.tags.add(body.session_tag)
        self.opens[entry.entry_hash] = _Open(body.session_tag, body.deposit)
        self.tally.sessions_opened += 1
        self.tally.sessions_open += 1

    def _check_settle(
        self, entry: Entry, s: dict[str, Any], chain_id: bytes, now_ms: int, now_s: int
    ) -> None:
        opened = self.opens.get(s["open_entry_hash"])
        if opened is None:
            raise _fail("AUDIT_SETTLE_UNKNOWN_OPEN", "the SETTLE names no OPEN entry")
        if opened.settled:
            raise _fail("AUDIT_SETTLED_TWICE", "the OPEN it names is already settled")
        if s["session_tag"] != opened.session_tag:
            raise _fail("AUDIT_SETTLE_TAG_MISMATCH", "the session tag is not its OPEN's")
        for name in ("pole_owner_key", "refund_owner_key"):
            try:
                ed25519_check_public_key(s[name])
            except SignatureError as e:
                raise _fail("AUDIT_SETTLE_MALFORMED", f"{name}: {e.detail}") from None
        context = proof_context("SETTLE", chain_id, opened.session_tag, [s["open_entry_hash"]])
        args = (
            opened.deposit,
            s["pole_commitment"],
            s["refund_commitment"],
            s["excess"],
            s["range_proof"],
            s["excess_proof"],
            context,
        )
        if self.batch:
            item = _split_without_range_proof(*args)
            self._defer(entry.parsed.height, "BALANCE_RANGE_PROOF_INVALID", item)
        else:
            verify_split(*args)
        opened.settled = True
        t = self.tally
        t.sessions_settled += 1
        t.sessions_open -= 1
        t.outcomes[s["outcome"]] = t.outcomes.get(s["outcome"], 0) + 1


class _DeferredProofError(Exception):
    def __init__(self, pending: _Pending, detail: str) -> None:
        super().__init__(detail)
        self.pending, self.detail = pending, detail


class _FinalError(_CheckError):
    def __init__(self, reason: str, detail: str, height: int | None) -> None:
        super().__init__(reason, detail)
        self.height = height


def _first_failure(items: list[tuple[list[bytes], bytes, int, bytes]]) -> tuple[int, str] | None:
    """None if every range proof (commitments, proof, bits, context) holds, else the index of the first
    that fails on its own and why. One multi-scalar multiplication when all hold; runs in worker
    processes too, so it depends on nothing but its arguments."""
    try:
        rangeproof.verify_batch(items)
        return None
    except ProofError:
        pass
    for index, item in enumerate(items):
        try:
            rangeproof.verify(*item)
        except ProofError as e:
            return index, str(e)
    return 0, "the batch of range proofs does not verify, although each proof does alone"


# --- OPEN and SETTLE with the range proof left to the batch ------------------------------------------
#
# These run the checks of spending.verify_open and settlement.verify_split in the same order and with
# the same reasons, up to the range proof, and return the range proof's item for rangeproof.verify_batch.
# The tests hold them to the reference functions (batch=False) on accepted and refused entries alike.


def _open_without_range_proof(
    chain_id: bytes,
    body: bytes,
    owner_signatures: Sequence[bytes],
    range_proof: bytes,
    change_envelope: bytes,
    enclave_envelope: None,
    inputs: Mapping[bytes, InputNote],
    enclave_key_id: bytes,
    now_unix: int,
    max_deadline_ms: int,
) -> tuple[list[bytes], bytes, int, bytes]:
    opened = OpenBody.from_bytes(body)
    spending._check_structure(opened.input_note_ids, owner_signatures)
    spending._check_blob(change_envelope, spending.MAX_CHANGE_ENVELOPE_BYTES, "change envelope")
    if not isinstance(range_proof, bytes) or len(range_proof) != spending.OPEN_RANGE_PROOF_BYTES:
        raise SpendError("SPEND_MALFORMED", f"the range proof is {spending.OPEN_RANGE_PROOF_BYTES} bytes")
    try:
        ed25519_check_public_key(opened.change_owner_key)
    except SignatureError as e:
        raise SpendError("SPEND_MALFORMED", f"change owner key: {e.detail}") from None
    deposit = spending._check_point(opened.deposit, "deposit")
    change = spending._check_point(opened.change_commitment, "change commitment")
    spending._check_expiry(opened.expiry, now_unix)
    now_ms = now_unix * 1000
    if not now_ms < opened.deadline <= now_ms + max_deadline_ms:
        raise SpendError("SPEND_DEADLINE_INVALID", f"deadline must lie in ({now_ms}, +{max_deadline_ms} ms]")
    if opened.enclave_key_id != enclave_key_id:
        raise SpendError("SPEND_WRONG_ENCLAVE_KEY", "the OPEN is for another enclave key")
    spending._check_hash(change_envelope, opened.change_envelope_hash, "change envelope")
    spending._check_hash(range_proof, opened.range_proof_hash, "range proof")
    notes = spending._lookup(opened.input_note_ids, inputs)
    spending._check_owners(notes, spending.open_message(chain_id, body), owner_signatures)
    total = bn254.IDENTITY
    for index, note in enumerate(notes):
        try:
            total = total + bn254.point_from_bytes(note.commitment, allow_identity=False)
        except EncodingError as e:
            raise SpendError(_BALANCE_TO_SPEND["BALANCE_MALFORMED"], f"input {index}: {e}") from None
    if total != deposit + change:
        raise SpendError(_BALANCE_TO_SPEND["BALANCE_UNBALANCED"], "inputs do not sum to deposit + change")
    context = spending.open_proof_context(chain_id, opened)
    return [opened.deposit, opened.change_commitment], range_proof, AMOUNT_BITS, context


def _split_without_range_proof(
    deposit: bytes,
    pole: bytes,
    refund: bytes,
    excess: bytes,
    range_proof: bytes,
    excess_proof: bytes,
    context: bytes,
) -> tuple[list[bytes], bytes, int, bytes]:
    points = []
    for data, name in ((deposit, "deposit"), (pole, "pole"), (refund, "refund"), (excess, "excess")):
        try:
            points.append(bn254.point_from_bytes(data, allow_identity=False))
        except EncodingError as e:
            raise SettlementError("BALANCE_MALFORMED", f"{name}: {e}") from None
    D, P, R, X = points
    if D != P + R + X:
        raise SettlementError("BALANCE_UNBALANCED", "deposit != pole + refund + excess")
    try:  # the excess proof's context is the SETTLE context followed by D || pole || refund
        schnorr.verify(excess, excess_proof, context + deposit + pole + refund)
    except ProofError as e:
        raise SettlementError("BALANCE_EXCESS_PROOF_INVALID", str(e)) from None
    return [pole, refund], range_proof, AMOUNT_BITS, context


# --- entry points ------------------------------------------------------------------------------------


def audit(
    entries: Iterable[Entry],
    policy: Policy | None = None,
    *,
    expect_ledger_key: bytes | None = None,
    expect_chain_id: bytes | None = None,
    expect_head: tuple[int, bytes] | None = None,
    batch: bool = True,
    batch_size: int = BATCH_SIZE,
    workers: int = 0,
) -> AuditReport:
    """Replay ``entries`` from GENESIS and check everything (module docstring); never raises for what
    the entries hold, only for what their source raises.

    ``policy``: the attestation policy GENESIS's and every KEY's quote must meet, evaluated at the
    entry's time (its ``at``, ``nonce`` and ``key_bundle`` are filled in per entry; an MRENCLAVE pin
    only fits a chain without upgrades, pin MRSIGNER otherwise). None skips the quotes.
    ``expect_ledger_key``: the key in force at the end must be this one (the attested key).
    ``expect_chain_id`` / ``expect_head`` (height, entry hash): the chain must be this one and contain
    this entry (an attested key bundle's chain and head).
    ``batch``: check range proofs in batches of ``batch_size`` (False: each with its entry).
    ``workers``: verify the batches in that many worker processes while the replay goes on (0: in this
    process); the verdict is the same."""
    if batch_size < 1 or workers < 0:
        raise ValueError("batch_size must be positive and workers not negative")
    auditor = _Auditor(policy, expect_chain_id, expect_head, batch, batch_size, workers)
    report = auditor.run(entries)
    if report.ok and expect_ledger_key is not None and auditor.key != expect_ledger_key:
        return replace(
            report,
            ok=False,
            first_bad_height=auditor.key_height,
            reason="AUDIT_LEDGER_KEY_MISMATCH",
            detail="the ledger key in force at the end is not the expected one",
        )
    return report


def audit_target(connection: Connection, policy: Policy, *, workers: int = 0) -> AuditReport:
    """Attest the escrow behind ``connection`` under ``policy`` (raises AttestationError if that fails),
    stream its whole ledger and audit it under the same policy: the chain must be the attested one,
    contain the attested head and end under the attested ledger key."""
    attested = connection.attest(policy)
    bundle = attested.bundle
    return audit(
        connection.entries(),
        policy,
        expect_ledger_key=attested.ledger_key,
        expect_chain_id=attested.chain_id,
        expect_head=(bundle.head_height, bundle.head_hash),
        workers=workers,
    )


# --- the export file -----------------------------------------------------------------------------------

EXPORT_MAGIC = b"escrow.v1/ledger-export/v1\n"
END_MARKER = 0xFFFFFFFF
MAX_HEADER_BYTES = 256
SIGNATURE_BYTES = 64
_U32 = struct.Struct(">I")
_TRAILER = struct.Struct(">IQ32s")  # end marker, entry count, last entry hash


class LedgerFileError(ValueError):
    """A ledger export that cannot be written or read; ``reason`` is stable (EXPORT_MAGIC,
    EXPORT_TRUNCATED, EXPORT_MALFORMED, EXPORT_TRAILER_MISMATCH, EXPORT_TRAILING_BYTES)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def _check_entry_sizes(entry: Entry, index: int) -> None:
    if not isinstance(entry.header, bytes) or not 0 < len(entry.header) <= MAX_HEADER_BYTES:
        raise LedgerFileError("EXPORT_MALFORMED", f"entry {index}: a header is 1 to {MAX_HEADER_BYTES} bytes")
    if not isinstance(entry.payload, bytes) or len(entry.payload) > MAX_PAYLOAD_BYTES:
        raise LedgerFileError("EXPORT_MALFORMED", f"entry {index}: a payload is at most {MAX_PAYLOAD_BYTES}")
    if not isinstance(entry.signature, bytes) or len(entry.signature) != SIGNATURE_BYTES:
        raise LedgerFileError("EXPORT_MALFORMED", f"entry {index}: a signature is {SIGNATURE_BYTES} bytes")


def export_ledger(entries: Iterable[Entry], path: Path | str) -> int:
    """Write ``entries`` to ``path`` in the export format (docs/ledger.md), atomically: the file is the
    old one or the complete new one. Nothing is checked but the sizes (auditing is ``audit``'s job).
    Returns the number of entries written."""
    out = bytearray(EXPORT_MAGIC)
    count, last = 0, ZERO32
    for entry in entries:
        _check_entry_sizes(entry, count)
        out += _U32.pack(len(entry.header)) + entry.header
        out += _U32.pack(len(entry.payload)) + entry.payload
        out += entry.signature
        count, last = count + 1, hashlib.sha256(entry.header).digest()
    out += _TRAILER.pack(END_MARKER, count, last)
    atomic_write(Path(path), bytes(out))
    return count


def read_ledger(path: Path | str) -> Iterator[Entry]:
    """The entries of an export file, in order, read lazily and strictly: a wrong magic, a length out of
    bounds, a file that ends before its trailer, a trailer that does not match what was read, or
    anything after the trailer raises LedgerFileError (when the iteration reaches it)."""
    with open(path, "rb") as f:
        if f.read(len(EXPORT_MAGIC)) != EXPORT_MAGIC:
            raise LedgerFileError("EXPORT_MAGIC", "not an escrow.v1 ledger export (v1)")
        count, last = 0, ZERO32

        def take(n: int, what: str) -> bytes:
            data = f.read(n)
            if len(data) != n:
                raise LedgerFileError("EXPORT_TRUNCATED", f"the file ends inside entry {count}'s {what}")
            return data

        while True:
            (n,) = _U32.unpack(take(4, "header length"))
            if n == END_MARKER:
                break
            if not 0 < n <= MAX_HEADER_BYTES:
                raise LedgerFileError("EXPORT_MALFORMED", f"entry {count}: header length {n}")
            header = take(n, "header")
            (n,) = _U32.unpack(take(4, "payload length"))
            if n > MAX_PAYLOAD_BYTES:
                raise LedgerFileError("EXPORT_MALFORMED", f"entry {count}: payload length {n}")
            payload = take(n, "payload")
            signature = take(SIGNATURE_BYTES, "signature")
            yield Entry(header, payload, signature)
            count, last = count + 1, hashlib.sha256(header).digest()
        rest = f.read(_TRAILER.size - 4)
        if len(rest) != _TRAILER.size - 4:
            raise LedgerFileError("EXPORT_TRUNCATED", "the file ends inside its trailer")
        _, written, written_last = _TRAILER.unpack(_U32.pack(END_MARKER) + rest)
        if (written, written_last) != (count, last):
            raise LedgerFileError(
                "EXPORT_TRAILER_MISMATCH", f"the trailer names {written} entries, the file holds {count}"
            )
        if f.read(1):
            raise LedgerFileError("EXPORT_TRAILING_BYTES", "bytes after the trailer")
