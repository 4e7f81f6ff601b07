"""The engine's proof work served by worker processes (escrow.host.workers): the same answers and the
same refusals as in-process, over real gRPC."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest
from service_harness import Harness

from clients.connection import EscrowError, call
from clients.wallet import Wallet
from escrow.core.errors import CoreError
from escrow.core.ledger import LedgerError
from escrow.core.readings import ReadingRejected
from escrow.core.spending import SpendError
from escrow.host.workers import ProofPool
from escrow.v1 import charging_pb2


def test_refusals_pickle_with_class_reason_and_attributes() -> None:
    for error in (
        SpendError("SPEND_NOTE_SPENT", "an input note is already spent"),
        LedgerError("ENTRY_HEIGHT", "height 3, expected 2", 3),
        ReadingRejected("READING_MALFORMED", "bad", ocmf_reason="OCMF_JSON_INVALID"),
    ):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and isinstance(copy, CoreError)
        assert (copy.reason, copy.detail, copy.__dict__) == (error.reason, error.detail, error.__dict__)


def test_pool_sizes_are_checked() -> None:
    for bad in (0, -1, 65, True):
        with pytest.raises(ValueError):
            ProofPool(bad)  # type: ignore[arg-type]


def test_a_session_with_proofs_in_a_worker_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESCROW_NV_DIR", str(tmp_path / "nv"))
    h = Harness.start(tmp_path, proof_workers=1)
    try:
        pole = h.new_pole()
        car = Wallet(os.urandom(32))
        h.fund(car, 800)
        session = h.open_session(car, pole, 800)
        h.attach(pole, session)
        acks = h.charge(pole, session, [Decimal("2.000")])
        assert acks[-1].decision == "SETTLED"
        receipt = car.open_receipt(h.a, session.session_id, h.get(car, session).receipt_envelope).receipt
        assert receipt.bill_minor == 2 * 39 + 50
        # A refusal computed in the worker keeps its reason: an OPEN whose deadline is out of range.
        car.scan(h.c, h.a)
        prepared = car.prepare_deposit(h.a, 100)
        request, _ = car.open_request(h.a, prepared, pole.pole_id, pole.tariff_body, 2**62)
        with pytest.raises(EscrowError) as refused:
            call(h.c.charging.Open, request)
        assert refused.value.reason == "SPEND_DEADLINE_INVALID"
        assert call(h.c.charging.GetSession, car.get_request(h.a, session)).state == (
            charging_pb2.SESSION_STATE_SETTLED
        )
    finally:
        h.stop()


def test_workers_leave_when_the_server_is_killed(tmp_path: Path) -> None:
    # A server killed with SIGKILL runs no cleanup; its workers must not stay behind, blocked on the
    # pool's queue with their tables, after every crash (the crash campaign kills servers dozens of times).
    script = (
        "import sys, time\n"
        "from escrow.host.workers import ProofPool\n"
        "pool = ProofPool(2)\n"
        "print(' '.join(map(str, pool.worker_pids())), flush=True)\n"
        "time.sleep(120)\n"
    )
    server = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1]
    )
    try:
        assert server.stdout is not None
        pids = [int(p) for p in server.stdout.readline().split()]
        assert len(pids) == 2 and all(_alive(p) for p in pids)
    finally:
        server.kill()
        server.wait(10)
    deadline = time.monotonic() + 20
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids), "a proof worker outlived its killed server"


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
