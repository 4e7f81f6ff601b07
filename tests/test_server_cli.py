"""`escrow-server serve` as a real process: it listens, is healthy, attests, refuses what it must, stops.

Every server here runs as the installed console script on 127.0.0.1:0 with its own data directory and
its own NV (monotonic counter) directory, and `escrow-attest verify --target` checks it over gRPC.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_process import Server, command, env_for, kill_leftovers, serve

from escrow.core.signing import ed25519_public_key, p256_key_id

ISSUER_KEY = ed25519_public_key(bytes(range(32))).hex()
OTHER_ISSUER_KEY = ed25519_public_key(bytes(range(1, 33))).hex()
NOT_A_POINT = "ab" * 32  # 32 bytes, but not an Ed25519 point: the enclave refuses it in GENESIS


@pytest.fixture(scope="module", autouse=True)
def _no_leftover_servers() -> Iterator[None]:
    yield
    kill_leftovers()


def run_server(data_dir: Path, nv_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """An escrow-server that is expected to refuse to start (and so to exit by itself)."""
    argv = [*command("escrow-server"), "serve", "--data-dir", str(data_dir), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env_for(nv_dir))


def attest(target: str, *args: str) -> tuple[int, dict[str, object]]:
    done = subprocess.run(
        [*command("escrow-attest"), "verify", "--target", target, "--json", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 or done.stdout, done.stderr
    return done.returncode, (json.loads(done.stdout) if done.stdout else {"stderr": done.stderr})


def root_ca(data_dir: Path) -> str:
    return str(data_dir / "platform" / "root_ca.der")  # the emulated platform's root (docs/platform.md)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("server")
    return base / "data", base / "nv"


@pytest.fixture(scope="module")
def server(dirs: tuple[Path, Path]) -> Iterator[Server]:
    data_dir, nv_dir = dirs
    running = serve(data_dir, nv_dir, "--issuer-key", ISSUER_KEY, as_json=True)
    yield running
    assert running.stop() == 0, running.stderr()


# --- a running server --------------------------------------------------------------------------------


def test_json_announcement_names_the_server(server: Server) -> None:
    p = server.printed
    assert set(p) == {"address", "mrenclave", "mrsigner", "chain_id", "debug"}
    host, port = str(p["address"]).rsplit(":", 1)
    assert host == "127.0.0.1" and 0 < int(port) < 65536  # the bound port, not 0
    assert len(bytes.fromhex(p["mrenclave"])) == 32 and len(bytes.fromhex(p["chain_id"])) == 32
    assert p["chain_id"] != "00" * 32 and p["debug"] is False


def test_health_serving_for_every_service(server: Server) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)  # the stubs' types lack the methods
        for name in ("", "escrow.v1.Charging", "escrow.v1.Attestation", "escrow.v1.Ledger"):
            answer = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, name


def test_verify_target_passes_and_reports_the_key_bundle(server: Server, dirs: tuple[Path, Path]) -> None:
    code, report = attest(
        server.address, "--root-ca", root_ca(dirs[0]), "--expect-mrenclave", server.printed["mrenclave"]
    )
    assert code == 0 and report["ok"] is True, report
    checks = report["checks"]
    assert isinstance(checks, list) and all(c["passed"] for c in checks)
    names = [c["name"] for c in checks]
    assert {"nonce", "key_bundle", "key_bundle_contents", "mrenclave"} <= set(names)
    assert report["freshness_checked"] is True and report["target"] == server.address
    bundle = report["key_bundle"]
    assert isinstance(bundle, dict)
    assert bundle["chain_id"] == server.printed["chain_id"]
    assert bundle["ledger_key_id"] == p256_key_id(bytes.fromhex(bundle["ledger_key"])).hex()
    identity = report["identity"]
    assert isinstance(identity, dict) and identity["mr_enclave"] == server.printed["mrenclave"]


def test_verify_target_nonces_are_fresh(server: Server, dirs: tuple[Path, Path]) -> None:
    reports = [attest(server.address, "--root-ca", root_ca(dirs[0]))[1] for _ in range(2)]
    assert reports[0]["nonce"] != reports[1]["nonce"]
    data = [r["identity"]["report_data"] for r in reports]  # type: ignore[index]
    assert data[0][:64] == data[1][:64] and data[0][64:] != data[1][64:]  # same bundle, other nonce


@pytest.mark.parametrize(
    ("policy", "reason", "check"),
    [
        (["--expect-mrenclave", "11" * 32], "MRENCLAVE_MISMATCH", "mrenclave"),
        (["--min-isvsvn", "99"], "ISVSVN_TOO_LOW", "isv_svn"),
        ([], "PCK_CHAIN_UNTRUSTED", "pck_chain_trust"),  # no --root-ca: only Intel's root is trusted
    ],
)
def test_verify_target_names_the_failed_check(
    server: Server, dirs: tuple[Path, Path], policy: list[str], reason: str, check: str
) -> None:
    root = ["--root-ca", root_ca(dirs[0])] if reason != "PCK_CHAIN_UNTRUSTED" else []
    code, report = attest(server.address, *root, *policy)
    assert code == 1 and report["ok"] is False and report["reason"] == reason
    failed = [c for c in report["checks"] if not c["passed"]]  # type: ignore[attr-defined]
    assert [c["name"] for c in failed] == [check] and failed[0]["reason"] == reason
    assert report["key_bundle"] is None


def test_verify_target_human_output(server: Server, dirs: tuple[Path, Path]) -> None:
    done = subprocess.run(
        [*command("escrow-attest"), "verify", "--target", server.address, "--root-ca", root_ca(dirs[0])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert f"chain_id       {server.printed['chain_id']}" in done.stdout
    assert "ledger_key_id" in done.stdout and done.stdout.rstrip().endswith("VERIFIED: every check passed")


def test_verify_target_unreachable_is_a_usage_failure(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, report = attest(f"127.0.0.1:{port}", "--timeout-s", "3")
    assert code == 2 and "cannot get a quote from" in str(report["stderr"])


def test_a_second_server_on_the_same_data_dir_is_refused(server: Server, dirs: tuple[Path, Path]) -> None:
    started = time.monotonic()
    done = run_server(dirs[0], dirs[1], "--listen", "127.0.0.1:0")
    assert done.returncode == 1 and done.stdout == ""
    assert "is locked by another escrow-server" in done.stderr and "--data-dir" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert time.monotonic() - started < 20
    with grpc.insecure_channel(server.address) as channel:  # the first one is unharmed
        stub: Any = health_pb2_grpc.HealthStub(channel)
        answer = stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_a_port_in_use_is_refused(server: Server, tmp_path: Path) -> None:
    done = run_server(tmp_path / "d", tmp_path / "nv", "--listen", server.address, "--issuer-key", ISSUER_KEY)
    assert done.returncode == 1 and f"cannot listen on {server.address}: the address is in use" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


# --- refusing to start -------------------------------------------------------------------------------


def test_a_new_chain_needs_an_issuer_key(tmp_path: Path) -> None:
    done = run_server(tmp_path / "new", tmp_path / "nv", "--listen", "127.0.0.1:0")
    assert done.returncode == 1 and "holds no chain yet" in done.stderr and "--issuer-key" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "new").exists()  # refused before touching anything


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen", "127.0.0.1"], "is not HOST:PORT"),
        (["--listen", "127.0.0.1:99999"], "is not HOST:PORT"),
        (["--listen", "::1:5000"], "is not HOST:PORT"),
        (["--listen", "127.0.0.1:0", "--issuer-key", "abcd"], "an issuer key is 32 bytes"),
        (["--listen", "127.0.0.1:0", "--issuer-key", "zz" * 32], "an issuer key is hex"),
        (["--listen", "127.0.0.1:0", "--issuer-key", ISSUER_KEY, "--grace-s", "-1"], "--grace-s"),
        (["--listen", "127.0.0.1:0", "--issuer-key", ISSUER_KEY, "--peer-rate", "0"], "--peer-rate is 1 to"),
        (["--listen", "127.0.0.1:0", "--issuer-key", ISSUER_KEY, "--peer-burst", "0"], "--peer-burst is 1"),
        (["--listen", "127.0.0.1:0", "--issuer-key", ISSUER_KEY, "--stream-idle-s", "0"], "--stream-idle-s"),
        (["--listen", "127.0.0.1:0", "--issuer-key", ISSUER_KEY, "--peer-calls", "0"], "--peer-calls is 1"),
        (["--listen", "127.0.0.1:0", "--issuer-key", ISSUER_KEY, "--peer-streams", "97"], "--peer-streams"),
        (["--listen", "127.0.0.1:0", "--issuer-key", ISSUER_KEY, "--proof-workers", "-1"], "--proof-workers"),
    ],
)
def test_bad_usage_exits_2(tmp_path: Path, args: list[str], message: str) -> None:
    done = run_server(tmp_path / "d", tmp_path / "nv", *args)
    assert done.returncode == 2 and message in done.stderr, done.stderr


def test_issuer_key_file_and_a_refused_genesis(tmp_path: Path) -> None:
    data_dir, nv_dir = tmp_path / "d", tmp_path / "nv"
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{ISSUER_KEY}\nnot-a-key\n")
    done = run_server(data_dir, nv_dir, "--listen", "127.0.0.1:0", "--issuer-key-file", str(bad))
    assert done.returncode == 2 and f"{bad}:2: an issuer key is hex" in done.stderr
    # a key the enclave refuses: no chain is made, and a later start with good keys makes it
    done = run_server(data_dir, nv_dir, "--listen", "127.0.0.1:0", "--issuer-key", NOT_A_POINT)
    assert done.returncode == 1 and "GENESIS_INVALID" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    keys = tmp_path / "issuers.txt"
    keys.write_text(f"# the gateway\n\n{ISSUER_KEY}\n  {OTHER_ISSUER_KEY}  \n")
    running = serve(data_dir, nv_dir, "--issuer-key-file", str(keys))
    assert running.stop() == 0, running.stderr()


# --- stopping and starting again ---------------------------------------------------------------------


def test_sigterm_stops_cleanly_and_a_restart_keeps_the_chain(tmp_path: Path) -> None:
    data_dir, nv_dir = tmp_path / "data", tmp_path / "nv"
    first = serve(data_dir, nv_dir, "--issuer-key", ISSUER_KEY, subcommand=False)  # no subcommand: serve
    started = time.monotonic()
    assert first.stop(signal.SIGTERM) == 0, first.stderr()
    assert time.monotonic() - started < 5
    assert "stopped (SIGTERM)" in first.stderr()
    # the lock is released: a second server starts on the same directory, and it is the same chain;
    # genesis flags on an existing chain are ignored, and it says so
    second = serve(data_dir, nv_dir, "--issuer-key", OTHER_ISSUER_KEY, "--currency", "USD")
    assert second.printed["chain_id"] == first.printed["chain_id"]
    assert second.printed["mrenclave"] == first.printed["mrenclave"]
    assert "--issuer-key, --currency apply only to a new chain and are ignored" in second.stderr()
    code, report = attest(second.address, "--root-ca", root_ca(data_dir))
    assert code == 0 and report["key_bundle"]["chain_id"] == first.printed["chain_id"]  # type: ignore[index]
    assert second.stop(signal.SIGINT) == 0, second.stderr()
    assert "stopped (SIGINT)" in second.stderr()


def test_a_rolled_back_data_dir_is_refused(tmp_path: Path) -> None:
    data_dir, nv_dir = tmp_path / "data", tmp_path / "nv"
    first = serve(data_dir, nv_dir, "--issuer-key", ISSUER_KEY)
    assert first.stop() == 0
    shutil.copytree(data_dir, tmp_path / "old")
    again = serve(data_dir, nv_dir)  # every start moves the platform's monotonic counter on
    assert again.stop() == 0
    shutil.rmtree(data_dir)
    shutil.copytree(tmp_path / "old", data_dir)
    done = run_server(data_dir, nv_dir, "--listen", "127.0.0.1:0")
    assert done.returncode == 1 and "rollback detected" in done.stderr, done.stderr
    assert "Restore the newest copy" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_debug_enclave_is_announced_and_refused_unless_allowed(tmp_path: Path) -> None:
    data_dir, nv_dir = tmp_path / "data", tmp_path / "nv"
    debug = serve(data_dir, nv_dir, "--issuer-key", ISSUER_KEY, "--debug-enclave", as_json=True)
    try:
        assert debug.printed["debug"] is True and "WARNING: debug enclave" in debug.stderr()
        code, report = attest(debug.address, "--root-ca", root_ca(data_dir))
        assert code == 1 and report["reason"] == "DEBUG_ENCLAVE"
        code, report = attest(debug.address, "--root-ca", root_ca(data_dir), "--allow-debug-insecure")
        assert code == 0 and report["identity"]["debug"] is True  # type: ignore[index]
    finally:
        assert debug.stop() == 0
    # its sealed state opens only for a debug enclave
    done = run_server(data_dir, nv_dir, "--listen", "127.0.0.1:0")
    assert done.returncode == 1 and "start it as it was created" in done.stderr, done.stderr
