"""`escrow-issuer` and `escrow-pole` as real console scripts against a real escrow over TCP.

The server runs in this process (tests/service_harness.py, its GENESIS naming the issuer key that
`escrow-issuer init` wrote); every CLI runs as a subprocess with $ESCROW_PASSPHRASE, the emulated root CA
($ESCROW_ROOT_CA) and the measured MRENCLAVE ($ESCROW_MRENCLAVE). The vehicle's side (a wallet that is
paid by the issuer and opens sessions at the pole's published tariff) runs here with clients.wallet.
The tests share one chain and run in file order: mint, register, two charges, a new tariff, redeem.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from service_harness import Harness

from clients import issuer_cli, pole_cli
from clients.connection import call
from clients.issuer import Issuer
from clients.secretfile import read_secret_file
from clients.wallet import Session, Wallet
from escrow.core.registry import PoleBody
from escrow.core.tariff import Tariff
from escrow.v1 import registry_pb2

BIN = Path(sys.executable).parent
PASSPHRASE = "correct horse battery staple"
POLE_ID = "POLE-CLI-1"
EVSE_ID = "DE*ESC*E0042"


def command(tool: str) -> list[str]:
    script = BIN / tool
    module = {"escrow-pole": "clients.pole_cli", "escrow-issuer": "clients.issuer_cli"}[tool]
    return [str(script)] if script.exists() else [sys.executable, "-m", module]


@dataclass
class World:
    tmp: Path
    h: Harness
    env: dict[str, str]
    vehicle: Wallet = field(default_factory=lambda: Wallet(os.urandom(32)))
    charges: list[dict[str, Any]] = field(default_factory=list)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.h.port}"

    def run(
        self, tool: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command(tool), *args], capture_output=True, text=True, timeout=60, env=env or self.env
        )

    def ok(self, tool: str, *args: str) -> dict[str, Any]:
        """Run with --json; the exit code must be 0 and stdout exactly one JSON object."""
        done = self.run(tool, *args, "--json")
        assert done.returncode == 0, done.stderr
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def pole(self, *args: str) -> dict[str, Any]:
        return self.ok("escrow-pole", "--target", self.target, *self._pole_files(), *args)

    def _pole_files(self) -> list[str]:
        return ["--keys", str(self.tmp / "pole.keys"), "--wallet", str(self.tmp / "payout.wallet")]

    def open_session(self, deposit: int) -> Session:
        """The vehicle opens a session at the pole's published tariff (read back from ListPoles)."""
        page = call(self.h.c.registry.ListPoles, registry_pb2.ListPolesRequest(page_size=1024))
        tariff = next(
            p.tariff_body for p in page.poles if PoleBody.from_bytes(p.pole_body).pole_id == POLE_ID
        )
        prepared = self.vehicle.prepare_deposit(self.h.a, deposit)
        deadline = int((time.time() + 3600) * 1000)
        request, session = self.vehicle.open_request(self.h.a, prepared, POLE_ID, tariff, deadline)
        call(self.h.c.charging.Open, request)
        self.vehicle.scan(self.h.c, self.h.a)
        return session


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("pole-issuer-cli")
    env = {**os.environ, "ESCROW_PASSPHRASE": PASSPHRASE}
    for name in ("ESCROW_ROOT_CA", "ESCROW_MRENCLAVE", "ESCROW_MRSIGNER"):
        env.pop(name, None)
    # The issuer's key comes first: the chain's GENESIS names it.
    done = subprocess.run(
        [*command("escrow-issuer"), "--keys", str(tmp / "issuer.keys"), "init", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    public_key = json.loads(done.stdout)["public_key"]
    seed = json.loads(read_secret_file(tmp / "issuer.keys", "issuer-keys", PASSPHRASE.encode()))["seed"]
    issuer = Issuer(bytes.fromhex(seed))
    assert issuer.public_key.hex() == public_key
    h = Harness(tmp / "data", tmp / "nv", issuer, 120_000)
    h.boot()
    try:
        assert h.node is not None and h.node.host is not None
        root = tmp / "root_ca.der"
        root.write_bytes(h.node.host.platform.root_ca_der())
        env["ESCROW_ROOT_CA"] = str(root)
        env["ESCROW_MRENCLAVE"] = h.node.host.identity.mr_enclave.hex()
        yield World(tmp, h, env)
    finally:
        h.stop()


def bill(kwh: str, price_numerator: int = 39_000_000, fee: int = 50) -> int:
    return int(Decimal(kwh) * price_numerator) // 1_000_000 + fee


def pole_keys(world: World) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        read_secret_file(world.tmp / "pole.keys", "pole-keys", PASSPHRASE.encode())
    )
    return data


# --- the story ------------------------------------------------------------------------------------------


def test_issuer_mints_to_the_vehicle_address(world: World) -> None:
    shown = world.ok("escrow-issuer", "--keys", str(world.tmp / "issuer.keys"), "show")
    assert shown["public_key"] == world.h.issuer.public_key.hex()  # the key the chain's GENESIS names
    minted = world.ok(
        "escrow-issuer",
        "--target",
        world.target,
        "--keys",
        str(world.tmp / "issuer.keys"),
        "mint",
        "--to",
        world.vehicle.address.to_text(),
        "--amount",
        "20.00",
        "--reference",
        "sepa-0001",
    )
    assert (minted["amount_minor"], minted["amount"], minted["currency"]) == (2000, "20.00", "EUR")
    assert minted["reference"] == "sepa-0001" and minted["height"] > 0
    world.vehicle.scan(world.h.c, world.h.a)
    assert world.vehicle.balance() == 2000
    assert [n.note_id.hex() for n in world.vehicle.unspent()] == [minted["note_id"]]


def test_pole_init_writes_private_encrypted_files_and_refuses_to_overwrite(world: World) -> None:
    files = ["--keys", str(world.tmp / "pole.keys"), "--wallet", str(world.tmp / "payout.wallet")]
    made = world.ok("escrow-pole", *files, "init", "--pole-id", POLE_ID)
    assert made["pole_id"] == POLE_ID and made["wallet_created"] is True
    assert len(made["operator_key"]) == 64 and len(made["meter_fingerprint"]) == 64
    for name in ("pole.keys", "payout.wallet"):
        path = world.tmp / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert b"ESCROW-SECRET" in path.read_bytes()[:16] and POLE_ID.encode() not in path.read_bytes()
    keys = pole_keys(world)
    assert (keys["meter"]["pagination"], keys["meter"]["register_kwh"]) == (1, "0.000")
    shown = world.ok("escrow-pole", "--keys", str(world.tmp / "pole.keys"), "show")
    assert (shown["pole_id"], shown["operator_key"], shown["meter_fingerprint"]) == (
        POLE_ID,
        made["operator_key"],
        made["meter_fingerprint"],
    )
    assert (shown["meter_pagination"], shown["registered_height"], shown["tariff_sequence"]) == (
        1,
        None,
        None,
    )
    again = world.run("escrow-pole", *files, "init")
    assert again.returncode == 2 and "SECRET_FILE_EXISTS" in again.stderr
    assert pole_keys(world)["operator_seed"] == keys["operator_seed"]


def test_pole_registers_and_publishes_its_tariff(world: World) -> None:
    bad = world.run(
        "escrow-pole",
        "--target",
        world.target,
        "--keys",
        str(world.tmp / "pole.keys"),
        "register",
        "--evse-id",
        EVSE_ID,
        "--price-per-kwh",
        "0.39",
        "--currency",
        "USD",
    )
    assert bad.returncode == 2 and "CURRENCY_MISMATCH" in bad.stderr
    done = world.pole("register", "--evse-id", EVSE_ID, "--price-per-kwh", "0.39", "--session-fee", "0.50")
    assert (done["newly_registered"], done["tariff_published"], done["tariff_sequence"]) == (True, True, 1)
    assert (done["price_numerator"], done["session_fee_minor"], done["price_per_kwh"]) == (
        39_000_000,
        50,
        "0.39",
    )
    keys = pole_keys(world)
    assert keys["evse_id"] == EVSE_ID and keys["tariff"]["sequence"] == 1
    assert keys["meter"]["pagination"] == 2  # the proof of possession took T1


def test_pole_charges_a_session_and_is_paid(world: World) -> None:
    session = world.open_session(1500)
    done = world.pole("charge", "--session", session.session_id.hex(), "--kwh", "3.75")
    expected = bill("3.750")  # floor(3.75 * 39) + 50 = 196 cents
    assert (done["state"], done["outcome"], done["energy_kwh"]) == ("SETTLED", "ENDED", "3.750")
    assert (done["pay_minor"], done["pay"], done["bill_minor"]) == (expected, "1.96", expected)
    assert (done["delivered_kwh"], done["stopped_early"], done["first_pg"]) == ("3.750", False, "T2")
    assert done["readings"] == 2 + 21  # B, 20 whole minutes at 11 kW (183 Wh) and the rest, the end
    world.charges.append(done)
    balance = world.pole("balance")
    assert (balance["balance_minor"], balance["balance"]) == (expected, "1.96")
    assert [n["note_id"] for n in balance["notes"]] == [done["note_id"]]
    keys = pole_keys(world)
    assert keys["meter"]["pagination"] == int(done["last_pg"][1:]) + 1
    assert keys["meter"]["register_kwh"] == "3.750"


def test_second_charge_continues_the_meter_and_stops_at_the_coverage_limit(world: World) -> None:
    session = world.open_session(200)
    done = world.pole("charge", "--session", session.session_id.hex(), "--kwh", "10", "--power-kw", "22")
    first = world.charges[0]
    assert int(done["first_pg"][1:]) == int(first["last_pg"][1:]) + 1  # pagination never goes back
    assert done["begin_register_kwh"] == "3.750"  # nor does the register
    # 200 - 50 cents pay for 3.871 kWh (floor(3.871 * 39) = 150 < floor(3.872 * 39)): the pole delivers
    # exactly up to that limit and no further, though 10 kWh were asked for.
    assert done["coverage_limit_register_kwh"] == "7.621"
    assert (done["delivered_kwh"], done["stopped_early"], done["stopped_by"]) == (
        "3.871",
        True,
        "coverage_limit",
    )
    assert (done["pay_minor"], done["outcome"]) == (200, "ENDED") and bill("3.871") == 200
    world.charges.append(done)
    balance = world.pole("balance")
    assert balance["balance_minor"] == first["pay_minor"] + done["pay_minor"]


def test_ctrl_c_stops_delivering_and_settles_with_a_local_stop_reading(world: World) -> None:
    session = world.open_session(300)
    argv = [
        *command("escrow-pole"),
        "--target",
        world.target,
        *world._pole_files(),
        "charge",
        "--json",
        "--session",
        session.session_id.hex(),
        "--kwh",
        "1",
        "--power-kw",
        "22",
        "--interval-s",
        "0.4",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=world.env)
    try:
        assert proc.stderr is not None
        progress = []
        while not any(" C: " in line for line in progress):  # real pace: one reading per 0.4 s
            line = proc.stderr.readline()
            assert line, f"escrow-pole ended early: {progress}"
            progress.append(line)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    done = json.loads(out)
    assert (done["state"], done["stopped_early"], done["stopped_by"]) == ("SETTLED", True, "operator")
    assert " L: " in err and "SETTLED" in err  # the end reading is a local stop (OCMF TX L)
    assert Decimal(done["delivered_kwh"]) < Decimal("0.1") and done["energy_kwh"] == done["delivered_kwh"]
    assert done["pay_minor"] == bill(done["delivered_kwh"])
    assert int(done["first_pg"][1:]) == int(world.charges[-1]["last_pg"][1:]) + 1
    world.charges.append(done)


def test_register_again_with_a_new_price_publishes_only_a_tariff(world: World) -> None:
    done = world.pole("register", "--price-per-kwh", "0.45", "--session-fee", "0.50")
    assert (done["newly_registered"], done["tariff_published"], done["tariff_sequence"]) == (False, True, 2)
    page = call(world.h.c.registry.ListPoles, registry_pb2.ListPolesRequest(page_size=1024))
    listed = [p for p in page.poles if PoleBody.from_bytes(p.pole_body).pole_id == POLE_ID]
    assert len(listed) == 1 and Tariff.from_bytes(listed[0].tariff_body).price_numerator == 45_000_000
    same = world.pole("register", "--price-per-kwh", "0.45", "--session-fee", "0.50")
    assert (same["tariff_published"], same["tariff_sequence"]) == (False, 2)


def test_redeem_needs_exact_notes_and_the_issuer_approves_it(world: World) -> None:
    paid = sum(c["pay_minor"] for c in world.charges)  # 196 + 200 + 50 and a little
    amount = f"{paid // 100}.{paid % 100:02d}"
    odd = world.run(
        "escrow-pole",
        "--target",
        world.target,
        "--wallet",
        str(world.tmp / "payout.wallet"),
        "redeem",
        "--amount",
        "1.00",
    )
    assert odd.returncode == 1 and "NO_EXACT_NOTES" in odd.stderr and "exactly" in odd.stderr
    done = world.pole("redeem", "--amount", amount, "--reference", "bank-transfer-42")
    assert (done["amount_minor"], done["notes_spent"], done["reference"]) == (paid, 3, "bank-transfer-42")
    assert world.pole("balance")["balance_minor"] == 0
    listed = world.ok(
        "escrow-issuer", "--target", world.target, "redemptions", "--from-height", str(done["height"])
    )
    assert [(r["height"], r["amount_minor"], r["reference"]) for r in listed["redemptions"]] == [
        (done["height"], paid, "bank-transfer-42")
    ]
    assert (listed["total_minor"], listed["total"]) == (paid, amount)


# --- refusals and their exit codes ---------------------------------------------------------------------


def test_unknown_session_is_refused_and_the_meter_state_kept(world: World) -> None:
    before = pole_keys(world)["meter"]
    done = world.run(
        "escrow-pole",
        "--target",
        world.target,
        *world._pole_files(),
        "charge",
        "--session",
        "ab" * 16,
        "--kwh",
        "1",
    )
    assert done.returncode == 1
    assert "SESSION_NOT_FOUND" in done.stderr and "session id the vehicle printed" in done.stderr
    assert pole_keys(world)["meter"] == before


def test_an_amount_with_three_decimals_is_bad_usage(world: World) -> None:
    done = world.run(
        "escrow-issuer",
        "--target",
        world.target,
        "--keys",
        str(world.tmp / "issuer.keys"),
        "mint",
        "--to",
        world.vehicle.address.to_text(),
        "--amount",
        "1.234",
    )
    assert done.returncode == 2 and "more than 2 decimals" in done.stderr


def test_wrong_passphrase_is_refused(world: World) -> None:
    env = {**world.env, "ESCROW_PASSPHRASE": "not the passphrase"}
    done = world.run(
        "escrow-pole",
        "--target",
        world.target,
        "--wallet",
        str(world.tmp / "payout.wallet"),
        "balance",
        env=env,
    )
    assert done.returncode == 1 and "SECRET_FILE_PASSPHRASE" in done.stderr


def test_server_down_is_unavailable(world: World) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = world.run(
        "escrow-pole",
        "--target",
        f"127.0.0.1:{port}",
        "--wallet",
        str(world.tmp / "payout.wallet"),
        "balance",
    )
    assert done.returncode == 3 and "UNAVAILABLE" in done.stderr and "--target" in done.stderr


def test_an_issuer_key_not_in_genesis_cannot_mint(world: World) -> None:
    other = str(world.tmp / "other-issuer.keys")
    world.ok("escrow-issuer", "--keys", other, "init")
    done = world.run(
        "escrow-issuer",
        "--target",
        world.target,
        "--keys",
        other,
        "mint",
        "--to",
        world.vehicle.address.to_text(),
        "--amount",
        "1.00",
    )
    assert done.returncode == 1 and "MINT_ISSUER_UNKNOWN" in done.stderr


def test_charge_before_register_says_what_to_do(world: World) -> None:
    files = ["--keys", str(world.tmp / "new.keys"), "--wallet", str(world.tmp / "payout.wallet")]
    world.ok("escrow-pole", *files, "init")  # an existing payout wallet is reused
    done = world.run(
        "escrow-pole", "--target", world.target, *files, "charge", "--session", "cd" * 16, "--kwh", "1"
    )
    assert done.returncode == 1 and "POLE_NOT_REGISTERED" in done.stderr and "register" in done.stderr


# --- in-process: usage that never reaches a server -------------------------------------------------------


def test_help_and_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert pole_cli.main(["--help"]) == 0
    for command_name in ("init", "register", "charge", "balance", "redeem"):
        assert pole_cli.main([command_name, "--help"]) == 0
    assert issuer_cli.main(["--help"]) == 0
    for command_name in ("init", "mint", "redemptions"):
        assert issuer_cli.main([command_name, "--help"]) == 0
    out = capsys.readouterr().out
    assert "exit codes" in out and "--price-per-kwh" in out and "--from-height" in out
    assert pole_cli.main(["frobnicate"]) == 2
    assert pole_cli.main(["--wallet", "w", "balance"]) == 2  # no --target
    assert (
        pole_cli.main(
            ["--target", "x:1", "--keys", "k", "--wallet", "w", "charge", "--session", "12", "--kwh", "1"]
        )
        == 2
    )
    assert (
        pole_cli.main(
            [
                "--target",
                "x:1",
                "--keys",
                "k",
                "--wallet",
                "w",
                "charge",
                "--session",
                "ab" * 16,
                "--kwh",
                "1.2345",
            ]
        )
        == 2
    )
    assert (
        issuer_cli.main(["--target", "x:1", "--keys", "k", "mint", "--to", "esc1nope", "--amount", "1"]) == 2
    )
    assert issuer_cli.main(["--target", "x:1", "--keys", "k", "mint", "--to", "x", "--amount", "1e3"]) == 2
    err = capsys.readouterr().err
    assert (
        "32 hex digits" in err and "more than 3 decimals" in err and "--target HOST:PORT is required" in err
    )
