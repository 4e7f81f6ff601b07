"""The enclave as the host sees it: launch, sealed state, rollback, quotes that outside verifiers accept."""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import dcap_qvl
import pytest

from enclave.errors import BoundaryError, PlatformError, RollbackError, SealingError
from enclave.host import STATE_FILE, EnclaveHost, launch
from enclave.measurement import EnclaveConfig, mrenclave
from enclave.platform import Platform
from enclave.quote import parse_quote
from enclave.trusted.keybundle import KeyBundle

INTEL_ROOT = Path(__file__).resolve().parents[1] / "enclave" / "data" / "intel_sgx_root_ca.der"


@pytest.fixture()
def nv_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "nv"
    monkeypatch.setenv("ESCROW_NV_DIR", str(path))
    return path


def _once(data: Path, config: EnclaveConfig | None = None) -> bytes:
    """Start an enclave host on ``data``, return its key bundle, and release the directory."""
    with EnclaveHost.start(data, config) as host:
        return host.key_bundle()


def _dcap_verify(quote: bytes, collateral_json: str, root_der: bytes) -> str:
    collateral = dcap_qvl.QuoteCollateralV3.from_json(collateral_json)
    return str(dcap_qvl.verify_with_root_ca(quote, collateral, root_der, int(time.time())).status)


def test_quote_commits_to_key_bundle_and_nonce(tmp_path: Path, nv_dir: Path) -> None:
    host = EnclaveHost.start(tmp_path / "data")
    nonce = bytes(range(32))
    qb = host.quote(nonce)
    quote = parse_quote(qb.quote)
    assert quote.report.report_data == hashlib.sha256(qb.key_bundle).digest() + hashlib.sha256(nonce).digest()
    bundle = KeyBundle.from_bytes(qb.key_bundle)
    assert bundle.isv_svn == EnclaveConfig().isv_svn and bundle.chain_id == bytes(32)
    assert quote.report.mr_enclave == mrenclave(EnclaveConfig()) == host.identity.mr_enclave
    assert quote.report.mr_signer == host.identity.mr_signer
    assert not quote.report.debug


def test_dcap_qvl_accepts_our_quote_under_our_root_only(tmp_path: Path, nv_dir: Path) -> None:
    qb = EnclaveHost.start(tmp_path / "data").quote(b"fresh nonce")
    assert _dcap_verify(qb.quote, qb.collateral_json, qb.root_ca_der) == "UpToDate"
    with pytest.raises(ValueError):
        _dcap_verify(qb.quote, qb.collateral_json, INTEL_ROOT.read_bytes())


def test_dcap_qvl_rejects_a_debug_quote(tmp_path: Path, nv_dir: Path) -> None:
    qb = EnclaveHost.start(tmp_path / "data", EnclaveConfig(debug=True)).quote(b"n")
    assert parse_quote(qb.quote).report.debug
    with pytest.raises(ValueError, match=r"(?i)debug"):
        _dcap_verify(qb.quote, qb.collateral_json, qb.root_ca_der)


def test_debug_changes_the_measurement(tmp_path: Path, nv_dir: Path) -> None:
    prod = EnclaveHost.start(tmp_path / "a").identity
    debug = EnclaveHost.start(tmp_path / "b", EnclaveConfig(debug=True)).identity
    assert prod.mr_enclave != debug.mr_enclave and prod.mr_signer == debug.mr_signer


def test_restart_keeps_the_keys(tmp_path: Path, nv_dir: Path) -> None:
    data = tmp_path / "data"
    first = _once(data)
    assert _once(data) == first
    # an ISVSVN upgrade keeps the MRSIGNER-sealed keys (the bundle then names the new ISVSVN)
    upgraded = KeyBundle.from_bytes(_once(data, EnclaveConfig(isv_svn=2)))
    assert upgraded.ledger_key == KeyBundle.from_bytes(first).ledger_key and upgraded.isv_svn == 2


def test_a_downgraded_enclave_cannot_open_newer_state(tmp_path: Path, nv_dir: Path) -> None:
    data = tmp_path / "data"
    _once(data, EnclaveConfig(isv_svn=3))
    with pytest.raises(SealingError, match=r"(?i)isvsvn"):
        EnclaveHost.start(data, EnclaveConfig(isv_svn=2))


def test_a_rolled_back_data_directory_is_refused(tmp_path: Path, nv_dir: Path) -> None:
    data = tmp_path / "data"
    _once(data)
    backup = tmp_path / "backup"
    shutil.copytree(data, backup)
    _once(data)  # the platform counter moves on
    shutil.rmtree(data)
    shutil.copytree(backup, data)
    with pytest.raises(RollbackError):
        EnclaveHost.start(data)


def test_state_ahead_of_the_counter_is_accepted(tmp_path: Path, nv_dir: Path) -> None:
    """A crash after the resealed state was stored but before the counter moved loses nothing."""
    data = tmp_path / "data"
    bundle = _once(data)
    platform = Platform.open(data)
    _, enclave = launch(platform, EnclaveConfig())
    sealed = enclave.ecall("start", (data / STATE_FILE).read_bytes())  # reseal at counter + 1 ...
    (data / STATE_FILE).write_bytes(sealed)  # ... stored, and the process dies before commit_start
    assert _once(data) == bundle


def test_tampered_sealed_state_is_refused(tmp_path: Path, nv_dir: Path) -> None:
    data = tmp_path / "data"
    _once(data)
    blob = bytearray((data / STATE_FILE).read_bytes())
    blob[-1] ^= 1
    (data / STATE_FILE).write_bytes(bytes(blob))
    with pytest.raises(SealingError):
        EnclaveHost.start(data)


@pytest.mark.parametrize(
    ("name", "payload"),
    [
        ("no-such-ecall", b""),
        ("report", b""),  # a nonce is 1..64 bytes
        ("report", bytes(65)),
        ("key_bundle", b"x"),
        ("commit_start", b""),  # nothing pending after start completed
        ("start", b"\x00" * 10),  # start runs once
        ("start", b""),
    ],
)
def test_the_boundary_rejects_malformed_ecalls(
    tmp_path: Path, nv_dir: Path, name: str, payload: bytes
) -> None:
    host = EnclaveHost.start(tmp_path / "data")
    with pytest.raises((BoundaryError, SealingError)):
        host._ecall(name, payload)


def test_the_boundary_rejects_non_bytes_and_oversized_payloads(tmp_path: Path, nv_dir: Path) -> None:
    host = EnclaveHost.start(tmp_path / "data")
    with pytest.raises(BoundaryError):
        host._ecall("report", "text")  # type: ignore[arg-type]
    with pytest.raises(BoundaryError):
        host._ecall("report", bytes(2 << 20))


def test_lost_state_is_refused_once_the_counter_moved(tmp_path: Path, nv_dir: Path) -> None:
    data = tmp_path / "data"
    _once(data)
    (data / STATE_FILE).unlink()
    with pytest.raises(RollbackError, match="no sealed state"):
        EnclaveHost.start(data)


def test_editing_the_platform_id_does_not_escape_the_counter(tmp_path: Path, nv_dir: Path) -> None:
    data = tmp_path / "data"
    _once(data)
    backup = tmp_path / "backup"
    shutil.copytree(data, backup)
    _once(data)
    shutil.rmtree(data)
    shutil.copytree(backup, data)
    meta = data / "platform" / "platform.json"
    text = meta.read_text()
    platform_id = Platform.open(data).platform_id
    meta.write_text(text.replace(platform_id, "aa" * 16))
    with pytest.raises((RollbackError, PlatformError)):
        EnclaveHost.start(data)


def test_one_host_per_data_directory(tmp_path: Path, nv_dir: Path) -> None:
    data = tmp_path / "data"
    with EnclaveHost.start(data), pytest.raises(PlatformError, match="in use"):
        EnclaveHost.start(data)
    _once(data)  # released on close


def test_the_enclave_answers_nothing_before_its_counter_is_committed(tmp_path: Path, nv_dir: Path) -> None:
    data = tmp_path / "data"
    _once(data)
    _, enclave = launch(Platform.open(data), EnclaveConfig())
    enclave.ecall("start", (data / STATE_FILE).read_bytes())
    for name, payload in (("key_bundle", b""), ("report", b"nonce")):
        with pytest.raises(BoundaryError, match="commit_start"):
            enclave.ecall(name, payload)
