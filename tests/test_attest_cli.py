"""The real console scripts, as subprocesses: escrow-server quote feeding escrow-attest verify-quote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def run(tool: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    script = BIN / tool
    module = {"escrow-attest": "enclave.attest_cli", "escrow-server": "escrow.host.server_cli"}[tool]
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", module]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture(scope="module")
def server_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    env = dict(os.environ)
    env["ESCROW_NV_DIR"] = str(tmp_path_factory.mktemp("nv"))
    return env


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, server_env: dict[str, str]) -> dict[str, Path | str]:
    base = tmp_path_factory.mktemp("quote")
    nonce = os.urandom(32).hex()
    out = base / "out"
    done = run(
        "escrow-server",
        "quote",
        "--data-dir",
        str(base / "data"),
        "--nonce",
        nonce,
        "--out",
        str(out),
        "--json",
        env=server_env,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    return {"out": out, "nonce": nonce, "mrenclave": summary["mrenclave"], "mrsigner": summary["mrsigner"]}


def verify(q: dict[str, Path | str], *extra: str, quote: Path | None = None) -> tuple[int, dict[str, object]]:
    out = Path(q["out"])
    done = run(
        "escrow-attest",
        "verify-quote",
        str(quote or out / "quote.bin"),
        "--collateral",
        str(out / "collateral.json"),
        "--json",
        *extra,
    )
    return done.returncode, json.loads(done.stdout)


def full_policy(q: dict[str, Path | str]) -> list[str]:
    out = Path(q["out"])
    return [
        "--root-ca",
        str(out / "root_ca.der"),
        "--keys",
        str(out / "keys.bin"),
        "--nonce",
        str(q["nonce"]),
        "--expect-mrenclave",
        str(q["mrenclave"]),
        "--expect-mrsigner",
        str(q["mrsigner"]),
        "--expect-isvprodid",
        "1",
        "--min-isvsvn",
        "1",
    ]


def test_our_quote_verifies_with_our_root_and_pinned_identity(exported: dict[str, Path | str]) -> None:
    code, report = verify(exported, *full_policy(exported))
    assert code == 0 and report["ok"] is True and report["tcb_status"] == "UpToDate"
    assert all(check["passed"] for check in report["checks"])  # type: ignore[attr-defined]


def test_measure_equals_the_quoted_mrenclave(exported: dict[str, Path | str]) -> None:
    done = run("escrow-attest", "measure", "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["mrenclave"] == exported["mrenclave"]
    repo = Path(__file__).resolve().parents[1]
    done = run("escrow-attest", "measure", "--source", str(repo), "--json")
    assert json.loads(done.stdout)["mrenclave"] == exported["mrenclave"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (["--root-ca", None], "PCK_CHAIN_UNTRUSTED"),  # Intel's root by default
        (["--nonce", "00" * 32], "NONCE_MISMATCH"),
        (["--expect-mrenclave", "11" * 32], "MRENCLAVE_MISMATCH"),
        (["--expect-mrsigner", "22" * 32], "MRSIGNER_MISMATCH"),
        (["--expect-isvprodid", "7"], "ISVPRODID_MISMATCH"),
        (["--min-isvsvn", "2"], "ISVSVN_TOO_LOW"),
        (["--at", "2020-01-01T00:00:00Z"], "COLLATERAL_EXPIRED"),
    ],
)
def test_each_policy_item_can_reject(
    exported: dict[str, Path | str], change: list[str | None], reason: str
) -> None:
    args = full_policy(exported)
    flag, value = change
    i = args.index(flag) if flag in args else None
    if value is None:
        assert i is not None
        del args[i : i + 2]
    elif i is not None:
        args[i + 1] = value
    else:
        args += [flag, value]  # type: ignore[list-item]
    code, report = verify(exported, *args)
    assert code == 1 and report["ok"] is False and report["reason"] == reason


def test_a_wrong_key_bundle_is_named(exported: dict[str, Path | str], tmp_path: Path) -> None:
    keys = bytearray((Path(exported["out"]) / "keys.bin").read_bytes())
    keys[-1] ^= 1
    (tmp_path / "keys.bin").write_bytes(bytes(keys))
    args = full_policy(exported)
    args[args.index("--keys") + 1] = str(tmp_path / "keys.bin")
    code, report = verify(exported, *args)
    assert code == 1 and report["reason"] == "KEY_BUNDLE_MISMATCH"


def test_a_tampered_report_body_is_named(exported: dict[str, Path | str], tmp_path: Path) -> None:
    quote = bytearray((Path(exported["out"]) / "quote.bin").read_bytes())
    quote[48 + 320] ^= 1  # first byte of REPORTDATA
    (tmp_path / "quote.bin").write_bytes(bytes(quote))
    code, report = verify(exported, *full_policy(exported), quote=tmp_path / "quote.bin")
    assert code == 1 and report["reason"] == "REPORT_SIGNATURE_INVALID"


def test_debug_quotes_are_refused_unless_allowed(tmp_path: Path, server_env: dict[str, str]) -> None:
    nonce = "ab" * 16
    done = run(
        "escrow-server",
        "quote",
        "--data-dir",
        str(tmp_path / "d"),
        "--nonce",
        nonce,
        "--out",
        str(tmp_path / "q"),
        "--debug-enclave",
        "--json",
        env=server_env,
    )
    assert done.returncode == 0, done.stderr
    q = {
        "out": tmp_path / "q",
        "nonce": nonce,
        "mrenclave": json.loads(done.stdout)["mrenclave"],
        "mrsigner": json.loads(done.stdout)["mrsigner"],
    }
    code, report = verify(q, *full_policy(q))
    assert code == 1 and report["reason"] == "DEBUG_ENCLAVE"
    code, report = verify(q, *full_policy(q), "--allow-debug-insecure")
    assert code == 0
    measured = json.loads(run("escrow-attest", "measure", "--debug-enclave", "--json").stdout)["mrenclave"]
    assert measured == q["mrenclave"]


def test_real_intel_quote(shared_vectors: Path) -> None:
    dcap = shared_vectors / "dcap"
    base = [
        "verify-quote",
        str(dcap / "sgx_quote_v3.bin"),
        "--collateral",
        str(dcap / "sgx_quote_v3_collateral.json"),
        "--json",
    ]
    now = run("escrow-attest", *base)
    assert now.returncode == 1 and json.loads(now.stdout)["reason"] == "COLLATERAL_EXPIRED"
    at = ["--at", "2025-06-27T00:00:00Z"]
    strict = run("escrow-attest", *base, *at)
    assert json.loads(strict.stdout)["reason"] == "TCB_STATUS_NOT_ALLOWED"
    ok = run("escrow-attest", *base, *at, "--allow-tcb-status", "ConfigurationAndSWHardeningNeeded")
    report = json.loads(ok.stdout)
    assert ok.returncode == 0 and report["tcb_status"] == "ConfigurationAndSWHardeningNeeded"
    assert report["advisory_ids"] == ["INTEL-SA-00289", "INTEL-SA-00615"]
    assert report["identity"]["mr_enclave"].startswith("33d8736d")
    tdx = run(
        "escrow-attest",
        "verify-quote",
        str(dcap / "tdx_quote_v4.bin"),
        "--collateral",
        str(dcap / "tdx_quote_v4_collateral.json"),
        "--json",
    )
    assert tdx.returncode == 1 and json.loads(tdx.stdout)["reason"] == "UNSUPPORTED_TEE_TYPE"


def test_usage_errors_exit_2(
    exported: dict[str, Path | str], tmp_path: Path, server_env: dict[str, str]
) -> None:
    out = Path(exported["out"])
    bad_hex = run(
        "escrow-attest",
        "verify-quote",
        str(out / "quote.bin"),
        "--collateral",
        str(out / "collateral.json"),
        "--nonce",
        "zz",
    )
    assert bad_hex.returncode == 2 and "hex" in bad_hex.stderr
    missing = run(
        "escrow-attest",
        "verify-quote",
        str(tmp_path / "nope.bin"),
        "--collateral",
        str(out / "collateral.json"),
    )
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    bad_nonce = run(
        "escrow-server",
        "quote",
        "--data-dir",
        str(tmp_path / "d"),
        "--nonce",
        "00" * 65,
        "--out",
        str(tmp_path / "o"),
        env=server_env,
    )
    assert bad_nonce.returncode == 2 and "nonce" in bad_nonce.stderr
    serve = run(
        "escrow-server",
        "serve",
        "--data-dir",
        str(tmp_path / "new"),
        "--listen",
        "127.0.0.1:0",
        env=server_env,
    )
    assert serve.returncode == 1 and "--issuer-key" in serve.stderr  # a new chain needs an issuer


def test_a_tampered_real_quote_is_named_at_any_time(shared_vectors: Path, tmp_path: Path) -> None:
    dcap = shared_vectors / "dcap"
    quote = bytearray((dcap / "sgx_quote_v3.bin").read_bytes())
    quote[48 + 64] ^= 0x01  # a byte of MRENCLAVE
    (tmp_path / "q.bin").write_bytes(bytes(quote))
    for extra in ([], ["--at", "1751000000"]):
        done = run(
            "escrow-attest",
            "verify-quote",
            str(tmp_path / "q.bin"),
            "--collateral",
            str(dcap / "sgx_quote_v3_collateral.json"),
            "--json",
            *extra,
        )
        assert done.returncode == 1 and json.loads(done.stdout)["reason"] == "REPORT_SIGNATURE_INVALID"


@pytest.mark.parametrize(
    "args",
    [
        ["--allow-tcb-status", "Revoked"],
        ["--allow-tcb-status", "UpTodate"],
        ["--nonce", ""],
        ["--at", "yesterday"],
    ],
)
def test_policy_flags_are_validated(exported: dict[str, Path | str], args: list[str]) -> None:
    out = Path(exported["out"])
    done = run(
        "escrow-attest",
        "verify-quote",
        str(out / "quote.bin"),
        "--collateral",
        str(out / "collateral.json"),
        *args,
    )
    assert done.returncode == 2 and done.stderr


def test_a_pem_root_is_accepted_and_a_missing_nonce_is_pointed_out(exported: dict[str, Path | str]) -> None:
    out = Path(exported["out"])
    pem = out.parent / "root_ca.pem"
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    pem.write_bytes(
        x509.load_der_x509_certificate((out / "root_ca.der").read_bytes()).public_bytes(Encoding.PEM)
    )
    done = run(
        "escrow-attest",
        "verify-quote",
        str(out / "quote.bin"),
        "--collateral",
        str(out / "collateral.json"),
        "--root-ca",
        str(pem),
    )
    assert done.returncode == 0 and "no --nonce given" in done.stdout
