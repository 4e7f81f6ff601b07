"""The Intel SGX DCAP ECDSA quote, version 3: byte layout, strict parsing and serialisation.

Layout (all integers little-endian; Intel's sgx_quote_3.h and the DCAP quote-format specification):

  header (48)       version u16 = 3 | att_key_type u16 = 2 (ECDSA-256 with P-256) | tee_type u32
                    (0 = SGX; 0x81 = TDX in version 4) | qe_svn u16 | pce_svn u16 |
                    qe_vendor_id [16] | user_data [20]
  report body (384) cpu_svn [16] | misc_select u32 | reserved [12] | isv_ext_prod_id [16] |
                    attributes [16] (flags u64 | xfrm u64) | mr_enclave [32] | reserved [32] |
                    mr_signer [32] | reserved [32] | config_id [64] | isv_prod_id u16 | isv_svn u16 |
                    config_svn u16 | reserved [42] | isv_family_id [16] | report_data [64]
  signature_data_len u32
  signature data    isv_signature [64] (r || s, big-endian, over header || report body) |
                    attestation_key [64] (x || y) | qe_report [384] (a report body) |
                    qe_report_signature [64] (by the PCK key, over qe_report) |
                    qe_auth_data_size u16 | qe_auth_data | cert_data_type u16 |
                    cert_data_size u32 | cert_data (type 5: the PCK chain, PEM, leaf first)

The QE report's report_data is SHA-256(attestation_key || qe_auth_data) || 32 zero bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass, field

from enclave.errors import QuoteFormatError

QUOTE_VERSION = 3
ATT_KEY_TYPE_ECDSA_P256 = 2
TEE_TYPE_SGX = 0
TEE_TYPE_TDX = 0x81
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
CERT_DATA_PCK_CHAIN = 5

HEADER_SIZE = 48
REPORT_BODY_SIZE = 384
SIGNED_SIZE = HEADER_SIZE + REPORT_BODY_SIZE  # 432: what the attestation key signs
MAX_QUOTE_SIZE = 64 * 1024

ATTR_INIT = 0x01
ATTR_DEBUG = 0x02
ATTR_MODE64BIT = 0x04


@dataclass(frozen=True)
class QuoteHeader:
    """The 48-byte quote header."""

    version: int = QUOTE_VERSION
    att_key_type: int = ATT_KEY_TYPE_ECDSA_P256
    tee_type: int = TEE_TYPE_SGX
    qe_svn: int = 0
    pce_svn: int = 0
    qe_vendor_id: bytes = INTEL_QE_VENDOR_ID
    user_data: bytes = bytes(20)

    def to_bytes(self) -> bytes:
        """The exact 48 bytes."""
        _check_len("qe_vendor_id", self.qe_vendor_id, 16)
        _check_len("user_data", self.user_data, 20)
        return struct.pack(
            "<HHIHH16s20s",
            self.version,
            self.att_key_type,
            self.tee_type,
            self.qe_svn,
            self.pce_svn,
            self.qe_vendor_id,
            self.user_data,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> QuoteHeader:
        """Parse exactly 48 bytes (field values are checked by the verifier, not here)."""
        _check_len("header", data, HEADER_SIZE)
        v, akt, tee, qe_svn, pce_svn, vendor, user = struct.unpack("<HHIHH16s20s", data)
        return cls(v, akt, tee, qe_svn, pce_svn, vendor, user)


@dataclass(frozen=True)
class ReportBody:
    """The 384-byte SGX report body (sgx_report_body_t), used for the ISV enclave and the QE."""

    cpu_svn: bytes = bytes(16)
    misc_select: int = 0
    isv_ext_prod_id: bytes = bytes(16)
    attributes: bytes = bytes(16)
    mr_enclave: bytes = bytes(32)
    mr_signer: bytes = bytes(32)
    config_id: bytes = bytes(64)
    isv_prod_id: int = 0
    isv_svn: int = 0
    config_svn: int = 0
    isv_family_id: bytes = bytes(16)
    report_data: bytes = bytes(64)

    @property
    def flags(self) -> int:
        """The attributes' flags word (INIT, DEBUG, MODE64BIT, ...)."""
        return int.from_bytes(self.attributes[:8], "little")

    @property
    def debug(self) -> bool:
        """True when the enclave runs in debug mode (its memory is readable by the host)."""
        return bool(self.flags & ATTR_DEBUG)

    def to_bytes(self) -> bytes:
        """The exact 384 bytes (reserved fields are zero)."""
        for name, size in (
            ("cpu_svn", 16),
            ("isv_ext_prod_id", 16),
            ("attributes", 16),
            ("mr_enclave", 32),
            ("mr_signer", 32),
            ("config_id", 64),
            ("isv_family_id", 16),
            ("report_data", 64),
        ):
            _check_len(name, getattr(self, name), size)
        return struct.pack(
            "<16sI12x16s16s32s32x32s32x64sHHH42x16s64s",
            self.cpu_svn,
            self.misc_select,
            self.isv_ext_prod_id,
            self.attributes,
            self.mr_enclave,
            self.mr_signer,
            self.config_id,
            self.isv_prod_id,
            self.isv_svn,
            self.config_svn,
            self.isv_family_id,
            self.report_data,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ReportBody:
        """Parse exactly 384 bytes; the reserved fields are ignored, as the SGX SDK does."""
        _check_len("report body", data, REPORT_BODY_SIZE)
        f = struct.unpack("<16sI12x16s16s32s32x32s32x64sHHH42x16s64s", data)
        return cls(*f)


@dataclass(frozen=True)
class Quote:
    """A parsed version-3 quote; :meth:`to_bytes` gives back exactly the parsed bytes."""

    header: QuoteHeader
    report: ReportBody
    isv_signature: bytes  # r || s over header || report body, by the attestation key
    attestation_key: bytes  # raw P-256 public key, x || y
    qe_report: ReportBody
    qe_report_signature: bytes  # r || s over the QE report, by the PCK leaf key
    qe_auth_data: bytes = b""
    cert_data_type: int = CERT_DATA_PCK_CHAIN
    cert_data: bytes = b""
    raw: bytes = field(default=b"", compare=False, repr=False)

    def signed_bytes(self) -> bytes:
        """header || report body: the 432 bytes the attestation key signs."""
        return self.header.to_bytes() + self.report.to_bytes()

    def signature_data(self) -> bytes:
        """The signature-data section that follows signature_data_len."""
        for name, size in (("isv_signature", 64), ("attestation_key", 64), ("qe_report_signature", 64)):
            _check_len(name, getattr(self, name), size)
        return b"".join(
            [
                self.isv_signature,
                self.attestation_key,
                self.qe_report.to_bytes(),
                self.qe_report_signature,
                struct.pack("<H", len(self.qe_auth_data)),
                self.qe_auth_data,
                struct.pack("<HI", self.cert_data_type, len(self.cert_data)),
                self.cert_data,
            ]
        )

    def to_bytes(self) -> bytes:
        """The whole quote."""
        sig = self.signature_data()
        return self.signed_bytes() + struct.pack("<I", len(sig)) + sig


def parse_quote(data: bytes) -> Quote:
    """Strictly parse a version-3 ECDSA quote; raises QuoteFormatError on any structural problem.

    Only the structure is checked here (sizes, lengths that add up, no trailing bytes); the meaning
    of each field is the verifier's job.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise QuoteFormatError("QUOTE_FORMAT_INVALID", "a quote is bytes")
    data = bytes(data)
    if len(data) > MAX_QUOTE_SIZE:
        raise QuoteFormatError("QUOTE_FORMAT_INVALID", f"quote larger than {MAX_QUOTE_SIZE} bytes")
    if len(data) < SIGNED_SIZE + 4:
        raise QuoteFormatError("QUOTE_FORMAT_INVALID", "quote shorter than header, body and length")
    header = QuoteHeader.from_bytes(data[:HEADER_SIZE])
    if header.version != QUOTE_VERSION:
        code = "UNSUPPORTED_TEE_TYPE" if header.tee_type == TEE_TYPE_TDX else "UNSUPPORTED_QUOTE_VERSION"
        raise QuoteFormatError(code, f"quote version {header.version}, tee type {header.tee_type:#x}")
    report = ReportBody.from_bytes(data[HEADER_SIZE:SIGNED_SIZE])
    (sig_len,) = struct.unpack_from("<I", data, SIGNED_SIZE)
    sig = data[SIGNED_SIZE + 4 :]
    if sig_len != len(sig):
        raise QuoteFormatError("QUOTE_FORMAT_INVALID", "signature_data_len does not match the quote size")
    fixed = 64 + 64 + REPORT_BODY_SIZE + 64
    if len(sig) < fixed + 2:
        raise QuoteFormatError("QUOTE_FORMAT_INVALID", "signature data too short")
    pos = fixed
    (auth_len,) = struct.unpack_from("<H", sig, pos)
    pos += 2
    auth = sig[pos : pos + auth_len]
    pos += auth_len
    if len(auth) != auth_len or len(sig) < pos + 6:
        raise QuoteFormatError("QUOTE_FORMAT_INVALID", "QE authentication data truncated")
    cert_type, cert_len = struct.unpack_from("<HI", sig, pos)
    pos += 6
    cert = sig[pos : pos + cert_len]
    if len(cert) != cert_len or pos + cert_len != len(sig):
        raise QuoteFormatError("QUOTE_FORMAT_INVALID", "certification data length does not match")
    return Quote(
        header=header,
        report=report,
        isv_signature=sig[0:64],
        attestation_key=sig[64:128],
        qe_report=ReportBody.from_bytes(sig[128 : 128 + REPORT_BODY_SIZE]),
        qe_report_signature=sig[128 + REPORT_BODY_SIZE : fixed],
        qe_auth_data=auth,
        cert_data_type=cert_type,
        cert_data=cert,
        raw=data,
    )


def _check_len(name: str, value: bytes, size: int) -> None:
    if not isinstance(value, (bytes, bytearray)) or len(value) != size:
        raise QuoteFormatError("QUOTE_FORMAT_INVALID", f"{name} must be {size} bytes")


def report_mac(key: bytes, report: ReportBody) -> bytes:
    """The emulated EREPORT MAC: HMAC-SHA256(REPORT key, 384-byte report body). Real SGX uses an
    AES-CMAC under the target's report key; the role is the same: the quoting enclave signs only
    reports that an enclave on the same platform produced."""
    return hmac.new(key, report.to_bytes(), hashlib.sha256).digest()
