"""The quote verifier (enclave/verifier.py) on Intel's real SGX quote and on a synthetic PKI built here.

Every check is shown to fail. The real quote covers what Intel signed; a tiny synthetic PKI (root, PCK CA,
PCK leaf with a minimal SGX extension, TCB signer, CRLs, TCB info, QE identity, a quote signed with our
own keys) covers what cannot be forged on Intel's data: revocation, TCB levels, QE identity, debug,
measurements, nonce and key bundle, all with valid signatures. Verdicts are cross-checked against
dcap-qvl wherever it has one.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dcap_qvl  # type: ignore[import-untyped]
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave.collateral import TCB_STATUSES, parse_collateral, parse_pck_extension
from enclave.errors import AttestationError
from enclave.quote import (
    INTEL_QE_VENDOR_ID,
    Quote,
    QuoteHeader,
    ReportBody,
    parse_quote,
)
from enclave.verifier import (
    CHECKS,
    REASON_CODES,
    Policy,
    check_quote,
    converge_tcb_status,
    intel_root_ca_der,
    verify_quote,
)

# --- the real quote ------------------------------------------------------------------------------

REAL_AT = datetime(2025, 6, 27, tzinfo=UTC)  # inside the sample collateral's window (unix 1751000000)
REAL_STATUSES = frozenset({"UpToDate", "ConfigurationAndSWHardeningNeeded"})
SGX_OID = "1.2.840.113741.1.13.1"


@dataclass(frozen=True)
class Real:
    quote: bytes
    collateral: str
    root: bytes

    def policy(self, **kw: Any) -> Policy:
        kw.setdefault("at", REAL_AT)
        kw.setdefault("allowed_tcb_statuses", REAL_STATUSES)
        return Policy(**kw)

    def collateral_with(self, **fields: str) -> str:
        data = json.loads(self.collateral)
        data.update(fields)
        return json.dumps(data)


@pytest.fixture(scope="module")
def real(shared_vectors: Path) -> Real:
    d = shared_vectors / "dcap"
    return Real(
        (d / "sgx_quote_v3.bin").read_bytes(),
        (d / "sgx_quote_v3_collateral.json").read_text(),
        (d / "intel_sgx_root_ca.der").read_bytes(),
    )


def dcap(
    quote: bytes, collateral: str, at: datetime, root: bytes | None = None
) -> tuple[str, list[str]] | None:
    """dcap-qvl's (status, advisory ids), or None when it rejects the quote."""
    try:
        col = dcap_qvl.QuoteCollateralV3.from_json(collateral)
        now = int(at.timestamp())
        r = (
            dcap_qvl.verify(quote, col, now)
            if root is None
            else dcap_qvl.verify_with_root_ca(quote, col, root, now)
        )
    except ValueError:
        return None
    return r.status, list(r.advisory_ids)


def reason(quote: bytes, collateral: Any, policy: Policy) -> str | None:
    """check_quote's reason; verify_quote raises with the same reason, or returns when all passed."""
    report = check_quote(quote, collateral, policy)
    try:
        verify_quote(quote, collateral, policy)
    except AttestationError as e:
        assert e.reason == report.reason
    else:
        assert report.ok
    return report.reason


def flip(data: bytes, pos: int, mask: int = 0x01) -> bytes:
    return data[:pos] + bytes([data[pos] ^ mask]) + data[pos + 1 :]


def test_real_quote_verifies_like_dcap_qvl(real: Real) -> None:
    report = verify_quote(real.quote, real.collateral, real.policy())
    assert report.ok and report.reason is None
    assert [c.name for c in report.checks] == [name for name, _ in CHECKS]
    assert all(c.passed for c in report.checks)
    assert report.tcb_status == "ConfigurationAndSWHardeningNeeded"
    assert report.platform_tcb_status == "ConfigurationAndSWHardeningNeeded"
    assert report.qe_tcb_status == "UpToDate"
    assert report.advisory_ids == ["INTEL-SA-00289", "INTEL-SA-00615"]
    ident = report.identity
    assert ident is not None
    assert ident.mr_enclave.startswith("33d8736d") and ident.mr_signer.startswith("815f42f1")
    assert (ident.flags, ident.debug, ident.isv_prod_id, ident.isv_svn) == (0x05, False, 0, 0)
    assert bytes.fromhex(ident.report_data).startswith(b"Hello, world!")
    assert dcap(real.quote, real.collateral, REAL_AT) == (report.tcb_status, report.advisory_ids)
    json.dumps(report.to_dict())  # JSON-ready for the CLI


def test_real_quote_accepts_a_parsed_collateral_and_a_dict(real: Real) -> None:
    for col in (parse_collateral(real.collateral), json.loads(real.collateral)):
        assert check_quote(real.quote, col, real.policy()).ok


def test_real_quote_expired_at_the_wall_clock(real: Real) -> None:
    assert (
        reason(real.quote, real.collateral, Policy(allowed_tcb_statuses=REAL_STATUSES))
        == "COLLATERAL_EXPIRED"
    )
    assert dcap(real.quote, real.collateral, datetime.now(UTC)) is None
    # and before the TCB info and the PCK CRL were issued
    early = datetime(2025, 6, 1, tzinfo=UTC)
    assert reason(real.quote, real.collateral, real.policy(at=early)) == "COLLATERAL_EXPIRED"
    assert dcap(real.quote, real.collateral, early) is None


def test_intel_root_is_the_default_trust_anchor(real: Real) -> None:
    assert Policy().root_ca_der == intel_root_ca_der() == real.root


def test_real_quote_refused_by_the_default_tcb_policy(real: Real) -> None:
    assert reason(real.quote, real.collateral, Policy(at=REAL_AT)) == "TCB_STATUS_NOT_ALLOWED"
    strict = dcap_qvl.QuotePolicy.strict(int(REAL_AT.timestamp()))
    col = dcap_qvl.QuoteCollateralV3.from_json(real.collateral)
    with pytest.raises(ValueError, match="not acceptable"):
        dcap_qvl.QuoteVerifier().verify_with_policy(real.quote, col, int(REAL_AT.timestamp()), strict)


def test_tdx_quote_is_refused(shared_vectors: Path) -> None:
    d = shared_vectors / "dcap"
    quote, col = (d / "tdx_quote_v4.bin").read_bytes(), (d / "tdx_quote_v4_collateral.json").read_text()
    assert reason(quote, col, Policy()) == "UNSUPPORTED_TEE_TYPE"


def test_every_report_body_byte_is_signed(real: Real) -> None:
    policy, collateral = real.policy(), parse_collateral(real.collateral)
    for pos in range(48, 48 + 384):
        tampered = flip(real.quote, pos)
        assert check_quote(tampered, collateral, policy).reason == "REPORT_SIGNATURE_INVALID", pos
        if pos % 16 == 0:
            assert dcap(tampered, real.collateral, REAL_AT) is None, pos


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (0, 2, "UNSUPPORTED_QUOTE_VERSION"),
        (2, 4, "UNSUPPORTED_KEY_TYPE"),
        (4, 8, "UNSUPPORTED_TEE_TYPE"),
        (8, 12, "REPORT_SIGNATURE_INVALID"),  # QE SVN, PCE SVN
        (12, 28, "QE_VENDOR_UNKNOWN"),
        (28, 48, "REPORT_SIGNATURE_INVALID"),  # user data
    ],
)
def test_header_bytes(real: Real, start: int, end: int, expected: str) -> None:
    for pos in range(start, end):
        tampered = flip(real.quote, pos)
        assert reason(tampered, real.collateral, real.policy()) == expected, pos
        assert dcap(tampered, real.collateral, REAL_AT) is None, pos


# QE report fields the QE identity constrains (offsets in the report body); other bytes are only signed
QE_IDENTITY_FIELDS = [range(16, 20), range(48, 64), range(128, 160), range(256, 260)]
QE_REPORT_AT = 432 + 4 + 64 + 64


def test_every_qe_report_byte_is_signed(real: Real) -> None:
    policy, collateral = real.policy(), parse_collateral(real.collateral)
    for off in range(384):
        tampered = flip(real.quote, QE_REPORT_AT + off)
        got = check_quote(tampered, collateral, policy).reason
        if any(off in field for field in QE_IDENTITY_FIELDS):
            assert got in ("QE_IDENTITY_MISMATCH", "QE_REPORT_SIGNATURE_INVALID"), off
        else:
            assert got == "QE_REPORT_SIGNATURE_INVALID", off
        if off % 16 == 0:
            assert dcap(tampered, real.collateral, REAL_AT) is None, off


def test_signature_section_tampering(real: Real) -> None:
    q, policy = parse_quote(real.quote), real.policy()

    def rebuilt(**changes: Any) -> bytes:
        return dataclasses.replace(q, raw=b"", **changes).to_bytes()

    n = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    cases = {
        "REPORT_SIGNATURE_INVALID": [
            rebuilt(isv_signature=flip(q.isv_signature, 5)),
            rebuilt(isv_signature=bytes(32) + q.isv_signature[32:]),  # r = 0
            rebuilt(isv_signature=q.isv_signature[:32] + n.to_bytes(32, "big")),  # s = n
        ],
        "QE_REPORT_SIGNATURE_INVALID": [rebuilt(qe_report_signature=flip(q.qe_report_signature, 40))],
        "ATTESTATION_KEY_BINDING_INVALID": [
            rebuilt(attestation_key=flip(q.attestation_key, 3)),
            rebuilt(qe_auth_data=flip(q.qe_auth_data, 0)),
            rebuilt(qe_auth_data=q.qe_auth_data + b"\x00"),
        ],
    }
    for expected, quotes in cases.items():
        for tampered in quotes:
            assert reason(tampered, real.collateral, policy) == expected
            assert dcap(tampered, real.collateral, REAL_AT) is None
    assert rebuilt() == real.quote


def test_pck_chain_tampering(real: Real) -> None:
    q, policy = parse_quote(real.quote), real.policy()
    pems = q.cert_data.rstrip(b"\x00").split(b"-----END CERTIFICATE-----\n")[:3]
    leaf, ca, root = (p + b"-----END CERTIFICATE-----\n" for p in pems)
    tcb_signer = json.loads(real.collateral)["tcb_info_issuer_chain"].encode().split(b"-----END")[0]
    # (chain, our reason, whether dcap-qvl rejects it too: it takes the root from its anchor, skips
    # text between PEM blocks and builds a path from whatever certificates it is given)
    cases = [
        (b"", "PCK_CHAIN_INVALID", True),
        (b"garbage", "PCK_CHAIN_INVALID", True),
        (leaf.replace(b"MII", b"MIJ", 1) + ca + root, "PCK_CHAIN_INVALID", True),
        (
            tcb_signer + b"-----END CERTIFICATE-----\n" + ca + root,
            "PCK_CHAIN_INVALID",
            True,
        ),  # no SGX extension
        (ca + leaf + root, "PCK_CHAIN_INVALID", True),
        (leaf + ca, "PCK_CHAIN_INVALID", False),
        (leaf + ca + root + root, "PCK_CHAIN_INVALID", False),
        (leaf + b"junk" + ca + root, "PCK_CHAIN_INVALID", False),
        (leaf + root + ca, "PCK_CHAIN_UNTRUSTED", False),
    ]
    for chain, expected, dcap_rejects in cases:
        tampered = dataclasses.replace(q, raw=b"", cert_data=chain).to_bytes()
        assert reason(tampered, real.collateral, policy) == expected, chain[:40]
        assert (dcap(tampered, real.collateral, REAL_AT) is None) == dcap_rejects, chain[:40]
    # without the trailing NUL Intel's QE writes, the same chain still verifies
    plain = dataclasses.replace(q, raw=b"", cert_data=leaf + ca + root).to_bytes()
    assert check_quote(plain, real.collateral, policy).ok


def test_another_root_ca_is_not_trusted(real: Real) -> None:
    other = synthetic_keys()["other_root"]
    other_root = _cert("Another root", other, "Another root", other, serial=9, ca=True, path_length=1)
    der = other_root.public_bytes(serialization.Encoding.DER)
    assert reason(real.quote, real.collateral, real.policy(root_ca_der=der)) == "PCK_CHAIN_UNTRUSTED"
    assert reason(real.quote, real.collateral, real.policy(root_ca_der=b"not DER")) == "PCK_CHAIN_UNTRUSTED"
    assert dcap(real.quote, real.collateral, REAL_AT, root=der) is None


def test_collateral_tampering(real: Real) -> None:
    col = json.loads(real.collateral)
    tcb_info, qe_identity = col["tcb_info"], col["qe_identity"]
    tcb_sig, qe_sig = bytes.fromhex(col["tcb_info_signature"]), bytes.fromhex(col["qe_identity_signature"])
    with_ = real.collateral_with
    cases = {
        "TCB_INFO_SIGNATURE_INVALID": [
            with_(tcb_info=tcb_info.replace('"svn":12', '"svn":13', 1)),
            with_(tcb_info=tcb_info.replace("INTEL-SA-00289", "INTEL-SA-00288", 1)),
            with_(tcb_info=tcb_info + " "),
            with_(tcb_info_signature=flip(tcb_sig, 9).hex()),
            with_(tcb_info_issuer_chain=col["pck_crl_issuer_chain"]),
        ],
        "QE_IDENTITY_SIGNATURE_INVALID": [
            with_(qe_identity=qe_identity.replace('"isvsvn":8', '"isvsvn":9', 1)),
            with_(qe_identity_signature=flip(qe_sig, 60).hex()),
            with_(qe_identity_issuer_chain=col["pck_crl_issuer_chain"]),
        ],
        "CRL_INVALID": [
            with_(root_ca_crl=col["root_ca_crl"][:-2] + "00"),
            with_(pck_crl=col["pck_crl"][:-2] + "00"),
            with_(pck_crl=col["root_ca_crl"], root_ca_crl=col["pck_crl"]),
        ],
        "COLLATERAL_INVALID": [
            with_(pck_crl="zz" + col["pck_crl"][2:]),
            with_(pck_crl=col["pck_crl"][2:]),
            with_(tcb_info_signature=col["tcb_info_signature"][:-2]),
            with_(qe_identity_issuer_chain="-----BEGIN CERTIFICATE-----\nAAAA\n"),
            with_(tcb_info=tcb_info[:-1]),
            with_(tcb_info=tcb_info.replace('"version":3', '"version":2', 1)),
            with_(qe_identity=qe_identity.replace('"UpToDate"', '"Fine"', 1)),
            json.dumps({k: v for k, v in col.items() if k != "pck_crl"}),
            "not json",
        ],
    }
    for expected, collaterals in cases.items():
        for tampered in collaterals:
            assert reason(real.quote, tampered, real.policy()) == expected, tampered[:60]
            assert dcap(real.quote, tampered, REAL_AT) is None
    # stricter than dcap-qvl, which ignores the PCK CRL issuer chain and unknown keys
    stricter = {
        "CRL_INVALID": with_(pck_crl_issuer_chain=col["tcb_info_issuer_chain"]),
        "COLLATERAL_INVALID": with_(extra="x"),
    }
    for expected, tampered in stricter.items():
        assert reason(real.quote, tampered, real.policy()) == expected
        assert dcap(real.quote, tampered, REAL_AT) is not None
    assert reason(real.quote, 42, real.policy()) == "COLLATERAL_INVALID"


def test_expectations_on_the_real_quote(real: Real) -> None:
    ident = check_quote(real.quote, real.collateral, real.policy()).identity
    assert ident is not None
    mre, mrs = bytes.fromhex(ident.mr_enclave), bytes.fromhex(ident.mr_signer)
    good = real.policy(expect_mrenclave=mre, expect_mrsigner=mrs, expect_isv_prod_id=0, min_isv_svn=0)
    assert check_quote(real.quote, real.collateral, good).ok
    cases: dict[str, dict[str, Any]] = {
        "MRENCLAVE_MISMATCH": {"expect_mrenclave": flip(mre, 31)},
        "MRSIGNER_MISMATCH": {"expect_mrsigner": flip(mrs, 0)},
        "ISVPRODID_MISMATCH": {"expect_isv_prod_id": 1},
        "ISVSVN_TOO_LOW": {"min_isv_svn": 1},
        "NONCE_MISMATCH": {"nonce": b""},
        "KEY_BUNDLE_MISMATCH": {"key_bundle": b"Hello, world!"},
    }
    for expected, kw in cases.items():
        assert reason(real.quote, real.collateral, real.policy(**kw)) == expected


def test_quote_structure_failures(real: Real) -> None:
    policy = real.policy()
    for bad in (b"", real.quote[:-1], real.quote + b"\x00", "text"):
        assert reason(bad, real.collateral, policy) == "QUOTE_FORMAT_INVALID"  # type: ignore[arg-type]


def test_policy_rejects_naive_times_and_bad_measurements() -> None:
    with pytest.raises(ValueError, match="timezone"):
        Policy(at=datetime(2025, 6, 27))
    with pytest.raises(ValueError, match="32 bytes"):
        Policy(expect_mrenclave=b"short")
    with pytest.raises(TypeError, match="set of status names"):
        Policy(allowed_tcb_statuses="UpToDate")  # type: ignore[arg-type]
    assert Policy(allowed_tcb_statuses={"UpToDate"}).allowed_tcb_statuses == frozenset({"UpToDate"})  # type: ignore[arg-type]


def test_converge_tcb_status() -> None:
    assert converge_tcb_status("UpToDate", "UpToDate") == "UpToDate"
    assert converge_tcb_status("SWHardeningNeeded", "OutOfDate") == "OutOfDate"
    assert converge_tcb_status("ConfigurationNeeded", "OutOfDate") == "OutOfDateConfigurationNeeded"
    assert converge_tcb_status("OutOfDateConfigurationNeeded", "OutOfDate") == "OutOfDateConfigurationNeeded"
    assert converge_tcb_status("UpToDate", "Revoked") == "Revoked"


# --- a synthetic PKI, quote and collateral ------------------------------------------------------

AT = datetime(2025, 6, 27, tzinfo=UTC)
KEY_BUNDLE = b"synthetic key bundle"
NONCE = b"synthetic nonce"
QE_MRSIGNER = hashlib.sha256(b"synthetic quoting enclave signer").digest()
QE_ATTRIBUTES = (0x15).to_bytes(8, "little") + (0xE7).to_bytes(8, "little")
MR_ENCLAVE = hashlib.sha256(b"synthetic enclave").digest()
MR_SIGNER = hashlib.sha256(b"synthetic enclave signer").digest()
SERIAL = {"root": 1, "ca": 2, "leaf": 3, "tcb": 4}
ROOT_CN = "Synthetic Root CA"


def lvl(svn: int | tuple[int, ...], pce_svn: int, status: str, *advisories: str) -> dict[str, Any]:
    """A TCB info level; svn is all 16 component SVNs or one value for each."""
    comps = svn if isinstance(svn, tuple) else (svn,) * 16
    level: dict[str, Any] = {
        "tcb": {"sgxtcbcomponents": [{"svn": c} for c in comps], "pcesvn": pce_svn},
        "tcbDate": "2024-03-13T00:00:00Z",
        "tcbStatus": status,
    }
    if advisories:
        level["advisoryIDs"] = list(advisories)
    return level


def qe_lvl(isv_svn: int, status: str, *advisories: str) -> dict[str, Any]:
    level: dict[str, Any] = {
        "tcb": {"isvsvn": isv_svn},
        "tcbDate": "2024-03-13T00:00:00Z",
        "tcbStatus": status,
    }
    if advisories:
        level["advisoryIDs"] = list(advisories)
    return level


@dataclass(frozen=True)
class Spec:
    """Everything the synthetic builder can vary; the defaults make a quote every check accepts."""

    # the platform, as the PCK leaf's SGX extension states it
    components: tuple[int, ...] = (4,) * 16
    pce_svn: int = 11
    fmspc: bytes = bytes.fromhex("00906ED50000")
    pce_id: bytes = bytes(2)
    sgx_extension: bytes | None = None  # raw DER instead of the built one; b"" for no extension
    # TCB info
    tcb_levels: tuple[dict[str, Any], ...] = (
        lvl(4, 11, "UpToDate"),
        lvl(2, 11, "SWHardeningNeeded", "INTEL-SA-00615"),
        lvl(2, 5, "OutOfDate", "INTEL-SA-00001", "INTEL-SA-00615"),
    )
    tcb_fmspc: bytes | None = None
    tcb_pce_id: bytes | None = None
    # the QE identity and the QE report
    qe_levels: tuple[dict[str, Any], ...] = (qe_lvl(8, "UpToDate"), qe_lvl(6, "OutOfDate", "INTEL-SA-00615"))
    qe_isv_svn: int = 8
    qe_mr_signer: bytes = QE_MRSIGNER
    qe_isv_prod_id: int = 1
    qe_attributes: bytes = QE_ATTRIBUTES
    qe_misc_select: int = 0
    qe_report_data: bytes | None = None  # None: SHA-256(attestation key || QE auth data) || 32 zeros
    qe_signer: str = "leaf"  # the key that signs the QE report
    isv_signer: str = "att"  # the key that signs header || report body
    # the header
    version: int = 3
    att_key_type: int = 2
    tee_type: int = 0
    qe_vendor_id: bytes = INTEL_QE_VENDOR_ID
    cert_data_type: int = 5
    # the ISV enclave
    flags: int = 0x05  # INIT | MODE64BIT; 0x07 adds DEBUG
    isv_prod_id: int = 7
    isv_svn: int = 3
    report_data: bytes = hashlib.sha256(KEY_BUNDLE).digest() + hashlib.sha256(NONCE).digest()
    # revocation, CRL signers, chain shapes, times
    pck_crl_revoked: tuple[int, ...] = ()
    root_crl_revoked: tuple[int, ...] = ()
    pck_crl_signer: str = "ca"
    root_crl_signer: str = "root"
    ca_is_ca: bool = True
    root_path_length: int | None = 1
    tcb_signer: str = "tcb"  # "tcb", "leaf" (a three-certificate chain) or "other_root"
    leaf_not_after: datetime = AT + timedelta(days=365)
    issued: datetime = AT - timedelta(days=1)
    next_update: datetime = AT + timedelta(days=29)


@dataclass(frozen=True)
class Built:
    quote: bytes
    collateral: dict[str, str]
    root: bytes

    @property
    def collateral_json(self) -> str:
        return json.dumps(self.collateral)

    def policy(self, **kw: Any) -> Policy:
        kw.setdefault("root_ca_der", self.root)
        kw.setdefault("at", AT)
        return Policy(**kw)

    def reason(self, **kw: Any) -> str | None:
        return reason(self.quote, self.collateral_json, self.policy(**kw))

    def dcap(self, at: datetime = AT) -> tuple[str, list[str]] | None:
        return dcap(self.quote, self.collateral_json, at, root=self.root)


@functools.cache
def synthetic_keys() -> dict[str, ec.EllipticCurvePrivateKey]:
    names = ("root", "ca", "leaf", "tcb", "att", "other_root")
    return {name: ec.generate_private_key(ec.SECP256R1()) for name in names}


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test")]
    )


def _cert(
    cn: str,
    key: ec.EllipticCurvePrivateKey,
    issuer_cn: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    serial: int,
    ca: bool,
    path_length: int | None = None,
    not_after: datetime = AT + timedelta(days=3650),
    sgx_extension: bytes | None = None,
) -> x509.Certificate:
    usage = dict.fromkeys(
        (
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    usage.update({"key_cert_sign": ca, "crl_sign": ca, "digital_signature": not ca})
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(issuer_cn))
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(AT - timedelta(days=30))
        .not_valid_after(not_after)
        .add_extension(x509.KeyUsage(**usage), critical=True)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True)
    )
    if sgx_extension is not None:
        ext = x509.UnrecognizedExtension(x509.ObjectIdentifier(SGX_OID), sgx_extension)
        builder = builder.add_extension(ext, critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    length = (
        bytes([n])
        if n < 0x80
        else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes((n.bit_length() + 7) // 8, "big")
    )
    return bytes([tag]) + length + content


def _oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        septets = [arc & 0x7F]
        while arc > 0x7F:
            arc >>= 7
            septets.append(0x80 | (arc & 0x7F))
        out += bytes(reversed(septets))
    return _der(0x06, bytes(out))


def _uint(tag: int, value: int) -> bytes:
    return _der(tag, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _entry(arc: str, value: bytes) -> bytes:
    return _der(0x30, _oid(f"{SGX_OID}.{arc}") + value)


def sgx_extension(spec: Spec) -> bytes:
    """The SGX extension with PPID, TCB (16 SVNs, PCESVN, CPUSVN), PCE-ID, FMSPC and SGX type."""
    tcb = [_entry(f"2.{i}", _uint(0x02, svn)) for i, svn in enumerate(spec.components, 1)]
    tcb += [
        _entry("2.17", _uint(0x02, spec.pce_svn)),
        _entry("2.18", _der(0x04, bytes(c & 0xFF for c in spec.components))),
    ]
    return _der(
        0x30,
        b"".join(
            [
                _entry("1", _der(0x04, bytes(range(16)))),
                _entry("2", _der(0x30, b"".join(tcb))),
                _entry("3", _der(0x04, spec.pce_id)),
                _entry("4", _der(0x04, spec.fmspc)),
                _entry("5", _uint(0x0A, 0)),
            ]
        ),
    )


def _crl(issuer_cn: str, key: ec.EllipticCurvePrivateKey, revoked: tuple[int, ...], spec: Spec) -> str:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(_name(issuer_cn))
        .last_update(spec.issued)
        .next_update(spec.next_update)
        .add_extension(x509.CRLNumber(1), critical=False)
    )
    for serial in revoked:
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(spec.issued).build()
        builder = builder.add_revoked_certificate(entry)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER).hex()


def _sign_raw(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _pem(*certs: x509.Certificate) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


def build(spec: Spec = Spec()) -> Built:
    """A quote and its collateral, every signature valid under the synthetic root."""
    k = synthetic_keys()
    root = _cert(
        ROOT_CN,
        k["root"],
        ROOT_CN,
        k["root"],
        serial=SERIAL["root"],
        ca=True,
        path_length=spec.root_path_length,
    )
    ca = _cert(
        "Synthetic PCK CA", k["ca"], ROOT_CN, k["root"], serial=SERIAL["ca"], ca=spec.ca_is_ca, path_length=0
    )
    ext = sgx_extension(spec) if spec.sgx_extension is None else spec.sgx_extension or None  # b"": none
    leaf = _cert(
        "Synthetic PCK leaf",
        k["leaf"],
        "Synthetic PCK CA",
        k["ca"],
        serial=SERIAL["leaf"],
        ca=False,
        not_after=spec.leaf_not_after,
        sgx_extension=ext,
    )
    if spec.tcb_signer == "leaf":
        signer_key, signing_chain = k["leaf"], _pem(leaf, ca, root)
    else:
        issuer_cn, issuer_key = (
            (ROOT_CN, k["root"]) if spec.tcb_signer == "tcb" else ("Other", k["other_root"])
        )
        tcb = _cert("Synthetic TCB Signing", k["tcb"], issuer_cn, issuer_key, serial=SERIAL["tcb"], ca=False)
        signer_key, signing_chain = k["tcb"], _pem(tcb, root)
    dates = {"issueDate": _iso(spec.issued), "nextUpdate": _iso(spec.next_update)}
    tcb_info = json.dumps(
        {
            "id": "SGX",
            "version": 3,
            **dates,
            "fmspc": (spec.tcb_fmspc or spec.fmspc).hex().upper(),
            "pceId": (spec.tcb_pce_id or spec.pce_id).hex().upper(),
            "tcbType": 0,
            "tcbEvaluationDataNumber": 17,
            "tcbLevels": list(spec.tcb_levels),
        },
        separators=(",", ":"),
    )
    qe_identity = json.dumps(
        {
            "id": "QE",
            "version": 2,
            **dates,
            "tcbEvaluationDataNumber": 17,
            "miscselect": "00000000",
            "miscselectMask": "FFFFFFFF",
            "attributes": "11000000000000000000000000000000",
            "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
            "mrsigner": QE_MRSIGNER.hex().upper(),
            "isvprodid": 1,
            "tcbLevels": list(spec.qe_levels),
        },
        separators=(",", ":"),
    )
    crl_signers = {"ca": ("Synthetic PCK CA", k["ca"]), "root": (ROOT_CN, k["root"])}
    collateral = {
        "pck_crl_issuer_chain": _pem(ca, root),
        "root_ca_crl": _crl(*crl_signers[spec.root_crl_signer], spec.root_crl_revoked, spec),
        "pck_crl": _crl(*crl_signers[spec.pck_crl_signer], spec.pck_crl_revoked, spec),
        "tcb_info_issuer_chain": signing_chain,
        "tcb_info": tcb_info,
        "tcb_info_signature": _sign_raw(signer_key, tcb_info.encode()).hex(),
        "qe_identity_issuer_chain": signing_chain,
        "qe_identity": qe_identity,
        "qe_identity_signature": _sign_raw(signer_key, qe_identity.encode()).hex(),
    }
    att_key = (
        k["att"]
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)[1:]
    )
    qe_auth_data = bytes(range(32))
    header = QuoteHeader(
        version=spec.version,
        att_key_type=spec.att_key_type,
        tee_type=spec.tee_type,
        qe_svn=spec.qe_isv_svn,
        pce_svn=spec.pce_svn,
        qe_vendor_id=spec.qe_vendor_id,
    )
    report = ReportBody(
        attributes=spec.flags.to_bytes(8, "little") + (0xE7).to_bytes(8, "little"),
        mr_enclave=MR_ENCLAVE,
        mr_signer=MR_SIGNER,
        isv_prod_id=spec.isv_prod_id,
        isv_svn=spec.isv_svn,
        report_data=spec.report_data,
    )
    qe_report = ReportBody(
        misc_select=spec.qe_misc_select,
        attributes=spec.qe_attributes,
        mr_signer=spec.qe_mr_signer,
        isv_prod_id=spec.qe_isv_prod_id,
        isv_svn=spec.qe_isv_svn,
        report_data=spec.qe_report_data or hashlib.sha256(att_key + qe_auth_data).digest() + bytes(32),
    )
    quote = Quote(
        header=header,
        report=report,
        isv_signature=_sign_raw(k[spec.isv_signer], header.to_bytes() + report.to_bytes()),
        attestation_key=att_key,
        qe_report=qe_report,
        qe_report_signature=_sign_raw(k[spec.qe_signer], qe_report.to_bytes()),
        qe_auth_data=qe_auth_data,
        cert_data_type=spec.cert_data_type,
        cert_data=_pem(leaf, ca, root).encode() + b"\x00",
    )
    return Built(quote.to_bytes(), collateral, root.public_bytes(serialization.Encoding.DER))


def variant(**changes: Any) -> Built:
    return build(dataclasses.replace(Spec(), **changes))


# --- synthetic quotes: every check fails with valid signatures ------------------------------------

ALL_STATUSES = frozenset(TCB_STATUSES)
QE_DEBUG_ATTRIBUTES = (0x17).to_bytes(8, "little") + (0xE7).to_bytes(8, "little")
_ATT_KEY = (
    synthetic_keys()["att"]
    .public_key()
    .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)[1:]
)
UNBOUND_SECOND_HALF = hashlib.sha256(_ATT_KEY + bytes(range(32))).digest() + b"\x01" * 32
DAY = timedelta(days=1)


@dataclass(frozen=True)
class Case:
    name: str
    spec: dict[str, Any]
    policy: dict[str, Any]
    reason: str
    dcap_rejects: bool  # False: dcap-qvl accepts (a policy matter, or a check dcap-qvl does not make)


SYNTHETIC_FAILURES = [
    Case("sgx_quote_version_4", {"version": 4}, {}, "UNSUPPORTED_QUOTE_VERSION", True),
    Case("tdx_tee_type_in_v3", {"tee_type": 0x81}, {}, "UNSUPPORTED_TEE_TYPE", True),
    Case("attestation_key_type", {"att_key_type": 3}, {}, "UNSUPPORTED_KEY_TYPE", True),
    Case("qe_vendor", {"qe_vendor_id": bytes(16)}, {}, "QE_VENDOR_UNKNOWN", True),
    Case("cert_data_type", {"cert_data_type": 3}, {}, "CERT_DATA_UNSUPPORTED", True),
    Case("no_sgx_extension", {"sgx_extension": b""}, {}, "PCK_CHAIN_INVALID", True),
    Case("empty_sgx_extension", {"sgx_extension": b"\x30\x00"}, {}, "PCK_CHAIN_INVALID", True),
    Case("ca_without_ca_flag", {"ca_is_ca": False}, {}, "PCK_CHAIN_UNTRUSTED", True),
    Case("root_path_length_0", {"root_path_length": 0}, {}, "PCK_CHAIN_UNTRUSTED", False),
    Case("leaf_expired", {"leaf_not_after": AT - DAY}, {}, "COLLATERAL_EXPIRED", True),
    Case("collateral_not_yet_issued", {"issued": AT + DAY}, {}, "COLLATERAL_EXPIRED", True),
    Case("collateral_past_next_update", {"issued": AT - 31 * DAY, "next_update": AT - DAY}, {},
         "COLLATERAL_EXPIRED", True),
    Case("pck_crl_signed_by_root", {"pck_crl_signer": "root"}, {}, "CRL_INVALID", True),
    Case("root_crl_signed_by_ca", {"root_crl_signer": "ca"}, {}, "CRL_INVALID", True),
    Case("leaf_revoked", {"pck_crl_revoked": (SERIAL["leaf"],)}, {}, "CERT_REVOKED", True),
    Case("pck_ca_revoked", {"root_crl_revoked": (SERIAL["ca"],)}, {}, "CERT_REVOKED", True),
    Case("tcb_signer_revoked", {"root_crl_revoked": (SERIAL["tcb"],)}, {}, "CERT_REVOKED", True),
    Case("tcb_info_signed_by_pck_leaf", {"tcb_signer": "leaf"}, {}, "TCB_INFO_SIGNATURE_INVALID", False),
    Case("tcb_signer_under_other_root", {"tcb_signer": "other_root"}, {}, "TCB_INFO_SIGNATURE_INVALID", True),
    Case("fmspc", {"tcb_fmspc": bytes(6)}, {}, "TCB_INFO_MISMATCH", True),
    Case("pce_id", {"tcb_pce_id": b"\x00\x01"}, {}, "TCB_INFO_MISMATCH", False),
    Case("components_below_every_level", {"components": (1,) * 16}, {}, "TCB_LEVEL_NOT_FOUND", True),
    Case("one_component_below", {"components": (4,) * 15 + (1,)}, {}, "TCB_LEVEL_NOT_FOUND", True),
    Case("pcesvn_below_every_level", {"pce_svn": 4}, {}, "TCB_LEVEL_NOT_FOUND", True),
    Case("sw_hardening_not_allowed", {"components": (3,) * 16}, {}, "TCB_STATUS_NOT_ALLOWED", False),
    Case("platform_revoked", {"tcb_levels": (lvl(4, 11, "Revoked"),)}, {"allowed_tcb_statuses": ALL_STATUSES},
         "TCB_STATUS_NOT_ALLOWED", True),
    Case("qe_mrsigner", {"qe_mr_signer": bytes(32)}, {}, "QE_IDENTITY_MISMATCH", True),
    Case("qe_isvprodid", {"qe_isv_prod_id": 2}, {}, "QE_IDENTITY_MISMATCH", True),
    Case("qe_debug", {"qe_attributes": QE_DEBUG_ATTRIBUTES}, {}, "QE_IDENTITY_MISMATCH", True),
    Case("qe_miscselect", {"qe_misc_select": 1}, {}, "QE_IDENTITY_MISMATCH", True),
    Case("qe_isvsvn_below_every_level", {"qe_isv_svn": 5}, {"allowed_tcb_statuses": ALL_STATUSES},
         "QE_IDENTITY_MISMATCH", True),
    Case("qe_out_of_date", {"qe_isv_svn": 6}, {}, "QE_IDENTITY_MISMATCH", False),
    Case("qe_revoked", {"qe_levels": (qe_lvl(8, "Revoked"),)}, {"allowed_tcb_statuses": ALL_STATUSES},
         "QE_IDENTITY_MISMATCH", True),
    Case("qe_report_signed_by_pck_ca", {"qe_signer": "ca"}, {}, "QE_REPORT_SIGNATURE_INVALID", True),
    Case("qe_report_data_zero", {"qe_report_data": bytes(64)}, {}, "ATTESTATION_KEY_BINDING_INVALID", True),
    # dcap-qvl compares only the first half of the QE report data
    Case("qe_report_data_second_half", {"qe_report_data": UNBOUND_SECOND_HALF}, {},
         "ATTESTATION_KEY_BINDING_INVALID", False),
    Case("isv_report_signed_by_pck_key", {"isv_signer": "leaf"}, {}, "REPORT_SIGNATURE_INVALID", True),
    Case("debug_enclave", {"flags": 0x07}, {}, "DEBUG_ENCLAVE", True),
    Case("mrenclave", {}, {"expect_mrenclave": MR_SIGNER}, "MRENCLAVE_MISMATCH", False),
    Case("mrsigner", {}, {"expect_mrsigner": MR_ENCLAVE}, "MRSIGNER_MISMATCH", False),
    Case("isvprodid", {}, {"expect_isv_prod_id": 8}, "ISVPRODID_MISMATCH", False),
    Case("isvsvn", {}, {"min_isv_svn": 4}, "ISVSVN_TOO_LOW", False),
    Case("nonce", {}, {"nonce": b"another nonce", "key_bundle": KEY_BUNDLE}, "NONCE_MISMATCH", False),
    Case("key_bundle", {}, {"nonce": NONCE, "key_bundle": b"another bundle"}, "KEY_BUNDLE_MISMATCH", False),
    Case("key_bundle_without_nonce", {}, {"key_bundle": NONCE}, "KEY_BUNDLE_MISMATCH", False),
    Case("report_data_halves_swapped", {"report_data": hashlib.sha256(NONCE).digest() + bytes(32)},
         {"nonce": NONCE}, "NONCE_MISMATCH", False),
]  # fmt: skip


@pytest.mark.parametrize("case", SYNTHETIC_FAILURES, ids=lambda c: c.name)
def test_synthetic_failure(case: Case) -> None:
    built = variant(**case.spec)
    report = check_quote(built.quote, built.collateral_json, built.policy(**case.policy))
    assert report.reason == case.reason, report.detail
    failed = report.checks[-1]
    assert (failed.passed, failed.reason) == (False, case.reason)
    assert all(c.passed for c in report.checks[:-1])
    with pytest.raises(AttestationError) as raised:
        verify_quote(built.quote, built.collateral_json, built.policy(**case.policy))
    assert raised.value.reason == case.reason
    theirs = built.dcap()
    assert (theirs is None) == case.dcap_rejects
    if theirs is not None and report.tcb_status is not None:
        assert theirs[0] == report.tcb_status  # the status as far as we got agrees


def test_every_reason_code_has_a_failing_case() -> None:
    # the rest fail on the real quote above: malformed quote and collateral, a QE identity changed
    real_quote_only = {"QUOTE_FORMAT_INVALID", "COLLATERAL_INVALID", "QE_IDENTITY_SIGNATURE_INVALID"}
    assert {c.reason for c in SYNTHETIC_FAILURES} | real_quote_only == REASON_CODES


def test_synthetic_quote_passes_every_check() -> None:
    built = build()
    policy = built.policy(
        expect_mrenclave=MR_ENCLAVE,
        expect_mrsigner=MR_SIGNER,
        expect_isv_prod_id=7,
        min_isv_svn=3,
        nonce=NONCE,
        key_bundle=KEY_BUNDLE,
    )
    report = verify_quote(built.quote, built.collateral_json, policy)
    assert report.ok and all(c.passed for c in report.checks) and len(report.checks) == len(CHECKS)
    assert (report.tcb_status, report.advisory_ids) == ("UpToDate", [])
    assert built.dcap() == ("UpToDate", [])
    # only the halves the policy names are checked
    assert check_quote(built.quote, built.collateral_json, built.policy(nonce=NONCE)).ok
    assert check_quote(built.quote, built.collateral_json, built.policy(key_bundle=KEY_BUNDLE)).ok


def test_emulated_root_must_be_named() -> None:
    built = build()
    assert reason(built.quote, built.collateral_json, Policy(at=AT)) == "PCK_CHAIN_UNTRUSTED"
    assert dcap(built.quote, built.collateral_json, AT) is None  # dcap-qvl under Intel's root


def test_debug_enclave_only_with_the_insecure_flag() -> None:
    built = variant(flags=0x07)
    report = check_quote(built.quote, built.collateral_json, built.policy(allow_debug_insecure=True))
    assert report.ok and report.identity is not None and report.identity.debug
    assert "allow_debug_insecure" in report.checks[[n for n, _ in CHECKS].index("debug")].detail


@pytest.mark.parametrize(
    ("components", "pce_svn", "levels"),
    [
        ((4,) * 16, 11, Spec().tcb_levels),
        ((3,) * 16, 11, Spec().tcb_levels),
        ((9,) * 16, 6, Spec().tcb_levels),
        # a lexicographic comparison would pick the first level; Intel's component-wise rule the second
        ((4,) * 16, 11, (lvl((3, 9) + (0,) * 14, 11, "UpToDate"), lvl(2, 11, "ConfigurationNeeded", "SA-1"))),
        (
            (4,) * 16,
            11,
            (lvl((5,) + (0,) * 15, 11, "UpToDate"), lvl(0, 0, "OutOfDateConfigurationNeeded", "SA-2")),
        ),
    ],
)
def test_tcb_level_selection_agrees_with_dcap_qvl(
    components: tuple[int, ...], pce_svn: int, levels: tuple[dict[str, Any], ...]
) -> None:
    built = variant(components=components, pce_svn=pce_svn, tcb_levels=levels)
    report = check_quote(built.quote, built.collateral_json, built.policy(allowed_tcb_statuses=ALL_STATUSES))
    assert report.ok, report.detail
    assert built.dcap() == (report.tcb_status, report.advisory_ids)


@pytest.mark.parametrize("platform", sorted(TCB_STATUSES - {"Revoked"}))
def test_out_of_date_qe_degrades_the_status_as_dcap_qvl_does(platform: str) -> None:
    built = variant(
        qe_isv_svn=6,
        qe_levels=(qe_lvl(8, "UpToDate"), qe_lvl(6, "OutOfDate", "SA-QE", "SA-BOTH")),
        tcb_levels=(lvl(4, 11, platform, "SA-PLATFORM", "SA-BOTH"),),
    )
    report = check_quote(built.quote, built.collateral_json, built.policy(allowed_tcb_statuses=ALL_STATUSES))
    assert report.ok and (report.platform_tcb_status, report.qe_tcb_status) == (platform, "OutOfDate")
    assert report.tcb_status == converge_tcb_status(platform, "OutOfDate")
    assert report.advisory_ids == ["SA-PLATFORM", "SA-BOTH", "SA-QE"]
    assert built.dcap() == (report.tcb_status, report.advisory_ids)


@pytest.mark.parametrize(
    "at",
    ["2025-06-19T10:56:10Z", "2025-06-19T10:56:11Z", "2025-07-19T10:01:18Z", "2025-07-19T10:01:19Z"],
)
def test_validity_window_edges_agree_with_dcap_qvl(real: Real, at: str) -> None:
    when = datetime.fromisoformat(at)
    ours = check_quote(real.quote, real.collateral, real.policy(at=when))
    assert ours.ok == (dcap(real.quote, real.collateral, when) is not None)
    assert ours.ok or ours.reason == "COLLATERAL_EXPIRED"


# --- parsers ---------------------------------------------------------------------------------------


def test_pck_extension_matches_dcap_qvl(real: Real) -> None:
    for chain in (parse_quote(real.quote).cert_data, parse_quote(build().quote).cert_data):
        leaf = x509.load_pem_x509_certificates(chain.rstrip(b"\x00"))[0]
        ours, theirs = parse_pck_extension(leaf), dcap_qvl.parse_pck_extension_from_pem(chain.rstrip(b"\x00"))
        assert (ours.ppid, ours.cpu_svn, ours.pce_svn, ours.pce_id, ours.fmspc, ours.sgx_type) == (
            theirs.ppid,
            theirs.cpu_svn,
            theirs.pce_svn,
            theirs.pce_id,
            theirs.fmspc,
            theirs.sgx_type,
        )


def _leaf_with(extension: bytes) -> x509.Certificate:
    k = synthetic_keys()
    return _cert("leaf", k["leaf"], "ca", k["ca"], serial=3, ca=False, sgx_extension=extension)


GOOD_EXTENSION = sgx_extension(Spec())  # 30 82 01 c0 ...


@pytest.mark.parametrize(
    "bad",
    [
        GOOD_EXTENSION[:-1],  # truncated
        GOOD_EXTENSION + b"\x00",  # a trailing byte
        GOOD_EXTENSION[:1] + b"\x83\x00" + GOOD_EXTENSION[2:],  # non-minimal length
        b"\x30\x80" + GOOD_EXTENSION[4:] + b"\x00\x00",  # indefinite length
        GOOD_EXTENSION.replace(b"\x02\x01\x04", b"\x02\x02\x00\x04", 1),  # non-minimal INTEGER
        GOOD_EXTENSION.replace(b"\x02\x01\x04", b"\x02\x01\xfc", 1),  # negative INTEGER
        GOOD_EXTENSION.replace(b"\x0a\x01\x00", b"\x02\x01\x00", 1),  # SGX type not ENUMERATED
        b"\x30\x00",  # nothing in it
        sgx_extension(dataclasses.replace(Spec(), fmspc=bytes(5))),
        sgx_extension(dataclasses.replace(Spec(), pce_id=bytes(3))),
        sgx_extension(dataclasses.replace(Spec(), components=(4,) * 15 + (256,))),
        sgx_extension(dataclasses.replace(Spec(), pce_svn=0x10000)),
    ],
)
def test_pck_extension_parser_is_strict(bad: bytes) -> None:
    assert parse_pck_extension(_leaf_with(GOOD_EXTENSION)).fmspc == Spec().fmspc
    with pytest.raises(AttestationError) as raised:
        parse_pck_extension(_leaf_with(bad))
    assert raised.value.reason == "PCK_CHAIN_INVALID"


def test_pck_extension_rejects_repeated_and_missing_elements() -> None:
    spec = Spec()
    fmspc = _entry("4", _der(0x04, spec.fmspc))
    good = sgx_extension(spec)
    body = good[2:] if good[1] < 0x80 else good[2 + (good[1] & 0x7F) :]
    for bad in (_der(0x30, body + fmspc), _der(0x30, body.replace(fmspc, b""))):
        with pytest.raises(AttestationError, match="PCK_CHAIN_INVALID"):
            parse_pck_extension(_leaf_with(bad))


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('{"svn":11},', ""),  # 15 components
        ('"svn":11', '"svn":256'),
        ('"svn":11', '"svn":-1'),
        ('"svn":11', '"svn":true'),
        ('"svn":11', '"svn":11.0'),
        ('"pcesvn":13', '"pcesvn":NaN'),
        ('"id":"SGX"', '"id":"TDX"'),
        ('"tcbType":0', '"tcbType":1'),
        ('"fmspc":"00A067110000"', '"fmspc":"00A0671100"'),
        ('"issueDate":"2025-06-19T10:56:11Z"', '"issueDate":"2025-06-19T10:56:11"'),
        ('"issueDate":"2025-06-19T10:56:11Z"', '"issueDate":"2025-06-19"'),
        ('"tcbStatus":"OutOfDate"', '"tcbStatus":"outofdate"'),
        ('"advisoryIDs":["INTEL-SA-00615"]', '"advisoryIDs":"INTEL-SA-00615"'),
        ('"version":3', '"version":3,"version":3'),
    ],
)
def test_tcb_info_parser_is_strict(real: Real, old: str, new: str) -> None:
    tcb_info = json.loads(real.collateral)["tcb_info"]
    assert old in tcb_info
    with pytest.raises(AttestationError) as raised:
        parse_collateral(real.collateral_with(tcb_info=tcb_info.replace(old, new, 1)))
    assert raised.value.reason == "COLLATERAL_INVALID"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('"id":"QE"', '"id":"QVE"'),
        ('"version":2', '"version":1'),
        ('"mrsigner":"8C4F', '"mrsigner":"'),
        ('"miscselect":"00000000"', '"miscselect":"0000000G"'),
        ('"isvprodid":1', '"isvprodid":"1"'),
        ('"tcbStatus":"UpToDate"', '"tcbStatus":"SWHardeningNeeded"'),  # not a QE status
        ('{"tcb":{"isvsvn":8}', '{"tcb":{}'),
    ],
)
def test_qe_identity_parser_is_strict(real: Real, old: str, new: str) -> None:
    qe_identity = json.loads(real.collateral)["qe_identity"]
    assert old in qe_identity
    with pytest.raises(AttestationError) as raised:
        parse_collateral(real.collateral_with(qe_identity=qe_identity.replace(old, new, 1)))
    assert raised.value.reason == "COLLATERAL_INVALID"


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_check_quote_never_raises(real: Real, data: st.DataObject) -> None:
    quote = bytearray(real.quote)
    cert_start = len(quote) - len(parse_quote(real.quote).cert_data)
    positions = data.draw(st.lists(st.integers(0, len(quote) - 1), min_size=1, max_size=3, unique=True))
    for pos in positions:
        quote[pos] ^= data.draw(st.integers(1, 255))
    cut = data.draw(st.sampled_from([None, 0, 47, 436, 1000, len(quote) - 1]))
    mutated = bytes(quote[:cut] if cut is not None else quote)
    report = check_quote(mutated, real.collateral, real.policy())
    assert report.ok or report.reason in REASON_CODES
    if cut is not None or any(pos < cert_start for pos in positions):
        assert not report.ok
