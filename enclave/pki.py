"""The emulated Intel-style SGX PKI and collateral: certificates, CRLs, TCB info and QE identity.

Everything is ECDSA P-256 with SHA-256 and shaped like Intel's (same extensions, critical flags, key
usages, CRL extensions, the SGX extension's ASN.1 layout, the collateral JSON), so that real DCAP
verifiers such as dcap-qvl accept it -- but only under the emulated root, whose name says EMULATED:

  Escrow EMULATED SGX Root CA  (self-signed, CA, pathlen 1)
  +-- Escrow EMULATED SGX PCK Platform CA  (CA, pathlen 0; issues the PCK CRL)
  |   +-- Escrow EMULATED SGX PCK Certificate  (the SGX extensions 1.2.840.113741.1.13.1)
  +-- Escrow EMULATED SGX TCB Signing  (signs TCB info and QE identity)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

SGX_EXTENSIONS_OID = "1.2.840.113741.1.13.1"
ORGANIZATION = "Confidential Charging Escrow (emulated platform)"
ROOT_CA_NAME = "Escrow EMULATED SGX Root CA"
PLATFORM_CA_NAME = "Escrow EMULATED SGX PCK Platform CA"
PCK_NAME = "Escrow EMULATED SGX PCK Certificate"
TCB_SIGNING_NAME = "Escrow EMULATED SGX TCB Signing"
# Reserved top-level domain (RFC 2606): these CRL locations can never resolve, which is the point.
CRL_BASE_URL = "https://emulated-sgx.invalid"
ROOT_CRL_URL = f"{CRL_BASE_URL}/EscrowEmulatedSGXRootCA.der"
PCK_CRL_URL = f"{CRL_BASE_URL}/sgx/certification/v4/pckcrl?ca=platform&encoding=der"

# Certificates and collateral are dated this much before "now", so that a verifier whose clock is a
# little behind does not see them as not yet valid (dcap-qvl refuses a TCB info issued in the future).
CLOCK_SKEW_ALLOWANCE = dt.timedelta(hours=1)
ROOT_CA_LIFETIME = dt.timedelta(days=25 * 365)
PLATFORM_CA_LIFETIME = dt.timedelta(days=15 * 365)
LEAF_LIFETIME = dt.timedelta(days=7 * 365)
COLLATERAL_LIFETIME = dt.timedelta(days=30)
TCB_EVALUATION_DATA_NUMBER = 1

# The emulated quoting enclave: its own measurement and signer (hashes of labels, not Intel's values).
QE_MRENCLAVE = hashlib.sha256(b"escrow.v1/emulated-sgx/quoting-enclave/mrenclave").digest()
QE_MRSIGNER = hashlib.sha256(b"escrow.v1/emulated-sgx/quoting-enclave/mrsigner").digest()
QE_ISV_PROD_ID = 1
QE_MISC_SELECT = 0
# INIT | MODE64BIT | PROVISIONKEY with XFRM 0xe7, as Intel's QE; the identity's mask ignores MODE64BIT
# and XFRM but not DEBUG, so a debug quoting enclave would not match.
QE_ATTRIBUTES = (0x15).to_bytes(8, "little") + (0xE7).to_bytes(8, "little")
QE_IDENTITY_ATTRIBUTES = bytes.fromhex("11000000000000000000000000000000")
QE_IDENTITY_ATTRIBUTES_MASK = bytes.fromhex("FBFFFFFFFFFFFFFF0000000000000000")


@dataclass(frozen=True)
class PlatformTcb:
    """The platform identity and TCB that the PCK certificate states and the collateral rates."""

    ppid: bytes  # 16 bytes, per platform
    fmspc: bytes  # 6 bytes
    pce_id: bytes  # 2 bytes
    sgx_tcb_components: tuple[int, ...]  # 16 SVNs; CPUSVN is the same 16 values as bytes
    pce_svn: int
    qe_svn: int
    tcb_date: str  # when this TCB level was established (the platform's creation date)
    sgx_type: int = 0  # 0 = Standard

    @property
    def cpu_svn(self) -> bytes:
        """CPUSVN as the PCK certificate states it: the 16 component SVNs as bytes."""
        return bytes(self.sgx_tcb_components)


@dataclass(frozen=True)
class Pki:
    """The four key pairs and certificates of the emulated PKI."""

    root_key: ec.EllipticCurvePrivateKey
    root_cert: x509.Certificate
    platform_ca_key: ec.EllipticCurvePrivateKey
    platform_ca_cert: x509.Certificate
    pck_key: ec.EllipticCurvePrivateKey
    pck_cert: x509.Certificate
    tcb_signing_key: ec.EllipticCurvePrivateKey
    tcb_signing_cert: x509.Certificate


# --- a minimal DER encoder, enough for the SGX extension ---------------------------------------------


def _der(tag: int, content: bytes) -> bytes:
    # tag || length (short form below 128, else 0x80|n followed by n big-endian bytes) || content
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


def _der_oid(dotted: str) -> bytes:
    # first octet 40*a + b, then each arc in base 128, high bit set on all but the last septet
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        septets = [arc & 0x7F]
        while arc > 0x7F:
            arc >>= 7
            septets.append(0x80 | (arc & 0x7F))
        out += bytes(reversed(septets))
    return _der(0x06, bytes(out))


def _der_uint(tag: int, value: int) -> bytes:
    # minimal two's complement of a non-negative integer (a leading 0x00 when the top bit is set)
    return _der(tag, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _der_seq(*items: bytes) -> bytes:
    return _der(0x30, b"".join(items))


def _entry(oid_suffix: str, value: bytes) -> bytes:
    return _der_seq(_der_oid(f"{SGX_EXTENSIONS_OID}.{oid_suffix}"), value)


def sgx_extensions_der(tcb: PlatformTcb) -> bytes:
    """The value of extension 1.2.840.113741.1.13.1, laid out exactly as in Intel's PCK certificates."""
    components = [_entry(f"2.{i}", _der_uint(0x02, svn)) for i, svn in enumerate(tcb.sgx_tcb_components, 1)]
    tcb_seq = _der_seq(
        *components,
        _entry("2.17", _der_uint(0x02, tcb.pce_svn)),
        _entry("2.18", _der(0x04, tcb.cpu_svn)),
    )
    return _der_seq(
        _entry("1", _der(0x04, tcb.ppid)),
        _entry("2", tcb_seq),
        _entry("3", _der(0x04, tcb.pce_id)),
        _entry("4", _der(0x04, tcb.fmspc)),
        _entry("5", _der_uint(0x0A, tcb.sgx_type)),
    )


# --- certificates ----------------------------------------------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
        ]
    )


def _key_usage(*, sign: bool, ca: bool) -> x509.KeyUsage:
    # Intel: CAs keyCertSign | cRLSign; end entities digitalSignature | nonRepudiation
    return x509.KeyUsage(
        digital_signature=sign,
        content_commitment=sign,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    now: dt.datetime,
    lifetime: dt.timedelta,
    path_length: int | None,  # None: an end entity
    crl_url: str,
    *,
    extra: x509.UnrecognizedExtension | None = None,
) -> x509.Certificate:
    """One certificate, extensions in Intel's order: AKI, CRL DP, SKI, KeyUsage, BasicConstraints, SGX."""
    issuer_name, issuer_key = issuer if issuer else (_name(subject), key)
    is_ca = path_length is not None
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW_ALLOWANCE)
        .not_valid_after(now + lifetime)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
        .add_extension(
            x509.CRLDistributionPoints(
                [x509.DistributionPoint([x509.UniformResourceIdentifier(crl_url)], None, None, None)]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_key_usage(sign=not is_ca, ca=is_ca), critical=True)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=path_length), critical=True)
    )
    if extra is not None:
        builder = builder.add_extension(extra, critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def generate_pki(tcb: PlatformTcb, now: dt.datetime) -> Pki:
    """Fresh keys and certificates for one emulated platform."""
    root_key, ca_key, pck_key, tcb_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(4))
    now = now.replace(microsecond=0)
    root = _issue(ROOT_CA_NAME, root_key, None, now, ROOT_CA_LIFETIME, 1, ROOT_CRL_URL)
    by_root = (root.subject, root_key)
    ca = _issue(PLATFORM_CA_NAME, ca_key, by_root, now, PLATFORM_CA_LIFETIME, 0, ROOT_CRL_URL)
    sgx_ext = x509.UnrecognizedExtension(x509.ObjectIdentifier(SGX_EXTENSIONS_OID), sgx_extensions_der(tcb))
    by_ca = (ca.subject, ca_key)
    pck = _issue(PCK_NAME, pck_key, by_ca, now, LEAF_LIFETIME, None, PCK_CRL_URL, extra=sgx_ext)
    tcb_signing = _issue(TCB_SIGNING_NAME, tcb_key, by_root, now, LEAF_LIFETIME, None, ROOT_CRL_URL)
    return Pki(root_key, root, ca_key, ca, pck_key, pck, tcb_key, tcb_signing)


def check_pki(pki: Pki, tcb: PlatformTcb) -> None:
    """Raise ValueError unless keys match certificates, each is signed by its issuer, and the PCK
    certificate states ``tcb``."""
    pairs = [
        (pki.root_key, pki.root_cert, pki.root_cert),
        (pki.platform_ca_key, pki.platform_ca_cert, pki.root_cert),
        (pki.pck_key, pki.pck_cert, pki.platform_ca_cert),
        (pki.tcb_signing_key, pki.tcb_signing_cert, pki.root_cert),
    ]
    for key, cert, issuer in pairs:
        if key.public_key() != cert.public_key():
            raise ValueError(f"private key does not match certificate {cert.subject.rfc4514_string()}")
        cert.verify_directly_issued_by(issuer)  # raises ValueError / InvalidSignature
    ext = pki.pck_cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(SGX_EXTENSIONS_OID))
    if not isinstance(ext.value, x509.UnrecognizedExtension) or ext.value.value != sgx_extensions_der(tcb):
        raise ValueError("the PCK certificate's SGX extensions differ from platform.json")


def pem_chain(*certs: x509.Certificate) -> str:
    """Certificates as concatenated PEM, in the order given (Intel: leaf first, root last)."""
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in certs)


# --- collateral ------------------------------------------------------------------------------------


def sign_raw(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ECDSA P-256 / SHA-256 signature as raw r || s (32 bytes each, big-endian), as DCAP uses."""
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def iso_time(t: dt.datetime) -> str:
    """A time as the collateral JSON writes it: 2025-06-19T10:56:11Z."""
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _crl(issuer: x509.Certificate, key: ec.EllipticCurvePrivateKey, now: dt.datetime, number: int) -> bytes:
    # empty CRL, extensions as Intel's: CRLNumber then AuthorityKeyIdentifier, both non-critical
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(now)
        .next_update(now + COLLATERAL_LIFETIME)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return crl.public_bytes(serialization.Encoding.DER)


def tcb_info_json(tcb: PlatformTcb, now: dt.datetime) -> str:
    """TCB info v3 (id SGX): one level, the platform's own TCB, rated UpToDate."""
    level = {
        "tcb": {"sgxtcbcomponents": [{"svn": s} for s in tcb.sgx_tcb_components], "pcesvn": tcb.pce_svn},
        "tcbDate": tcb.tcb_date,
        "tcbStatus": "UpToDate",
    }
    body = {
        "id": "SGX",
        "version": 3,
        "issueDate": iso_time(now),
        "nextUpdate": iso_time(now + COLLATERAL_LIFETIME),
        "fmspc": tcb.fmspc.hex().upper(),
        "pceId": tcb.pce_id.hex().upper(),
        "tcbType": 0,
        "tcbEvaluationDataNumber": TCB_EVALUATION_DATA_NUMBER,
        "tcbLevels": [level],
    }
    return json.dumps(body, separators=(",", ":"))


def qe_identity_json(tcb: PlatformTcb, now: dt.datetime) -> str:
    """QE identity v2 of the emulated quoting enclave, its SVN rated UpToDate."""
    body = {
        "id": "QE",
        "version": 2,
        "issueDate": iso_time(now),
        "nextUpdate": iso_time(now + COLLATERAL_LIFETIME),
        "tcbEvaluationDataNumber": TCB_EVALUATION_DATA_NUMBER,
        "miscselect": QE_MISC_SELECT.to_bytes(4, "little").hex().upper(),
        "miscselectMask": "FFFFFFFF",
        "attributes": QE_IDENTITY_ATTRIBUTES.hex().upper(),
        "attributesMask": QE_IDENTITY_ATTRIBUTES_MASK.hex().upper(),
        "mrsigner": QE_MRSIGNER.hex().upper(),
        "isvprodid": QE_ISV_PROD_ID,
        "tcbLevels": [
            {
                "tcb": {"isvsvn": tcb.qe_svn},
                "tcbDate": tcb.tcb_date,
                "tcbStatus": "UpToDate",
            }
        ],
    }
    return json.dumps(body, separators=(",", ":"))


def issue_collateral(pki: Pki, tcb: PlatformTcb, now: dt.datetime, crl_number: int) -> dict[str, str]:
    """Fresh collateral in dcap-qvl's QuoteCollateralV3 JSON shape (keys and encodings as Intel's PCS
    serves them: CRLs hex DER, chains PEM leaf first), issued at ``now`` less CLOCK_SKEW_ALLOWANCE and
    valid for COLLATERAL_LIFETIME from then."""
    now = now.replace(microsecond=0) - CLOCK_SKEW_ALLOWANCE
    tcb_info = tcb_info_json(tcb, now)
    qe_identity = qe_identity_json(tcb, now)
    signing_chain = pem_chain(pki.tcb_signing_cert, pki.root_cert)
    return {
        "pck_crl_issuer_chain": pem_chain(pki.platform_ca_cert, pki.root_cert),
        "root_ca_crl": _crl(pki.root_cert, pki.root_key, now, crl_number).hex(),
        "pck_crl": _crl(pki.platform_ca_cert, pki.platform_ca_key, now, crl_number).hex(),
        "tcb_info_issuer_chain": signing_chain,
        "tcb_info": tcb_info,
        "tcb_info_signature": sign_raw(pki.tcb_signing_key, tcb_info.encode()).hex(),
        "qe_identity_issuer_chain": signing_chain,
        "qe_identity": qe_identity,
        "qe_identity_signature": sign_raw(pki.tcb_signing_key, qe_identity.encode()).hex(),
    }


def collateral_next_update(collateral: dict[str, str]) -> dt.datetime:
    """The earliest nextUpdate among the CRLs, the TCB info and the QE identity."""
    times = [
        x509.load_der_x509_crl(bytes.fromhex(collateral[k])).next_update_utc
        for k in ("root_ca_crl", "pck_crl")
    ]
    for k in ("tcb_info", "qe_identity"):
        times.append(dt.datetime.strptime(json.loads(collateral[k])["nextUpdate"], "%Y-%m-%dT%H:%M:%S%z"))
    if any(t is None for t in times):
        raise ValueError("a CRL without nextUpdate")
    return min(t for t in times if t is not None)


def collateral_crl_number(collateral: dict[str, str]) -> int:
    """The CRL number of the collateral's PCK CRL (re-issues count up from it)."""
    crl = x509.load_der_x509_crl(bytes.fromhex(collateral["pck_crl"]))
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
