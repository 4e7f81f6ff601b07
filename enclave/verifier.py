"""Verify an SGX DCAP v3 quote against its collateral and a fail-closed policy (DESIGN §5, "Verifier").

    report = verify_quote(quote_bytes, collateral_json, Policy(nonce=nonce, key_bundle=bundle))
    report = check_quote(quote_bytes, collateral_json, policy)  # never raises; report.ok, report.reason

The checks run in the order of CHECKS and stop at the first failure; each failure has a stable reason
code (docs/attestation.md describes every one). Only ``policy.root_ca_der`` is trusted: Intel's SGX
root by default, an emulated root only when the caller names it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding

from enclave.collateral import (
    Collateral,
    PckExtension,
    TcbLevel,
    load_pem_chain,
    parse_collateral,
    parse_pck_extension,
)
from enclave.errors import AttestationError
from enclave.quote import (
    ATT_KEY_TYPE_ECDSA_P256,
    CERT_DATA_PCK_CHAIN,
    HEADER_SIZE,
    INTEL_QE_VENDOR_ID,
    REPORT_BODY_SIZE,
    SIGNED_SIZE,
    TEE_TYPE_SGX,
    Quote,
    parse_quote,
)

INTEL_ROOT_CA_PATH = Path(__file__).parent / "data" / "intel_sgx_root_ca.der"
# P-256 group order: ECDSA r and s must lie in [1, n - 1].
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_QE_REPORT_OFFSET = SIGNED_SIZE + 4 + 64 + 64  # after signature_data_len, ISV signature, attestation key
_E = TypeVar("_E", bound=x509.ExtensionType)
_CRITICAL_OK = {x509.oid.ExtensionOID.BASIC_CONSTRAINTS, x509.oid.ExtensionOID.KEY_USAGE}

# Every check, in the order it runs, with the reason code its failure carries.
CHECKS: tuple[tuple[str, str], ...] = (
    ("quote_format", "QUOTE_FORMAT_INVALID"),  # or UNSUPPORTED_QUOTE_VERSION / UNSUPPORTED_TEE_TYPE
    ("attestation_key_type", "UNSUPPORTED_KEY_TYPE"),
    ("qe_vendor", "QE_VENDOR_UNKNOWN"),
    ("cert_data_type", "CERT_DATA_UNSUPPORTED"),
    # the quote's own integrity first, so that a tampered quote is named as such whatever the
    # evaluation time and the TCB policy
    ("pck_chain_format", "PCK_CHAIN_INVALID"),
    ("qe_report_signature", "QE_REPORT_SIGNATURE_INVALID"),
    ("attestation_key_binding", "ATTESTATION_KEY_BINDING_INVALID"),
    ("report_signature", "REPORT_SIGNATURE_INVALID"),
    # then the chain of trust and the collateral
    ("collateral_format", "COLLATERAL_INVALID"),
    ("pck_chain_trust", "PCK_CHAIN_UNTRUSTED"),
    ("collateral_validity", "COLLATERAL_EXPIRED"),
    ("crl_signatures", "CRL_INVALID"),
    ("revocation", "CERT_REVOKED"),
    ("tcb_info_signature", "TCB_INFO_SIGNATURE_INVALID"),
    ("tcb_info_match", "TCB_INFO_MISMATCH"),
    ("tcb_level", "TCB_LEVEL_NOT_FOUND"),
    ("tcb_status", "TCB_STATUS_NOT_ALLOWED"),
    ("qe_identity_signature", "QE_IDENTITY_SIGNATURE_INVALID"),
    ("qe_identity", "QE_IDENTITY_MISMATCH"),
    # then the policy on the enclave itself
    ("debug", "DEBUG_ENCLAVE"),
    ("mrenclave", "MRENCLAVE_MISMATCH"),
    ("mrsigner", "MRSIGNER_MISMATCH"),
    ("isv_prod_id", "ISVPRODID_MISMATCH"),
    ("isv_svn", "ISVSVN_TOO_LOW"),
    ("nonce", "NONCE_MISMATCH"),
    ("key_bundle", "KEY_BUNDLE_MISMATCH"),
)
# Every reason code a failure can carry.
REASON_CODES = frozenset({r for _, r in CHECKS} | {"UNSUPPORTED_QUOTE_VERSION", "UNSUPPORTED_TEE_TYPE"})


def intel_root_ca_der() -> bytes:
    """Intel's SGX Root CA certificate (DER), shipped as package data: the default trust anchor."""
    return INTEL_ROOT_CA_PATH.read_bytes()


@dataclass(frozen=True)
class Policy:
    """What a quote must show to be accepted. Defaults fail closed; each relaxation is a named field."""

    root_ca_der: bytes = field(default_factory=intel_root_ca_der)
    at: datetime | None = None  # evaluation time (timezone-aware); None = now, UTC
    expect_mrenclave: bytes | None = None
    expect_mrsigner: bytes | None = None
    expect_isv_prod_id: int | None = None
    min_isv_svn: int | None = None
    allowed_tcb_statuses: frozenset[str] = frozenset({"UpToDate"})  # "Revoked" is never honoured
    allow_debug_insecure: bool = False
    nonce: bytes | None = None  # REPORTDATA[32:] must be SHA-256(nonce)
    key_bundle: bytes | None = None  # REPORTDATA[:32] must be SHA-256(key_bundle)

    def __post_init__(self) -> None:
        if self.at is not None and self.at.tzinfo is None:
            raise ValueError("Policy.at must be timezone-aware")
        if isinstance(self.allowed_tcb_statuses, str):
            raise TypeError("Policy.allowed_tcb_statuses is a set of status names, not one string")
        object.__setattr__(self, "allowed_tcb_statuses", frozenset(self.allowed_tcb_statuses))
        for name in ("expect_mrenclave", "expect_mrsigner"):
            value = getattr(self, name)
            if value is not None and len(value) != 32:
                raise ValueError(f"Policy.{name} must be 32 bytes")


@dataclass(frozen=True)
class CheckResult:
    """One check as run: its name, whether it passed, what it saw, and its reason code if it failed."""

    name: str
    passed: bool
    detail: str
    reason: str | None = None


@dataclass(frozen=True)
class EnclaveIdentity:
    """What the ISV report body claims (to be trusted only when the report is ok)."""

    mr_enclave: str
    mr_signer: str
    isv_prod_id: int
    isv_svn: int
    debug: bool
    flags: int
    report_data: str


@dataclass(frozen=True)
class VerificationReport:
    """The outcome: ok, or the first failure's reason; every check run; identity and TCB status."""

    ok: bool
    reason: str | None
    detail: str | None
    checks: list[CheckResult]
    evaluated_at: datetime
    identity: EnclaveIdentity | None = None
    tcb_status: str | None = None  # the platform status combined with the QE's
    platform_tcb_status: str | None = None
    qe_tcb_status: str | None = None
    advisory_ids: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (times as RFC 3339 UTC)."""
        return {**asdict(self), "evaluated_at": _iso(self.evaluated_at)}


def verify_quote(
    quote_bytes: bytes, collateral: Collateral | str | Mapping[str, Any], policy: Policy
) -> VerificationReport:
    """Run every check; return the report, or raise AttestationError(reason) at the first failure."""
    report = check_quote(quote_bytes, collateral, policy)
    if not report.ok:
        raise AttestationError(report.reason or "QUOTE_FORMAT_INVALID", report.detail or "")
    return report


def check_quote(
    quote_bytes: bytes, collateral: Collateral | str | Mapping[str, Any], policy: Policy
) -> VerificationReport:
    """Run the checks in order and stop at the first failure; never raises (see ``report.ok``)."""
    run = _Verification(quote_bytes, collateral, policy)
    results: list[CheckResult] = []
    for name, reason in CHECKS:
        step: Callable[[], str] = getattr(run, name)
        try:
            detail = step()
        except AttestationError as e:
            results.append(CheckResult(name, False, e.detail, e.reason))
            return run.report(results, e.reason, e.detail)
        except Exception as e:  # fail closed: an unexpected error fails this check with its reason
            detail = f"unexpected error: {type(e).__name__}: {e}"
            results.append(CheckResult(name, False, detail, reason))
            return run.report(results, reason, detail)
        results.append(CheckResult(name, True, detail))
    return run.report(results, None, None)


class _Verification:
    """State of one verification; each method named after a check returns a detail or raises."""

    def __init__(self, quote_bytes: bytes, collateral: Any, policy: Policy) -> None:
        self.quote_bytes, self.collateral_source, self.policy = quote_bytes, collateral, policy
        self.at = (policy.at or datetime.now(UTC)).astimezone(UTC)
        self.quote: Quote
        self.col: Collateral
        self.chain: tuple[x509.Certificate, ...] = ()
        self.pck: PckExtension
        self.root: x509.Certificate
        self.level: TcbLevel
        self.identity: EnclaveIdentity | None = None
        self.platform_status: str | None = None
        self.qe_status: str | None = None
        self.status: str | None = None
        self.advisories: list[str] = []

    def report(self, checks: list[CheckResult], reason: str | None, detail: str | None) -> VerificationReport:
        return VerificationReport(
            ok=reason is None,
            reason=reason,
            detail=detail,
            checks=checks,
            evaluated_at=self.at,
            identity=self.identity,
            tcb_status=self.status,
            platform_tcb_status=self.platform_status,
            qe_tcb_status=self.qe_status,
            advisory_ids=list(self.advisories),
        )

    # --- the quote's structure ---------------------------------------------------------------------

    def quote_format(self) -> str:
        self.quote = q = parse_quote(self.quote_bytes)
        if q.header.tee_type != TEE_TYPE_SGX:
            raise AttestationError("UNSUPPORTED_TEE_TYPE", f"tee type {q.header.tee_type:#x}, only SGX (0)")
        r = q.report
        hexes = (r.mr_enclave.hex(), r.mr_signer.hex())
        self.identity = EnclaveIdentity(
            *hexes, r.isv_prod_id, r.isv_svn, r.debug, r.flags, r.report_data.hex()
        )
        return f"version 3, SGX, {len(q.raw)} bytes"

    def attestation_key_type(self) -> str:
        kind = self.quote.header.att_key_type
        return _require(
            kind == ATT_KEY_TYPE_ECDSA_P256, "UNSUPPORTED_KEY_TYPE", f"key type {kind}", "2 (P-256)"
        )

    def qe_vendor(self) -> str:
        vendor = self.quote.header.qe_vendor_id
        ok = hmac.compare_digest(vendor, INTEL_QE_VENDOR_ID)
        return _require(ok, "QE_VENDOR_UNKNOWN", f"QE vendor {vendor.hex()}", "Intel")

    def cert_data_type(self) -> str:
        kind = self.quote.cert_data_type
        return _require(kind == CERT_DATA_PCK_CHAIN, "CERT_DATA_UNSUPPORTED", f"type {kind}", "PCK chain (5)")

    def collateral_format(self) -> str:
        self.col = parse_collateral(self.collateral_source)
        return f"TCB info for FMSPC {self.col.tcb_info.fmspc.hex()}, QE identity, 2 CRLs"

    # --- certificates, CRLs and times --------------------------------------------------------------

    def pck_chain_format(self) -> str:
        self.chain = load_pem_chain(self.quote.cert_data, "PCK_CHAIN_INVALID", "PCK chain")
        if len(self.chain) != 3:
            raise AttestationError("PCK_CHAIN_INVALID", f"{len(self.chain)} certificates, not 3")
        _require_p256(self.chain[0].public_key(), "PCK_CHAIN_INVALID", "PCK leaf key")
        self.pck = p = parse_pck_extension(self.chain[0])
        return f"FMSPC {p.fmspc.hex()}, PCE-ID {p.pce_id.hex()}, PCESVN {p.pce_svn}"

    def pck_chain_trust(self) -> str:
        try:
            self.root = x509.load_der_x509_certificate(self.policy.root_ca_der)
        except (ValueError, TypeError) as e:
            raise AttestationError("PCK_CHAIN_UNTRUSTED", f"policy root CA unreadable: {e}") from None
        _verify_chain(self.chain, self.policy.root_ca_der, "PCK_CHAIN_UNTRUSTED", "PCK chain", 3)
        return f"to root {_cn(self.root)}"

    def collateral_validity(self) -> str:
        c, at = self.col, self.at
        chains = (*self.chain, *c.pck_crl_issuer_chain, *c.tcb_info_issuer_chain, *c.qe_identity_issuer_chain)
        certs = dict.fromkeys(chains)  # each certificate once, in order
        windows: list[tuple[str, datetime, datetime | None]] = [
            (f"certificate {_cn(cert)}", cert.not_valid_before_utc, cert.not_valid_after_utc)
            for cert in certs
        ]
        windows += [
            ("root CA CRL", c.root_ca_crl.last_update_utc, c.root_ca_crl.next_update_utc),
            ("PCK CRL", c.pck_crl.last_update_utc, c.pck_crl.next_update_utc),
            ("TCB info", c.tcb_info.issue_date, c.tcb_info.next_update),
            ("QE identity", c.qe_identity.issue_date, c.qe_identity.next_update),
        ]
        for what, start, end in windows:
            if end is None or not start <= at <= end:
                detail = f"{what} valid {_iso(start)} .. {_iso(end)}, not at {_iso(at)}"
                raise AttestationError("COLLATERAL_EXPIRED", detail)
        what, _, end = min(windows, key=lambda w: w[2] or at)
        return f"at {_iso(at)}; first to expire: {what} at {_iso(end)}"

    def crl_signatures(self) -> str:
        c, pck_ca = self.col, self.chain[1]
        _verify_crl(c.root_ca_crl, self.root, "root CA CRL")
        _verify_crl(c.pck_crl, pck_ca, "PCK CRL")
        issuer_chain = c.pck_crl_issuer_chain
        _verify_chain(
            issuer_chain, self.policy.root_ca_der, "CRL_INVALID", "PCK CRL issuer chain", 2, first_ca=True
        )
        if issuer_chain[0].public_key() != pck_ca.public_key():
            raise AttestationError("CRL_INVALID", "PCK CRL issuer chain is not for the PCK leaf's CA")
        return f"root CA CRL by {_cn(self.root)}, PCK CRL by {_cn(pck_ca)}"

    def revocation(self) -> str:
        c = self.col
        # the leaf against its CA's CRL; every certificate the root issued against the root CA CRL
        c = self.col
        by_root = (
            self.chain[1],
            c.pck_crl_issuer_chain[0],
            c.tcb_info_issuer_chain[0],
            c.qe_identity_issuer_chain[0],
        )
        checks = [(self.chain[0], c.pck_crl), *((cert, c.root_ca_crl) for cert in by_root)]
        for cert, crl in checks:
            if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
                raise AttestationError("CERT_REVOKED", f"{_cn(cert)} (serial {cert.serial_number:x}) revoked")
        return f"none of {len(checks)} certificates revoked"

    # --- TCB info ----------------------------------------------------------------------------------

    def tcb_info_signature(self) -> str:
        c = self.col
        signed = (c.tcb_info_issuer_chain, c.tcb_info_json, c.tcb_info_signature)
        return _verify_signed_json(*signed, self.policy.root_ca_der, "TCB_INFO_SIGNATURE_INVALID", "TCB info")

    def tcb_info_match(self) -> str:
        info, p = self.col.tcb_info, self.pck
        if info.fmspc != p.fmspc or info.pce_id != p.pce_id:
            pck, tcb = f"{p.fmspc.hex()} / {p.pce_id.hex()}", f"{info.fmspc.hex()} / {info.pce_id.hex()}"
            raise AttestationError("TCB_INFO_MISMATCH", f"PCK FMSPC / PCE-ID {pck}, TCB info {tcb}")
        return f"FMSPC {p.fmspc.hex()}, PCE-ID {p.pce_id.hex()}"

    def tcb_level(self) -> str:
        # Intel's rule: the first level whose every component SVN and PCESVN the PCK's reach
        p = self.pck
        for level in self.col.tcb_info.levels:
            if p.pce_svn >= level.pce_svn and all(
                have >= need for have, need in zip(p.sgx_components, level.sgx_components, strict=True)
            ):
                self.level = level
                self.platform_status = self.status = level.status
                self.advisories = list(level.advisory_ids)
                return f"{level.status} (TCB date {_iso(level.tcb_date)})"
        raise AttestationError(
            "TCB_LEVEL_NOT_FOUND", f"no TCB level at or below CPUSVN {p.cpu_svn.hex()} PCESVN {p.pce_svn}"
        )

    def tcb_status(self) -> str:
        return _require_status(self.level.status, self.policy, "TCB_STATUS_NOT_ALLOWED", "platform TCB")

    # --- the quoting enclave -----------------------------------------------------------------------

    def qe_identity_signature(self) -> str:
        c = self.col
        signed = (c.qe_identity_issuer_chain, c.qe_identity_json, c.qe_identity_signature)
        reason = "QE_IDENTITY_SIGNATURE_INVALID"
        return _verify_signed_json(*signed, self.policy.root_ca_der, reason, "QE identity")

    def qe_identity(self) -> str:
        ident, qe = self.col.qe_identity, self.quote.qe_report
        attrs_ok = all(
            (a ^ b) & m == 0 for a, b, m in zip(qe.attributes, ident.attributes, ident.attributes_mask)
        )
        fields = {
            "MISCSELECT": (qe.misc_select ^ ident.miscselect) & ident.miscselect_mask == 0,
            "ATTRIBUTES": attrs_ok,
            "MRSIGNER": hmac.compare_digest(qe.mr_signer, ident.mrsigner),
            "ISVPRODID": qe.isv_prod_id == ident.isv_prod_id,
        }
        wrong = [name for name, ok in fields.items() if not ok]
        if wrong:
            raise AttestationError("QE_IDENTITY_MISMATCH", f"QE report {', '.join(wrong)} differ")
        level = next((lv for lv in ident.levels if qe.isv_svn >= lv.isv_svn), None)
        if level is None:
            raise AttestationError("QE_IDENTITY_MISMATCH", f"QE ISVSVN {qe.isv_svn} below every level")
        self.qe_status = level.status
        self.status = converge_tcb_status(self.level.status, level.status)
        self.advisories += [a for a in level.advisory_ids if a not in self.advisories]
        _require_status(self.status, self.policy, "QE_IDENTITY_MISMATCH", f"QE {level.status}, combined")
        return f"QE ISVSVN {qe.isv_svn}: {level.status}; combined TCB status {self.status}"

    def qe_report_signature(self) -> str:
        raw = self.quote.raw[_QE_REPORT_OFFSET : _QE_REPORT_OFFSET + REPORT_BODY_SIZE]
        key, sig = self.chain[0].public_key(), self.quote.qe_report_signature
        _require_signature(key, sig, raw, "QE_REPORT_SIGNATURE_INVALID", "QE report")
        return "QE report signed by the PCK key"

    def attestation_key_binding(self) -> str:
        q = self.quote
        expected = hashlib.sha256(q.attestation_key + q.qe_auth_data).digest() + bytes(32)
        ok = hmac.compare_digest(q.qe_report.report_data, expected)
        wanted = "SHA-256(attestation key || QE auth data) || zeros"
        return _require(ok, "ATTESTATION_KEY_BINDING_INVALID", "QE report data", wanted)

    def report_signature(self) -> str:
        q, reason = self.quote, "REPORT_SIGNATURE_INVALID"
        try:
            key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + q.attestation_key)
        except ValueError:
            raise AttestationError(reason, "attestation key is not a P-256 point") from None
        _require_signature(key, q.isv_signature, q.raw[:SIGNED_SIZE], reason, "ISV report")
        return f"header ({HEADER_SIZE}) and report body ({REPORT_BODY_SIZE}) signed by the attestation key"

    # --- the ISV enclave against the policy --------------------------------------------------------

    def debug(self) -> str:
        if not self.quote.report.debug:
            return "production enclave"
        if not self.policy.allow_debug_insecure:
            raise AttestationError("DEBUG_ENCLAVE", "DEBUG attribute set: the host can read enclave memory")
        return "DEBUG enclave accepted (allow_debug_insecure)"

    def mrenclave(self) -> str:
        return _expect_bytes(self.quote.report.mr_enclave, self.policy.expect_mrenclave, "MRENCLAVE_MISMATCH")

    def mrsigner(self) -> str:
        return _expect_bytes(self.quote.report.mr_signer, self.policy.expect_mrsigner, "MRSIGNER_MISMATCH")

    def isv_prod_id(self) -> str:
        have, want = self.quote.report.isv_prod_id, self.policy.expect_isv_prod_id
        if want is None:
            return f"{have} (no expectation in the policy)"
        return _require(have == want, "ISVPRODID_MISMATCH", f"ISVPRODID {have}", str(want))

    def isv_svn(self) -> str:
        have, least = self.quote.report.isv_svn, self.policy.min_isv_svn
        if least is None:
            return f"{have} (no minimum in the policy)"
        return _require(have >= least, "ISVSVN_TOO_LOW", f"ISVSVN {have}", f">= {least}")

    def nonce(self) -> str:
        nonce = self.policy.nonce
        if nonce is None:
            return "no nonce in the policy"
        ok = hmac.compare_digest(self.quote.report.report_data[32:], hashlib.sha256(nonce).digest())
        return _require(ok, "NONCE_MISMATCH", "REPORTDATA[32:64]", "SHA-256(nonce)")

    def key_bundle(self) -> str:
        bundle = self.policy.key_bundle
        if bundle is None:
            return "no key bundle in the policy"
        ok = hmac.compare_digest(self.quote.report.report_data[:32], hashlib.sha256(bundle).digest())
        return _require(ok, "KEY_BUNDLE_MISMATCH", "REPORTDATA[0:32]", "SHA-256(key bundle)")


def converge_tcb_status(platform: str, qe: str) -> str:
    """The platform's TCB status degraded by the QE's, as Intel's QVL and dcap-qvl combine them."""
    if qe == "Revoked":
        return "Revoked"
    if qe == "OutOfDate" and platform in ("UpToDate", "SWHardeningNeeded"):
        return "OutOfDate"
    if qe == "OutOfDate" and platform in ("ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded"):
        return "OutOfDateConfigurationNeeded"
    return platform


# --- helpers ---------------------------------------------------------------------------------------


def _require(ok: bool, reason: str, seen: str, wanted: str) -> str:
    if not ok:
        raise AttestationError(reason, f"{seen}, expected {wanted}")
    return f"{seen}, as expected"


def _require_status(status: str, policy: Policy, reason: str, what: str) -> str:
    if status == "Revoked" or status not in policy.allowed_tcb_statuses:
        allowed = ", ".join(sorted(policy.allowed_tcb_statuses - {"Revoked"}))
        raise AttestationError(reason, f"{what} status {status} not allowed (allowed: {allowed})")
    return f"{what} status {status} allowed"


def _expect_bytes(have: bytes, want: bytes | None, reason: str) -> str:
    if want is None:
        return f"{have.hex()} (no expectation in the policy)"
    return _require(hmac.compare_digest(have, want), reason, have.hex(), want.hex())


def _require_p256(key: object, reason: str, what: str) -> ec.EllipticCurvePublicKey:
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise AttestationError(reason, f"{what} is not an ECDSA P-256 key")
    return key


def _require_signature(key: object, signature: bytes, data: bytes, reason: str, what: str) -> None:
    # raw r || s (32 + 32 bytes, big-endian), 1 <= r, s < n, ECDSA P-256 with SHA-256
    pub = _require_p256(key, reason, f"{what} signer")
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    if len(signature) != 64 or not (0 < r < P256_ORDER and 0 < s < P256_ORDER):
        raise AttestationError(reason, f"{what} signature malformed")
    try:
        pub.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise AttestationError(reason, f"{what} signature does not verify") from None


def _verify_chain(
    chain: Sequence[x509.Certificate],
    root_der: bytes,
    reason: str,
    what: str,
    length: int,
    first_ca: bool = False,
) -> None:
    """Each certificate signed by the next, names linked, issuers CAs within their path length, no unknown
    critical extension, the last certificate the policy root byte for byte (and self-signed)."""
    if len(chain) != length:
        raise AttestationError(reason, f"{what}: {len(chain)} certificates, expected {length}")
    if not hmac.compare_digest(chain[-1].public_bytes(Encoding.DER), root_der):
        raise AttestationError(reason, f"{what} ends at {_cn(chain[-1])}, not at the policy's root CA")
    for i, cert in enumerate(chain):
        issuer = chain[min(i + 1, len(chain) - 1)]
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature) as e:
            raise AttestationError(reason, f"{what}: {_cn(cert)} not issued by {_cn(issuer)}: {e}") from None
        if any(ext.critical and ext.oid not in _CRITICAL_OK for ext in cert.extensions):
            raise AttestationError(reason, f"{what}: {_cn(cert)} has an unknown critical extension")
        if i > 0 and not _is_ca(cert, below=i - 1):
            raise AttestationError(reason, f"{what}: {_cn(cert)} may not issue certificates here")
    if _is_ca(chain[0], below=0) != first_ca:
        raise AttestationError(reason, f"{what}: {_cn(chain[0])} {'is not' if first_ca else 'is'} a CA")


def _is_ca(cert: x509.Certificate, below: int) -> bool:
    # basicConstraints CA with pathLen >= `below` intermediate CAs, and keyUsage keyCertSign
    bc, ku = _extension(cert, x509.BasicConstraints), _extension(cert, x509.KeyUsage)
    if bc is None or ku is None:
        return False
    return bc.ca and (bc.path_length is None or below <= bc.path_length) and ku.key_cert_sign


def _extension(cert: x509.Certificate, kind: type[_E]) -> _E | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _verify_crl(crl: x509.CertificateRevocationList, issuer: x509.Certificate, what: str) -> None:
    key = _require_p256(issuer.public_key(), "CRL_INVALID", what)
    if crl.issuer != issuer.subject or not crl.is_signature_valid(key):
        raise AttestationError("CRL_INVALID", f"{what} is not signed by {_cn(issuer)}")
    if any(ext.critical for ext in crl.extensions):
        raise AttestationError("CRL_INVALID", f"{what} has a critical extension")
    usage = _extension(issuer, x509.KeyUsage)
    if usage is None or not usage.crl_sign:
        raise AttestationError("CRL_INVALID", f"{_cn(issuer)} may not sign CRLs")


def _verify_signed_json(
    chain: Sequence[x509.Certificate], text: str, signature: bytes, root_der: bytes, reason: str, what: str
) -> str:
    # a signing certificate issued directly by the root, its raw signature over the exact JSON text
    _verify_chain(chain, root_der, reason, f"{what} issuer chain", 2)
    _require_signature(chain[0].public_key(), signature, text.encode("utf-8"), reason, what)
    return f"{what} signed by {_cn(chain[0])}"


def _cn(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.subject.rfc4514_string()


def _iso(t: datetime | None) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if t else "(none)"
