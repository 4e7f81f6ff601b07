"""End to end over real gRPC (server on port 0): the charging flows of DESIGN §7 and the note flows of §6."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from service_harness import PRICE_NUMERATOR, SESSION_FEE, Harness

from clients.connection import Connection, EscrowError, call
from clients.issuer import approve_redemptions
from clients.wallet import Wallet, WalletError
from enclave.measurement import EnclaveConfig
from enclave.verifier import Policy
from escrow.core import entries
from escrow.core.billing import settle_amounts
from escrow.core.notes import open_note
from escrow.core.tariff import Tariff
from escrow.host.grpc_server import create_server
from escrow.host.node import EscrowNode
from escrow.v1 import attestation_pb2, charging_pb2, ledger_pb2, notes_pb2, registry_pb2

SETTLED = charging_pb2.SESSION_STATE_SETTLED
CLOSING = charging_pb2.SESSION_STATE_CLOSING


@pytest.fixture(scope="module")
def h(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    tmp = tmp_path_factory.mktemp("e2e")
    old = os.environ.get("ESCROW_NV_DIR")
    os.environ["ESCROW_NV_DIR"] = str(tmp / "nv")
    harness = Harness.start(tmp)
    yield harness
    harness.stop()
    if old is None:
        os.environ.pop("ESCROW_NV_DIR", None)
    else:
        os.environ["ESCROW_NV_DIR"] = old


def _bill(kwh: str, price: int = PRICE_NUMERATOR, fee: int = SESSION_FEE) -> int:
    return int(Decimal(kwh) * price) // 1_000_000 + fee


def test_full_session_both_sides_attested_and_paid_exactly(h: Harness) -> None:
    # The pole attests on its own connection too, before it sends anything to the enclave.
    with Connection(f"127.0.0.1:{h.port}") as pole_conn:
        pole_view = pole_conn.attest(h.policy())
    assert pole_view.bundle.ledger_key == h.a.ledger_key and pole_view.chain_id == h.a.chain_id
    pole = h.new_pole()
    car = Wallet(os.urandom(32))
    h.fund(car, 1000, 500)
    assert car.balance() == 1500
    session = h.open_session(car, pole, 800)
    ack = h.attach(pole, session)
    assert (ack.body.decision, ack.body.sequence, ack.body.coverage_limit) == ("ATTACHED", 0, "")
    acks = h.charge(pole, session, [Decimal("1.5"), Decimal("2.25")])
    assert [a.decision for a in acks] == ["CONTINUE", "CONTINUE", "CONTINUE", "SETTLED"]
    assert [a.sequence for a in acks] == [1, 2, 3, 4]
    assert all(a.coverage_limit == acks[0].coverage_limit != "" for a in acks)
    # The coverage limit is the largest register value the deposit pays for, in 1 Wh steps.
    limit = Decimal(acks[0].coverage_limit)
    tariff = Tariff.from_bytes(pole.tariff_body)
    assert settle_amounts(800, limit, tariff)[0] <= 800 < _bill(str(limit + Decimal("0.001")))
    answer = h.get(car, session)
    assert answer.state == SETTLED
    vehicle = car.open_receipt(h.a, session.session_id, answer.receipt_envelope).receipt
    pole_answer = call(h.c.charging.GetSession, pole.get_request(h.a, session.session_id))
    pole_receipt = pole.open_receipt(h.a, session.session_id, pole_answer.receipt_envelope).receipt
    bill = _bill("3.750")
    assert (vehicle.outcome, vehicle.bill_minor, vehicle.note_amount_minor) == ("ENDED", bill, 800 - bill)
    assert (pole_receipt.bill_minor, pole_receipt.note_amount_minor, pole_receipt.energy_kwh) == (
        bill,
        bill,
        "3.750",
    )
    assert vehicle.settle_entry_hash == pole_receipt.settle_entry_hash
    # Both parties find and open their notes on the ledger.
    car.scan(h.c, h.a)
    assert car.balance() == 1500 - bill
    stranger = Wallet(os.urandom(32))  # an unrelated wallet finds nothing
    stranger.scan(h.c, h.a)
    assert stranger.balance() == 0


def test_pole_payout_note_opens_with_the_payout_seed(h: Harness) -> None:
    seed = os.urandom(32)
    pole = h.new_pole()
    pole.payout = Wallet(seed).keys
    car = Wallet(os.urandom(32))
    h.fund(car, 300)
    session = h.open_session(car, pole, 300)
    h.attach(pole, session)
    h.charge(pole, session, [Decimal("2.000")])
    payout = Wallet(seed)
    payout.scan(h.c, h.a)
    assert payout.balance() == _bill("2.000")


def test_stop_by_vehicle_then_end_reading_settles(h: Harness) -> None:
    pole = h.new_pole()
    car = Wallet(os.urandom(32))
    h.fund(car, 1000)
    session = h.open_session(car, pole, 1000)
    h.attach(pole, session)
    acks = h.charge(pole, session, [Decimal("1.000")], end=False)
    assert acks[-1].decision == "CONTINUE"
    stopped = call(h.c.charging.Stop, car.stop_request(h.a, session, acks[-1].pg))
    assert stopped.state == CLOSING
    pole.meter.advance(Decimal("0.100"))
    after = h.send(pole, session.session_id, [pole.meter.reading()])
    assert after[0].decision == "STOP"  # the pole is told to stop delivering
    final = h.send(pole, session.session_id, [pole.meter.end("L")])
    assert final[0].decision == "SETTLED"
    receipt = car.open_receipt(h.a, session.session_id, h.get(car, session).receipt_envelope).receipt
    assert (receipt.outcome, receipt.bill_minor) == ("ENDED", _bill("1.100"))


def test_vehicle_follows_signed_progress_pole_gets_none(h: Harness) -> None:
    pole = h.new_pole()
    car = Wallet(os.urandom(32))
    h.fund(car, 900)
    session = h.open_session(car, pole, 900)
    answer = h.get(car, session)
    progress = car.open_progress(h.a, session.session_id, answer.progress_envelope)
    assert (progress.state, progress.energy_kwh, progress.bill_minor, progress.remaining_minor) == (
        "OPENED",
        "0",
        0,
        900,
    )
    h.attach(pole, session)
    acks = h.charge(pole, session, [Decimal("2.500")], end=False)
    progress = car.open_progress(h.a, session.session_id, h.get(car, session).progress_envelope)
    bill = _bill("2.500")
    assert (progress.state, progress.energy_kwh, progress.bill_minor) == ("CHARGING", "2.500", bill)
    assert (progress.remaining_minor, progress.readings, progress.last_pg) == (900 - bill, 2, acks[-1].pg)
    assert progress.coverage_limit == acks[-1].coverage_limit
    pole_view = call(h.c.charging.GetSession, pole.get_request(h.a, session.session_id))
    assert pole_view.progress_envelope == b""  # the pole never learns the deposit
    with pytest.raises(WalletError):  # sealed to the vehicle only
        Wallet(os.urandom(32)).open_progress(h.a, session.session_id, answer.progress_envelope)


def test_stop_before_any_reading_refunds_everything_at_once(h: Harness) -> None:
    pole = h.new_pole()
    car = Wallet(os.urandom(32))
    h.fund(car, 400)
    session = h.open_session(car, pole, 400)
    h.attach(pole, session)
    stopped = call(h.c.charging.Stop, car.stop_request(h.a, session))
    assert stopped.state == SETTLED
    receipt = car.open_receipt(h.a, session.session_id, stopped.receipt_envelope).receipt
    assert (receipt.outcome, receipt.bill_minor, receipt.note_amount_minor) == ("REFUNDED", 0, 400)
    car.scan(h.c, h.a)
    assert car.balance() == 400


def test_deposit_runs_out_pole_told_to_stop_and_bill_capped(h: Harness) -> None:
    pole = h.new_pole()
    car = Wallet(os.urandom(32))
    h.fund(car, 200)
    session = h.open_session(car, pole, 200)
    h.attach(pole, session)
    acks = h.charge(pole, session, [Decimal("2.000"), Decimal("2.000")], end=False)
    limit = Decimal(acks[0].coverage_limit)
    assert limit == Decimal("3.871")  # floor(3.871 * 39) = 150 <= 200 - 50 < floor(3.872 * 39)
    assert [a.decision for a in acks] == ["CONTINUE", "CONTINUE", "STOP"]
    final = h.send(pole, session.session_id, [pole.meter.end()])
    assert final[0].decision == "SETTLED"
    receipt = car.open_receipt(h.a, session.session_id, h.get(car, session).receipt_envelope).receipt
    assert (receipt.bill_minor, receipt.note_amount_minor) == (200, 0)  # 4 kWh would cost 206


def test_concurrent_sessions_settle_independently(h: Harness) -> None:
    pairs = [(h.new_pole(), Wallet(os.urandom(32))) for _ in range(4)]
    for _, car in pairs:
        h.fund(car, 600)

    def run(index: int) -> int:
        pole, car = pairs[index]
        with Connection(f"127.0.0.1:{h.port}") as conn:
            attested = conn.attest(h.policy())
            prepared = car.prepare_deposit(attested, 500)
            deadline = int((time.time() + 600) * 1000)
            request, session = car.open_request(attested, prepared, pole.pole_id, pole.tariff_body, deadline)
            call(conn.charging.Open, request)
            call(conn.charging.Attach, pole.attach_request(attested, session.session_id))
            records = [pole.meter.begin(session.session_id)]
            for _ in range(index + 1):
                pole.meter.advance(Decimal("1.000"))
                records.append(pole.meter.reading())
            records.append(pole.meter.end())
            envelopes = [pole.reading_envelope(attested, session.session_id, r) for r in records]
            list(conn.charging.StreamReadings(iter(envelopes), timeout=60))
            answer = call(conn.charging.GetSession, car.get_request(attested, session))
            return car.open_receipt(attested, session.session_id, answer.receipt_envelope).receipt.bill_minor

    with ThreadPoolExecutor(4) as pool:
        bills = list(pool.map(run, range(4)))
    assert bills == [_bill(f"{i + 1}.000") for i in range(4)]


def test_redeem_spends_exact_notes_once(h: Harness) -> None:
    car = Wallet(os.urandom(32))
    h.fund(car, 250, 125)
    request = car.redeem_request(h.a, "EUR", 375, b"bank-transfer-42")
    answer = call(h.c.notes.Redeem, request)
    assert answer.entry.height > 0
    again = call(h.c.notes.Redeem, request)  # a retry: the same answer, applied once
    assert again == answer
    car.scan(h.c, h.a)
    assert car.balance() == 0
    entry = next(h.c.entries(answer.entry.height, 1))
    assert entry.parsed.kind == "REDEEM"
    # The issuer approves it only on an audited ledger, and pays 375 against the reference once.
    approved = approve_redemptions(h.c, h.policy(), from_height=answer.entry.height)
    assert [(r.amount_minor, r.currency, r.reference) for r in approved] == [
        (375, "EUR", b"bank-transfer-42")
    ]


def test_retried_open_is_applied_once(h: Harness) -> None:
    pole = h.new_pole()
    car = Wallet(os.urandom(32))
    h.fund(car, 300)
    prepared = car.prepare_deposit(h.a, 300)
    request, _ = car.open_request(
        h.a, prepared, pole.pole_id, pole.tariff_body, int((time.time() + 60) * 1000)
    )
    first = call(h.c.charging.Open, request)
    head = call(h.c.ledger.GetHead, ledger_pb2.GetHeadRequest())
    second = call(h.c.charging.Open, request)
    assert second == first
    assert call(h.c.ledger.GetHead, ledger_pb2.GetHeadRequest()) == head


def test_list_poles_shows_registrations_and_current_tariffs(h: Harness) -> None:
    pole = h.new_pole()
    call(h.c.registry.PublishTariff, pole.tariff_request(h.a.chain_id, "EUR", 45_000_000, 60, sequence=2))
    seen = {}
    token = ""
    while True:
        page = call(h.c.registry.ListPoles, registry_pb2.ListPolesRequest(page_size=2, page_token=token))
        seen.update({p.pole_body: p for p in page.poles})
        token = page.next_page_token
        if not token:
            break
    listed = [p for p in seen.values() if p.tariff_body == pole.tariff_body]
    assert len(listed) == 1 and Tariff.from_bytes(listed[0].tariff_body).price_numerator == 45_000_000


def test_list_envelopes_pages_every_note_unfiltered(h: Harness) -> None:
    car = Wallet(os.urandom(32))
    h.fund(car, 11, 22, 33)
    notes: list[notes_pb2.NoteEnvelope] = []
    height = 0
    while True:
        page = call(h.c.notes.ListEnvelopes, notes_pb2.ListEnvelopesRequest(from_height=height, max_notes=3))
        notes.extend(page.notes)
        if not page.notes:
            break
        height = page.next_height
    mine = [
        o.value
        for n in notes
        if (o := open_note(car.keys, h.a.chain_id, n.commitment, n.owner_key, n.envelope)) is not None
    ]
    assert sorted(mine) == [11, 22, 33]
    assert len({n.note_id for n in notes}) == len(notes)


def test_health_reflection_measurement(h: Harness) -> None:
    health = health_pb2_grpc.HealthStub(h.c.channel)
    for service in ("", "escrow.v1.Charging", "escrow.v1.Ledger"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    m = call(h.c.attestation.GetMeasurement, attestation_pb2.GetMeasurementRequest())
    assert h.a.report.identity is not None and m.mr_enclave.hex() == h.a.report.identity.mr_enclave


def test_ledger_stream_starts_with_genesis_quote(h: Harness) -> None:
    first = next(h.c.entries(0, 1))
    assert first.parsed.kind == "GENESIS" and first.entry_hash == h.a.chain_id
    genesis = entries.decode_payload("GENESIS", first.payload)
    assert genesis["ledger_key"] == h.a.ledger_key and genesis["currency"] == "EUR"


def test_deadline_with_and_without_readings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESCROW_NV_DIR", str(tmp_path / "nv"))
    h = Harness.start(tmp_path, grace_ms=300, tick_interval_s=0.1)
    try:
        pole = h.new_pole()
        car = Wallet(os.urandom(32))
        h.fund(car, 500, 500)
        with_readings = h.open_session(car, pole, 500, deadline_s=2.0)
        h.attach(pole, with_readings)
        h.charge(pole, with_readings, [Decimal("1.000")], end=False)
        second_pole = h.new_pole()
        without = h.open_session(car, second_pole, 500, deadline_s=1.5)
        answer = h.wait_state(car, with_readings, SETTLED)
        assert answer.state == SETTLED
        receipt = car.open_receipt(h.a, with_readings.session_id, answer.receipt_envelope).receipt
        assert (receipt.outcome, receipt.bill_minor) == (
            "DEADLINE",
            _bill("1.000"),
        )  # paid what readings prove
        answer = h.wait_state(car, without, SETTLED)
        receipt = car.open_receipt(h.a, without.session_id, answer.receipt_envelope).receipt
        assert (receipt.outcome, receipt.bill_minor, receipt.note_amount_minor) == ("REFUNDED", 0, 500)
        car.scan(h.c, h.a)
        assert car.balance() == 1000 - _bill("1.000")
    finally:
        h.stop()


def test_restart_keeps_sessions_and_key_entry_on_upgrade(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ESCROW_NV_DIR", str(tmp_path / "nv"))
    h = Harness.start(tmp_path)
    try:
        pole = h.new_pole()
        car = Wallet(os.urandom(32))
        h.fund(car, 700)
        session = h.open_session(car, pole, 700)
        h.attach(pole, session)
        h.charge(pole, session, [Decimal("1.000")], end=False)
        h.restart()
        final = h.send(pole, session.session_id, [pole.meter.end()])
        assert final[0].decision == "SETTLED"
        # An upgraded enclave (higher ISVSVN) writes a KEY entry with its quote at start.
        h.stop()
        node = EscrowNode.start(
            h.data_dir, None, config=EnclaveConfig(isv_svn=2), nv_dir=h.nv_dir, tick_interval_s=0
        )
        try:
            last = node.store.entry(node.store.chain_head().height)
            assert last is not None and last.parsed.kind == "KEY"
            key = entries.decode_payload("KEY", last.payload)
            assert key["isv_svn"] == 2
            server, port = create_server(node)
            with Connection(f"127.0.0.1:{port}") as conn:
                attested = conn.attest(_policy_for(node))
                car.scan(conn, attested)
                assert car.balance() == 700 - _bill("1.000")
            server.stop(None).wait()
        finally:
            node.close()
    finally:
        h.stop()


def _policy_for(node: EscrowNode) -> Policy:
    assert node.host is not None
    return Policy(
        root_ca_der=node.host.platform.root_ca_der(), expect_mrenclave=node.host.identity.mr_enclave
    )


def test_refusals_carry_reason_and_status(h: Harness) -> None:
    with pytest.raises(EscrowError) as e:
        call(h.c.charging.Attach, charging_pb2.AttachRequest(request_id="x1", session_id=os.urandom(16)))
    assert (e.value.code, e.value.reason) == (grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")


def test_a_store_rolled_back_behind_the_sealed_head_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    from escrow.core.errors import CoreError
    from escrow.host.node import STORE_FILE

    monkeypatch.setenv("ESCROW_NV_DIR", str(tmp_path / "nv"))
    h = Harness.start(tmp_path)
    try:
        car = Wallet(os.urandom(32))
        h.fund(car, 100)
        assert h.node is not None
        old = sqlite3.connect(tmp_path / "old.sqlite")
        with old:
            sqlite3.connect(h.data_dir / STORE_FILE).backup(old)  # the store with one MINT
        old.close()
        h.fund(car, 200)
        h.node.persist_state()  # the enclave seals the head with both MINTs
        h.stop()
        (h.data_dir / STORE_FILE).unlink()
        for suffix in ("-wal", "-shm"):
            (h.data_dir / (STORE_FILE + suffix)).unlink(missing_ok=True)
        (tmp_path / "old.sqlite").rename(h.data_dir / STORE_FILE)
        with pytest.raises(CoreError) as refused:
            EscrowNode.start(h.data_dir, None, nv_dir=h.nv_dir, tick_interval_s=0)
        assert refused.value.reason == "STORE_ROLLED_BACK"
    finally:
        h.stop()
