"""kill -9 and restart (DESIGN §10): a session survives a crash of `escrow-server serve` and settles exactly.

The server runs as the installed console script; the parties are the client libraries over real gRPC.
Each test SIGKILLs the server at a chosen point, starts a new one on the same data directory and NV
directory, attests it again, and carries on: the session is where it was, it settles to the cent, the
wallet and the pole's payout wallet find their notes, the chain checks, and the auditor passes it.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
from server_process import Server, kill_leftovers, serve

from clients.auditor import audit
from clients.connection import Attested, Connection, call, error_from
from clients.issuer import Issuer
from clients.meter import SimulatedMeter
from clients.pole import Pole, check_ack
from clients.wallet import LedgerScanner, Session, Wallet
from enclave.verifier import Policy
from escrow.core.session import AckBody
from escrow.v1 import charging_pb2

CURRENCY = "EUR"
PRICE_NUMERATOR = 39 * 1_000_000  # 39 cents per kWh (tariff price numerator, 10^-6 minor units per kWh)
SESSION_FEE = 50
SETTLED = charging_pb2.SESSION_STATE_SETTLED


@pytest.fixture(autouse=True)
def _no_leftover_servers() -> Iterator[None]:
    yield
    kill_leftovers()


def bill_for(kwh: int) -> int:
    return SESSION_FEE + 39 * kwh


@dataclass
class Escrow:
    """A server process on a data directory, and a client attested to it."""

    data_dir: Path
    nv_dir: Path
    server: Server
    conn: Connection
    a: Attested

    @classmethod
    def start(cls, data_dir: Path, nv_dir: Path, *args: str) -> Escrow:
        server = serve(data_dir, nv_dir, *args, as_json=True)
        conn = Connection(server.address)
        return cls(data_dir, nv_dir, server, conn, conn.attest(cls.policy(data_dir, server)))

    @staticmethod
    def policy(data_dir: Path, server: Server, *, pin: bool = True) -> Policy:
        root = (data_dir / "platform" / "root_ca.der").read_bytes()
        mrenclave = bytes.fromhex(server.printed["mrenclave"]) if pin else None
        return Policy(root_ca_der=root, expect_mrenclave=mrenclave)

    def crash(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed or closed."""
        self.conn.close()
        self.server.proc.kill()
        assert self.server.proc.wait(timeout=10) == -9

    def restart(self) -> Escrow:
        again = Escrow.start(self.data_dir, self.nv_dir)
        assert again.a.chain_id == self.a.chain_id
        assert again.server.printed["chain_id"] == self.server.printed["chain_id"]
        return again

    def stop(self) -> None:
        self.conn.close()
        assert self.server.stop() == 0, self.server.stderr()

    # --- the parties' calls ---------------------------------------------------------------------------

    def new_pole(self, payout_seed: bytes) -> Pole:
        meter = SimulatedMeter.generate()
        pole = Pole(os.urandom(32), meter, f"POLE-{os.urandom(3).hex()}", "DE*ESC*E0001", payout_seed)
        call(self.conn.registry.RegisterPole, pole.register_request(self.a.chain_id))
        call(
            self.conn.registry.PublishTariff,
            pole.tariff_request(self.a.chain_id, CURRENCY, PRICE_NUMERATOR, SESSION_FEE, sequence=1),
        )
        return pole

    def fund(self, issuer: Issuer, wallet: Wallet, *amounts: int) -> None:
        for amount in amounts:
            call(self.conn.notes.Mint, issuer.mint_request(self.a, CURRENCY, wallet.address, amount))
        wallet.scan(self.conn, self.a)

    def open_request(
        self, wallet: Wallet, pole: Pole, deposit: int
    ) -> tuple[charging_pb2.OpenRequest, Session]:
        prepared = wallet.prepare_deposit(self.a, deposit)
        deadline_ms = int((time.time() + 3600) * 1000)
        return wallet.open_request(self.a, prepared, pole.pole_id, pole.tariff_body, deadline_ms)

    def attach(self, pole: Pole, session: Session) -> AckBody:
        answer = call(self.conn.charging.Attach, pole.attach_request(self.a, session.session_id))
        return check_ack(self.a, session.session_id, answer.ack).body

    def send(self, pole: Pole, session: Session, records: list[str]) -> list[AckBody]:
        envelopes = [pole.reading_envelope(self.a, session.session_id, r) for r in records]
        acks = self.conn.charging.StreamReadings(iter(envelopes), timeout=60)
        return [check_ack(self.a, session.session_id, ack).body for ack in acks]

    def session_state(self, wallet: Wallet, session: Session) -> charging_pb2.GetSessionResponse:
        answer: charging_pb2.GetSessionResponse = call(
            self.conn.charging.GetSession, wallet.get_request(self.a, session)
        )
        return answer

    def wait_settled(self, wallet: Wallet, session: Session) -> charging_pb2.GetSessionResponse:
        deadline = time.monotonic() + 15
        while True:
            answer = self.session_state(wallet, session)
            if answer.state == SETTLED or time.monotonic() > deadline:
                return answer
            time.sleep(0.05)

    # --- checks ----------------------------------------------------------------------------------------

    def check_settled(
        self, wallet: Wallet, pole: Pole, session: Session, payout_seed: bytes, kwh: int, records: int
    ) -> None:
        """Both receipts open and agree; deposit = pole pay + refund; both wallets hold exactly that."""
        answer = self.wait_settled(wallet, session)
        assert answer.state == SETTLED
        vehicle = wallet.open_receipt(self.a, session.session_id, answer.receipt_envelope)
        for_pole = call(self.conn.charging.GetSession, pole.get_request(self.a, session.session_id))
        operator = pole.open_receipt(self.a, session.session_id, for_pole.receipt_envelope)
        bill = bill_for(kwh)
        assert vehicle.receipt.outcome == operator.receipt.outcome == "ENDED"
        assert vehicle.receipt.energy_kwh == operator.receipt.energy_kwh == f"{kwh}.000"
        assert vehicle.receipt.bill_minor == operator.receipt.bill_minor == bill
        assert operator.receipt.note_amount_minor == bill
        assert vehicle.receipt.note_amount_minor == session.deposit - bill
        assert operator.receipt.note_amount_minor + vehicle.receipt.note_amount_minor == session.deposit
        assert len(vehicle.records) == records  # every signed reading, across the crash, exactly once
        hashes = [hashlib.sha256(r).digest() for r in vehicle.records]
        assert len(set(hashes)) == records
        payout = Wallet(payout_seed)
        payout.scan(self.conn, self.a)
        assert payout.balance() == bill and [n.value for n in payout.unspent()] == [bill]
        wallet.scan(self.conn, self.a)
        refund = [n for n in wallet.unspent() if n.note_id == vehicle.receipt.note_id]
        assert [n.value for n in refund] == [session.deposit - bill]

    def check_ledger(self, *, issued: int, settled: int) -> list[str]:
        """The chain checks entry by entry under the attested key, and the auditor passes it."""
        entries = list(self.conn.entries())
        scanner = LedgerScanner()
        for entry in entries:
            scanner.check(entry)
        assert scanner.head.chain_id == self.a.chain_id and scanner.key == self.a.ledger_key
        assert scanner.head.height == len(entries) - 1
        report = audit(
            entries,
            self.policy(self.data_dir, self.server, pin=False),  # a KEY entry may follow an upgrade
            expect_ledger_key=self.a.ledger_key,
            expect_chain_id=self.a.chain_id,
        )
        assert report.ok, report.to_dict()
        assert report.total_issued_minor == issued and report.sessions_settled == settled
        assert report.sessions_open == 0 and report.entries_checked == len(entries)
        return [e.parsed.kind for e in entries if e.parsed.kind != "KEY"]


def test_sigkill_mid_session_then_restart_settles_exactly(tmp_path: Path) -> None:
    issuer = Issuer(os.urandom(32))
    first = Escrow.start(tmp_path / "data", tmp_path / "nv", "--issuer-key", issuer.public_key.hex())
    payout_seed = os.urandom(32)
    pole = first.new_pole(payout_seed)
    wallet = Wallet(os.urandom(32))
    first.fund(issuer, wallet, 700, 300)
    request, session = first.open_request(wallet, pole, 600)
    call(first.conn.charging.Open, request)
    assert first.attach(pole, session).decision == "ATTACHED"
    records = [pole.meter.begin(session.session_id)]
    for _ in range(2):
        pole.meter.advance(Decimal("1.000"))
        records.append(pole.meter.reading())
    before = first.send(pole, session, records)
    assert [ack.sequence for ack in before] == [1, 2, 3] and before[-1].decision == "CONTINUE"

    first.crash()
    again = first.restart()
    try:
        # the session is where the last signed ACK left it
        state = again.session_state(wallet, session)
        assert state.state == charging_pb2.SESSION_STATE_CHARGING
        assert check_ack(again.a, session.session_id, state.last_ack).body == before[-1]
        # a reading whose ACK the pole lost in the crash is answered with its original ACK, not counted twice
        assert again.send(pole, session, [records[-1]]) == [before[-1]]
        # the same meter goes on: two more kWh, then the end reading
        pole.meter.advance(Decimal("2.000"))
        reading = pole.meter.reading()
        end = pole.meter.end()
        after = again.send(pole, session, [reading, end])
        assert [ack.sequence for ack in after] == [4, 5] and after[-1].decision == "SETTLED"
        assert again.send(pole, session, [end]) == [after[-1]]  # a lost final ACK is given again
        again.check_settled(wallet, pole, session, payout_seed, kwh=4, records=5)
        assert wallet.balance() == 1000 - bill_for(4)  # 400 change + 394 refund
        kinds = again.check_ledger(issued=1000, settled=1)
        assert kinds == ["GENESIS", "POLE", "MINT", "MINT", "OPEN", "SETTLE"]
    finally:
        again.stop()


def test_sigkill_right_after_open_keeps_the_session(tmp_path: Path) -> None:
    issuer = Issuer(os.urandom(32))
    first = Escrow.start(tmp_path / "data", tmp_path / "nv", "--issuer-key", issuer.public_key.hex())
    payout_seed = os.urandom(32)
    pole = first.new_pole(payout_seed)
    wallet = Wallet(os.urandom(32))
    first.fund(issuer, wallet, 1000)
    request, session = first.open_request(wallet, pole, 500)
    opened = call(first.conn.charging.Open, request)

    first.crash()  # the OPEN's answer went out, so its entry, note changes and session are on disk
    again = first.restart()
    try:
        assert again.session_state(wallet, session).state == charging_pb2.SESSION_STATE_OPENED
        # a retry of the same OPEN (same request_id and body) gets the first answer, not a second session
        retried = call(again.conn.charging.Open, request)
        assert retried == opened
        assert again.attach(pole, session).decision == "ATTACHED"
        records = [pole.meter.begin(session.session_id)]
        pole.meter.advance(Decimal("2.000"))
        records += [pole.meter.reading(), pole.meter.end()]
        assert again.send(pole, session, records)[-1].decision == "SETTLED"
        again.check_settled(wallet, pole, session, payout_seed, kwh=2, records=3)
        assert wallet.balance() == 1000 - bill_for(2)
        kinds = again.check_ledger(issued=1000, settled=1)
        assert kinds == ["GENESIS", "POLE", "MINT", "OPEN", "SETTLE"]
    finally:
        again.stop()


def test_sigkill_while_readings_stream_loses_nothing_and_counts_nothing_twice(tmp_path: Path) -> None:
    """The server dies at a random point of a live reading stream. At most one reading can be committed
    without its ACK reaching the pole; the pole sends again every record it holds no ACK for, and the bill
    covers every kWh exactly once."""
    issuer = Issuer(os.urandom(32))
    first = Escrow.start(tmp_path / "data", tmp_path / "nv", "--issuer-key", issuer.public_key.hex())
    payout_seed = os.urandom(32)
    pole = first.new_pole(payout_seed)
    wallet = Wallet(os.urandom(32))
    first.fund(issuer, wallet, 500)
    request, session = first.open_request(wallet, pole, 500)
    call(first.conn.charging.Open, request)
    first.attach(pole, session)
    records = [pole.meter.begin(session.session_id)]
    for _ in range(20):
        pole.meter.advance(Decimal("0.100"))
        records.append(pole.meter.reading())

    def slowly() -> Iterator[charging_pb2.ReadingEnvelope]:
        for record in records:
            yield pole.reading_envelope(first.a, session.session_id, record)
            time.sleep(0.02)

    kill_after = random.randint(1, 12)  # then at least 9 records (180 ms of sending) are still to go
    received: list[AckBody] = []
    try:
        for ack in first.conn.charging.StreamReadings(slowly(), timeout=60):
            received.append(check_ack(first.a, session.session_id, ack).body)
            if len(received) == kill_after:
                threading.Timer(random.uniform(0, 0.03), first.server.proc.kill).start()
    except grpc.RpcError as e:
        assert error_from(e).reason is None, e  # the connection broke; the escrow refused nothing
    first.crash()
    assert kill_after <= len(received) < len(records), f"the kill after ACK {kill_after} missed the stream"

    again = first.restart()
    try:
        state = again.session_state(wallet, session)
        committed = check_ack(again.a, session.session_id, state.last_ack).body.sequence
        # an ACK goes out after its commit: at most one committed reading without an ACK at the pole
        assert len(received) <= committed <= len(received) + 1, (kill_after, len(received), committed)
        resent = again.send(pole, session, records[len(received) :])
        assert [ack.sequence for ack in resent] == list(range(len(received) + 1, len(records) + 1))
        assert again.send(pole, session, [pole.meter.end()])[-1].decision == "SETTLED"
        again.check_settled(wallet, pole, session, payout_seed, kwh=2, records=len(records) + 1)
        assert wallet.balance() == 500 - bill_for(2)
        again.check_ledger(issued=500, settled=1)
    finally:
        again.stop()
