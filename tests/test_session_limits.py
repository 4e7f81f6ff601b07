"""DESIGN §10's open-session limits over real gRPC: in all, per pole, and per operator key.

Each limit is lowered on ``escrow.core.engine`` (the engine reads it at every OPEN) so a handful of sessions
reaches it. Up to the limit OPENs succeed; the next is refused with RESOURCE_EXHAUSTED / ``SESSIONS_LIMIT``
and changes nothing (a byte-exact digest of the store, the ledger head, the wallet's notes). The limits
count live sessions, not history: once one session settles (a vehicle STOP before any reading refunds it
at once), the very OPEN that was refused, sent again unchanged, succeeds, and the one after it is refused
again. Sessions reloaded from the store after a restart count as well.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from service_harness import CURRENCY, PRICE_NUMERATOR, SESSION_FEE, Harness, store_digest

from clients.connection import EscrowError, call
from clients.meter import SimulatedMeter
from clients.pole import Pole
from clients.wallet import Session, Wallet
from escrow.core import engine
from escrow.v1 import charging_pb2, ledger_pb2

EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
DEPOSIT = 100


@pytest.fixture
def h(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    monkeypatch.setenv("ESCROW_NV_DIR", str(tmp_path / "nv"))
    harness = Harness.start(tmp_path)
    try:
        yield harness
    finally:
        harness.stop()


@pytest.fixture
def car(h: Harness) -> Wallet:
    """The vehicle whose OPENs fill the limit (each takes its one note and leaves the change)."""
    wallet = Wallet(os.urandom(32))
    h.fund(wallet, 5_000)
    return wallet


@pytest.fixture
def late(h: Harness) -> Wallet:
    """The vehicle whose OPENs meet the limit. Its own wallet: the note a refused OPEN offers stays
    unspent, and the car's next OPEN must not take it before the same OPEN is sent again."""
    wallet = Wallet(os.urandom(32))
    h.fund(wallet, 5_000)
    return wallet


def register(h: Harness, operator_seed: bytes | None = None) -> Pole:
    """A registered pole with a published tariff; under ``operator_seed``'s key when given."""
    tag = os.urandom(4).hex()
    pole = Pole(
        operator_seed or os.urandom(32),
        SimulatedMeter.generate(),
        f"LIM-{tag}",
        f"DE*LIM*E{tag}",
        os.urandom(32),
    )
    call(h.c.registry.RegisterPole, pole.register_request(h.a.chain_id))
    call(
        h.c.registry.PublishTariff,
        pole.tariff_request(h.a.chain_id, CURRENCY, PRICE_NUMERATOR, SESSION_FEE, sequence=1),
    )
    return pole


def open_request(h: Harness, car: Wallet, pole: Pole) -> tuple[charging_pb2.OpenRequest, Session]:
    prepared = car.prepare_deposit(h.a, DEPOSIT)
    deadline = int((time.time() + 3600) * 1000)
    return car.open_request(h.a, prepared, pole.pole_id, pole.tariff_body, deadline)


def send_open(h: Harness, car: Wallet, request: charging_pb2.OpenRequest) -> None:
    call(h.c.charging.Open, request)
    car.scan(h.c, h.a)  # the input is spent, the change note is new


def open_at(h: Harness, car: Wallet, pole: Pole) -> Session:
    request, session = open_request(h, car, pole)
    send_open(h, car, request)
    return session


def settle(h: Harness, car: Wallet, session: Session) -> None:
    """A vehicle STOP before any reading: the session settles at once, the deposit refunded in full."""
    answer = call(h.c.charging.Stop, car.stop_request(h.a, session))
    assert answer.state == charging_pb2.SESSION_STATE_SETTLED


def snapshot(h: Harness, *wallets: Wallet) -> tuple[object, ...]:
    notes = []
    for wallet in wallets:
        wallet.scan(h.c, h.a)
        notes.append((wallet.balance(), tuple(sorted(n.note_id for n in wallet.unspent()))))
    head = call(h.c.ledger.GetHead, ledger_pb2.GetHeadRequest()).head.height
    return store_digest(h), head, tuple(notes)


def refused(h: Harness, request: charging_pb2.OpenRequest, names: str, *wallets: Wallet) -> None:
    """The OPEN is refused with RESOURCE_EXHAUSTED / SESSIONS_LIMIT, by the limit whose message mentions
    ``names``, and nothing changes: store, ledger head, the wallets' notes."""
    before = snapshot(h, *wallets)
    with pytest.raises(EscrowError) as caught:
        call(h.c.charging.Open, request)
    error = caught.value
    assert (error.code, error.reason) == (EXHAUSTED, "SESSIONS_LIMIT"), error.message
    assert names in error.message, error.message
    assert snapshot(h, *wallets) == before


def freed_by_settling(h: Harness, car: Wallet, live: Session, late: Wallet, pole: Pole, names: str) -> None:
    """``late``'s OPEN at ``pole`` is refused; once ``live`` settles the same OPEN, sent again unchanged,
    succeeds, and the next one is refused again: the limit counts live sessions, not history."""
    blocked, _ = open_request(h, late, pole)
    refused(h, blocked, names, car, late)
    settle(h, car, live)
    send_open(h, late, blocked)
    refused(h, open_request(h, late, pole)[0], names, car, late)


def test_the_global_limit_counts_open_sessions(
    h: Harness, car: Wallet, late: Wallet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "MAX_LIVE_SESSIONS", 3)
    first, second = register(h), register(h)
    sessions = [open_at(h, car, first), open_at(h, car, first), open_at(h, car, second)]
    # a fresh pole of a fresh operator: only the global limit can refuse it
    freed_by_settling(h, car, sessions[0], late, register(h), "3 sessions are open")


def test_the_per_pole_limit_counts_that_poles_sessions(
    h: Harness, car: Wallet, late: Wallet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "MAX_LIVE_SESSIONS_PER_POLE", 2)
    full, other = register(h), register(h)
    charging = open_at(h, car, full)
    h.attach(full, charging)  # attached, a B reading, then a STOP: CLOSING is still live, still counted
    h.send(full, charging.session_id, [full.meter.begin(charging.session_id)])
    answer = call(h.c.charging.Stop, car.stop_request(h.a, charging))
    assert answer.state == charging_pb2.SESSION_STATE_CLOSING
    idle = open_at(h, car, full)
    blocked, _ = open_request(h, late, full)
    refused(h, blocked, "the pole has 2 open sessions", car, late)
    open_at(h, car, other)  # another pole (of another operator) is not affected
    freed_by_settling(h, car, idle, late, full, "the pole has 2 open sessions")


def test_the_per_operator_limit_counts_sessions_over_all_its_poles(
    h: Harness, car: Wallet, late: Wallet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "MAX_LIVE_SESSIONS_PER_POLE", 2)
    monkeypatch.setattr(engine, "MAX_LIVE_SESSIONS_PER_OPERATOR", 3)
    operator = os.urandom(32)
    north, south, west = (register(h, operator) for _ in range(3))
    assert north.operator_key == south.operator_key == west.operator_key
    sessions = [open_at(h, car, north), open_at(h, car, north), open_at(h, car, south)]
    # west has no open session, south one (the per-pole limit is 2): the operator's 3 refuse both
    refused(h, open_request(h, late, south)[0], "operator have 3 open sessions", car, late)
    open_at(h, car, register(h))  # a pole of another operator is not affected
    # a session settling at north frees a place at west (whose next OPEN, its second, is below the
    # per-pole limit): the count is the operator's, over all its poles
    freed_by_settling(h, car, sessions[0], late, west, "operator have 3 open sessions")


def test_sessions_reloaded_after_a_restart_still_count(
    h: Harness, car: Wallet, late: Wallet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "MAX_LIVE_SESSIONS_PER_POLE", 2)
    pole = register(h)
    sessions = [open_at(h, car, pole), open_at(h, car, pole)]
    h.restart()  # a new engine on the same store: the live sessions come back from their sealed state
    freed_by_settling(h, car, sessions[1], late, pole, "the pole has 2 open sessions")
