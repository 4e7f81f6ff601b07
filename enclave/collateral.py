"""DCAP collateral and the PCK certificate's SGX extension: strict parsing into typed values.

The collateral is dcap-qvl's QuoteCollateralV3 JSON: nine string fields, CRLs as hex DER, certificate
chains as PEM (leaf first), TCB info (v3, id SGX) and QE identity (v2, id QE) as the exact JSON text
their signatures (raw r || s, ECDSA P-256 / SHA-256) cover. Anything malformed raises
AttestationError("COLLATERAL_INVALID"); a malformed PCK certificate raises "PCK_CHAIN_INVALID".
Nothing here decides trust: signatures, chains and times are the verifier's job (enclave/verifier.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509

from enclave.errors import AttestationError

COLLATERAL_INVALID = "COLLATERAL_INVALID"
PCK_CHAIN_INVALID = "PCK_CHAIN_INVALID"

COLLATERAL_KEYS = (
    "pck_crl_issuer_chain",
    "root_ca_crl",
    "pck_crl",
    "tcb_info_issuer_chain",
    "tcb_info",
    "tcb_info_signature",
    "qe_identity_issuer_chain",
    "qe_identity",
    "qe_identity_signature",
)
# TCB info v3 statuses, most to least favourable; QE identity levels use a subset.
TCB_STATUSES = frozenset(
    {
        "UpToDate",
        "SWHardeningNeeded",
        "ConfigurationNeeded",
        "ConfigurationAndSWHardeningNeeded",
        "OutOfDate",
        "OutOfDateConfigurationNeeded",
        "Revoked",
    }
)
QE_TCB_STATUSES = frozenset({"UpToDate", "OutOfDate", "Revoked"})
SGX_TCB_COMPONENTS = 16

SGX_EXTENSION_OID = "1.2.840.113741.1.13.1"
_PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n[A-Za-z0-9+/=\r\n]+-----END CERTIFICATE-----")


@dataclass(frozen=True)
class TcbLevel:
    """One TCB level of the TCB info: 16 SGX component SVNs and a PCESVN, rated with a status."""

    sgx_components: tuple[int, ...]
    pce_svn: int
    tcb_date: datetime
    status: str
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True)
class TcbInfo:
    """TCB info version 3 for SGX: the platform TCB levels of one FMSPC / PCE-ID."""

    issue_date: datetime
    next_update: datetime
    fmspc: bytes  # 6 bytes
    pce_id: bytes  # 2 bytes
    tcb_evaluation_data_number: int
    levels: tuple[TcbLevel, ...]


@dataclass(frozen=True)
class QeTcbLevel:
    """One TCB level of the QE identity: a minimum ISVSVN of the quoting enclave, rated with a status."""

    isv_svn: int
    tcb_date: datetime
    status: str
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True)
class QeIdentity:
    """QE identity version 2: what Intel's quoting enclave report must show, and its TCB levels."""

    issue_date: datetime
    next_update: datetime
    tcb_evaluation_data_number: int
    miscselect: int
    miscselect_mask: int
    attributes: bytes  # 16 bytes
    attributes_mask: bytes  # 16 bytes
    mrsigner: bytes  # 32 bytes
    isv_prod_id: int
    levels: tuple[QeTcbLevel, ...]


@dataclass(frozen=True)
class Collateral:
    """Parsed collateral; ``tcb_info_json`` and ``qe_identity_json`` are the exact signed texts."""

    pck_crl_issuer_chain: tuple[x509.Certificate, ...]
    root_ca_crl: x509.CertificateRevocationList
    pck_crl: x509.CertificateRevocationList
    tcb_info_issuer_chain: tuple[x509.Certificate, ...]
    tcb_info_json: str
    tcb_info: TcbInfo
    tcb_info_signature: bytes  # r || s
    qe_identity_issuer_chain: tuple[x509.Certificate, ...]
    qe_identity_json: str
    qe_identity: QeIdentity
    qe_identity_signature: bytes  # r || s


@dataclass(frozen=True)
class PckExtension:
    """The SGX extension of a PCK certificate (OID 1.2.840.113741.1.13.1)."""

    ppid: bytes  # .1, 16 bytes
    sgx_components: tuple[int, ...]  # .2.1 .. .2.16
    pce_svn: int  # .2.17
    cpu_svn: bytes  # .2.18, 16 bytes
    pce_id: bytes  # .3, 2 bytes
    fmspc: bytes  # .4, 6 bytes
    sgx_type: int  # .5


# --- the collateral JSON ---------------------------------------------------------------------------


def parse_collateral(source: Collateral | str | bytes | Mapping[str, Any]) -> Collateral:
    """Strictly parse collateral given as JSON text or a decoded mapping (a Collateral passes through)."""
    if isinstance(source, Collateral):
        return source
    fields = _decode_json(source, "collateral") if isinstance(source, (str, bytes)) else source
    if not isinstance(fields, Mapping):
        raise AttestationError(COLLATERAL_INVALID, "collateral must be a JSON object")
    missing = [k for k in COLLATERAL_KEYS if k not in fields]
    extra = sorted(set(fields) - set(COLLATERAL_KEYS))
    if missing or extra:
        raise AttestationError(COLLATERAL_INVALID, f"collateral keys: missing {missing}, unknown {extra}")
    text = {k: _string(fields[k], k) for k in COLLATERAL_KEYS}
    return Collateral(
        pck_crl_issuer_chain=load_pem_chain(
            text["pck_crl_issuer_chain"], COLLATERAL_INVALID, "pck_crl_issuer_chain"
        ),
        root_ca_crl=_crl(text["root_ca_crl"], "root_ca_crl"),
        pck_crl=_crl(text["pck_crl"], "pck_crl"),
        tcb_info_issuer_chain=load_pem_chain(
            text["tcb_info_issuer_chain"], COLLATERAL_INVALID, "tcb_info_issuer_chain"
        ),
        tcb_info_json=text["tcb_info"],
        tcb_info=parse_tcb_info(text["tcb_info"]),
        tcb_info_signature=_hex(text["tcb_info_signature"], "tcb_info_signature", 64),
        qe_identity_issuer_chain=load_pem_chain(
            text["qe_identity_issuer_chain"], COLLATERAL_INVALID, "qe_identity_issuer_chain"
        ),
        qe_identity_json=text["qe_identity"],
        qe_identity=parse_qe_identity(text["qe_identity"]),
        qe_identity_signature=_hex(text["qe_identity_signature"], "qe_identity_signature", 64),
    )


def load_pem_chain(pem: str | bytes, reason: str, what: str) -> tuple[x509.Certificate, ...]:
    """Certificates from concatenated PEM; only CERTIFICATE blocks, whitespace and trailing NULs allowed."""
    data = pem.encode("ascii", "replace") if isinstance(pem, str) else bytes(pem)
    blocks = list(_PEM_BLOCK.finditer(data))
    if _PEM_BLOCK.sub(b"", data).strip(b" \t\r\n\x00") or not blocks:
        raise AttestationError(reason, f"{what}: not a PEM certificate chain")
    if data.rstrip(b"\x00") != data.rstrip(b"\x00").replace(b"\x00", b""):
        raise AttestationError(reason, f"{what}: NUL byte inside the PEM chain")
    certs = []
    for block in blocks:
        try:
            certs.append(x509.load_pem_x509_certificate(block.group(0)))
        except ValueError as e:
            raise AttestationError(reason, f"{what}: bad certificate: {e}") from None
    return tuple(certs)


def parse_tcb_info(text: str) -> TcbInfo:
    """TCB info v3 for SGX (unknown fields ignored: they are signed, and Intel adds fields)."""
    body = _object(_decode_json(text, "tcb_info"), "tcb_info")
    if body.get("id") != "SGX" or body.get("version") != 3:
        raise AttestationError(COLLATERAL_INVALID, "tcb_info: only version 3 with id SGX is supported")
    if _int(body, "tcbType", "tcb_info", 0xFFFFFFFF) != 0:
        raise AttestationError(COLLATERAL_INVALID, "tcb_info: unsupported tcbType")
    levels = _list(body, "tcbLevels", "tcb_info")
    return TcbInfo(
        issue_date=_time(body, "issueDate", "tcb_info"),
        next_update=_time(body, "nextUpdate", "tcb_info"),
        fmspc=_hex(_field(body, "fmspc", str, "tcb_info"), "tcb_info fmspc", 6),
        pce_id=_hex(_field(body, "pceId", str, "tcb_info"), "tcb_info pceId", 2),
        tcb_evaluation_data_number=_int(body, "tcbEvaluationDataNumber", "tcb_info", 0xFFFFFFFF),
        levels=tuple(_tcb_level(_object(level, "tcb_info level")) for level in levels),
    )


def _tcb_level(level: dict[str, Any]) -> TcbLevel:
    tcb = _object(level.get("tcb"), "tcb_info level tcb")
    components = _list(tcb, "sgxtcbcomponents", "tcb_info level")
    if len(components) != SGX_TCB_COMPONENTS:
        raise AttestationError(COLLATERAL_INVALID, "tcb_info: a level needs 16 sgxtcbcomponents")
    return TcbLevel(
        sgx_components=tuple(
            _int(_object(c, "tcb component"), "svn", "tcb component", 255) for c in components
        ),
        pce_svn=_int(tcb, "pcesvn", "tcb_info level", 0xFFFF),
        tcb_date=_time(level, "tcbDate", "tcb_info level"),
        status=_status(level, TCB_STATUSES, "tcb_info level"),
        advisory_ids=_advisories(level, "tcb_info level"),
    )


def parse_qe_identity(text: str) -> QeIdentity:
    """QE identity v2 of Intel's quoting enclave (id QE)."""
    body = _object(_decode_json(text, "qe_identity"), "qe_identity")
    if body.get("id") != "QE" or body.get("version") != 2:
        raise AttestationError(COLLATERAL_INVALID, "qe_identity: only version 2 with id QE is supported")
    levels = []
    for raw in _list(body, "tcbLevels", "qe_identity"):
        level = _object(raw, "qe_identity level")
        levels.append(
            QeTcbLevel(
                isv_svn=_int(
                    _object(level.get("tcb"), "qe_identity tcb"), "isvsvn", "qe_identity tcb", 0xFFFF
                ),
                tcb_date=_time(level, "tcbDate", "qe_identity level"),
                status=_status(level, QE_TCB_STATUSES, "qe_identity level"),
                advisory_ids=_advisories(level, "qe_identity level"),
            )
        )
    return QeIdentity(
        issue_date=_time(body, "issueDate", "qe_identity"),
        next_update=_time(body, "nextUpdate", "qe_identity"),
        tcb_evaluation_data_number=_int(body, "tcbEvaluationDataNumber", "qe_identity", 0xFFFFFFFF),
        # miscselect is hex of the little-endian u32, as it sits in the report
        miscselect=int.from_bytes(
            _hex(_field(body, "miscselect", str, "qe_identity"), "miscselect", 4), "little"
        ),
        miscselect_mask=int.from_bytes(
            _hex(_field(body, "miscselectMask", str, "qe_identity"), "miscselectMask", 4), "little"
        ),
        attributes=_hex(_field(body, "attributes", str, "qe_identity"), "attributes", 16),
        attributes_mask=_hex(_field(body, "attributesMask", str, "qe_identity"), "attributesMask", 16),
        mrsigner=_hex(_field(body, "mrsigner", str, "qe_identity"), "mrsigner", 32),
        isv_prod_id=_int(body, "isvprodid", "qe_identity", 0xFFFF),
        levels=tuple(levels),
    )


def _decode_json(text: str | bytes, what: str) -> Any:
    # strict JSON: no duplicate keys, no NaN / Infinity
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        if len({k for k, _ in items}) != len(items):
            raise ValueError("duplicate key")
        return dict(items)

    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(text, object_pairs_hook=pairs, parse_constant=constant)
    except (ValueError, TypeError, RecursionError) as e:
        raise AttestationError(COLLATERAL_INVALID, f"{what}: bad JSON: {e}") from None


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise AttestationError(COLLATERAL_INVALID, f"{what}: expected a JSON object")
    return value


def _field(obj: dict[str, Any], key: str, kind: type, what: str) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise AttestationError(COLLATERAL_INVALID, f"{what}: {key} missing or not a {kind.__name__}")
    return value


def _list(obj: dict[str, Any], key: str, what: str) -> list[Any]:
    value: list[Any] = _field(obj, key, list, what)
    return value


def _int(obj: dict[str, Any], key: str, what: str, maximum: int) -> int:
    value: int = _field(obj, key, int, what)
    if not 0 <= value <= maximum:
        raise AttestationError(COLLATERAL_INVALID, f"{what}: {key} out of range")
    return value


def _string(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise AttestationError(COLLATERAL_INVALID, f"collateral {key} must be a string")
    return value


def _hex(text: str, what: str, size: int | None) -> bytes:
    if (size is not None and len(text) != 2 * size) or not re.fullmatch(r"(?:[0-9A-Fa-f]{2})*", text):
        raise AttestationError(COLLATERAL_INVALID, f"{what}: expected {size or 'some'} bytes of hex")
    return bytes.fromhex(text)


def _time(obj: dict[str, Any], key: str, what: str) -> datetime:
    # RFC 3339 with an explicit offset, as Intel writes it ("2025-06-19T10:56:11Z")
    text: str = _field(obj, key, str, what)
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        t = None
    if t is None or t.tzinfo is None or "T" not in text:
        raise AttestationError(COLLATERAL_INVALID, f"{what}: {key} is not an RFC 3339 time")
    return t.astimezone(UTC)


def _status(obj: dict[str, Any], allowed: frozenset[str], what: str) -> str:
    status: str = _field(obj, "tcbStatus", str, what)
    if status not in allowed:
        raise AttestationError(COLLATERAL_INVALID, f"{what}: unknown tcbStatus {status!r}")
    return status


def _advisories(obj: dict[str, Any], what: str) -> tuple[str, ...]:
    ids = obj.get("advisoryIDs", [])
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise AttestationError(COLLATERAL_INVALID, f"{what}: advisoryIDs must be a list of strings")
    return tuple(ids)


def _crl(text: str, what: str) -> x509.CertificateRevocationList:
    try:
        crl = x509.load_der_x509_crl(_hex(text, what, None))
    except ValueError as e:
        raise AttestationError(COLLATERAL_INVALID, f"{what}: not a DER CRL: {e}") from None
    if crl.next_update_utc is None:
        raise AttestationError(COLLATERAL_INVALID, f"{what}: CRL without nextUpdate")
    return crl


# --- the PCK certificate's SGX extension (a small strict DER reader) ------------------------------

_SEQUENCE, _OID, _INTEGER, _OCTETS, _ENUMERATED = 0x30, 0x06, 0x02, 0x04, 0x0A


def parse_pck_extension(cert: x509.Certificate) -> PckExtension:
    """The SGX extension of a PCK leaf; raises AttestationError("PCK_CHAIN_INVALID") if absent or bad."""
    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(SGX_EXTENSION_OID)).value
    except (x509.ExtensionNotFound, ValueError) as e:
        raise AttestationError(PCK_CHAIN_INVALID, f"PCK certificate has no SGX extension: {e}") from None
    if not isinstance(ext, x509.UnrecognizedExtension):
        raise AttestationError(PCK_CHAIN_INVALID, "SGX extension not readable")
    try:
        return _sgx_extension(ext.value)
    except ValueError as e:
        raise AttestationError(PCK_CHAIN_INVALID, f"SGX extension malformed: {e}") from None


def _sgx_extension(der: bytes) -> PckExtension:
    top = _der_pairs(_der_single(der, _SEQUENCE), SGX_EXTENSION_OID)
    tcb = _der_pairs(_der_expect(top, "2", _SEQUENCE), f"{SGX_EXTENSION_OID}.2")
    components = tuple(_der_uint(_der_expect(tcb, str(i), _INTEGER), 255) for i in range(1, 17))
    return PckExtension(
        ppid=_der_octets(top, "1", 16),
        sgx_components=components,
        pce_svn=_der_uint(_der_expect(tcb, "17", _INTEGER), 0xFFFF),
        cpu_svn=_der_octets(tcb, "18", 16),
        pce_id=_der_octets(top, "3", 2),
        fmspc=_der_octets(top, "4", 6),
        sgx_type=_der_uint(_der_expect(top, "5", _ENUMERATED), 0xFF),
    )


def _der_tlvs(data: bytes) -> list[tuple[int, bytes]]:
    # tag (low tag numbers only) || definite minimal length || content, repeated to the end
    out, pos = [], 0
    while pos < len(data):
        if pos + 2 > len(data) or data[pos] & 0x1F == 0x1F:
            raise ValueError("truncated or high-tag-number TLV")
        tag, first, pos = data[pos], data[pos + 1], pos + 2
        if first < 0x80:
            length = first
        else:
            n = first & 0x7F
            raw = data[pos : pos + n]
            if n == 0 or n > 4 or len(raw) != n or raw[0] == 0:
                raise ValueError("indefinite or non-minimal length")
            length, pos = int.from_bytes(raw, "big"), pos + n
            if length < 0x80:
                raise ValueError("non-minimal length")
        if pos + length > len(data):
            raise ValueError("length beyond the data")
        out.append((tag, data[pos : pos + length]))
        pos += length
    return out


def _der_single(data: bytes, tag: int) -> bytes:
    items = _der_tlvs(data)
    if len(items) != 1 or items[0][0] != tag:
        raise ValueError(f"expected exactly one element with tag {tag:#x}")
    return items[0][1]


def _der_oid(content: bytes) -> str:
    # first octet 40*a + b (a <= 2 here), then base-128 arcs, no leading 0x80 septets
    if not content or content[-1] & 0x80:
        raise ValueError("bad OID")
    arcs, value, fresh = [], 0, True
    for byte in content:
        if fresh and byte == 0x80:
            raise ValueError("non-minimal OID arc")
        value, fresh = (value << 7) | (byte & 0x7F), not byte & 0x80
        if fresh:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in [first, arcs[0] - 40 * first, *arcs[1:]])


def _der_pairs(content: bytes, prefix: str) -> dict[str, tuple[int, bytes]]:
    # SEQUENCE OF SEQUENCE { OID prefix.n, value }: {"n": (tag, content)}; unknown arcs kept, duplicates not
    pairs: dict[str, tuple[int, bytes]] = {}
    for tag, entry in _der_tlvs(content):
        items = _der_tlvs(entry)
        if tag != _SEQUENCE or len(items) != 2 or items[0][0] != _OID:
            raise ValueError("entry is not SEQUENCE { OID, value }")
        oid = _der_oid(items[0][1])
        arc = oid[len(prefix) + 1 :]
        if not oid.startswith(prefix + ".") or arc in pairs:
            raise ValueError(f"unexpected or repeated OID {oid}")
        pairs[arc] = items[1]
    return pairs


def _der_expect(pairs: dict[str, tuple[int, bytes]], arc: str, tag: int) -> bytes:
    if arc not in pairs or pairs[arc][0] != tag:
        raise ValueError(f"element .{arc} missing or of the wrong type")
    return pairs[arc][1]


def _der_uint(content: bytes, maximum: int) -> int:
    # minimal two's complement, non-negative, at most `maximum`
    if not content or (len(content) > 1 and content[0] == 0 and content[1] < 0x80) or content[0] & 0x80:
        raise ValueError("non-minimal or negative INTEGER")
    value = int.from_bytes(content, "big")
    if value > maximum:
        raise ValueError("INTEGER out of range")
    return value


def _der_octets(pairs: dict[str, tuple[int, bytes]], arc: str, size: int) -> bytes:
    value = _der_expect(pairs, arc, _OCTETS)
    if len(value) != size:
        raise ValueError(f"element .{arc} must be {size} bytes")
    return value
