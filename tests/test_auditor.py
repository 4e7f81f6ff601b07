"""The auditor (clients/auditor.py): a real service's ledger audits clean with exact counts and totals;
each rule of DESIGN §6 rejects a ledger that breaks it (forged chains signed with a fresh P-256 key, whose
payloads the real clients build, so that only the rule under test fails); the export file round-trips
and is read strictly; and an independent checker written from docs/ledger.md agrees with the auditor."""

from __future__ import annotations

import copy
import hashlib
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import independent_ledger_check as independent
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from service_harness import CURRENCY, SESSION_FEE, Harness

from clients import auditor
from clients.auditor import AuditReport, LedgerFileError, audit, export_ledger, read_ledger
from clients.connection import Attested, Connection, call
from clients.issuer import Issuer
from clients.meter import SimulatedMeter
from clients.pole import Pole
from clients.wallet import PreparedDeposit, Wallet
from enclave.measurement import EnclaveConfig
from enclave.trusted.keybundle import KeyBundle
from enclave.verifier import Policy
from escrow.core import entries as E  # noqa: N812
from escrow.core.billing import settle_amounts
from escrow.core.ledger import Entry, Head, advance, make_entry
from escrow.core.notes import note_id, seal_note
from escrow.core.settlement import AMOUNT_BITS, proof_context, split_deposit
from escrow.core.signing import p256_public_key_bytes
from escrow.core.spending import OpenBody, RedeemBody, redeem_message, redeem_proof_context
from escrow.core.tariff import Tariff
from escrow.host.grpc_server import create_server
from escrow.host.node import EscrowNode
from escrow.v1 import charging_pb2
from zk import bn254, envelope, generators, rangeproof, schnorr, stealth

SETTLED = charging_pb2.SESSION_STATE_SETTLED

# --- a real service: mint, a pole, a full session, a STOP refund, a REDEEM, a session left open ---------


@dataclass
class World:
    h: Harness
    entries: list[Entry]
    expected: dict[str, Any]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("auditor")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ESCROW_NV_DIR", str(tmp / "nv"))
        h = Harness.start(tmp)
        try:
            pole = h.new_pole()
            car = Wallet(os.urandom(32))
            h.fund(car, 1000, 500)
            full = h.open_session(car, pole, 800)  # spends the 1000 note: change 200
            h.attach(pole, full)
            acks = h.charge(pole, full, [Decimal("1.5"), Decimal("2.25")])
            assert acks[-1].decision == "SETTLED"
            bill, refund = settle_amounts(800, Decimal("3.75"), Tariff.from_bytes(pole.tariff_body))
            assert (bill, refund) == (146 + SESSION_FEE, 604)  # floor(3.75 kWh * 39 cents) + fee
            car.scan(h.c, h.a)
            refunded = h.open_session(car, pole, 300)  # spends the 604 refund: change 304
            answer = call(h.c.charging.Stop, car.stop_request(h.a, refunded))  # before any reading
            assert answer.state == SETTLED  # refunded at once: 300 back, a 0 note for the pole
            car.scan(h.c, h.a)
            call(h.c.notes.Redeem, car.redeem_request(h.a, CURRENCY, 500, b"bank-transfer-1"))
            car.scan(h.c, h.a)
            h.open_session(car, pole, 100)  # spends the 304 change: change 204; left open
            entries = list(h.c.entries(0))
            expected = {
                "entries_checked": 10,
                "sessions_opened": 3,
                "sessions_settled": 2,
                "sessions_open": 1,
                "notes_unspent": 5,  # 200, the pole's 196, the refund 300, the pole's 0, 204
                "total_issued_minor": 1500,
                "total_redeemed_minor": 500,
                "mints": 2,
                "redeems": 1,
                "poles": 1,
                "key_entries": 0,
                "outcomes": {"ENDED": 1, "REFUNDED": 1},
                "head_height": 9,
            }
            yield World(h, entries, expected)
        finally:
            h.stop()


def _check_counts(report: AuditReport, expected: dict[str, Any]) -> None:
    for name, value in expected.items():
        assert getattr(report, name) == value, (name, report)


def test_the_service_ledger_audits_clean_with_exact_counts(world: World) -> None:
    kinds = [e.parsed.kind for e in world.entries]
    assert kinds == ["GENESIS", "POLE", "MINT", "MINT", "OPEN", "SETTLE", "OPEN", "SETTLE", "REDEEM", "OPEN"]
    for batch in (True, False):
        report = audit(world.entries, world.h.policy(), expect_ledger_key=world.h.a.ledger_key, batch=batch)
        assert report.ok, report
        _check_counts(report, world.expected)
        assert report.quotes_verified == 1
        assert report.head_hash == world.entries[-1].entry_hash.hex()
        assert report.chain_id == world.h.a.chain_id.hex() == world.entries[0].entry_hash.hex()
        assert (report.currency, report.decimals) == (CURRENCY, 2)
        assert report.ledger_key == world.h.a.ledger_key.hex()
        assert (report.first_bad_height, report.reason, report.detail) == (None, None, None)
    d = report.to_dict()
    assert (
        d["ok"] is True and d["total_issued_minor"] == 1500 and d["outcomes"] == {"ENDED": 1, "REFUNDED": 1}
    )
    assert audit(world.entries, batch_size=1).ok  # every proof in a batch of its own


def test_audit_target_attests_streams_and_audits(world: World) -> None:
    report = auditor.audit_target(world.h.c, world.h.policy())
    assert report.ok, report
    _check_counts(report, world.expected)
    for page in (1, 3, 10, 11):  # one StreamEntries call per page, each with its own deadline
        assert list(world.h.c.entries(page=page)) == world.entries
    assert list(world.h.c.entries(8, page=1)) == world.entries[8:]
    assert list(world.h.c.entries(2, 5, page=2)) == world.entries[2:7]


def test_genesis_quote_under_another_mrenclave_is_refused(world: World) -> None:
    report = audit(world.entries, replace(world.h.policy(), expect_mrenclave=bytes(32)))
    assert (report.ok, report.reason, report.first_bad_height) == (False, "AUDIT_QUOTE_INVALID", 0)
    assert report.detail is not None and report.detail.startswith("MRENCLAVE_MISMATCH")
    assert report.entries_checked == 0 and report.head_height == -1


def test_quotes_are_judged_at_the_entry_time(world: World) -> None:
    """The policy's ``at`` is replaced by each entry's time: evaluating at a time where the collateral
    has long expired does not matter, the entry's own time does."""
    far_future = datetime(2200, 1, 1, tzinfo=UTC)
    assert audit(world.entries, replace(world.h.policy(), at=far_future)).ok


def test_wrong_expected_ledger_key_chain_or_head(world: World) -> None:
    other = p256_public_key_bytes(ec.generate_private_key(ec.SECP256R1()))
    report = audit(world.entries, expect_ledger_key=other)
    assert (report.ok, report.reason, report.first_bad_height) == (False, "AUDIT_LEDGER_KEY_MISMATCH", 0)
    report = audit(world.entries, expect_chain_id=bytes(32))
    assert (report.reason, report.first_bad_height) == ("AUDIT_CHAIN_MISMATCH", 0)
    report = audit(world.entries, expect_head=(3, bytes(32)))
    assert (report.reason, report.first_bad_height, report.entries_checked) == ("AUDIT_HEAD_MISMATCH", 3, 3)
    report = audit(world.entries[:5], expect_head=(7, world.entries[7].entry_hash))  # a ledger cut short
    assert (report.reason, report.first_bad_height) == ("AUDIT_HEAD_MISMATCH", 5)
    assert audit(world.entries, expect_head=(7, world.entries[7].entry_hash)).ok


def test_chain_breaks_are_named(world: World) -> None:
    es = world.entries
    assert audit([]).reason == "LEDGER_EMPTY"
    for broken, reason, height in [
        (es[1:], "ENTRY_HEIGHT", 0),
        ([*es[:3], es[4], es[3], *es[5:]], "ENTRY_HEIGHT", 3),
        (
            [*es[:2], Entry(es[2].header, es[2].payload, es[3].signature), *es[3:]],
            "ENTRY_SIGNATURE_INVALID",
            2,
        ),
        ([*es[:4], Entry(es[4].header, es[4].payload[:-1], es[4].signature)], "ENTRY_PAYLOAD_HASH", 4),
    ]:
        report = audit(broken)
        assert (report.ok, report.reason, report.first_bad_height) == (False, reason, height)


def test_an_entry_signed_by_another_key_is_refused(world: World) -> None:
    """A MINT appended to the real chain with a valid issuer signature and amount proof, but signed by a
    fresh P-256 key instead of the enclave's."""
    head = Head()
    for e in world.entries:
        head = advance(head, e)
    request = world.h.issuer.mint_request(world.h.a, CURRENCY, Wallet(os.urandom(32)).address, 10**6)
    forged = make_entry(
        head, "MINT", _mint_payload(request), head.time_ms + 1, ec.generate_private_key(ec.SECP256R1())
    )
    report = audit([*world.entries, forged])
    assert (report.reason, report.first_bad_height, report.entries_checked) == (
        "ENTRY_SIGNATURE_INVALID",
        10,
        10,
    )
    assert report.total_issued_minor == 1500  # counts cover the entries before the bad one


# --- the export file ---------------------------------------------------------------------------------


def test_export_and_read_round_trip(world: World, tmp_path: Path) -> None:
    path = tmp_path / "ledger.bin"
    assert export_ledger(world.entries, path) == len(world.entries)
    assert path.read_bytes().startswith(b"escrow.v1/ledger-export/v1\n")
    assert list(read_ledger(path)) == world.entries
    report = audit(read_ledger(path), world.h.policy(), expect_ledger_key=world.h.a.ledger_key)
    assert report.ok, report
    _check_counts(report, world.expected)
    assert export_ledger([], tmp_path / "empty.bin") == 0
    assert list(read_ledger(tmp_path / "empty.bin")) == []


def test_a_tampered_payload_byte_is_refused(world: World, tmp_path: Path) -> None:
    path = tmp_path / "ledger.bin"
    export_ledger(world.entries, path)
    data = bytearray(path.read_bytes())
    target = world.entries[6].payload  # the second OPEN
    data[bytes(data).find(target) + len(target) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    report = audit(read_ledger(path))
    assert (report.ok, report.reason, report.first_bad_height) == (False, "ENTRY_PAYLOAD_HASH", 6)
    assert (report.entries_checked, report.head_height) == (6, 5)


def _expect_read_error(path: Path, reason: str) -> None:
    with pytest.raises(LedgerFileError) as info:
        list(read_ledger(path))
    assert info.value.reason == reason, info.value


def test_read_ledger_rejects_every_malformed_file(world: World, tmp_path: Path) -> None:
    good = tmp_path / "good.bin"
    export_ledger(world.entries[:3], good)
    data = good.read_bytes()
    magic = len(auditor.EXPORT_MAGIC)
    first_header = int.from_bytes(data[magic : magic + 4], "big")
    payload_at = magic + 4 + first_header
    trailer = 4 + 8 + 32
    cases = {
        "EXPORT_MAGIC": [b"", b"escrow.v1/ledger-export/v2\n" + data[magic:], b"garbage" * 10],
        "EXPORT_TRUNCATED": [
            *(data[:cut] for cut in (magic, magic + 2, magic + 40, payload_at + 2, len(data) - trailer - 1)),
            data[:-trailer],  # cut at an entry boundary: no trailer
            data[:-1],  # inside the trailer
        ],
        "EXPORT_TRAILING_BYTES": [data + b"\x00"],
        "EXPORT_TRAILER_MISMATCH": [
            data[:-40] + (2).to_bytes(8, "big") + data[-32:],  # the count
            data[:-1] + bytes([data[-1] ^ 1]),  # the last entry's hash
        ],
        "EXPORT_MALFORMED": [
            data[:magic] + (0).to_bytes(4, "big") + data[magic + 4 :],  # an empty header
            data[:magic] + (257).to_bytes(4, "big") + data[magic + 4 :],  # a header too long
            data[:payload_at] + (2 << 20).to_bytes(4, "big") + data[payload_at + 4 :],  # a payload too long
        ],
    }
    bad = tmp_path / "bad.bin"
    for reason, variants in cases.items():
        for variant in variants:
            bad.write_bytes(variant)
            _expect_read_error(bad, reason)
    with pytest.raises(LedgerFileError) as info:
        export_ledger([world.entries[0], Entry(b"h", b"p", b"short")], tmp_path / "x.bin")
    assert info.value.reason == "EXPORT_MALFORMED" and not (tmp_path / "x.bin").exists()


def test_a_truncated_file_is_not_audited_as_a_shorter_ledger(world: World, tmp_path: Path) -> None:
    path = tmp_path / "ledger.bin"
    export_ledger(world.entries, path)
    data = path.read_bytes()
    path.write_bytes(data[: data.find(world.entries[5].header) - 4])  # ends where entry 5 begins
    with pytest.raises(LedgerFileError) as info:
        audit(read_ledger(path))
    assert info.value.reason == "EXPORT_TRUNCATED"


# --- the independent checker (tests/independent_ledger_check.py, written from docs/ledger.md) ----------


def test_an_independent_checker_agrees_with_the_auditor(world: World, forged: Forged, tmp_path: Path) -> None:
    for name, entries in (("service", world.entries), ("forged", forged.full.entries)):
        path = tmp_path / f"{name}.bin"
        export_ledger(entries, path)
        summary = independent.check_file(path)
        report = audit(read_ledger(path))
        assert report.ok, report
        assert summary == {
            "entries": report.entries_checked,
            "head_hash": report.head_hash,
            "chain_id": report.chain_id,
            "issued_minor": report.total_issued_minor,
            "redeemed_minor": report.total_redeemed_minor,
            "notes_unspent": report.notes_unspent,
            "sessions_opened": report.sessions_opened,
            "sessions_settled": report.sessions_settled,
        }


def test_the_independent_checker_refuses_what_breaks_the_balance(forged: Forged, tmp_path: Path) -> None:
    f = forged.opened.fork()
    f.append("SETTLE", f.settle(forged.open_entry, forged.prepared, 200, forged.car, amount=601))
    g = forged.opened.fork()
    g.append("REDEEM", g.redeem(forged.funded_wallet(), 1000))  # the note the OPEN spent
    h = forged.full.fork()
    h.append("REDEEM", h.redeem(forged.wallet_on(forged.full), 400, blinding_offset=1))
    for chain, fragment in ((f, "D != pole + refund + X"), (g, "spent twice"), (h, "Schnorr")):
        path = tmp_path / "bad.bin"
        export_ledger(chain.entries, path)
        with pytest.raises(independent.CheckFailedError, match=re.escape(fragment)):
            independent.check_file(path)


# --- KEY entries: an upgraded enclave ------------------------------------------------------------------


def test_a_key_entry_is_checked_and_rotates_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Restarting as ISVSVN 2 (a new MRENCLAVE) appends a KEY entry with its quote: an MRSIGNER policy
    accepts the whole history; pinning either MRENCLAVE refuses the quote of the other version."""
    monkeypatch.setenv("ESCROW_NV_DIR", str(tmp_path / "nv"))
    h = Harness.start(tmp_path)
    try:
        h.fund(Wallet(os.urandom(32)), 700)
        old_policy = h.policy()
        assert h.node is not None and h.node.host is not None
        identity = h.node.host.identity
    finally:
        h.stop()
    node = EscrowNode.start(
        h.data_dir, None, config=EnclaveConfig(isv_svn=2), nv_dir=h.nv_dir, tick_interval_s=0
    )
    try:
        assert node.host is not None
        server, port = create_server(node)
        try:
            with Connection(f"127.0.0.1:{port}") as conn:
                signer_policy = Policy(
                    root_ca_der=old_policy.root_ca_der,
                    expect_mrsigner=identity.mr_signer,
                    allow_debug_insecure=identity.debug,
                )
                report = auditor.audit_target(conn, signer_policy)
                assert report.ok, report
                assert (report.key_entries, report.quotes_verified, report.total_issued_minor) == (1, 2, 700)
                entries = list(conn.entries(0))
                assert [e.parsed.kind for e in entries] == ["GENESIS", "MINT", "KEY"]
                report = audit(entries, old_policy)
                assert (report.reason, report.first_bad_height) == ("AUDIT_QUOTE_INVALID", 2)
                assert report.detail is not None and report.detail.startswith("MRENCLAVE_MISMATCH")
                report = audit(entries, replace(old_policy, expect_mrenclave=node.host.identity.mr_enclave))
                assert (report.reason, report.first_bad_height) == ("AUDIT_QUOTE_INVALID", 0)
        finally:
            server.stop(None).wait()
    finally:
        node.close()


# --- forged chains: each rule of §6 on its own ---------------------------------------------------------


class FakeConnection:
    """Serves a list of entries to Wallet.scan."""

    def __init__(self, entries: list[Entry]) -> None:
        self._entries = entries

    def entries(self, from_height: int = 0) -> Iterator[Entry]:
        return iter(self._entries[from_height:])


def _mint_payload(request: Any) -> bytes:
    fields = ("mint_body", "issuer_signature", "amount_proof", "envelope")
    return E.encode_payload("MINT", {name: getattr(request, name) for name in fields})


def _tweak(kind: str, payload: bytes, **changes: Any) -> bytes:
    return E.encode_payload(kind, {**E.decode_payload(kind, payload), **changes})


class Forger:
    """A chain signed by a fresh P-256 key (no quote: audit it without a policy) whose payloads the real
    clients build, with real proofs and signatures."""

    def __init__(self, issuer: Issuer, **genesis: Any) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.pub = p256_public_key_bytes(self.key)
        _, self.enc_pub = envelope.generate_keypair()
        self.issuer = issuer
        self.entries: list[Entry] = []
        self.head = Head()
        self.time_ms = int(time.time() * 1000)
        params = {
            "protocol": "escrow.v1",
            "currency": CURRENCY,
            "decimals": 2,
            "issuer_keys": [issuer.public_key],
            "generator_set_hash": generators.generator_set_hash(128),
            "generator_count": 128,
            "grace_ms": 120_000,
            "max_deadline_ms": 7 * 24 * 3600 * 1000,
            "mr_enclave": bytes(32),
            "ledger_key": self.pub,
            "encryption_key": self.enc_pub,
            "instance_id": bytes(16),
            "isv_svn": 1,
            "quote": b"",
            "collateral_json": b"",
            **genesis,
        }
        self.append("GENESIS", E.encode_payload("GENESIS", params))
        bundle = KeyBundle(self.head.chain_id, self.pub, self.enc_pub, bytes(16), 1)
        self.attested = Attested(bundle, None, b"")  # type: ignore[arg-type]

    @property
    def chain_id(self) -> bytes:
        return self.head.chain_id

    def fork(self) -> Forger:
        twin = copy.copy(self)
        twin.entries = list(self.entries)
        return twin

    def append(self, kind: str, payload: bytes, key: ec.EllipticCurvePrivateKey | None = None) -> Entry:
        self.time_ms += 1
        entry = make_entry(self.head, kind, payload, self.time_ms, key or self.key)
        self.entries.append(entry)
        self.head = advance(self.head, entry)
        return entry

    def mint(self, wallet: Wallet, amount: int, *, reference: bytes | None = None) -> bytes:
        request = self.issuer.mint_request(
            self.attested, CURRENCY, wallet.address, amount, reference=reference
        )
        return _mint_payload(request)

    def open(self, wallet: Wallet, prepared: PreparedDeposit) -> bytes:
        request, _ = wallet.open_request(
            self.attested, prepared, "POLE-1", b"tariff", self.time_ms + 3_600_000
        )
        fields = ("open_body", "owner_signatures", "range_proof", "change_envelope")
        return E.encode_payload("OPEN", {name: _plain(getattr(request, name)) for name in fields})

    def settle(
        self,
        open_entry: Entry,
        prepared: PreparedDeposit,
        pole: int,
        to: Wallet,
        *,
        amount: int | None = None,
    ) -> bytes:
        """The SETTLE of ``open_entry``: ``pole`` to the pole, the rest back; ``amount`` splits another
        deposit amount than D's (an unbalanced settlement)."""
        tag = OpenBody.from_bytes(E.decode_payload("OPEN", open_entry.payload)["open_body"]).session_tag
        context = proof_context("SETTLE", self.chain_id, tag, [open_entry.entry_hash])
        split = split_deposit(amount or prepared.deposit, prepared.deposit_blinding, pole, context)
        pole_key, pole_env = seal_note(self.chain_id, to.address, split.pole_commitment, *split.pole_opening)
        refund_key, refund_env = seal_note(
            self.chain_id, to.address, split.refund_commitment, *split.refund_opening
        )
        values = {
            "open_entry_hash": open_entry.entry_hash,
            "session_tag": tag,
            "pole_commitment": split.pole_commitment,
            "pole_owner_key": pole_key,
            "pole_envelope": pole_env,
            "refund_commitment": split.refund_commitment,
            "refund_owner_key": refund_key,
            "refund_envelope": refund_env,
            "range_proof": split.range_proof,
            "excess": split.excess,
            "excess_proof": split.excess_proof,
            "outcome": "ENDED",
            "readings_digest": E.readings_digest(os.urandom(32), [os.urandom(32)]),
        }
        return E.encode_payload("SETTLE", values)

    def redeem(self, wallet: Wallet, amount: int, *, blinding_offset: int = 0) -> bytes:
        """A REDEEM of ``amount`` from ``wallet``; ``blinding_offset`` proves for a wrong blinding (the
        body names that proof's hash and the owners sign it, so only the proof is wrong)."""
        request = wallet.redeem_request(self.attested, CURRENCY, amount, b"ref")
        body, signatures, proof = request.redeem_body, list(request.owner_signatures), request.amount_proof
        if blinding_offset:
            ids = RedeemBody.from_bytes(body).input_note_ids
            inputs = [wallet.notes[i] for i in ids]
            blinding = sum(n.opened.blinding for n in inputs) + blinding_offset
            proof = schnorr.prove_public_amount(amount, blinding, redeem_proof_context(self.chain_id, ids))
            body = replace(RedeemBody.from_bytes(body), proof_hash=hashlib.sha256(proof).digest()).to_bytes()
            message = redeem_message(self.chain_id, body)
            signatures = [stealth.sign_with_scalar(n.opened.secret_scalar, message) for n in inputs]
        return E.encode_payload(
            "REDEEM", {"redeem_body": body, "owner_signatures": signatures, "amount_proof": proof}
        )


def _plain(value: Any) -> Any:
    return list(value) if not isinstance(value, bytes) else value


@dataclass
class Forged:
    """A forged chain in stages: funded (GENESIS, MINT 1000, MINT 500), opened (+ OPEN of 600 from the
    1000 note), full (+ SETTLE 200 / 400, + REDEEM of the 500 note)."""

    seed: bytes
    funded: Forger
    opened: Forger
    full: Forger
    car: Wallet
    prepared: PreparedDeposit
    open_entry: Entry
    open_payload: bytes
    settle_payload: bytes

    def wallet_on(self, forger: Forger) -> Wallet:
        wallet = Wallet(self.seed)
        wallet.scan(FakeConnection(forger.entries), forger.attested)  # type: ignore[arg-type]
        return wallet

    def funded_wallet(self) -> Wallet:
        return self.wallet_on(self.funded)


@pytest.fixture(scope="module")
def forged() -> Forged:
    seed = os.urandom(32)
    funded = Forger(Issuer(os.urandom(32)))
    car = Wallet(seed)
    funded.append("MINT", funded.mint(car, 1000))
    funded.append("MINT", funded.mint(car, 500))
    car.scan(FakeConnection(funded.entries), funded.attested)  # type: ignore[arg-type]
    prepared = car.prepare_deposit(funded.attested, 600)
    open_payload = funded.open(car, prepared)
    opened = funded.fork()
    open_entry = opened.append("OPEN", open_payload)
    full = opened.fork()
    settle_payload = full.settle(open_entry, prepared, 200, car)
    full.append("SETTLE", settle_payload)
    state = Forged(seed, funded, opened, full, car, prepared, open_entry, open_payload, settle_payload)
    full.append("REDEEM", full.redeem(state.wallet_on(full), 500))
    return state


def _expect(entries: list[Entry], reason: str, height: int, **kwargs: Any) -> AuditReport:
    """Both paths (batched range proofs and the reference one) name the same first bad entry, with the
    counts as they stood before it."""
    reports = [audit(entries, batch=batch, **kwargs) for batch in (True, False)]
    for report in reports:
        assert (report.ok, report.reason, report.first_bad_height) == (False, reason, height), report
        assert (report.entries_checked, report.head_height) == (height, height - 1)
    assert reports[0] == replace(reports[1], detail=reports[0].detail)
    return reports[0]


def test_a_forged_chain_under_its_own_key_audits_clean(forged: Forged) -> None:
    for batch in (True, False):
        report = audit(forged.full.entries, expect_ledger_key=forged.full.pub, batch=batch)
        assert report.ok, report
        assert (report.total_issued_minor, report.total_redeemed_minor, report.notes_unspent) == (
            1500,
            500,
            3,
        )
        assert (report.sessions_opened, report.sessions_settled, report.sessions_open) == (1, 1, 0)
        assert report.quotes_verified == 0


def test_genesis_must_name_our_protocol_and_generators() -> None:
    issuer = Issuer(os.urandom(32))
    _expect(Forger(issuer, protocol="escrow.v2").entries, "AUDIT_GENESIS_INVALID", 0)
    _expect(Forger(issuer, generator_set_hash=bytes(32)).entries, "AUDIT_GENERATORS_MISMATCH", 0)
    _expect(Forger(issuer, generator_count=64).entries, "AUDIT_GENESIS_INVALID", 0)
    _expect(Forger(issuer, issuer_keys=[]).entries, "AUDIT_GENESIS_INVALID", 0)
    forger = Forger(issuer)
    junk = make_entry(Head(), "GENESIS", b"junk", 1, forger.key)
    _expect([junk], "PAYLOAD_MALFORMED", 0)


def test_a_mint_needs_the_issuer_signature(forged: Forged) -> None:
    f = forged.funded.fork()
    other = Issuer(os.urandom(32))
    request = forged.funded.issuer.mint_request(f.attested, CURRENCY, forged.car.address, 100)
    signature = other.mint_request(f.attested, CURRENCY, forged.car.address, 100).issuer_signature
    f.append("MINT", _tweak("MINT", _mint_payload(request), issuer_signature=signature))
    _expect(f.entries, "MINT_SIGNATURE_INVALID", 3)
    g = forged.funded.fork()
    g.append("MINT", _mint_payload(other.mint_request(g.attested, CURRENCY, forged.car.address, 100)))
    _expect(g.entries, "MINT_ISSUER_UNKNOWN", 3)
    j = forged.funded.fork()
    j.append("MINT", b"junk")
    _expect(j.entries, "PAYLOAD_MALFORMED", 3)


def test_a_mint_reference_is_used_once(forged: Forged) -> None:
    f = forged.funded.fork()
    f.append("MINT", f.mint(forged.car, 100, reference=b"invoice-1"))
    f.append("MINT", f.mint(forged.car, 200, reference=b"invoice-1"))
    report = _expect(f.entries, "AUDIT_DUPLICATE_REFERENCE", 4)
    assert report.total_issued_minor == 1600


def test_a_mint_is_judged_at_its_entry_time(forged: Forged) -> None:
    f = forged.funded.fork()
    payload = f.mint(forged.car, 100)  # expires in 300 s
    f.time_ms = int(time.time() * 1000) + 301_000
    f.append("MINT", payload)
    _expect(f.entries, "MINT_EXPIRED", 3)


def test_an_open_spending_an_unknown_note_is_refused(forged: Forged) -> None:
    wallet = forged.funded_wallet()
    for note in wallet.notes.values():
        note.note_id = hashlib.sha256(note.note_id).digest()  # ids no entry created
    f = forged.funded.fork()
    f.append("OPEN", f.open(wallet, wallet.prepare_deposit(f.attested, 600)))
    _expect(f.entries, "AUDIT_NOTE_UNKNOWN", 3)


def test_a_deposit_is_no_input(forged: Forged) -> None:
    wallet = forged.wallet_on(forged.full)
    note = max(wallet.unspent(), key=lambda n: n.value)
    note.note_id = note_id(forged.open_entry.entry_hash, 1)  # D of the settled OPEN
    f = forged.full.fork()
    f.append("OPEN", f.open(wallet, wallet.prepare_deposit(f.attested, note.value)))
    _expect(f.entries, "AUDIT_DEPOSIT_AS_INPUT", 6)


def test_a_note_is_spent_once(forged: Forged) -> None:
    f = forged.opened.fork()  # the OPEN spent the 1000 note; a REDEEM spends it again
    f.append("REDEEM", f.redeem(forged.funded_wallet(), 1000))
    _expect(f.entries, "AUDIT_NOTE_SPENT_TWICE", 4)
    g = forged.opened.fork()  # and a second OPEN
    wallet = forged.funded_wallet()
    g.append("OPEN", g.open(wallet, wallet.prepare_deposit(g.attested, 700)))
    _expect(g.entries, "AUDIT_NOTE_SPENT_TWICE", 4)
    h = forged.opened.fork()  # the same OPEN twice: its session tag first
    h.append("OPEN", forged.open_payload)
    _expect(h.entries, "AUDIT_DUPLICATE_SESSION", 4)


@pytest.fixture(scope="module")
def bad_range_proof(forged: Forged) -> Forger:
    """The full forged chain, then an OPEN whose range proof is bound to another context (its hash in
    the signed body, so only the proof is wrong) at height 6, then a MINT with a bad signature."""
    wallet = forged.wallet_on(forged.full)
    prepared = wallet.prepare_deposit(forged.full.attested, 600)  # both 400 notes
    b_change = (sum(n.opened.blinding for n in prepared.inputs) - prepared.deposit_blinding) % bn254.ORDER
    wrong = rangeproof.prove(
        [600, prepared.change], [prepared.deposit_blinding, b_change], AMOUNT_BITS, b"other"
    )
    f = forged.full.fork()
    f.append("OPEN", f.open(wallet, replace(prepared, range_proof=wrong)))
    f.append("MINT", _tweak("MINT", f.mint(forged.car, 5), issuer_signature=bytes(64)))
    return f


def test_an_open_range_proof_is_checked_before_later_failures_are_reported(bad_range_proof: Forger) -> None:
    """The batched path still names the OPEN, not the later MINT, with the counts before it."""
    report = _expect(bad_range_proof.entries, "SPEND_PROOF_INVALID", 6)
    assert (report.sessions_opened, report.notes_unspent, report.total_issued_minor) == (1, 3, 1500)
    for size in (1, 2, 3):
        assert audit(bad_range_proof.entries, batch_size=size) == replace(report, detail=ANY)


def test_worker_processes_give_the_same_verdicts(bad_range_proof: Forger) -> None:
    """Batches verified in a worker process, several in flight (two good ones before the bad one): the
    same report. (One pool: a worker's first proof builds its generator tables, which takes seconds.)"""
    bad = audit(bad_range_proof.entries, workers=1, batch_size=1)
    assert bad == replace(audit(bad_range_proof.entries), detail=ANY)
    assert (bad.reason, bad.first_bad_height) == ("SPEND_PROOF_INVALID", 6)


def test_a_settle_must_balance(forged: Forged) -> None:
    f = forged.opened.fork()  # pole + refund + X commit to 601, D to 600
    f.append("SETTLE", f.settle(forged.open_entry, forged.prepared, 200, forged.car, amount=601))
    _expect(f.entries, "BALANCE_UNBALANCED", 4)


def test_a_settle_needs_its_proofs(forged: Forged) -> None:
    other = forged.opened.settle(forged.open_entry, forged.prepared, 100, forged.car)
    f = forged.opened.fork()
    range_proof = E.decode_payload("SETTLE", other)["range_proof"]  # over other commitments
    f.append("SETTLE", _tweak("SETTLE", forged.settle_payload, range_proof=range_proof))
    f.append("MINT", b"junk")
    _expect(f.entries, "BALANCE_RANGE_PROOF_INVALID", 4)
    g = forged.opened.fork()
    excess_proof = E.decode_payload("SETTLE", other)["excess_proof"]
    g.append("SETTLE", _tweak("SETTLE", forged.settle_payload, excess_proof=excess_proof))
    _expect(g.entries, "BALANCE_EXCESS_PROOF_INVALID", 4)


def test_an_open_is_settled_once(forged: Forged) -> None:
    f = forged.full.fork()
    f.append("SETTLE", f.settle(forged.open_entry, forged.prepared, 0, forged.car))
    report = _expect(f.entries, "AUDIT_SETTLED_TWICE", 6)
    assert report.sessions_settled == 1


def test_a_settle_names_its_open(forged: Forged) -> None:
    for changes, reason in (
        ({"open_entry_hash": os.urandom(32)}, "AUDIT_SETTLE_UNKNOWN_OPEN"),
        ({"open_entry_hash": forged.funded.entries[1].entry_hash}, "AUDIT_SETTLE_UNKNOWN_OPEN"),  # a MINT
        ({"session_tag": os.urandom(32)}, "AUDIT_SETTLE_TAG_MISMATCH"),
        ({"pole_owner_key": bytes(32)}, "AUDIT_SETTLE_MALFORMED"),
        ({"outcome": "WON"}, "PAYLOAD_MALFORMED"),
    ):
        f = forged.opened.fork()
        f.append("SETTLE", _tweak("SETTLE", forged.settle_payload, **changes))
        _expect(f.entries, reason, 4)


def test_a_redeem_needs_its_proof(forged: Forged) -> None:
    f = forged.full.fork()
    f.append("REDEEM", f.redeem(forged.wallet_on(forged.full), 400, blinding_offset=1))
    _expect(f.entries, "SPEND_PROOF_INVALID", 6)


def test_a_key_entry_rotates_the_ledger_key(forged: Forged) -> None:
    new_key = ec.generate_private_key(ec.SECP256R1())
    new_pub = p256_public_key_bytes(new_key)
    key_payload = E.encode_payload(
        "KEY",
        {
            "mr_enclave": bytes(32),
            "isv_svn": 2,
            "ledger_key": new_pub,
            "encryption_key": forged.full.enc_pub,
            "instance_id": bytes(16),
            "quote": b"",
            "collateral_json": b"",
        },
    )
    f = forged.full.fork()
    f.append("KEY", key_payload)  # endorsed by the key in force
    f.append("MINT", f.mint(forged.car, 5), key=new_key)
    report = audit(f.entries, expect_ledger_key=new_pub)
    assert report.ok and report.key_entries == 1 and report.ledger_key == new_pub.hex(), report
    report = audit(f.entries, expect_ledger_key=forged.full.pub)
    assert (report.reason, report.first_bad_height) == ("AUDIT_LEDGER_KEY_MISMATCH", 6)
    g = forged.full.fork()
    g.append("KEY", key_payload)
    g.append("MINT", g.mint(forged.car, 5))  # still the old key
    _expect(g.entries, "ENTRY_SIGNATURE_INVALID", 7)
    h = forged.full.fork()
    h.append("KEY", key_payload, key=new_key)  # not endorsed by the old key
    _expect(h.entries, "ENTRY_SIGNATURE_INVALID", 6)
    k = forged.full.fork()
    k.append("KEY", _tweak("KEY", key_payload, ledger_key=b"\x04" + bytes(64)))
    _expect(k.entries, "AUDIT_KEY_INVALID", 6)
    assert audit(f.entries, Policy()).reason == "AUDIT_QUOTE_INVALID"  # an empty quote fails any policy


def test_poles_are_unique(forged: Forged) -> None:
    def pole(meter: SimulatedMeter, pole_id: str, evse_id: str) -> bytes:
        request = Pole(os.urandom(32), meter, pole_id, evse_id, os.urandom(32)).register_request(
            forged.funded.chain_id
        )
        fields = {"pole_body": request.pole_body, "operator_signature": request.operator_signature}
        return E.encode_payload("POLE", {**fields, "pop_record": request.meter_pop_record})

    meter = SimulatedMeter.generate()
    first = pole(meter, "POLE-A", "DE*ESC*E0001")
    for second, reason in (
        (pole(SimulatedMeter.generate(), "POLE-A", "DE*ESC*E0002"), "POLE_ID_IN_USE"),
        (pole(meter, "POLE-B", "DE*ESC*E0002"), "POLE_METER_IN_USE"),
        (pole(SimulatedMeter.generate(), "POLE-B", "de*esc*e0001"), "POLE_EVSE_IN_USE"),
    ):
        f = forged.funded.fork()
        f.append("POLE", first)
        f.append("POLE", second)
        _expect(f.entries, reason, 4)
    f = forged.funded.fork()
    f.append("POLE", _tweak("POLE", first, operator_signature=bytes(64)))
    _expect(f.entries, "POLE_SIGNATURE_INVALID", 3)
