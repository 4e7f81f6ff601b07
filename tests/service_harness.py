"""A real escrow server on port 0 and the parties that use it, for the end-to-end tests.

``Harness.start`` builds a data directory, starts the node (enclave, store, engine) and a gRPC server on
127.0.0.1:0, and connects a client that attests the enclave under the platform's emulated root with the
measured MRENCLAVE pinned. Helpers register poles, fund wallets and drive sessions over real gRPC.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc

from clients.connection import Attested, Connection, call
from clients.issuer import Issuer
from clients.meter import SimulatedMeter
from clients.pole import CheckedAck, Pole, check_ack
from clients.wallet import Session, Wallet
from enclave.verifier import Policy
from escrow.core.session import AckBody
from escrow.host.admission import Limits
from escrow.host.grpc_server import create_server
from escrow.host.node import STORE_FILE, EscrowNode, GenesisConfig
from escrow.v1 import charging_pb2

CURRENCY = "EUR"
PRICE_NUMERATOR = 39 * 1_000_000  # 0.39 EUR per kWh = 39 cents
SESSION_FEE = 50


def store_digest(h: Harness) -> str:
    """A byte-exact digest of the store: every row of every table, sorted, through a read-only connection."""
    path = h.data_dir / STORE_FILE
    digest = hashlib.sha256()
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        tables = [
            r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        ]
        assert {"entries", "notes", "sealed", "idempotency", "sessions", "mint_references"} <= set(tables)
        for table in tables:
            rows = sorted(repr(row) for row in db.execute(f'SELECT * FROM "{table}"'))
            digest.update(repr((table, rows)).encode())
    return digest.hexdigest()


@dataclass
class Harness:
    data_dir: Path
    nv_dir: Path
    issuer: Issuer
    grace_ms: int
    node: EscrowNode | None = None
    server: grpc.Server | None = None
    port: int = 0
    conn: Connection | None = None
    attested: Attested | None = None
    poles: list[Pole] = field(default_factory=list)
    proof_workers: int = 0
    limits: Limits | None = None

    @classmethod
    def start(
        cls,
        tmp: Path,
        *,
        grace_ms: int = 120_000,
        tick_interval_s: float = 0.2,
        proof_workers: int = 0,
        limits: Limits | None = None,
    ) -> Harness:
        h = cls(tmp / "data", tmp / "nv", Issuer(os.urandom(32)), grace_ms)
        h.proof_workers, h.limits = proof_workers, limits
        h.boot(tick_interval_s)
        return h

    def boot(self, tick_interval_s: float = 0.2) -> None:
        genesis = GenesisConfig(
            issuer_keys=(self.issuer.public_key,), currency=CURRENCY, grace_ms=self.grace_ms
        )
        self.node = EscrowNode.start(
            self.data_dir,
            genesis,
            nv_dir=self.nv_dir,
            tick_interval_s=tick_interval_s,
            proof_workers=self.proof_workers,
        )
        self.server, self.port = create_server(self.node, "127.0.0.1:0", self.limits)
        self.conn = Connection(f"127.0.0.1:{self.port}")
        self.attested = self.conn.attest(self.policy())

    def policy(self) -> Policy:
        assert self.node is not None and self.node.host is not None
        host = self.node.host
        return Policy(
            root_ca_der=host.platform.root_ca_der(),
            expect_mrenclave=host.identity.mr_enclave,
            allow_debug_insecure=host.identity.debug,
        )

    def stop(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.server is not None:
            self.server.stop(grace=None).wait()
            self.server = None
        if self.node is not None:
            self.node.close()
            self.node = None

    def restart(self) -> None:
        self.stop()
        self.boot()

    # --- parties --------------------------------------------------------------------------------

    @property
    def a(self) -> Attested:
        assert self.attested is not None
        return self.attested

    @property
    def c(self) -> Connection:
        assert self.conn is not None
        return self.conn

    def new_pole(self, *, price: int = PRICE_NUMERATOR, fee: int = SESSION_FEE, RU: str = "kWh") -> Pole:
        n = len(self.poles) + 1
        meter = SimulatedMeter.generate(RU=RU)
        pole = Pole(
            os.urandom(32),
            meter,
            f"POLE-{n}-{os.urandom(3).hex()}",
            f"DE*ESC*E{n:04d}{os.urandom(2).hex()}",
            os.urandom(32),
        )
        call(self.c.registry.RegisterPole, pole.register_request(self.a.chain_id))
        call(
            self.c.registry.PublishTariff,
            pole.tariff_request(self.a.chain_id, CURRENCY, price, fee, sequence=1),
        )
        self.poles.append(pole)
        return pole

    def fund(self, wallet: Wallet, *amounts: int) -> None:
        for amount in amounts:
            call(self.c.notes.Mint, self.issuer.mint_request(self.a, CURRENCY, wallet.address, amount))
        wallet.scan(self.c, self.a)

    def open_session(self, wallet: Wallet, pole: Pole, deposit: int, *, deadline_s: float = 3600) -> Session:
        prepared = wallet.prepare_deposit(self.a, deposit)
        deadline = int((time.time() + deadline_s) * 1000)
        request, session = wallet.open_request(self.a, prepared, pole.pole_id, pole.tariff_body, deadline)
        call(self.c.charging.Open, request)
        wallet.scan(self.c, self.a)  # the inputs are spent, the change note is new
        return session

    def attach(self, pole: Pole, session: Session) -> CheckedAck:
        answer = call(self.c.charging.Attach, pole.attach_request(self.a, session.session_id))
        return check_ack(self.a, session.session_id, answer.ack)

    def send(self, pole: Pole, session_id: bytes, records: list[str]) -> list[AckBody]:
        """Stream records to the enclave over one StreamReadings call; the verified ACKs in order."""
        envelopes = [pole.reading_envelope(self.a, session_id, r) for r in records]
        acks = self.c.charging.StreamReadings(iter(envelopes), timeout=60)
        return [check_ack(self.a, session_id, ack).body for ack in acks]

    def charge(
        self, pole: Pole, session: Session, steps: list[Decimal], *, end: bool = True
    ) -> list[AckBody]:
        """B, one C per step (after advancing the meter), then E: all in one stream."""
        records = [pole.meter.begin(session.session_id)]
        for step in steps:
            pole.meter.advance(step)
            records.append(pole.meter.reading())
        if end:
            records.append(pole.meter.end())
        return self.send(pole, session.session_id, records)

    def get(self, wallet: Wallet, session: Session) -> charging_pb2.GetSessionResponse:
        return call(self.c.charging.GetSession, wallet.get_request(self.a, session))

    def wait_state(self, wallet: Wallet, session: Session, state: int, timeout_s: float = 10) -> Any:
        end = time.monotonic() + timeout_s
        while True:
            answer = self.get(wallet, session)
            if answer.state == state or time.monotonic() > end:
                return answer
            time.sleep(0.05)


def records_of(pole: Pole, session_id: bytes, kwh: list[str]) -> Iterator[str]:
    yield pole.meter.begin(session_id)
    for step in kwh:
        pole.meter.advance(Decimal(step))
        yield pole.meter.reading()
