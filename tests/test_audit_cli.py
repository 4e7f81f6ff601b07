"""`escrow-audit` as a subprocess (the installed console script) against a real server: the in-process
harness serves gRPC on 127.0.0.1 and the CLI connects over TCP. A small chain (a pole, two mints, a
settled session, a redemption) verifies live and exported with the same counts; a flipped payload byte,
a truncated file, a wrong MRENCLAVE, a server that is down and an --out that exists fail with the exit
codes and reasons that docs/escrow-audit.md documents."""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from service_harness import CURRENCY, Harness

from clients.auditor import EXPORT_MAGIC
from clients.connection import call
from clients.wallet import Wallet
from escrow.core.ledger import Entry

BIN = Path(sys.executable).parent
_POLICY_ENV = ("ESCROW_ROOT_CA", "ESCROW_MRENCLAVE", "ESCROW_MRSIGNER")


def audit_cli(*args: str) -> subprocess.CompletedProcess[str]:
    script = BIN / "escrow-audit"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "clients.audit_cli"]
    env = {k: v for k, v in os.environ.items() if k not in _POLICY_ENV}
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120, env=env)


@dataclass
class World:
    h: Harness
    target: str
    policy: list[str]  # --root-ca FILE --expect-mrenclave HEX
    entries: list[Entry]
    export: Path
    tmp: Path


EXPECTED = {
    "entries_checked": 7,
    "sessions_opened": 1,
    "sessions_settled": 1,
    "sessions_open": 0,
    "notes_unspent": 3,  # the change 200, the pole's 196, the refund 604 (the 500 note was redeemed)
    "total_issued_minor": 1500,
    "total_redeemed_minor": 500,
    "mints": 2,
    "redeems": 1,
    "poles": 1,
    "outcomes": {"ENDED": 1},
    "head_height": 6,
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("audit_cli")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ESCROW_NV_DIR", str(tmp / "nv"))
        h = Harness.start(tmp)
        try:
            pole = h.new_pole()
            car = Wallet(os.urandom(32))
            h.fund(car, 1000, 500)
            session = h.open_session(car, pole, 800)  # spends the 1000 note: change 200
            h.attach(pole, session)
            assert h.charge(pole, session, [Decimal("1.5"), Decimal("2.25")])[-1].decision == "SETTLED"
            car.scan(h.c, h.a)  # bill 196 (3.75 kWh at 39 cents + 50), refund 604
            call(h.c.notes.Redeem, car.redeem_request(h.a, CURRENCY, 500, b"bank-transfer-1"))
            entries = list(h.c.entries(0))
            assert [e.parsed.kind for e in entries] == [
                "GENESIS",
                "POLE",
                "MINT",
                "MINT",
                "OPEN",
                "SETTLE",
                "REDEEM",
            ]
            assert h.node is not None and h.node.host is not None
            root_ca = tmp / "root_ca.der"
            root_ca.write_bytes(h.node.host.platform.root_ca_der())
            policy = ["--root-ca", str(root_ca), "--expect-mrenclave", h.node.host.identity.mr_enclave.hex()]
            if h.node.host.identity.debug:
                policy.append("--allow-debug-insecure")
            world = World(h, f"127.0.0.1:{h.port}", policy, entries, tmp / "ledger.export", tmp)
            done = audit_cli("export", "--target", world.target, *policy, "--out", str(world.export))
            assert done.returncode == 0, done.stderr
            assert "wrote 7 entries" in done.stdout
            yield world
        finally:
            h.stop()


def _json(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    result = json.loads(done.stdout)  # exactly one JSON object on stdout
    assert isinstance(result, dict)
    return result


def _check_counts(result: dict[str, Any], world: World) -> None:
    for name, value in EXPECTED.items():
        assert result[name] == value, (name, result)
    assert result["chain_id"] == world.h.a.chain_id.hex() == world.entries[0].entry_hash.hex()
    assert result["head_hash"] == world.entries[-1].entry_hash.hex()
    assert (result["currency"], result["decimals"]) == (CURRENCY, 2)


def _check_human(text: str, world: World) -> None:
    for line in [
        "entries checked  7 (heights 0 to 6)",
        "sessions         1 opened, 1 settled, 0 open (ENDED 1)",
        "issued           15.00 EUR in 2 mints",
        "redeemed         5.00 EUR in 1 redemption",
        "unspent notes    3",
        f"chain id         {world.h.a.chain_id.hex()}",
        f"head             height 6, {world.entries[-1].entry_hash.hex()}",
        "OK: every entry verifies",
    ]:
        assert line in text.splitlines(), (line, text)


# --- the good paths -------------------------------------------------------------------------------------


def test_verify_target_reports_the_counts(world: World) -> None:
    done = audit_cli("verify", "--target", world.target, *world.policy)
    assert done.returncode == 0, done.stderr
    _check_human(done.stdout, world)
    assert "quotes           1 verified under the attestation policy" in done.stdout
    assert f"MRENCLAVE {world.policy[3]}" in done.stdout


def test_verify_target_json(world: World) -> None:
    done = audit_cli("verify", "--target", world.target, *world.policy, "--json")
    assert done.returncode == 0, done.stderr
    result = _json(done)
    assert result["ok"] is True and result["source"] == "target" and result["target"] == world.target
    _check_counts(result, world)
    assert result["quotes_verified"] == 1 and result["quotes_checked"] is True
    assert (result["first_bad_height"], result["reason"], result["first_bad_kind"]) == (None, None, None)
    assert result["attested"]["chain_id"] == world.h.a.chain_id.hex()
    assert result["ledger_key"] == world.h.a.ledger_key.hex()


def test_export_then_verify_ledger_gives_the_same_counts(world: World) -> None:
    done = audit_cli("verify", "--ledger", str(world.export))
    assert done.returncode == 0, done.stderr
    _check_human(done.stdout, world)
    assert "quotes           NOT CHECKED" in done.stdout  # no policy: said plainly

    done = audit_cli("verify", "--ledger", str(world.export), *world.policy, "--json")
    assert done.returncode == 0, done.stderr
    result = _json(done)
    _check_counts(result, world)
    assert (result["source"], result["quotes_checked"], result["quotes_verified"]) == ("ledger", True, 1)


# --- failures -------------------------------------------------------------------------------------------


def _entry_offsets(data: bytes) -> list[tuple[int, int]]:
    """(payload offset, payload length) of each entry of an export file."""
    at, out = len(EXPORT_MAGIC), []
    while True:
        (n,) = struct.unpack_from(">I", data, at)
        if n == 0xFFFFFFFF:
            return out
        at += 4 + n
        (n,) = struct.unpack_from(">I", data, at)
        out.append((at + 4, n))
        at += 4 + n + 64


def test_a_flipped_payload_byte_names_the_entry(world: World) -> None:
    data = bytearray(world.export.read_bytes())
    offset, length = _entry_offsets(bytes(data))[4]  # the OPEN
    data[offset + length // 2] ^= 0x01
    tampered = world.tmp / "tampered.export"
    tampered.write_bytes(bytes(data))

    done = audit_cli("verify", "--ledger", str(tampered))
    assert done.returncode == 1
    assert re.search(r"^FAILED: first bad entry: height 4 \(OPEN\): ENTRY_PAYLOAD_HASH: ", done.stdout, re.M)
    assert "entries checked  4 (heights 0 to 3)" in done.stdout  # the counts before the bad entry
    assert "escrow-audit: " in done.stderr  # what to do next

    done = audit_cli("verify", "--ledger", str(tampered), "--json")
    assert done.returncode == 1
    result = _json(done)
    assert (result["ok"], result["first_bad_height"], result["first_bad_kind"], result["reason"]) == (
        False,
        4,
        "OPEN",
        "ENTRY_PAYLOAD_HASH",
    )
    assert result["entries_checked"] == 4 and result["total_issued_minor"] == 1500
    assert "first bad entry: height 4 (OPEN): ENTRY_PAYLOAD_HASH" in done.stderr


def test_a_truncated_export_fails_with_the_file_reason(world: World) -> None:
    data = world.export.read_bytes()
    offset, length = _entry_offsets(data)[5]  # cut inside the SETTLE's payload
    cut = world.tmp / "cut.export"
    cut.write_bytes(data[: offset + length // 2])
    done = audit_cli("verify", "--ledger", str(cut), "--json")
    assert done.returncode == 1, done.stderr  # a damaged export fails the audit (docs/escrow-audit.md)
    result = _json(done)
    assert (result["ok"], result["reason"], result["first_bad_height"]) == (False, "EXPORT_TRUNCATED", 5)
    assert result["entries_checked"] == 5 and result["sessions_opened"] == 1
    done = audit_cli("verify", "--ledger", str(cut))
    assert done.returncode == 1
    assert "FAILED: first bad entry: height 5 (export file): EXPORT_TRUNCATED: " in done.stdout
    assert "export it again" in done.stderr


def test_files_that_are_missing_or_no_export_are_usage_errors(world: World) -> None:
    done = audit_cli("verify", "--ledger", str(world.tmp / "no-such.export"))
    assert (done.returncode, done.stdout) == (2, "")
    assert "FILE_MISSING" in done.stderr
    not_export = world.tmp / "root_ca.der"
    done = audit_cli("verify", "--ledger", str(not_export), "--json")
    assert (done.returncode, done.stdout) == (2, "")
    assert "EXPORT_MAGIC" in done.stderr


def test_a_genesis_quote_under_another_mrenclave_fails_the_ledger(world: World) -> None:
    root_ca = world.policy[1]
    done = audit_cli(
        "verify", "--ledger", str(world.export), "--root-ca", root_ca, "--expect-mrenclave", "ab" * 32
    )
    assert done.returncode == 1
    assert "first bad entry: height 0 (GENESIS): AUDIT_QUOTE_INVALID: MRENCLAVE_MISMATCH" in done.stdout


def test_wrong_expected_mrenclave_is_an_attestation_failure(world: World) -> None:
    root_ca = world.policy[1]
    for command in (["verify"], ["export", "--out", str(world.tmp / "never.export")]):
        done = audit_cli(
            *command,
            "--target",
            world.target,
            "--root-ca",
            root_ca,
            "--expect-mrenclave",
            "00" * 32,
            "--json",
        )
        assert (done.returncode, done.stdout) == (1, ""), done.stderr
        assert "escrow-audit: MRENCLAVE_MISMATCH: " in done.stderr
    assert not (world.tmp / "never.export").exists()


def test_a_server_that_is_down_exits_3(world: World) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = audit_cli("verify", "--target", f"127.0.0.1:{port}", *world.policy, "--timeout-s", "5")
    assert done.returncode == 3, done.stderr
    assert "UNAVAILABLE" in done.stderr and "is the server running" in done.stderr


def test_export_refuses_to_overwrite(world: World) -> None:
    out = world.tmp / "again.export"
    out.write_bytes(b"keep me")
    done = audit_cli("export", "--target", world.target, *world.policy, "--out", str(out))
    assert done.returncode == 2 and "FILE_EXISTS" in done.stderr and "--force" in done.stderr
    assert out.read_bytes() == b"keep me"
    done = audit_cli(
        "export", "--target", world.target, *world.policy, "--out", str(out), "--force", "--json"
    )
    assert done.returncode == 0, done.stderr
    result = _json(done)
    assert (result["entries_written"], result["head_height"]) == (7, 6)
    assert result["head_hash"] == world.entries[-1].entry_hash.hex()
    assert out.read_bytes() == world.export.read_bytes()


def test_help_and_usage() -> None:
    for args in (["--help"], ["verify", "--help"], ["export", "--help"]):
        done = audit_cli(*args)
        assert done.returncode == 0 and "usage: escrow-audit" in done.stdout
    done = audit_cli("verify", "--target", "127.0.0.1:1", "--ledger", "x")
    assert done.returncode == 2 and "exactly one of --target" in done.stderr
    assert audit_cli().returncode == 2
