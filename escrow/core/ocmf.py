"""OCMF meter signatures in the trusted core: the algorithm table, strict DER, verification, signing.

Parsing lives in escrow.core.ocmf_parse and is re-exported here, so callers import only this module.
The rules, the reason codes and the algorithm table are documented in docs/ocmf.md.

Verification: the algorithm comes from the registered meter key (the curve named in its DER
SubjectPublicKeyInfo, cross-checked against the algorithm given at registration); SA in the record is
only compared with it. The hash is the one in the algorithm's name (OCMF Table 22: SHA-256 for all).
SD must be strictly canonical DER with r and s in [1, n-1]. Curves that `cryptography` supports are
verified by it; secp192k1, which OpenSSL lacks, by the exact-integer ECDSA below (public data only,
so not being constant-time leaks nothing).
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from escrow.core.ocmf_parse import (
    END_TX_VALUES,
    MAX_DECIMAL_ADJUSTED,
    MAX_NUMBER_CHARS,
    MAX_RECORD_BYTES,
    MIN_DECIMAL_EXPONENT,
    OCMF_ALGORITHM_MISMATCH,
    OCMF_DER_NONCANONICAL,
    OCMF_DUPLICATE_KEY,
    OCMF_FORMAT,
    OCMF_INSECURE_CURVE,
    OCMF_KEY_INVALID,
    OCMF_SIGNATURE_ENCODING,
    OCMF_SIGNATURE_INVALID,
    OCMF_TIME_INVALID,
    OCMF_TOO_LARGE,
    OCMF_UNIT_UNSUPPORTED,
    OCMF_UNSUPPORTED_ALGORITHM,
    OCMF_VALUE_INVALID,
    OcmfError,
    OcmfReading,
    OcmfRecord,
    decimal_from_padded_string,
    decimal_from_token,
    parse_record,
    parse_time,
    to_kwh,
)

__all__ = [
    "ALGORITHMS",
    "CURVES",
    "DEFAULT_ALGORITHM",
    "END_TX_VALUES",
    "MAX_DECIMAL_ADJUSTED",
    "MAX_NUMBER_CHARS",
    "MAX_RECORD_BYTES",
    "MIN_DECIMAL_EXPONENT",
    "OCMF_ALGORITHM_MISMATCH",
    "OCMF_DER_NONCANONICAL",
    "OCMF_DUPLICATE_KEY",
    "OCMF_FORMAT",
    "OCMF_INSECURE_CURVE",
    "OCMF_KEY_INVALID",
    "OCMF_SIGNATURE_ENCODING",
    "OCMF_SIGNATURE_INVALID",
    "OCMF_TIME_INVALID",
    "OCMF_TOO_LARGE",
    "OCMF_UNIT_UNSUPPORTED",
    "OCMF_UNSUPPORTED_ALGORITHM",
    "OCMF_VALUE_INVALID",
    "Curve",
    "MeterKey",
    "OcmfError",
    "OcmfReading",
    "OcmfRecord",
    "algorithm_for_key",
    "check_registrable",
    "decimal_from_padded_string",
    "decimal_from_token",
    "decode_der_signature",
    "load_meter_key",
    "normalize_algorithm",
    "parse_record",
    "parse_time",
    "sign_payload",
    "to_kwh",
    "verify_record",
]

Point = tuple[int, int] | None  # affine (x, y); None is the point at infinity


@dataclass(frozen=True)
class Curve:
    """A curve y^2 = x^3 + a*x + b over F_p whose generator G = (gx, gy) has prime order n (cofactor 1)."""

    name: str  # OCMF's spelling (Table 22)
    oid: bytes  # DER content octets of the namedCurve OBJECT IDENTIFIER
    p: int
    a: int
    b: int
    gx: int
    gy: int
    n: int
    backend: type[ec.EllipticCurve] | None  # None: verified by the exact-integer ECDSA in this module

    @property
    def coordinate_bytes(self) -> int:
        """Length of one field element in an encoded point."""
        return (self.p.bit_length() + 7) // 8

    def contains(self, x: int, y: int) -> bool:
        """0 <= x, y < p and y^2 = x^3 + a*x + b (mod p)."""
        return 0 <= x < self.p and 0 <= y < self.p and (y * y - x * x * x - self.a * x - self.b) % self.p == 0


# Domain parameters: SEC 2 v2.0 (secp*), RFC 5639 (brainpool*). Checked when the module loads.
CURVES: dict[str, Curve] = {
    curve.name: curve
    for curve in (
        Curve(
            "secp192k1", bytes.fromhex("2B8104001F"),
            p=0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFEE37, a=0, b=3,
            gx=0xDB4FF10EC057E9AE26B07D0280B7F4341DA5D1B1EAE06C7D,
            gy=0x9B2F2F6D9C5628A7844163D015BE86344082AA88D95E2F9D,
            n=0xFFFFFFFFFFFFFFFFFFFFFFFE26F2FC170F69466A74DEFD8D, backend=None,
        ),
        Curve(
            "secp192r1", bytes.fromhex("2A8648CE3D030101"),
            p=0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFFFFFFFFFFFFF,
            a=0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFFFFFFFFFFFFC,
            b=0x64210519E59C80E70FA7E9AB72243049FEB8DEECC146B9B1,
            gx=0x188DA80EB03090F67CBF20EB43A18800F4FF0AFD82FF1012,
            gy=0x07192B95FFC8DA78631011ED6B24CDD573F977A11E794811,
            n=0xFFFFFFFFFFFFFFFFFFFFFFFF99DEF836146BC9B1B4D22831, backend=ec.SECP192R1,
        ),
        Curve(
            "secp256k1", bytes.fromhex("2B8104000A"),
            p=0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFFC2F, a=0, b=7,
            gx=0x79BE667EF9DCBBAC55A06295CE870B07029BFCDB2DCE28D959F2815B16F81798,
            gy=0x483ADA7726A3C4655DA4FBFC0E1108A8FD17B448A68554199C47D08FFB10D4B8,
            n=0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141, backend=ec.SECP256K1,
        ),
        Curve(
            "secp256r1", bytes.fromhex("2A8648CE3D030107"),
            p=0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF,
            a=0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFC,
            b=0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B,
            gx=0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296,
            gy=0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5,
            n=0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551, backend=ec.SECP256R1,
        ),
        Curve(
            "brainpool256r1", bytes.fromhex("2B2403030208010107"),
            p=0xA9FB57DBA1EEA9BC3E660A909D838D726E3BF623D52620282013481D1F6E5377,
            a=0x7D5A0975FC2C3057EEF67530417AFFE7FB8055C126DC5C6CE94A4B44F330B5D9,
            b=0x26DC5C6CE94A4B44F330B5D9BBD77CBF958416295CF7E1CE6BCCDC18FF8C07B6,
            gx=0x8BD2AEB9CB7E57CB2C4B482FFC81B7AFB9DE27E1E3BD23C23A4453BD9ACE3262,
            gy=0x547EF835C3DAC4FD97F8461A14611DC9C27745132DED8E545C1D54C72F046997,
            n=0xA9FB57DBA1EEA9BC3E660A909D838D718C397AA3B561A6F7901E0E82974856A7, backend=ec.BrainpoolP256R1,
        ),
        Curve(
            "secp384r1", bytes.fromhex("2B81040022"),
            p=0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFFFFF0000000000000000FFFFFFFF,
            a=0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFFFFF0000000000000000FFFFFFFC,
            b=0xB3312FA7E23EE7E4988E056BE3F82D19181D9C6EFE8141120314088F5013875AC656398D8A2ED19D2A85C8EDD3EC2AEF,
            gx=0xAA87CA22BE8B05378EB1C71EF320AD746E1D3B628BA79B9859F741E082542A385502F25DBF55296C3A545E3872760AB7,
            gy=0x3617DE4A96262C6F5D9E98BF9292DC29F8F41DBD289A147CE9DA3113B5F0B8C00A60B1CE1D7E819D7A431D7C90EA0E5F,
            n=0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973,
            backend=ec.SECP384R1,
        ),
        Curve(
            "brainpool384r1", bytes.fromhex("2B240303020801010B"),
            p=0x8CB91E82A3386D280F5D6F7E50E641DF152F7109ED5456B412B1DA197FB71123ACD3A729901D1A71874700133107EC53,
            a=0x7BC382C63D8C150C3C72080ACE05AFA0C2BEA28E4FB22787139165EFBA91F90F8AA5814A503AD4EB04A8C7DD22CE2826,
            b=0x04A8C7DD22CE28268B39B55416F0447C2FB77DE107DCD2A62E880EA53EEB62D57CB4390295DBC9943AB78696FA504C11,
            gx=0x1D1C64F068CF45FFA2A63A81B7C13F6B8847A3E77EF14FE3DB7FCAFE0CBD10E8E826E03436D646AAEF87B2E247D4AF1E,
            gy=0x8ABE1D7520F9C2A45CB1EB8E95CFD55262B70B29FEEC5864E19C054FF99129280E4646217791811142820341263C5315,
            n=0x8CB91E82A3386D280F5D6F7E50E641DF152F7109ED5456B31F166E6CAC0425A7CF3AB6AF6B7FC3103B883202E9046565,
            backend=ec.BrainpoolP384R1,
        ),
    )
}  # fmt: skip

# OCMF Table 22, plus the brainpoolP spellings that meters write; the value is the canonical name.
_ALGORITHM_SPELLINGS = {
    "ECDSA-secp192k1-SHA256": "ECDSA-secp192k1-SHA256",
    "ECDSA-secp256k1-SHA256": "ECDSA-secp256k1-SHA256",
    "ECDSA-secp192r1-SHA256": "ECDSA-secp192r1-SHA256",
    "ECDSA-secp256r1-SHA256": "ECDSA-secp256r1-SHA256",
    "ECDSA-brainpool256r1-SHA256": "ECDSA-brainpool256r1-SHA256",
    "ECDSA-brainpoolP256r1-SHA256": "ECDSA-brainpool256r1-SHA256",
    "ECDSA-secp384r1-SHA256": "ECDSA-secp384r1-SHA256",
    "ECDSA-brainpool384r1-SHA256": "ECDSA-brainpool384r1-SHA256",
    "ECDSA-brainpoolP384r1-SHA256": "ECDSA-brainpool384r1-SHA256",
}
# Canonical algorithm name -> curve; the hash is the name's last part (SHA256 throughout Table 22).
ALGORITHMS: dict[str, Curve] = {
    name: CURVES[name.split("-")[1]] for name in dict.fromkeys(_ALGORITHM_SPELLINGS.values())
}
DEFAULT_ALGORITHM = "ECDSA-secp256r1-SHA256"  # OCMF: a missing SA means this
_HASHES = {"SHA256": (hashlib.sha256, hashes.SHA256)}
_EC_PUBLIC_KEY_OID = bytes.fromhex("2A8648CE3D0201")  # 1.2.840.10045.2.1 id-ecPublicKey
_INSECURE_BITS = 192
_WITNESSES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)


@dataclass(frozen=True)
class MeterKey:
    """A meter's public key, parsed from DER SubjectPublicKeyInfo and checked to lie on its curve."""

    curve: Curve
    x: int
    y: int
    algorithm: str  # canonical name of the curve's OCMF algorithm
    backend_key: ec.EllipticCurvePublicKey | None  # cryptography's key; None where we verify ourselves


def normalize_algorithm(name: str) -> str:
    """The canonical Table 22 name of an OCMF algorithm (brainpoolP256r1 -> brainpool256r1 spelling)."""
    canonical = _ALGORITHM_SPELLINGS.get(name) if isinstance(name, str) else None
    if canonical is None:
        raise OcmfError(OCMF_UNSUPPORTED_ALGORITHM, f"{name!r} is not in OCMF's algorithm table")
    return canonical


def check_registrable(algorithm: str, *, allow_insecure_192: bool = False) -> str:
    """The canonical algorithm if a meter using it may be registered for billing; 192-bit curves
    (about 96-bit security) only with the explicitly insecure flag. Raises OcmfError."""
    canonical = normalize_algorithm(algorithm)
    if ALGORITHMS[canonical].n.bit_length() <= _INSECURE_BITS and not allow_insecure_192:
        raise OcmfError(OCMF_INSECURE_CURVE, f"{canonical} offers about 96-bit security; not for billing")
    return canonical


def load_meter_key(public_key_der: bytes) -> MeterKey:
    """Parse a meter's DER SubjectPublicKeyInfo strictly: id-ecPublicKey, a named curve of the table,
    an uncompressed point on that curve, no trailing bytes. Raises OcmfError."""
    if not isinstance(public_key_der, bytes):
        raise OcmfError(OCMF_KEY_INVALID, "a public key is DER bytes")
    return _load_meter_key(public_key_der)


@functools.lru_cache(maxsize=256)
def _load_meter_key(public_key_der: bytes) -> MeterKey:
    try:
        spki = _der_exactly(public_key_der, 0x30)
        algorithm_id, offset = _der_read(spki, 0, 0x30)
        key_type, inner = _der_read(algorithm_id, 0, 0x06)
        curve_oid = _der_exactly(algorithm_id[inner:], 0x06)
        bit_string = _der_exactly(spki[offset:], 0x03)
    except OcmfError as exc:
        raise OcmfError(OCMF_KEY_INVALID, f"not a DER EC SubjectPublicKeyInfo: {exc.detail}") from exc
    curve = next((c for c in CURVES.values() if c.oid == curve_oid), None)
    if key_type != _EC_PUBLIC_KEY_OID:
        raise OcmfError(OCMF_KEY_INVALID, "the key is not an EC public key")
    if curve is None:
        raise OcmfError(OCMF_UNSUPPORTED_ALGORITHM, "the key's curve is not in OCMF's algorithm table")
    x, y = _decode_point(curve, bit_string)
    algorithm = next(name for name, c in ALGORITHMS.items() if c is curve)
    backend_key = None
    if curve.backend is not None:
        backend_key = ec.EllipticCurvePublicKey.from_encoded_point(curve.backend(), bit_string[1:])
    return MeterKey(curve, x, y, algorithm, backend_key)


def algorithm_for_key(public_key_der: bytes, algorithm: str | None = None) -> str:
    """The canonical algorithm of a meter key; a registered `algorithm`, if given, must name its curve."""
    key = load_meter_key(public_key_der)
    if algorithm is not None and normalize_algorithm(algorithm) != key.algorithm:
        raise OcmfError(OCMF_ALGORITHM_MISMATCH, f"the key is on {key.curve.name}, not for {algorithm}")
    return key.algorithm


def verify_record(record: OcmfRecord, public_key_der: bytes, *, algorithm: str | None = None) -> None:
    """Verify the record's signature under the registered meter key; raises OcmfError, returns None.

    The algorithm is the registered one (or the key's curve's); the record's SA, or the default
    ECDSA-secp256r1-SHA256 when SA is missing, must name the same algorithm.
    """
    if not isinstance(record, OcmfRecord):
        raise OcmfError(OCMF_FORMAT, "verify_record takes a parsed OcmfRecord")
    registered = algorithm_for_key(public_key_der, algorithm)
    claimed = normalize_algorithm(DEFAULT_ALGORITHM if record.SA is None else record.SA)
    if claimed != registered:
        raise OcmfError(
            OCMF_ALGORITHM_MISMATCH, f"SA says {claimed}, the meter is registered for {registered}"
        )
    key = load_meter_key(public_key_der)
    r, s = decode_der_signature(record.signature, key.curve.n)
    hash_name = registered.rsplit("-", 1)[1]
    if key.backend_key is None:
        digest = _HASHES[hash_name][0](record.payload).digest()
        if not _ecdsa_verify(key.curve, (key.x, key.y), r, s, digest):
            raise OcmfError(OCMF_SIGNATURE_INVALID, "the signature does not match the payload")
        return
    try:
        key.backend_key.verify(record.signature, record.payload, ec.ECDSA(_HASHES[hash_name][1]()))
    except InvalidSignature as exc:
        raise OcmfError(OCMF_SIGNATURE_INVALID, "the signature does not match the payload") from exc


def sign_payload(payload_json: bytes, private_key: ec.EllipticCurvePrivateKey, algorithm: str) -> str:
    """A complete OCMF record: the payload bytes unchanged, SA as spelled by the caller (any spelling
    of the table; pyocmf wants "brainpoolP256r1"), SD as canonical DER in upper-case hex.

    Deterministic ECDSA (RFC 6979). The result is parsed and verified with this module's own rules
    before it is returned. secp192k1 cannot be signed here (OpenSSL lacks it).
    """
    canonical = normalize_algorithm(algorithm)
    curve = ALGORITHMS[canonical]
    if not isinstance(payload_json, bytes) or not isinstance(private_key, ec.EllipticCurvePrivateKey):
        raise OcmfError(OCMF_FORMAT, "sign_payload takes payload bytes and an EC private key")
    if curve.backend is None:
        raise OcmfError(OCMF_UNSUPPORTED_ALGORITHM, f"{canonical} can be verified but not signed here")
    if not isinstance(private_key.curve, curve.backend):
        raise OcmfError(OCMF_ALGORITHM_MISMATCH, f"the private key is not on {curve.name}")
    hash_class = _HASHES[canonical.rsplit("-", 1)[1]][1]
    der = private_key.sign(payload_json, ec.ECDSA(hash_class(), deterministic_signing=True))
    signature_section = json.dumps({"SA": algorithm, "SD": der.hex().upper()}, separators=(",", ":"))
    record = b"OCMF|" + payload_json + b"|" + signature_section.encode("ascii")
    public_der = private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    verify_record(parse_record(record), public_der, algorithm=canonical)
    return record.decode("utf-8")


def decode_der_signature(der: bytes, n: int) -> tuple[int, int]:
    """(r, s) from a strictly canonical DER ECDSA-Sig-Value with 1 <= r, s <= n-1; raises OcmfError."""
    try:
        body = _der_exactly(der, 0x30)
        r_bytes, offset = _der_read(body, 0, 0x02)
        s_bytes = _der_exactly(body[offset:], 0x02)
    except OcmfError as exc:
        raise OcmfError(OCMF_DER_NONCANONICAL, f"the signature is not canonical DER: {exc.detail}") from exc
    r, s = _der_unsigned(r_bytes), _der_unsigned(s_bytes)
    if not (1 <= r < n and 1 <= s < n):
        raise OcmfError(OCMF_DER_NONCANONICAL, "r and s must lie in [1, n-1]")
    return r, s


def _der_read(data: bytes, offset: int, tag: int) -> tuple[bytes, int]:
    # One TLV with the expected tag and a minimal definite length: (value, offset after it).
    if offset + 2 > len(data) or data[offset] != tag:
        raise OcmfError(OCMF_DER_NONCANONICAL, f"expected tag 0x{tag:02x}")
    first = data[offset + 1]
    start = offset + 2
    if first < 0x80:
        length = first
    elif first in (0x81, 0x82) and start + (first - 0x80) <= len(data):
        size = first - 0x80
        length = int.from_bytes(data[start : start + size], "big")
        start += size
        if length < (0x80 if size == 1 else 0x100):
            raise OcmfError(OCMF_DER_NONCANONICAL, "a long-form length where a shorter form suffices")
    else:
        raise OcmfError(OCMF_DER_NONCANONICAL, "an indefinite, oversized or truncated length")
    if start + length > len(data):
        raise OcmfError(OCMF_DER_NONCANONICAL, "a length beyond the data")
    return data[start : start + length], start + length


def _der_exactly(data: bytes, tag: int) -> bytes:
    # A TLV that spans all of `data`: no trailing bytes.
    value, end = _der_read(data, 0, tag)
    if end != len(data):
        raise OcmfError(OCMF_DER_NONCANONICAL, "trailing bytes after the DER value")
    return value


def _der_unsigned(content: bytes) -> int:
    # A non-negative INTEGER in the fewest bytes: 0x00 only before a byte with the top bit set.
    if not content or content[0] & 0x80:
        raise OcmfError(OCMF_DER_NONCANONICAL, "an empty or negative INTEGER")
    if content[0] == 0 and len(content) > 1 and not content[1] & 0x80:
        raise OcmfError(OCMF_DER_NONCANONICAL, "an INTEGER with a superfluous leading zero byte")
    return int.from_bytes(content, "big")


def _decode_point(curve: Curve, bit_string: bytes) -> tuple[int, int]:
    # BIT STRING with 0 unused bits holding 0x04 || x || y (SEC 1 2.3.3, uncompressed only).
    size = curve.coordinate_bytes
    if len(bit_string) != 2 + 2 * size or bit_string[:2] != b"\x00\x04":
        raise OcmfError(OCMF_KEY_INVALID, f"the key is not an uncompressed {curve.name} point")
    x = int.from_bytes(bit_string[2 : 2 + size], "big")
    y = int.from_bytes(bit_string[2 + size :], "big")
    if not curve.contains(x, y):
        raise OcmfError(OCMF_KEY_INVALID, f"the point is not on {curve.name}")
    return x, y


def _add(curve: Curve, P: Point, Q: Point) -> Point:
    # Affine addition: lambda = (y2 - y1)/(x2 - x1), or (3x^2 + a)/(2y) when doubling.
    if P is None or Q is None:
        return Q if P is None else P
    (x1, y1), (x2, y2) = P, Q
    if x1 == x2 and (y1 + y2) % curve.p == 0:
        return None
    if x1 == x2:
        slope = (3 * x1 * x1 + curve.a) * pow(2 * y1, -1, curve.p) % curve.p
    else:
        slope = (y2 - y1) * pow(x2 - x1, -1, curve.p) % curve.p
    x3 = (slope * slope - x1 - x2) % curve.p
    return x3, (slope * (x1 - x3) - y1) % curve.p


def _double_multiply(curve: Curve, u1: int, P: Point, u2: int, Q: Point) -> Point:
    # u1*P + u2*Q by Shamir's trick: one double-and-add pass over both scalars' bits.
    both = _add(curve, P, Q)
    table: dict[tuple[int, int], Point] = {(0, 0): None, (1, 0): P, (0, 1): Q, (1, 1): both}
    result: Point = None
    for i in range(max(u1.bit_length(), u2.bit_length()) - 1, -1, -1):
        result = _add(curve, result, result)
        result = _add(curve, result, table[(u1 >> i) & 1, (u2 >> i) & 1])
    return result


def _ecdsa_verify(curve: Curve, Q: tuple[int, int], r: int, s: int, digest: bytes) -> bool:
    # SEC 1 4.1.4: e = leftmost bits of H; w = s^-1; X = (e*w)G + (r*w)Q; valid iff X.x mod n = r.
    e = int.from_bytes(digest, "big") >> max(0, 8 * len(digest) - curve.n.bit_length())
    w = pow(s, -1, curve.n)
    X = _double_multiply(curve, e * w % curve.n, (curve.gx, curve.gy), r * w % curve.n, Q)
    return X is not None and X[0] % curve.n == r


def _probably_prime(m: int) -> bool:
    # Miller-Rabin with fixed bases: a load-time check of typed constants, not an adversarial test.
    d, twos = m - 1, 0
    while d % 2 == 0:
        d, twos = d // 2, twos + 1
    return all(_passes_round(pow(base, d, m), twos, m) for base in _WITNESSES)


def _passes_round(x: int, twos: int, m: int) -> bool:
    # x = base^d; m passes if x = 1, or x^(2^i) = m - 1 for some 0 <= i < twos.
    if x == 1:
        return True
    for _ in range(twos):
        if x == m - 1:
            return True
        x = x * x % m
    return False


def _check_curves() -> None:
    # Every generator lies on its curve; the curve verified here in pure Python also has prime p and
    # n with n*G = O (the other curves' orders are checked against cryptography in tests).
    for curve in CURVES.values():
        if not curve.contains(curve.gx, curve.gy):
            raise AssertionError(f"{curve.name}: generator not on the curve")
        if curve.backend is None and not (
            _probably_prime(curve.p)
            and _probably_prime(curve.n)
            and _double_multiply(curve, curve.n, (curve.gx, curve.gy), 0, None) is None
        ):
            raise AssertionError(f"{curve.name}: p or n not prime, or n*G != O")


_check_curves()
