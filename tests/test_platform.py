"""Tests for the emulated SGX platform (enclave/platform.py, enclave/pki.py, enclave/fsutil.py).

The quote and collateral are judged by an independent verifier, dcap-qvl (Phala Network's Rust DCAP
verifier): it must accept them under our emulated root, refuse them under Intel's root, and refuse a
DEBUG enclave's quote.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import dcap_qvl  # type: ignore[import-untyped]  # ships a .pyi but no py.typed
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.hashes import SHA256

from enclave import fsutil
from enclave.errors import PlatformError
from enclave.pki import (
    COLLATERAL_LIFETIME,
    QE_MRSIGNER,
    SGX_EXTENSIONS_OID,
    PlatformTcb,
    sgx_extensions_der,
)
from enclave.platform import ALL_FILES, PLATFORM_DIR, SECRET_FILES, Platform
from enclave.quote import INTEL_QE_VENDOR_ID, ReportBody, parse_quote, report_mac

REPO = Path(__file__).resolve().parents[1]
DAY = 86400
# attributes as in the sample quote: flags INIT | MODE64BIT (0x05), XFRM 0xe7; DEBUG adds 0x02
PRODUCTION_ATTRIBUTES = (0x05).to_bytes(8, "little") + (0xE7).to_bytes(8, "little")
DEBUG_ATTRIBUTES = (0x07).to_bytes(8, "little") + (0xE7).to_bytes(8, "little")


def signed_quote(platform: Platform, body: ReportBody) -> bytes:
    """A quote for a report body MAC'd with the platform's REPORT key, as an enclave on it would."""
    return platform.quote(body, report_mac(platform.report_key(), body))


def test_the_quoting_enclave_refuses_reports_without_a_valid_mac(tmp_path: Path) -> None:
    platform = Platform.open(tmp_path)
    body = report_body()
    with pytest.raises(PlatformError, match="report MAC"):
        platform.quote(body, bytes(32))
    other = Platform.open(tmp_path / "other")
    with pytest.raises(PlatformError, match="report MAC"):  # a report MAC'd on another platform
        platform.quote(body, report_mac(other.report_key(), body))


def report_body(attributes: bytes = PRODUCTION_ATTRIBUTES) -> ReportBody:
    """A synthetic ISV enclave report, as the enclave runtime would hand it to the quoting enclave."""
    return ReportBody(
        cpu_svn=bytes(range(16)),
        attributes=attributes,
        mr_enclave=hashlib.sha256(b"test enclave").digest(),
        mr_signer=hashlib.sha256(b"test signer").digest(),
        isv_prod_id=7,
        isv_svn=3,
        report_data=hashlib.sha256(b"key bundle").digest() + hashlib.sha256(b"nonce").digest(),
    )


def dcap_verify(quote: bytes, collateral_json: str, root_der: bytes, at: int) -> dcap_qvl.VerifiedReport:
    collateral = dcap_qvl.QuoteCollateralV3.from_json(collateral_json)
    return dcap_qvl.verify_with_root_ca(quote, collateral, root_der, at)


def chain_certs(pem: str | bytes) -> list[x509.Certificate]:
    data = pem.encode() if isinstance(pem, str) else pem
    return x509.load_pem_x509_certificates(data.rstrip(b"\0"))


class Clock:
    """A settable clock (Unix seconds) for Platform.open(now=...)."""

    def __init__(self, t: int) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Platform:
    return Platform.open(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def intel_root() -> bytes:
    return (REPO / "enclave" / "data" / "intel_sgx_root_ca.der").read_bytes()


# --- creation, reopening, refusal ------------------------------------------------------------------


def test_reopen_gives_the_same_platform(tmp_path: Path) -> None:
    first = Platform.open(tmp_path)
    again = Platform.open(tmp_path, create=False)
    assert again.platform_id == first.platform_id and len(bytes.fromhex(first.platform_id)) == 16
    assert again.root_secret() == first.root_secret() and len(first.root_secret()) == 32
    assert again.root_ca_der() == first.root_ca_der()
    assert again.collateral() == first.collateral()
    q1, q2 = parse_quote(signed_quote(first, report_body())), parse_quote(signed_quote(again, report_body()))
    assert q1.attestation_key == q2.attestation_key and q1.cert_data == q2.cert_data
    assert q1.header == q2.header


def test_two_data_dirs_are_two_platforms(tmp_path: Path) -> None:
    a, b = Platform.open(tmp_path / "a"), Platform.open(tmp_path / "b")
    assert a.platform_id != b.platform_id and a.root_secret() != b.root_secret()
    assert a.root_ca_der() != b.root_ca_der()


def test_missing_platform_without_create_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PlatformError, match="no emulated platform"):
        Platform.open(tmp_path, create=False)
    assert not (tmp_path / PLATFORM_DIR).exists()


def test_secrets_are_0600_and_the_directory_0700(platform: Platform) -> None:
    assert stat.S_IMODE(platform.directory.stat().st_mode) == 0o700
    for name in ALL_FILES:
        mode = stat.S_IMODE((platform.directory / name).stat().st_mode)
        assert mode == (0o600 if name in SECRET_FILES else 0o644), name
    assert sorted(p.name for p in platform.directory.iterdir()) == sorted(ALL_FILES)


@pytest.mark.parametrize("keep", [0, 1, 5, len(ALL_FILES) - 1])
def test_half_created_directory_is_refused(tmp_path: Path, platform: Platform, keep: int) -> None:
    # what a crash half-way through writing files in place would leave (the real creation cannot)
    half = tmp_path / PLATFORM_DIR
    half.mkdir()
    for name in ALL_FILES[:keep]:
        shutil.copy2(platform.directory / name, half / name)
    with pytest.raises(PlatformError, match="incomplete"):
        Platform.open(tmp_path)
    assert sorted(p.name for p in half.iterdir()) == sorted(ALL_FILES[:keep])  # left alone


def test_crash_during_creation_leaves_no_platform(tmp_path: Path) -> None:
    # a process killed (os._exit, no cleanup) after writing three files of its new platform
    script = (
        "import os, sys\n"
        "from enclave import fsutil, platform\n"
        "real = fsutil.atomic_write\n"
        "count = [0]\n"
        "def dying(*a, **k):\n"
        "    count[0] += 1\n"
        "    if count[0] > 3: os._exit(9)\n"
        "    real(*a, **k)\n"
        "fsutil.atomic_write = dying\n"
        "platform.Platform.open(sys.argv[1])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env, timeout=60)
    assert proc.returncode == 9
    assert not (tmp_path / PLATFORM_DIR).exists()  # only a private temporary directory remains
    assert [p.name.startswith(".platform-tmp-") for p in tmp_path.iterdir()] == [True]
    with pytest.raises(PlatformError):
        Platform.open(tmp_path, create=False)
    assert len(Platform.open(tmp_path).platform_id) == 32  # the next start creates a whole platform


def _copy_platform(source: Platform, data_dir: Path) -> Path:
    target = data_dir / PLATFORM_DIR
    shutil.copytree(source.directory, target)
    return target


def test_keys_from_another_platform_are_refused(tmp_path: Path, platform: Platform) -> None:
    other = Platform.open(tmp_path / "other")
    target = _copy_platform(platform, tmp_path / "mixed")
    shutil.copy2(other.directory / "pck.key.pem", target / "pck.key.pem")
    with pytest.raises(PlatformError, match="does not match"):
        Platform.open(tmp_path / "mixed")
    shutil.copy2(other.directory / "pck.pem", target / "pck.pem")  # a matching pair, wrong issuer
    with pytest.raises(PlatformError, match="inconsistent"):
        Platform.open(tmp_path / "mixed")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("root_secret.bin", b"short", "32 bytes"),
        ("platform.json", b"{not json", "inconsistent"),
        ("platform.json", b'{"format_version": 99}', "unsupported platform format"),
        ("platform.json", b"[]", "inconsistent"),
        ("collateral.json", b"{}", "collateral keys"),
        ("root_ca.der", b"\x30\x00", "root_ca.der"),
    ],
)
def test_corrupt_files_are_refused(
    tmp_path: Path, platform: Platform, name: str, content: bytes, message: str
) -> None:
    target = _copy_platform(platform, tmp_path)
    (target / name).write_bytes(content)
    with pytest.raises(PlatformError, match=message):
        Platform.open(tmp_path)


def test_pck_certificate_must_state_the_recorded_tcb(tmp_path: Path, platform: Platform) -> None:
    target = _copy_platform(platform, tmp_path)
    meta = json.loads((target / "platform.json").read_text())
    meta["tcb"]["pce_svn"] += 1
    (target / "platform.json").write_text(json.dumps(meta))
    with pytest.raises(PlatformError, match="SGX extensions differ"):
        Platform.open(tmp_path)


def test_secret_readable_by_others_is_refused(tmp_path: Path, platform: Platform) -> None:
    target = _copy_platform(platform, tmp_path)
    os.chmod(target / "root_ca.key.pem", 0o644)
    with pytest.raises(PlatformError, match="0600"):
        Platform.open(tmp_path)


def test_concurrent_first_open_yields_one_platform(tmp_path: Path) -> None:
    n = 6
    barrier = threading.Barrier(n)
    results: list[Platform] = []
    errors: list[BaseException] = []

    def start() -> None:
        barrier.wait()
        try:
            results.append(Platform.open(tmp_path))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=start) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len({p.platform_id for p in results}) == 1 and len(results) == n
    assert len({p.root_secret() for p in results}) == 1
    assert [p.name for p in tmp_path.iterdir()] == [PLATFORM_DIR]  # the losers cleaned up


# --- the quote, judged by dcap-qvl -----------------------------------------------------------------


def test_quote_and_collateral_pass_dcap_qvl_under_our_root(platform: Platform) -> None:
    quote = signed_quote(platform, report_body())
    verified = dcap_verify(quote, platform.collateral_json(), platform.root_ca_der(), int(time.time()))
    assert verified.status == "UpToDate"
    assert verified.advisory_ids == []


def test_strict_policy_accepts_our_quote(platform: Platform) -> None:
    now = int(time.time())
    collateral = dcap_qvl.QuoteCollateralV3.from_json(platform.collateral_json())
    claims = dcap_qvl.QuoteVerifier(platform.root_ca_der()).verify_with_policy(
        signed_quote(platform, report_body()), collateral, now, dcap_qvl.QuotePolicy.strict(now)
    )
    parsed = json.loads(claims.to_json())
    assert parsed["tcb"]["status"] == "UpToDate"
    assert parsed["qe"]["tcb_level"]["tcbStatus"] == "UpToDate"


def test_quote_fails_under_intel_root(platform: Platform, intel_root: bytes, shared_vectors: Path) -> None:
    assert intel_root == (shared_vectors / "dcap" / "intel_sgx_root_ca.der").read_bytes()
    quote = signed_quote(platform, report_body())
    with pytest.raises(ValueError, match="root CA CRL"):
        dcap_verify(quote, platform.collateral_json(), intel_root, int(time.time()))
    with pytest.raises(ValueError):
        dcap_qvl.verify(
            quote, dcap_qvl.QuoteCollateralV3.from_json(platform.collateral_json()), int(time.time())
        )


def test_quote_fails_under_intel_root_even_with_intels_collateral(
    tmp_path: Path, shared_vectors: Path
) -> None:
    # at a time inside the sample collateral's window, Intel's genuine CRLs and TCB info get past the
    # CRL and TCB-info checks, and our PCK chain is then refused: it does not lead to Intel's root
    at = 1751000000
    ours = Platform.open(tmp_path, now=lambda: at)
    intel = json.loads((shared_vectors / "dcap" / "sgx_quote_v3_collateral.json").read_text())
    mixed = {**ours.collateral(), **intel}
    intel_root = (shared_vectors / "dcap" / "intel_sgx_root_ca.der").read_bytes()
    with pytest.raises(ValueError, match="UnknownIssuer"):
        dcap_verify(signed_quote(ours, report_body()), json.dumps(mixed), intel_root, at)


def test_debug_quote_is_rejected_by_dcap_qvl(platform: Platform) -> None:
    # quote() signs what it is given; dcap-qvl refuses a DEBUG enclave in every verification path
    # (verify, verify_with_root_ca, and verify_with_policy even under its most lenient policy)
    now = int(time.time())
    debug_quote = signed_quote(platform, report_body(DEBUG_ATTRIBUTES))
    assert parse_quote(debug_quote).report.debug
    with pytest.raises(ValueError, match="Debug mode is enabled"):
        dcap_verify(debug_quote, platform.collateral_json(), platform.root_ca_der(), now)
    collateral = dcap_qvl.QuoteCollateralV3.from_json(platform.collateral_json())
    verifier = dcap_qvl.QuoteVerifier(platform.root_ca_der())
    for policy in (dcap_qvl.QuotePolicy.strict(now), dcap_qvl.QuotePolicy.claims_only(now)):
        with pytest.raises(ValueError, match="Debug mode is enabled"):
            verifier.verify_with_policy(debug_quote, collateral, now, policy)


def test_tampered_report_body_is_rejected(platform: Platform) -> None:
    quote = bytearray(signed_quote(platform, report_body()))
    quote[48 + 320] ^= 1  # first byte of REPORTDATA
    with pytest.raises(ValueError, match="signature"):
        dcap_verify(bytes(quote), platform.collateral_json(), platform.root_ca_der(), int(time.time()))


def test_quote_layout(platform: Platform) -> None:
    body = report_body()
    raw = signed_quote(platform, body)
    quote = parse_quote(raw)
    assert quote.to_bytes() == raw
    assert quote.report == body and quote.report.report_data == body.report_data
    h = quote.header
    assert (h.version, h.att_key_type, h.tee_type, h.qe_vendor_id) == (3, 2, 0, INTEL_QE_VENDOR_ID)
    assert h.user_data[16:] == bytes(4) and h.user_data[:16] != bytes(16)
    meta = json.loads((platform.directory / "platform.json").read_text())
    assert (h.qe_svn, h.pce_svn) == (meta["tcb"]["qe_svn"], meta["tcb"]["pce_svn"])
    qe = quote.qe_report
    assert (qe.isv_prod_id, qe.isv_svn, qe.mr_signer) == (1, h.qe_svn, QE_MRSIGNER) and not qe.debug
    binding = hashlib.sha256(quote.attestation_key + quote.qe_auth_data).digest()
    assert qe.report_data == binding + bytes(32) and len(quote.qe_auth_data) == 32
    assert quote.cert_data_type == 5 and quote.cert_data.endswith(b"-----END CERTIFICATE-----\n\0")
    names = [
        c.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
        for c in chain_certs(quote.cert_data)
    ]
    assert names == [
        "Escrow EMULATED SGX PCK Certificate",
        "Escrow EMULATED SGX PCK Platform CA",
        "Escrow EMULATED SGX Root CA",
    ]
    # the ISV signature, checked here with cryptography as well
    att_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + quote.attestation_key)
    r, s = quote.isv_signature[:32], quote.isv_signature[32:]
    signature = encode_dss_signature(int.from_bytes(r, "big"), int.from_bytes(s, "big"))
    att_key.verify(signature, quote.signed_bytes(), ec.ECDSA(SHA256()))


def test_dcap_qvl_reads_our_pck_extension(platform: Platform) -> None:
    quote = signed_quote(platform, report_body())
    tcb = json.loads((platform.directory / "platform.json").read_text())["tcb"]
    ext = dcap_qvl.parse_pck_extension_from_pem(parse_quote(quote).cert_data)
    assert ext.fmspc.hex() == tcb["fmspc"] and ext.pce_id.hex() == tcb["pce_id"]
    assert ext.pce_svn == tcb["pce_svn"] and ext.ppid.hex() == tcb["ppid"]
    assert list(ext.cpu_svn) == tcb["sgx_tcb_components"] and ext.sgx_type == 0
    assert ext.get_value(f"{SGX_EXTENSIONS_OID}.2.5") == b"\x00\xff"  # SVN 255 as a minimal INTEGER
    assert dcap_qvl.parse_quote(quote).fmspc() == tcb["fmspc"].upper()


# --- the PKI mirrors Intel's ------------------------------------------------------------------------


def _intel_pck_chain(shared_vectors: Path) -> list[x509.Certificate]:
    return chain_certs(parse_quote((shared_vectors / "dcap" / "sgx_quote_v3.bin").read_bytes()).cert_data)


def test_sgx_extension_encoder_reproduces_intels_bytes(shared_vectors: Path) -> None:
    intel_leaf = _intel_pck_chain(shared_vectors)[0]
    ext = intel_leaf.extensions.get_extension_for_oid(x509.ObjectIdentifier(SGX_EXTENSIONS_OID)).value
    assert isinstance(ext, x509.UnrecognizedExtension)
    intel_tcb = PlatformTcb(
        ppid=bytes.fromhex("d04ec06d4e6d92dc90d0ad3cf5ee2ddf"),
        fmspc=bytes.fromhex("00a067110000"),
        pce_id=bytes(2),
        sgx_tcb_components=(11, 11, 2, 2, 255, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
        pce_svn=13,
        qe_svn=10,
        tcb_date="",
    )
    assert sgx_extensions_der(intel_tcb) == ext.value


def _extension_profile(cert: x509.Certificate) -> list[tuple[str, bool]]:
    return [(e.oid.dotted_string, e.critical) for e in cert.extensions]


def test_certificates_have_intels_extension_profile(platform: Platform, shared_vectors: Path) -> None:
    intel_leaf, intel_ca, intel_root = _intel_pck_chain(shared_vectors)
    intel_collateral = json.loads((shared_vectors / "dcap" / "sgx_quote_v3_collateral.json").read_text())
    intel_tcb_signing = chain_certs(intel_collateral["tcb_info_issuer_chain"])[0]
    leaf, ca, root = chain_certs(parse_quote(signed_quote(platform, report_body())).cert_data)
    tcb_signing = chain_certs(platform.collateral()["tcb_info_issuer_chain"])[0]
    pairs = [(leaf, intel_leaf), (ca, intel_ca), (root, intel_root), (tcb_signing, intel_tcb_signing)]
    for ours, intels in pairs:
        assert _extension_profile(ours) == _extension_profile(intels)
        assert ours.extensions.get_extension_for_class(x509.KeyUsage).value == (
            intels.extensions.get_extension_for_class(x509.KeyUsage).value
        )
        assert ours.extensions.get_extension_for_class(x509.BasicConstraints).value == (
            intels.extensions.get_extension_for_class(x509.BasicConstraints).value
        )
        assert "EMULATED" in ours.subject.rfc4514_string()


def test_collateral_has_the_sample_shape(platform: Platform, shared_vectors: Path) -> None:
    sample = json.loads((shared_vectors / "dcap" / "sgx_quote_v3_collateral.json").read_text())
    ours = json.loads(platform.collateral_json())
    assert list(ours) == list(sample)
    for doc in ("tcb_info", "qe_identity"):
        assert list(json.loads(ours[doc])) == list(json.loads(sample[doc]))
        assert len(bytes.fromhex(ours[f"{doc}_signature"])) == 64
    tcb_info, qe_identity = json.loads(ours["tcb_info"]), json.loads(ours["qe_identity"])
    assert (tcb_info["id"], tcb_info["version"], tcb_info["tcbType"]) == ("SGX", 3, 0)
    assert tcb_info["tcbLevels"][0]["tcbStatus"] == "UpToDate"
    assert (qe_identity["id"], qe_identity["version"], qe_identity["isvprodid"]) == ("QE", 2, 1)
    for key in ("root_ca_crl", "pck_crl"):
        crl = x509.load_der_x509_crl(bytes.fromhex(ours[key]))
        assert len(list(crl)) == 0 and crl.next_update_utc is not None and crl.last_update_utc is not None
        assert crl.next_update_utc - crl.last_update_utc == COLLATERAL_LIFETIME
        sample_crl = x509.load_der_x509_crl(bytes.fromhex(sample[key]))
        assert [(e.oid, e.critical) for e in crl.extensions] == [
            (e.oid, e.critical) for e in sample_crl.extensions
        ]
    names = [c.subject.rfc4514_string() for c in chain_certs(ours["pck_crl_issuer_chain"])]
    assert ["PCK Platform CA" in names[0], "Root CA" in names[1]] == [True, True]


# --- collateral re-issue ----------------------------------------------------------------------------


def test_collateral_is_reissued_near_expiry(tmp_path: Path) -> None:
    t0 = int(time.time())
    clock = Clock(t0)
    created = Platform.open(tmp_path, now=clock)
    original = created.collateral()
    quote = signed_quote(created, report_body())

    clock.t = t0 + 10 * DAY  # 20 days left: nothing to do
    assert Platform.open(tmp_path, now=clock).collateral() == original

    clock.t = t0 + 24 * DAY  # under 7 days left: re-issued on open, and stored
    reopened = Platform.open(tmp_path, now=clock)
    fresh = reopened.collateral()
    assert fresh != original
    assert Platform.open(tmp_path, create=False, now=clock).collateral() == fresh
    pck_crl = x509.load_der_x509_crl(bytes.fromhex(fresh["pck_crl"]))
    assert pck_crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 2

    later = t0 + 40 * DAY  # the original collateral has expired, the re-issued one has not
    with pytest.raises(ValueError, match="CrlExpired"):
        dcap_verify(quote, json.dumps(original), created.root_ca_der(), later)
    assert dcap_verify(quote, json.dumps(fresh), created.root_ca_der(), later).status == "UpToDate"


def test_a_running_platform_reissues_when_asked_for_collateral(tmp_path: Path) -> None:
    clock = Clock(int(time.time()))
    running = Platform.open(tmp_path, now=clock)
    first = running.collateral()
    clock.t += 25 * DAY
    assert running.collateral() != first
    verified = dcap_verify(
        signed_quote(running, report_body()), running.collateral_json(), running.root_ca_der(), clock.t
    )
    assert verified.status == "UpToDate"


def test_collateral_tolerates_a_verifier_clock_slightly_behind(tmp_path: Path) -> None:
    t0 = int(time.time())
    p = Platform.open(tmp_path, now=lambda: t0)
    verified = dcap_verify(signed_quote(p, report_body()), p.collateral_json(), p.root_ca_der(), t0 - 600)
    assert verified.status == "UpToDate"


# --- fsutil -----------------------------------------------------------------------------------------


def test_atomic_write_replaces_and_sets_mode(tmp_path: Path) -> None:
    target = tmp_path / "f"
    fsutil.atomic_write(target, b"one")
    fsutil.write_secret(target, b"two")
    assert target.read_bytes() == b"two" and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "f"
    fsutil.atomic_write(target, b"old")

    def failing_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("enclave.fsutil.os.replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        fsutil.atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]
