"""benchmarks/load.py still runs and reports what issue 6 asks for (a tiny run; the real one is a benchmark).

Two sessions of three readings against a real `escrow-server serve` subprocess: the JSON object carries
sessions_per_s, readings_per_s, errors, audit_ok, p99_ms per RPC and server_cores, with zero errors and a
passing audit. With two cores available the server runs with its proof-worker pool, the path the
two-core figure depends on. No timing is asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_small_load_run_reports_every_field_with_no_error() -> None:
    cores = 2 if len(os.sched_getaffinity(0)) >= 2 else 1
    argv = ["--sessions", "2", "--readings", "3", "--server-cores", str(cores), "--json"]
    argv += ["--timeout-s", "240"]
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "load.py"), *argv],
        capture_output=True,
        text=True,
        timeout=400,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:] + done.stdout[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["server_cores"] == cores
    assert summary["errors"] == 0 and summary["error_samples"] == []
    assert summary["audit_ok"] is True
    assert summary["sessions_per_s"] > 0 and summary["readings_per_s"] > 0
    assert set(summary["p99_ms"]) == {"Open", "Attach", "Reading"}
    assert summary["readings_per_session"] == 3 and summary["sessions"] == 2


def test_bad_arguments_are_refused() -> None:
    for args in (["--sessions", "0"], ["--readings", "1"], ["--timeout-s", "0"]):
        done = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "load.py"), *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert done.returncode == 2 and "error" in done.stderr, args
