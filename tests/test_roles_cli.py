"""Every role as its own process, the way the README's hand-run walkthrough drives them: escrow-server,
escrow-issuer, escrow-pole and escrow-vehicle as console scripts over TCP, the vehicle's `charge` and the
pole's `charge` running at the same time in separate processes, and escrow-audit at the end."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_process import Server, command, env_for, kill_leftovers, serve

PASSPHRASE = "correct horse battery staple"


@pytest.fixture()
def walk(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str], Server]]:
    env = {**env_for(tmp_path / "nv"), "ESCROW_PASSPHRASE": PASSPHRASE}
    issuer = subprocess.run(
        [*command("escrow-issuer"), "--keys", str(tmp_path / "issuer.keys"), "init", "--json"],
        capture_output=True, text=True, env=env, timeout=60, check=True,
    )  # fmt: skip
    key = json.loads(issuer.stdout)["public_key"]
    server = serve(tmp_path / "data", tmp_path / "nv", "--issuer-key", key)
    env["ESCROW_ROOT_CA"] = str(tmp_path / "data" / "platform" / "root_ca.der")
    env["ESCROW_MRENCLAVE"] = str(server.printed["mrenclave"])
    yield tmp_path, env, server
    server.stop()
    kill_leftovers()


def _run(env: dict[str, str], cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(argv), capture_output=True, text=True, env=env, cwd=cwd, timeout=120)
    assert done.returncode == 0, (argv, done.stdout, done.stderr)
    return done


def test_pole_and_vehicle_charge_in_separate_processes(walk: tuple[Path, dict[str, str], Server]) -> None:
    tmp, env, server = walk
    target = server.address
    vehicle, pole, issuer, audit = (command(f"escrow-{n}") for n in ("vehicle", "pole", "issuer", "audit"))
    _run(env, tmp, *pole, "--keys", "pole.keys", "--wallet", "pole.wallet", "init", "--pole-id", "POLE-1")
    _run(env, tmp, *pole, "--target", target, "--keys", "pole.keys", "register", "--evse-id", "DE*ESC*E0001",
         "--price-per-kwh", "0.39", "--session-fee", "0.50")  # fmt: skip
    _run(env, tmp, *vehicle, "--wallet", "car.wallet", "create")
    address = _run(env, tmp, *vehicle, "--wallet", "car.wallet", "address", "--json").stdout
    _run(env, tmp, *issuer, "--target", target, "--keys", "issuer.keys", "mint", "--amount", "50.00",
         "--to", json.loads(address)["address"])  # fmt: skip

    argv = [*vehicle, "--wallet", "car.wallet", "charge", "--target", target, "--pole", "POLE-1"]
    charge = subprocess.Popen(
        [*argv, "--deposit", "20.00", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp,
    )  # fmt: skip
    try:
        assert charge.stderr is not None
        session_id = ""
        end = time.monotonic() + 120
        while not session_id and time.monotonic() < end:
            line = charge.stderr.readline()
            assert line, "escrow-vehicle charge ended before printing its session id"
            if line.startswith("session "):
                session_id = line.split()[1]
        files = ["--keys", "pole.keys", "--wallet", "pole.wallet"]
        pole_done = _run(env, tmp, *pole, "--target", target, *files, "charge", "--session", session_id,
                         "--kwh", "3.5", "--json")  # fmt: skip
        out, err = charge.communicate(timeout=120)
    finally:
        if charge.poll() is None:
            charge.kill()
            charge.wait()
    assert charge.returncode == 0, err
    car = json.loads(out)
    paid = json.loads(pole_done.stdout)
    bill = 350 * 39 // 100 + 50  # floor(3.5 kWh x 39 cents) + 50 cents = 186
    assert (car["bill_minor"], car["refund_minor"], car["energy_kwh"]) == (bill, 2000 - bill, "3.500")
    assert paid["pay_minor"] == bill and car["balance_minor"] == 5000 - bill
    report = json.loads(_run(env, tmp, *audit, "verify", "--target", target, "--json").stdout)
    assert report["ok"] is True and report["sessions_settled"] == 1 and report["total_issued_minor"] == 5000
    assert os.stat(tmp / "car.wallet").st_mode & 0o077 == 0
