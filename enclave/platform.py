"""The emulated SGX platform: root secret, PKI, collateral and quoting enclave of one data directory.

Everything lives in DATA_DIR/platform/ (layout in docs/platform.md). It is created once, complete or
not at all: built in a private temporary directory and renamed into place, so a crash never leaves a
half platform and two concurrent first starts end with one. Opening refuses a directory that is
incomplete or whose keys, certificates and platform.json disagree.

This is an emulation: the host that runs it can read every key here. See docs/platform.md for what
that does and does not protect.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from enclave import fsutil
from enclave.collateral import COLLATERAL_KEYS  # dcap-qvl's QuoteCollateralV3 JSON, in its order
from enclave.errors import PlatformError
from enclave.pki import (
    CLOCK_SKEW_ALLOWANCE,
    QE_ATTRIBUTES,
    QE_ISV_PROD_ID,
    QE_MISC_SELECT,
    QE_MRENCLAVE,
    QE_MRSIGNER,
    Pki,
    PlatformTcb,
    check_pki,
    collateral_crl_number,
    collateral_next_update,
    generate_pki,
    iso_time,
    issue_collateral,
    pem_chain,
    sign_raw,
)
from enclave.quote import CERT_DATA_PCK_CHAIN, INTEL_QE_VENDOR_ID, Quote, QuoteHeader, ReportBody, report_mac

FORMAT_VERSION = 1
PLATFORM_DIR = "platform"
ROOT_SECRET_SIZE = 32
REISSUE_MARGIN = dt.timedelta(days=7)  # re-issue collateral this close to its nextUpdate
# The QE authentication data carried by the sample Intel quote (bytes 0x00..0x1f); ours carries the same.
QE_AUTH_DATA = bytes(range(32))

# The platform's TCB as its PCK certificate states it (values shaped like a current Intel platform).
EMULATED_FMSPC = bytes.fromhex("00E5C0000000")
EMULATED_PCE_ID = bytes.fromhex("0000")
EMULATED_SGX_TCB_COMPONENTS = (11, 11, 2, 2, 255, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0)
EMULATED_PCE_SVN = 13
EMULATED_QE_SVN = 8

PLATFORM_JSON = "platform.json"
ROOT_SECRET = "root_secret.bin"
ROOT_CA_DER = "root_ca.der"
COLLATERAL_JSON = "collateral.json"
ATTESTATION_KEY = "qe_attestation.key.pem"
# (private key file, certificate file) of each PKI member, in Pki field order
PKI_FILES = (
    ("root_ca.key.pem", "root_ca.pem"),
    ("pck_platform_ca.key.pem", "pck_platform_ca.pem"),
    ("pck.key.pem", "pck.pem"),
    ("tcb_signing.key.pem", "tcb_signing.pem"),
)
SECRET_FILES = (ROOT_SECRET, ATTESTATION_KEY, *(key for key, _ in PKI_FILES))
ALL_FILES = (PLATFORM_JSON, ROOT_CA_DER, COLLATERAL_JSON, *SECRET_FILES, *(cert for _, cert in PKI_FILES))

Clock = Callable[[], float]  # Unix seconds, like time.time


class Platform:
    """One emulated SGX platform; get it with :meth:`Platform.open`."""

    def __init__(
        self,
        directory: Path,
        platform_id: str,
        tcb: PlatformTcb,
        pki: Pki,
        attestation_key: ec.EllipticCurvePrivateKey,
        root_secret: bytes,
        collateral: dict[str, str],
        clock: Clock,
    ) -> None:
        self.directory = directory
        self._platform_id = platform_id
        self._tcb = tcb
        self._pki = pki
        self._attestation_key = attestation_key
        self._root_secret = root_secret
        self._collateral = collateral
        self._clock = clock
        self._lock = threading.Lock()

    # --- opening -----------------------------------------------------------------------------------

    @classmethod
    def open(cls, data_dir: Path, *, create: bool = True, now: Clock = time.time) -> Platform:
        """The platform of ``data_dir`` (DATA_DIR/platform/), created on first start unless ``create``
        is False. ``now`` is the clock used to issue and re-issue collateral. Raises PlatformError for
        a missing (with create=False), incomplete or inconsistent platform directory."""
        directory = Path(data_dir) / PLATFORM_DIR
        if not directory.exists():
            if not create:
                raise PlatformError(f"no emulated platform at {directory}")
            _create(directory, _utc(now()))
        platform = cls._load(directory, now)
        platform._refresh_collateral()
        return platform

    @classmethod
    def _load(cls, directory: Path, clock: Clock) -> Platform:
        if not directory.is_dir():
            raise PlatformError(f"{directory} is not a directory")
        missing = [name for name in ALL_FILES if not (directory / name).is_file()]
        if missing:
            raise PlatformError(f"incomplete platform directory {directory}: missing {', '.join(missing)}")
        for name in SECRET_FILES:
            if (directory / name).stat().st_mode & 0o077:
                raise PlatformError(f"{directory / name} is readable by others (must be mode 0600)")
        try:
            meta = json.loads((directory / PLATFORM_JSON).read_text())
            if meta.get("format_version") != FORMAT_VERSION:
                raise PlatformError(f"unsupported platform format {meta.get('format_version')!r}")
            tcb = _tcb_from_json(meta["tcb"])
            pki = _load_pki(directory)
            check_pki(pki, tcb)
            root_secret = (directory / ROOT_SECRET).read_bytes()
            if len(root_secret) != ROOT_SECRET_SIZE:
                raise PlatformError("the root secret is not 32 bytes")
            root_der = pki.root_cert.public_bytes(serialization.Encoding.DER)
            if (directory / ROOT_CA_DER).read_bytes() != root_der:
                raise PlatformError("root_ca.der differs from root_ca.pem")
            collateral = _check_collateral(json.loads((directory / COLLATERAL_JSON).read_text()), pki)
            platform_id = str(meta["platform_id"])
            if len(bytes.fromhex(platform_id)) != 16:
                raise PlatformError("platform.json: the platform id is not 16 bytes of hex")
            attestation_key = _load_key(directory / ATTESTATION_KEY)
        except PlatformError:
            raise
        except (OSError, ValueError, KeyError, TypeError, AttributeError, InvalidSignature) as e:
            raise PlatformError(f"inconsistent platform directory {directory}: {e}") from e
        return cls(directory, platform_id, tcb, pki, attestation_key, root_secret, collateral, clock)

    # --- what the platform offers ------------------------------------------------------------------

    @property
    def platform_id(self) -> str:
        """Random 16 bytes, hex, fixed at creation."""
        return self._platform_id

    def root_secret(self) -> bytes:
        """The 32-byte platform root secret that sealing keys are derived from."""
        return self._root_secret

    def root_ca_der(self) -> bytes:
        """The emulated root CA certificate (DER): the trust anchor a verifier must name explicitly."""
        return self._pki.root_cert.public_bytes(serialization.Encoding.DER)

    def collateral(self) -> dict[str, str]:
        """Current collateral in dcap-qvl's QuoteCollateralV3 JSON shape (re-issued when near expiry)."""
        self._refresh_collateral()
        return dict(self._collateral)

    def collateral_json(self) -> str:
        """:meth:`collateral` as JSON text, for ``dcap_qvl.QuoteCollateralV3.from_json``."""
        return json.dumps(self.collateral())

    def report_key(self) -> bytes:
        """The emulated CPU's REPORT key (what EGETKEY gives an enclave for targeting the QE).

        Only the launch code hands it to an enclave; the quoting enclave checks report MACs with it."""
        return report_key(self.root_secret())

    def quote(self, report: ReportBody, mac: bytes) -> bytes:
        """The emulated quoting enclave: a DCAP v3 ECDSA quote over ``report``, exactly as given
        (including its DEBUG bit; judging that is the verifier's job), after checking the report's
        MAC = HMAC-SHA256(REPORT key, report body), as SGX's QE checks EREPORT's CMAC. Raises
        PlatformError for a report that no enclave on this platform produced."""
        if not isinstance(report, ReportBody):
            raise TypeError("quote() takes a ReportBody")
        if not isinstance(mac, bytes) or not hmac.compare_digest(mac, report_mac(self.report_key(), report)):
            raise PlatformError(
                "report MAC invalid: the report did not come from an enclave on this platform"
            )
        tcb = self._tcb
        qe_id = hashlib.sha256(b"escrow.v1/emulated-sgx/qe-id" + bytes.fromhex(self._platform_id)).digest()
        header = QuoteHeader(
            qe_svn=tcb.qe_svn,
            pce_svn=tcb.pce_svn,
            qe_vendor_id=INTEL_QE_VENDOR_ID,  # verifiers accept only Intel's QE vendor id
            user_data=qe_id[:16] + bytes(4),
        )
        isv_signature = sign_raw(self._attestation_key, header.to_bytes() + report.to_bytes())
        attestation_key = self._attestation_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )[1:]
        qe_report = ReportBody(
            cpu_svn=tcb.cpu_svn,
            misc_select=QE_MISC_SELECT,
            attributes=QE_ATTRIBUTES,
            mr_enclave=QE_MRENCLAVE,
            mr_signer=QE_MRSIGNER,
            isv_prod_id=QE_ISV_PROD_ID,
            isv_svn=tcb.qe_svn,
            # binds the attestation key: SHA-256(attestation_key || qe_auth_data) || 32 zero bytes
            report_data=hashlib.sha256(attestation_key + QE_AUTH_DATA).digest() + bytes(32),
        )
        pki = self._pki
        quote = Quote(
            header=header,
            report=report,
            isv_signature=isv_signature,
            attestation_key=attestation_key,
            qe_report=qe_report,
            qe_report_signature=sign_raw(pki.pck_key, qe_report.to_bytes()),
            qe_auth_data=QE_AUTH_DATA,
            cert_data_type=CERT_DATA_PCK_CHAIN,
            # leaf, platform CA, root, NUL-terminated, as Intel's quotes carry it
            cert_data=pem_chain(pki.pck_cert, pki.platform_ca_cert, pki.root_cert).encode() + b"\0",
        )
        return quote.to_bytes()

    # --- collateral refresh ------------------------------------------------------------------------

    def _refresh_collateral(self) -> None:
        """Re-issue the collateral (and store it) when it is within REISSUE_MARGIN of its nextUpdate."""
        with self._lock:
            now = _utc(self._clock())
            if now < collateral_next_update(self._collateral) - REISSUE_MARGIN:
                return
            number = collateral_crl_number(self._collateral) + 1
            self._collateral = issue_collateral(self._pki, self._tcb, now, number)
            fsutil.atomic_write(self.directory / COLLATERAL_JSON, _json_bytes(self._collateral))


# --- creation --------------------------------------------------------------------------------------


def _create(directory: Path, now: dt.datetime) -> None:
    """Build a complete platform in a private temporary directory and rename it to ``directory``;
    if another process or thread got there first, keep theirs."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = fsutil.make_private_tempdir(directory.parent, ".platform-tmp-")
    try:
        _populate(tmp, now)
        if not fsutil.publish_dir(tmp, directory):
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _populate(target: Path, now: dt.datetime) -> None:
    tcb = PlatformTcb(
        ppid=secrets.token_bytes(16),
        fmspc=EMULATED_FMSPC,
        pce_id=EMULATED_PCE_ID,
        sgx_tcb_components=EMULATED_SGX_TCB_COMPONENTS,
        pce_svn=EMULATED_PCE_SVN,
        qe_svn=EMULATED_QE_SVN,
        tcb_date=iso_time((now - CLOCK_SKEW_ALLOWANCE).replace(hour=0, minute=0, second=0, microsecond=0)),
    )
    pki = generate_pki(tcb, now)
    fsutil.write_secret(target / ROOT_SECRET, secrets.token_bytes(ROOT_SECRET_SIZE))
    fsutil.write_secret(target / ATTESTATION_KEY, _key_pem(ec.generate_private_key(ec.SECP256R1())))
    pairs = [
        (pki.root_key, pki.root_cert),
        (pki.platform_ca_key, pki.platform_ca_cert),
        (pki.pck_key, pki.pck_cert),
        (pki.tcb_signing_key, pki.tcb_signing_cert),
    ]
    for (key_file, cert_file), (key, cert) in zip(PKI_FILES, pairs):
        fsutil.write_secret(target / key_file, _key_pem(key))
        fsutil.atomic_write(target / cert_file, cert.public_bytes(serialization.Encoding.PEM))
    fsutil.atomic_write(target / ROOT_CA_DER, pki.root_cert.public_bytes(serialization.Encoding.DER))
    fsutil.atomic_write(target / COLLATERAL_JSON, _json_bytes(issue_collateral(pki, tcb, now, 1)))
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": "emulated SGX platform (NOT a real TEE: the host can read every key here)",
        "platform_id": secrets.token_hex(16),
        "created": iso_time(now),
        "tcb": _tcb_to_json(tcb),
    }
    fsutil.atomic_write(target / PLATFORM_JSON, _json_bytes(meta))


# --- helpers ---------------------------------------------------------------------------------------


def _utc(unix_seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(int(unix_seconds), dt.UTC)


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise PlatformError(f"{path} is not a P-256 private key")
    return key


def _load_pki(directory: Path) -> Pki:
    (rk, rc), (ck, cc), (pk, pc), (tk, tc) = [
        (_load_key(directory / key), x509.load_pem_x509_certificate((directory / cert).read_bytes()))
        for key, cert in PKI_FILES
    ]
    return Pki(rk, rc, ck, cc, pk, pc, tk, tc)


def _tcb_to_json(tcb: PlatformTcb) -> dict[str, Any]:
    return {
        "ppid": tcb.ppid.hex(),
        "fmspc": tcb.fmspc.hex(),
        "pce_id": tcb.pce_id.hex(),
        "sgx_tcb_components": list(tcb.sgx_tcb_components),
        "pce_svn": tcb.pce_svn,
        "qe_svn": tcb.qe_svn,
        "tcb_date": tcb.tcb_date,
        "sgx_type": tcb.sgx_type,
    }


def _tcb_from_json(obj: dict[str, Any]) -> PlatformTcb:
    tcb = PlatformTcb(
        ppid=bytes.fromhex(obj["ppid"]),
        fmspc=bytes.fromhex(obj["fmspc"]),
        pce_id=bytes.fromhex(obj["pce_id"]),
        sgx_tcb_components=tuple(int(s) for s in obj["sgx_tcb_components"]),
        pce_svn=int(obj["pce_svn"]),
        qe_svn=int(obj["qe_svn"]),
        tcb_date=str(obj["tcb_date"]),
        sgx_type=int(obj["sgx_type"]),
    )
    sizes = (len(tcb.ppid), len(tcb.fmspc), len(tcb.pce_id), len(tcb.sgx_tcb_components))
    if sizes != (16, 6, 2, 16) or not all(0 <= s <= 255 for s in tcb.sgx_tcb_components):
        raise PlatformError("platform.json: malformed TCB")
    return tcb


def _check_collateral(obj: Any, pki: Pki) -> dict[str, str]:
    """The stored collateral, if it has dcap-qvl's keys and was issued by this platform's PKI."""
    if not isinstance(obj, dict) or set(obj) != set(COLLATERAL_KEYS):
        raise PlatformError("collateral.json does not have the collateral keys")
    if not all(isinstance(v, str) for v in obj.values()):
        raise PlatformError("collateral.json values must be strings")
    signing_chain = pem_chain(pki.tcb_signing_cert, pki.root_cert)
    pck_crl_chain = pem_chain(pki.platform_ca_cert, pki.root_cert)
    if obj["tcb_info_issuer_chain"] != signing_chain or obj["pck_crl_issuer_chain"] != pck_crl_chain:
        raise PlatformError("collateral.json was issued under another PKI")
    collateral_next_update(obj)  # parses both CRLs and both JSON documents
    return {k: obj[k] for k in COLLATERAL_KEYS}


__all__ = ["Platform", "PlatformError"]


REPORT_KEY_LABEL = b"escrow.v1/emulated-cpu/report-key"


def report_key(root_secret: bytes) -> bytes:
    """REPORT key = HMAC-SHA256(root secret, label): known to the emulated CPU, its enclaves and the QE."""
    return hmac.new(root_secret, REPORT_KEY_LABEL, hashlib.sha256).digest()
