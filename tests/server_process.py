"""`escrow-server serve` as a subprocess, for the CLI and crash tests: start it on 127.0.0.1:0, read its
announcement, stop it with a signal, and kill whatever a failed test left running."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

BIN = Path(sys.executable).parent
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


def command(tool: str) -> list[str]:
    script = BIN / tool
    module = {
        "escrow-attest": "enclave.attest_cli",
        "escrow-server": "escrow.host.server_cli",
        "escrow-vehicle": "clients.vehicle_cli",
        "escrow-pole": "clients.pole_cli",
        "escrow-issuer": "clients.issuer_cli",
        "escrow-audit": "clients.audit_cli",
    }[tool]
    return [str(script)] if script.exists() else [sys.executable, "-m", module]


def env_for(nv_dir: Path) -> dict[str, str]:
    return {**os.environ, "ESCROW_NV_DIR": str(nv_dir)}


@dataclass
class Server:
    """A running `escrow-server serve` and what it printed once listening."""

    proc: subprocess.Popen[str]
    stderr_path: Path
    printed: dict[str, Any] = field(default_factory=dict)
    lines: queue.Queue[str] = field(default_factory=queue.Queue)

    def __post_init__(self) -> None:
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    @property
    def address(self) -> str:
        return str(self.printed["address"])

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        """Send ``sig`` and wait for the exit code (the test fails if the server hangs)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"escrow-server did not stop within {STOP_TIMEOUT_S} s of {sig.name}")


STARTED: list[Server] = []  # every server this test run started, for kill_leftovers()


def kill_leftovers() -> None:
    """SIGKILL every server a failed test left running."""
    for server in STARTED:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()
    STARTED.clear()


def serve(data_dir: Path, nv_dir: Path, *args: str, as_json: bool = False, subcommand: bool = True) -> Server:
    """Start a server on 127.0.0.1:0 and wait for its announcement (fails the test if it exits first)."""
    stderr_path = data_dir.parent / f"{data_dir.name}-stderr-{time.monotonic_ns()}.txt"
    argv = [*command("escrow-server"), *(["serve"] if subcommand else [])]
    argv += ["--data-dir", str(data_dir), "--listen", "127.0.0.1:0", *args, *(["--json"] if as_json else [])]
    with stderr_path.open("w") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True, env=env_for(nv_dir))
    server = Server(proc, stderr_path)
    STARTED.append(server)
    lines = [_read_line(server) for _ in range(1 if as_json else 3)]
    if as_json:
        server.printed = json.loads(lines[0])
    else:
        assert lines[0].startswith("listening on "), lines
        assert lines[1].startswith("mrenclave ") and lines[2].startswith("chain "), lines
        server.printed = {
            "address": lines[0].removeprefix("listening on "),
            "mrenclave": lines[1].split()[1],
            "chain_id": lines[2].split()[1],
        }
    return server


def _read_line(server: Server) -> str:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            return server.lines.get(timeout=0.2)
        except queue.Empty:
            if server.proc.poll() is not None and server.lines.empty():
                pytest.fail(f"escrow-server exited with {server.proc.returncode}: {server.stderr()}")
    server.proc.kill()
    pytest.fail(f"escrow-server printed nothing within {START_TIMEOUT_S} s: {server.stderr()}")
