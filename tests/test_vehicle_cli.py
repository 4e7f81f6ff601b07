"""`escrow-vehicle` as the driver runs it: the real console script as subprocesses against a real server.

The server is the in-process harness (tests/service_harness.py) on a TCP port; every CLI call is its own
process that attests the server under its emulated root with the MRENCLAVE pinned (ESCROW_ROOT_CA,
ESCROW_MRENCLAVE), reads the wallet with ESCROW_PASSPHRASE, and talks gRPC. Poles are driven from the
test process with clients.pole.Pole once the charging process has printed its session id.

Wallet files use the real scrypt cost (no environment variable lowers it for a subprocess): about
0.12 s per read or write of a wallet file, on top of ~0.6 s of interpreter start and imports.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from service_harness import Harness

from clients import cli
from clients.connection import call
from clients.pole import Pole
from clients.secretfile import insecure_fast_kdf_for_tests
from clients.vehicle_cli import WalletFile
from clients.wallet import Wallet
from escrow.core.readings import meter_handle

BIN = Path(sys.executable).parent
PASSPHRASE = "correct horse battery staple"
TIMEOUT_S = 90


def _command() -> list[str]:
    script = BIN / "escrow-vehicle"
    return [str(script)] if script.exists() else [sys.executable, "-m", "clients.vehicle_cli"]


@dataclass
class Env:
    h: Harness
    tmp: Path
    vars: dict[str, str]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.h.port}"

    def run(
        self, *args: str, extra: dict[str, str] | None = None, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*_command(), *args],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            env={**self.vars, **(extra or {})},
            input=stdin,
        )

    def popen(self, *args: str) -> Running:
        proc = subprocess.Popen(
            [*_command(), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.vars,
        )
        return Running(proc)

    def new_wallet(self, name: str, *amounts: int) -> tuple[Path, bytes]:
        path = self.tmp / name
        done = self.run("--wallet", str(path), "create", "--json")
        assert done.returncode == 0, done.stderr
        seed = bytes.fromhex(json.loads(done.stdout)["seed"])
        if amounts:
            self.h.fund(Wallet(seed), *amounts)
        return path, seed


@dataclass
class Running:
    """A CLI process whose stdout and stderr lines are read as they come."""

    proc: subprocess.Popen[str]
    out: queue.Queue[str] = field(default_factory=queue.Queue)
    err: queue.Queue[str] = field(default_factory=queue.Queue)
    out_lines: list[str] = field(default_factory=list)
    err_lines: list[str] = field(default_factory=list)
    pumps: list[threading.Thread] = field(default_factory=list)

    def __post_init__(self) -> None:
        assert self.proc.stdout is not None and self.proc.stderr is not None
        for stream, into in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            pump = threading.Thread(target=self._pump, args=(stream, into), daemon=True)
            pump.start()
            self.pumps.append(pump)

    def _drained(self) -> bool:
        """True once the process has exited and everything it printed is queued."""
        if self.proc.poll() is None:
            return False
        for pump in self.pumps:
            pump.join(timeout=5)
        return True

    @staticmethod
    def _pump(stream: Any, into: queue.Queue[str]) -> None:
        for line in stream:
            into.put(line.rstrip("\n"))

    def wait_for(self, pattern: str, *, stderr: bool = False, timeout_s: float = 60) -> re.Match[str]:
        """The first line (of stdout, or stderr) matching ``pattern``; fails the test on timeout."""
        lines, seen = (self.err, self.err_lines) if stderr else (self.out, self.out_lines)
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            try:
                line = lines.get(timeout=0.1)
            except queue.Empty:
                if self._drained() and lines.empty():
                    break
                continue
            seen.append(line)
            if (m := re.search(pattern, line)) is not None:
                return m
        self.proc.kill()
        self._drained()
        self._collect()
        pytest.fail(f"no line matching {pattern!r}; stdout {self.out_lines}, stderr {self.err_lines}")

    def finish(self, timeout_s: float = 60) -> tuple[int, list[str], list[str]]:
        code = self.proc.wait(timeout=timeout_s)
        self._drained()
        self._collect()
        return code, self.out_lines, self.err_lines

    def _collect(self) -> None:
        for lines, seen in ((self.out, self.out_lines), (self.err, self.err_lines)):
            while not lines.empty():
                seen.append(lines.get())


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("vehicle")
    old = os.environ.get("ESCROW_NV_DIR")
    os.environ["ESCROW_NV_DIR"] = str(tmp / "nv")
    h = Harness.start(tmp)
    root = tmp / "root_ca.der"
    root.write_bytes(h.policy().root_ca_der)
    mrenclave = h.policy().expect_mrenclave
    assert mrenclave is not None
    variables = {
        **os.environ,
        "ESCROW_PASSPHRASE": PASSPHRASE,
        "ESCROW_ROOT_CA": str(root),
        "ESCROW_MRENCLAVE": mrenclave.hex(),
    }
    variables.pop("ESCROW_WALLET", None)
    yield Env(h, tmp, variables)
    h.stop()
    if old is None:
        os.environ.pop("ESCROW_NV_DIR", None)
    else:
        os.environ["ESCROW_NV_DIR"] = old


def _drive(h: Harness, pole: Pole, session_id: bytes, steps: list[str], pause_s: float) -> None:
    """Attach, then B, one C per step and E, each in its own stream call with a pause between."""
    call(h.c.charging.Attach, pole.attach_request(h.a, session_id))
    h.send(pole, session_id, [pole.meter.begin(session_id)])
    for step in steps:
        time.sleep(pause_s)
        pole.meter.advance(Decimal(step))
        h.send(pole, session_id, [pole.meter.reading()])
    time.sleep(pause_s)
    h.send(pole, session_id, [pole.meter.end()])


def test_create_prints_the_seed_once_and_the_file_is_private_and_encrypted(env: Env) -> None:
    path = env.tmp / "created.wallet"
    done = env.run("--wallet", str(path), "create")
    assert done.returncode == 0, done.stderr
    seeds = re.findall(r"\b[0-9a-f]{64}\b", done.stdout)
    assert len(seeds) == 1 and done.stdout.count(seeds[0]) == 1
    assert "only this once" in done.stdout and "esc1" in done.stdout
    seed = bytes.fromhex(seeds[0])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    raw = path.read_bytes()
    assert raw.startswith(b"ESCROW-SECRET") and seed not in raw and seeds[0].encode() not in raw
    # The address needs no server, and is the seed's.
    address = env.run("--wallet", str(path), "address")
    assert address.returncode == 0, address.stderr
    assert address.stdout.strip() == Wallet(seed).address.to_text()
    # The same file again: refused, nothing overwritten, and the seed is not printed again.
    again = env.run("create", "--wallet", str(path))
    assert again.returncode == 2 and "WALLET_EXISTS" in again.stderr and again.stdout == ""
    assert path.read_bytes() == raw


def test_balance_after_the_issuer_mints_to_the_address(env: Env) -> None:
    path, seed = env.new_wallet("balance.wallet")
    empty = env.run("--wallet", str(path), "balance", "--target", env.target, "--json")
    assert empty.returncode == 0, empty.stderr
    assert json.loads(empty.stdout)["balance_minor"] == 0
    env.h.fund(Wallet(seed), 1234, 66)
    human = env.run("--wallet", str(path), "--target", env.target, "balance")
    assert human.returncode == 0, human.stderr
    assert "13.00 EUR in 2 note(s)" in human.stdout
    machine = env.run("--wallet", str(path), "--target", env.target, "balance", "--json")
    result = json.loads(machine.stdout)
    assert (result["balance_minor"], result["notes"], result["currency"], result["decimals"]) == (
        1300,
        2,
        "EUR",
        2,
    )
    assert result["balance"] == "13.00"


def test_poles_lists_a_registered_pole_with_its_tariff(env: Env) -> None:
    pole = env.h.new_pole(price=39_500_000, fee=50)
    human = env.run("poles", "--target", env.target)
    assert human.returncode == 0, human.stderr
    line = next(x for x in human.stdout.splitlines() if x.startswith(pole.pole_id))
    assert pole.evse_id in line and "0.395 EUR/kWh" in line and "0.50 EUR" in line and "valid until" in line
    machine = env.run("poles", "--target", env.target, "--json")
    listed = {p["pole_id"]: p for p in json.loads(machine.stdout)["poles"]}
    mine = listed[pole.pole_id]
    assert (mine["evse_id"], mine["price_per_kwh"], mine["session_fee_minor"], mine["valid"]) == (
        pole.evse_id,
        "0.395",
        50,
        True,
    )


def test_charge_follows_progress_to_the_settlement_and_restore_finds_the_same_balance(env: Env) -> None:
    path, seed = env.new_wallet("charge.wallet", 1000, 500)
    pole = env.h.new_pole()
    running = env.popen(
        "--wallet", str(path), "--target", env.target, "charge", "--pole", pole.pole_id,
        "--deposit", "8.00", "--poll-s", "0.1", "--progress-s", "0.2",
    )  # fmt: skip
    sid = bytes.fromhex(running.wait_for(r"^session\s+([0-9a-f]{32})$").group(1))
    handle = running.wait_for(r"^meter id\s+(\S+)$").group(1)
    assert handle == meter_handle(sid)
    driver = threading.Thread(target=_drive, args=(env.h, pole, sid, ["1.5", "2.25"], 0.6))
    driver.start()
    code, out, err = running.finish()
    driver.join()
    assert code == 0, err
    text = "\n".join(out)
    assert re.search(r"CHARGING\s+1\.500 kWh\s+cost 1\.08 EUR\s+cover left 6\.92 EUR", text), text
    assert "settled: ENDED" in text
    assert re.search(r"energy\s+3\.750 kWh", text) and re.search(r"bill\s+1\.96 EUR", text)  # 146 + 50
    assert re.search(r"refund\s+6\.04 EUR \(of the 8\.00 EUR deposit\)", text)
    assert re.search(r"OCMF records\s+4, each signed by the pole's registered meter", text)
    assert "balance 13.04 EUR in 3 note(s)" in text  # 500, the change 200, the refund 604
    saved = env.run("--wallet", str(path), "sessions", "--json")
    assert [s["session_id"] for s in json.loads(saved.stdout)["sessions"]] == [sid.hex()]

    # The wallet file is lost; the seed alone restores every note by scanning the ledger.
    path.unlink()
    restored = env.run("--wallet", str(path), "restore", "--seed", "-", "--target", env.target, "--json",
                       stdin=seed.hex() + "\n")  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    result = json.loads(restored.stdout)
    assert (result["balance_minor"], result["notes"]) == (1304, 3)
    assert seed.hex() not in restored.stdout + restored.stderr
    balance = env.run("--wallet", str(path), "balance", "--target", env.target, "--json")
    assert json.loads(balance.stdout)["balance_minor"] == 1304


def test_ctrl_c_sends_a_signed_stop_and_the_deposit_comes_back(env: Env) -> None:
    path, _ = env.new_wallet("interrupt.wallet", 700)
    pole = env.h.new_pole()
    running = env.popen(
        "--wallet", str(path), "--target", env.target, "--json", "charge", "--pole", pole.pole_id,
        "--deposit", "7", "--poll-s", "0.1",
    )  # fmt: skip
    running.wait_for(r"^session\s+[0-9a-f]{32}$", stderr=True)
    running.wait_for(r"OPENED", stderr=True)
    running.proc.send_signal(signal.SIGINT)
    code, out, err = running.finish()
    assert code == 0, err
    assert len(out) == 1, out  # exactly one JSON object on stdout
    result = json.loads(out[0])
    assert (result["outcome"], result["bill_minor"], result["refund_minor"]) == ("REFUNDED", 0, 700)
    assert (result["deposit_minor"], result["balance_minor"], result["stop_sent"]) == (700, 700, True)
    assert result["energy_kwh"] in ("0", "0.000")
    assert any("STOP" in line for line in err)


def test_no_follow_then_status_and_stop_from_a_second_terminal(env: Env) -> None:
    path, _ = env.new_wallet("second.wallet", 500)
    pole = env.h.new_pole()
    common = ("--wallet", str(path), "--target", env.target, "--json")
    opened = env.run(*common, "charge", "--pole", pole.pole_id, "--deposit", "3.50", "--no-follow")
    assert opened.returncode == 0, opened.stderr
    sid = json.loads(opened.stdout)["session_id"]
    status = env.run(*common, "status", "--session", sid[:10])
    assert status.returncode == 0, status.stderr
    seen = json.loads(status.stdout)
    assert (seen["state"], seen["bill_minor"], seen["remaining_minor"]) == ("OPENED", 0, 350)
    stopped = env.run(*common, "stop", "--session", sid)
    assert stopped.returncode == 0, stopped.stderr
    result = json.loads(stopped.stdout)
    assert (result["state"], result["outcome"], result["refund_minor"]) == ("SETTLED", "REFUNDED", 350)
    assert result["balance_minor"] == 500
    after = env.run("--wallet", str(path), "--target", env.target, "status", "--session", sid)
    assert after.returncode == 0 and "settled: REFUNDED" in after.stdout
    again = env.run(*common, "stop", "--session", sid)
    assert again.returncode == 1 and "SESSION_SETTLED" in again.stderr


def test_bad_usage_and_refusals_exit_with_the_documented_codes(env: Env, tmp_path: Path) -> None:
    path, _ = env.new_wallet("usage.wallet", 300)
    pole = env.h.new_pole()
    w = ("--wallet", str(path), "--target", env.target)
    cases: dict[str, tuple[tuple[str, ...], dict[str, str], int, str]] = {
        "three decimals": ((*w, "charge", "--pole", pole.pole_id, "--deposit", "1.234"), {}, 2,
                           "more than 2 decimals"),
        "float-like": ((*w, "charge", "--pole", pole.pole_id, "--deposit", "1e3"), {}, 2,
                       "plain decimal number"),
        "missing wallet": (("--wallet", str(tmp_path / "none"), "balance", "--target", env.target), {}, 2,
                           "FILE_MISSING"),
        "wrong passphrase": ((*w, "balance"), {"ESCROW_PASSPHRASE": "not it"}, 1, "SECRET_FILE_PASSPHRASE"),
        "unknown pole": ((*w, "charge", "--pole", "NO-SUCH-POLE", "--deposit", "1.00"), {}, 1,
                         "POLE_UNKNOWN"),
        "above balance": ((*w, "charge", "--pole", pole.pole_id, "--deposit", "3.01"), {}, 1,
                          "INSUFFICIENT_FUNDS"),
        "below fee": ((*w, "charge", "--pole", pole.pole_id, "--deposit", "0.49"), {}, 1,
                      "DEPOSIT_BELOW_FEE"),
        "server down": (("--wallet", str(path), "balance", "--target", "127.0.0.1:1"), {}, 3,
                        "UNAVAILABLE"),
        "bad seed": (("--wallet", str(tmp_path / "r"), "restore", "--seed", "abc"), {}, 2, "64 hex digits"),
        "no target": (("--wallet", str(path), "balance"), {}, 2, "needs --target"),
        "no command": (("--wallet", str(path)), {}, 2, "required: COMMAND"),
        "another enclave": ((*w, "balance"), {"ESCROW_MRENCLAVE": "00" * 32}, 1, "MRENCLAVE_MISMATCH"),
    }  # fmt: skip

    def one(case: tuple[tuple[str, ...], dict[str, str], int, str]) -> subprocess.CompletedProcess[str]:
        return env.run(*case[0], "--json", extra=case[1])  # with --json, stdout holds a result or nothing

    with ThreadPoolExecutor(len(cases)) as pool:
        results = dict(zip(cases, pool.map(one, cases.values())))
    for name, (_, _, code, message) in cases.items():
        done = results[name]
        assert (done.returncode, message in done.stderr) == (code, True), (name, done.stderr)
        assert done.stdout == "", name
    # Every refusal says what to do next on its second line.
    assert "escrow-vehicle poles --target" in results["unknown pole"].stderr
    assert "deposit less" in results["above balance"].stderr
    assert "is the server running" in results["server down"].stderr
    assert not (tmp_path / "r").exists()


def test_saving_a_session_keeps_what_another_terminal_saved_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ESCROW_PASSPHRASE", PASSPHRASE)
    path = str(tmp_path / "shared.wallet")
    with insecure_fast_kdf_for_tests():
        cli.create_wallet_file(path, os.urandom(32))
        first, second = WalletFile.read(path), WalletFile.read(path)
        first.save_session("aa" * 16, {"pole_id": "P-1"})
        second.save_session("bb" * 16, {"pole_id": "P-2"})  # read before the first write
        assert set(cli.read_wallet_file(path)["sessions"]) == {"aa" * 16, "bb" * 16}
        second.save_session("bb" * 16, None)
        assert set(cli.read_wallet_file(path)["sessions"]) == {"aa" * 16}
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
