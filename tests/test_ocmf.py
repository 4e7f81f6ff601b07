"""OCMF records: the shared real-meter samples, every rejection rule, exact decimals, and pyocmf interop.

The samples (../shared/vectors/ocmf_samples.json) are judged with the key of each sample and the
algorithm inferred from it, and again with the sample's algorithm given as the registered one. The
meter side (private keys, sign_payload) and the verifier side (public DER, parse_record, verify_record)
only meet through the record's bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa, utils
from hypothesis import given
from hypothesis import strategies as st

from escrow.core import ocmf
from escrow.core.ocmf import OcmfError

EXPECTED_SAMPLES = 32  # what the file held when this test was written
EXPECTED_VALID = 27
# The invalid samples and why: tampered payloads, a key on another curve than SA, non-canonical DER.
EXPECTED_REASONS = {
    1: ocmf.OCMF_SIGNATURE_INVALID,
    6: ocmf.OCMF_SIGNATURE_INVALID,
    17: ocmf.OCMF_ALGORITHM_MISMATCH,
    21: ocmf.OCMF_DER_NONCANONICAL,
    31: ocmf.OCMF_SIGNATURE_INVALID,
}
SECP192K1_SAMPLE = 22
NON_CANONICAL_DER_SAMPLE = 21
SIGNABLE = [
    "ECDSA-secp192r1-SHA256", "ECDSA-secp256k1-SHA256", "ECDSA-secp256r1-SHA256",
    "ECDSA-brainpoolP256r1-SHA256", "ECDSA-secp384r1-SHA256", "ECDSA-brainpool384r1-SHA256",
]  # fmt: skip
# pyocmf 0.6.0 cannot load brainpoolP384r1 keys, and wants SA spelled brainpoolP256r1 for brainpool keys.
PYOCMF_ALGORITHMS = [name for name in SIGNABLE if name != "ECDSA-brainpool384r1-SHA256"]
HANDLE = "k3J9xQ2mT7vB1nW8pL4z"  # a 20-character meter handle


# ---- helpers: the meter side -------------------------------------------------------------------------


def _payload(pg: str = "T1", readings: list[Any] | None = None, **header: Any) -> bytes:
    """A compact payload; reading values written "#<text>" are put into the JSON as raw <text>."""
    body: dict[str, Any] = {
        "FV": "1.0", "GI": "ESCROW-SIM", "GS": "POLE-0001", "GV": "1.0.0", "PG": pg, "MV": "Sim",
        "MM": "SM-1", "MS": "SM-0001", "IS": True, "IL": "VERIFIED",
        "IF": ["RFID_NONE", "OCPP_NONE", "ISO15118_NONE", "PLMN_NONE"], "IT": "LOCAL", "ID": HANDLE,
    }  # fmt: skip
    body.update(header)
    body["RD"] = readings if readings is not None else [_reading("B", "1234.5678")]
    text = json.dumps(body, separators=(",", ":"))
    for reading in body["RD"] if isinstance(body["RD"], list) else []:
        for value in reading.values() if isinstance(reading, dict) else []:
            if isinstance(value, str) and value.startswith("#"):
                text = text.replace(json.dumps(value), value[1:], 1)
    return text.encode()


def _reading(tx: str, rv: str, tm: str = "2024-05-01T10:00:00,000+0000 S", **fields: Any) -> dict[str, Any]:
    reading = {
        "TM": tm,
        "TX": tx,
        "RV": "#" + rv,
        "RI": "1-b:1.8.0",
        "RU": "kWh",
        "RT": "AC",
        "EF": "",
        "ST": "G",
    }
    reading.update(fields)
    return reading


def _key(algorithm: str = "ECDSA-secp256r1-SHA256") -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    curve = ocmf.ALGORITHMS[ocmf.normalize_algorithm(algorithm)].backend
    assert curve is not None
    private_key = ec.generate_private_key(curve())
    der = private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_key, der


def _with_signature(record: str, section: dict[str, Any] | str) -> str:
    """The record with its signature section replaced."""
    head, payload, _ = record.split("|")
    text = section if isinstance(section, str) else json.dumps(section)
    return f"{head}|{payload}|{text}"


def _tlv(tag: int, content: bytes, long_form: bool = False) -> bytes:
    length = bytes([0x81, len(content)]) if long_form else bytes([len(content)])
    return bytes([tag]) + length + content


def _der_int(value: int, extra_zeros: int = 0) -> bytes:
    raw = value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")
    if raw[0] & 0x80:
        raw = b"\x00" + raw
    return b"\x00" * extra_zeros + raw


def _sign_secp192k1(secret: int, message: bytes) -> tuple[int, int]:
    """Textbook ECDSA on secp192k1 with a random nonce (cryptography cannot sign on this curve)."""
    curve = ocmf.CURVES["secp192k1"]
    e = int.from_bytes(hashlib.sha256(message).digest(), "big") >> (256 - curve.n.bit_length())
    while True:
        k = secrets.randbelow(curve.n - 1) + 1
        R = ocmf._double_multiply(curve, k, (curve.gx, curve.gy), 0, None)
        assert R is not None
        r, s = R[0] % curve.n, pow(k, -1, curve.n) * (e + R[0] % curve.n * secret) % curve.n
        if r and s:
            return r, s


def _reason(call: Any) -> str:
    with pytest.raises(OcmfError) as info:
        call()
    return info.value.reason


# ---- the shared samples --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def samples(shared_vectors: Path) -> list[dict[str, Any]]:
    path = shared_vectors / "ocmf_samples.json"
    if not path.is_file():
        pytest.fail(f"missing OCMF samples {path}", pytrace=False)
    entries: list[dict[str, Any]] = json.loads(path.read_text())["samples"]
    return entries


def _judge(sample: dict[str, Any], algorithm: str | None) -> str | None:
    """None if the record verifies, else the reason."""
    try:
        record = ocmf.parse_record(sample["ocmf"])
        ocmf.verify_record(record, bytes.fromhex(sample["public_key_hex"]), algorithm=algorithm)
    except OcmfError as exc:
        return exc.reason
    return None


@pytest.mark.parametrize("registered", [False, True], ids=["key-curve", "registered-algorithm"])
def test_every_sample_is_judged_as_expected(samples: list[dict[str, Any]], registered: bool) -> None:
    assert len(samples) == EXPECTED_SAMPLES
    verdicts = {}
    for index, sample in enumerate(samples):
        verdicts[index] = _judge(sample, sample["signature_algorithm"] if registered else None)
    wrong = {i: v for i, v in verdicts.items() if (v is None) != samples[i]["expected_valid"]}
    assert wrong == {}
    assert sum(v is None for v in verdicts.values()) == EXPECTED_VALID
    assert {i: v for i, v in verdicts.items() if v is not None} == EXPECTED_REASONS


def test_sample_parsing_details(samples: list[dict[str, Any]]) -> None:
    parsed = [ocmf.parse_record(sample["ocmf"]) for sample in samples]
    keba, padded, lem, base64_record, exponent = parsed[0], parsed[12], parsed[18], parsed[19], parsed[26]
    assert (
        keba.SA is None and Decimal("0.2596") == keba.readings[0].RV and keba.readings[1].time_status == "R"
    )
    assert Decimal("9.038") == padded.readings[0].RV and padded.readings[0].RU == "kWh"
    # LEM: readings 2 and 4 inherit TM and TX from the reading before them
    assert [(r.TX, r.RI, r.TM[-1]) for r in lem.readings] == [
        ("B", "1-0:1.8.0", "R"), ("B", "1-0:2.8.0", "R"), ("E", "1-0:1.8.0", "R"), ("E", "1-0:2.8.0", "R"),
    ]  # fmt: skip
    assert lem.readings[1].time == lem.readings[0].time and lem.readings[1].RT == "DC"
    assert base64_record.SE == "base64" and base64_record.FV == "1.0" and base64_record.CT == "0"
    assert Decimal("1.606848E+7") == exponent.readings[0].RV
    assert ocmf.to_kwh(exponent.readings[0].RV, "Wh") == Decimal("16068.48")
    assert parsed[SECP192K1_SAMPLE].readings[0].time.microsecond == 867000
    assert all(record.payload in sample["ocmf"].encode() for record, sample in zip(parsed, samples))


# ---- curves: the exact-integer ECDSA against cryptography --------------------------------------------


@pytest.mark.parametrize("name", list(ocmf.CURVES))
def test_curve_constants(name: str) -> None:
    curve = ocmf.CURVES[name]
    G = (curve.gx, curve.gy)
    assert ocmf._probably_prime(curve.p) and ocmf._probably_prime(curve.n)
    assert ocmf._double_multiply(curve, curve.n, G, 0, None) is None
    assert ocmf._double_multiply(curve, curve.n - 1, G, 0, None) == (curve.gx, -curve.gy % curve.p)
    if curve.backend is not None:  # the private key times G is cryptography's public point
        private_key = ec.generate_private_key(curve.backend())
        public = private_key.public_key().public_numbers()
        secret = private_key.private_numbers().private_value
        assert ocmf._double_multiply(curve, secret, G, 0, None) == (public.x, public.y)


@pytest.mark.parametrize("name", [n for n, c in ocmf.CURVES.items() if c.backend is not None])
def test_exact_integer_ecdsa_agrees_with_cryptography(name: str) -> None:
    curve = ocmf.CURVES[name]
    assert curve.backend is not None
    private_key = ec.generate_private_key(curve.backend())
    public = private_key.public_key().public_numbers()
    for message in (b"", b"OCMF", secrets.token_bytes(40)):
        r, s = utils.decode_dss_signature(private_key.sign(message, ec.ECDSA(hashes.SHA256())))
        digest = hashlib.sha256(message).digest()
        assert ocmf._ecdsa_verify(curve, (public.x, public.y), r, s, digest)
        assert not ocmf._ecdsa_verify(
            curve, (public.x, public.y), r, s, hashlib.sha256(message + b"!").digest()
        )
        assert not ocmf._ecdsa_verify(curve, (public.x, public.y), r, (s + 1) % curve.n, digest)


def test_secp192k1_records_signed_here_verify_and_tampering_fails(samples: list[dict[str, Any]]) -> None:
    curve = ocmf.CURVES["secp192k1"]
    secret = secrets.randbelow(curve.n - 1) + 1
    point = ocmf._double_multiply(curve, secret, (curve.gx, curve.gy), 0, None)
    assert point is not None
    size = curve.coordinate_bytes
    sample_key = bytes.fromhex(samples[SECP192K1_SAMPLE]["public_key_hex"])
    prefix = sample_key[: -2 * size - 1]  # the SPKI header of a secp192k1 key
    public_der = prefix + b"\x04" + point[0].to_bytes(size, "big") + point[1].to_bytes(size, "big")
    payload = _payload()
    r, s = _sign_secp192k1(secret, payload)
    sd = _tlv(0x30, _tlv(0x02, _der_int(r)) + _tlv(0x02, _der_int(s))).hex()
    record = f"OCMF|{payload.decode()}|" + json.dumps({"SA": "ECDSA-secp192k1-SHA256", "SD": sd})
    ocmf.verify_record(ocmf.parse_record(record), public_der)
    tampered = ocmf.parse_record(record.replace("1234.5678", "1234.5679"))
    assert _reason(lambda: ocmf.verify_record(tampered, public_der)) == ocmf.OCMF_SIGNATURE_INVALID
    assert (
        _reason(lambda: ocmf.verify_record(ocmf.parse_record(record), sample_key))
        == ocmf.OCMF_SIGNATURE_INVALID
    )


# ---- signing, and the independent pyocmf verifier -----------------------------------------------------


@pytest.mark.parametrize("algorithm", SIGNABLE)
def test_sign_payload_round_trip_is_deterministic(algorithm: str) -> None:
    private_key, public_der = _key(algorithm)
    payload = _payload()
    record = ocmf.sign_payload(payload, private_key, algorithm)
    assert record == ocmf.sign_payload(payload, private_key, algorithm)  # RFC 6979
    parsed = ocmf.parse_record(record)
    assert parsed.payload == payload and algorithm == parsed.SA
    ocmf.verify_record(parsed, public_der, algorithm=ocmf.normalize_algorithm(algorithm))


@pytest.mark.parametrize("algorithm", PYOCMF_ALGORITHMS)
def test_pyocmf_accepts_our_records_and_the_eichrecht_pair(algorithm: str) -> None:
    import pyocmf  # a test-only dependency (test extras); the trusted core never imports it

    private_key, public_der = _key(algorithm)
    begin = ocmf.sign_payload(_payload("T7", [_reading("B", "1234.5678")]), private_key, algorithm)
    end_reading = _reading("E", "1240.0010", tm="2024-05-01T10:30:00,000+0000 S")
    end = ocmf.sign_payload(_payload("T8", [end_reading]), private_key, algorithm)
    pair = [pyocmf.OCMF.from_string(record, strict=True) for record in (begin, end)]
    assert all(record.verify_signature(public_der.hex()) for record in pair)
    assert pair[0].check_eichrecht(pair[1], errors_only=True) == []
    assert pyocmf.validate_transaction_pair(*pair)
    tampered = pyocmf.OCMF.from_string(end.replace("1240.0010", "1240.0011"), strict=True)
    assert not tampered.verify_signature(public_der.hex())


def test_sign_payload_refusals() -> None:
    private_key, _ = _key()
    assert _reason(lambda: ocmf.sign_payload(_payload(), private_key, "ECDSA-secp256k1-SHA256")) == (
        ocmf.OCMF_ALGORITHM_MISMATCH
    )
    assert _reason(lambda: ocmf.sign_payload(_payload(), private_key, "ECDSA-secp192k1-SHA256")) == (
        ocmf.OCMF_UNSUPPORTED_ALGORITHM
    )
    assert _reason(lambda: ocmf.sign_payload(_payload(ID="a|b"), private_key, ocmf.DEFAULT_ALGORITHM)) == (
        ocmf.OCMF_FORMAT
    )


# ---- verification refusals -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def signed() -> tuple[str, bytes, ec.EllipticCurvePrivateKey]:
    private_key, public_der = _key()
    return ocmf.sign_payload(_payload(), private_key, ocmf.DEFAULT_ALGORITHM), public_der, private_key


def _verify(record: str, public_der: bytes, algorithm: str | None = None) -> None:
    ocmf.verify_record(ocmf.parse_record(record), public_der, algorithm=algorithm)


def test_every_payload_byte_is_signed(signed: tuple[str, bytes, Any]) -> None:
    record, public_der, _ = signed
    _verify(record, public_der)
    for old, new in (("1234.5678", "1234.5679"), ('"PG":"T1"', '"PG":"T2"'), ('"ST":"G"', '"ST":"G" ')):
        assert _reason(lambda o=old, n=new: _verify(record.replace(o, n, 1), public_der)) == (
            ocmf.OCMF_SIGNATURE_INVALID
        )
    _, other_der = _key()
    assert _reason(lambda: _verify(record, other_der)) == ocmf.OCMF_SIGNATURE_INVALID


def test_whitespace_is_part_of_the_signed_payload() -> None:
    private_key, public_der = _key()
    payload = (
        b'{\n  "PG": "T3",\n  "RD": [{"TM": "2024-05-01T10:00:00,000+0200 S", "TX": "B", "RV": 1.50, '
        b'"RU": "kWh", "RI": "1-b:1.8.0", "ST": "G"}]\n}'
    )
    record = ocmf.sign_payload(payload, private_key, ocmf.DEFAULT_ALGORITHM)
    value = ocmf.parse_record(record).readings[0].RV
    assert value is not None and value.as_tuple() == Decimal("1.50").as_tuple()
    assert _reason(lambda: _verify(record.replace("\n", "", 1), public_der)) == ocmf.OCMF_SIGNATURE_INVALID


def test_algorithm_mismatch_and_unsupported(signed: tuple[str, bytes, Any]) -> None:
    record, public_der, _ = signed
    section = json.loads(record.split("|")[2])
    k1 = {**section, "SA": "ECDSA-secp256k1-SHA256"}
    assert _reason(lambda: _verify(_with_signature(record, k1), public_der)) == ocmf.OCMF_ALGORITHM_MISMATCH
    no_sa = {"SD": section["SD"]}
    _verify(_with_signature(record, no_sa), public_der)  # a missing SA means secp256r1
    _, k1_der = _key("ECDSA-secp256k1-SHA256")
    assert _reason(lambda: _verify(_with_signature(record, no_sa), k1_der)) == ocmf.OCMF_ALGORITHM_MISMATCH
    assert (
        _reason(lambda: _verify(record, public_der, "ECDSA-secp384r1-SHA256")) == ocmf.OCMF_ALGORITHM_MISMATCH
    )
    for sa in ("ECDSA-secp256r1-SHA512", "ECDSA-secp521r1-SHA256", "ecdsa-secp256r1-sha256", "RSA"):
        assert _reason(lambda a=sa: _verify(_with_signature(record, {**section, "SA": a}), public_der)) == (
            ocmf.OCMF_UNSUPPORTED_ALGORITHM
        )
    assert _reason(lambda: _verify(record, public_der, "ECDSA-P256")) == ocmf.OCMF_UNSUPPORTED_ALGORITHM


def test_meter_key_refusals() -> None:
    _, der = _key()
    p521 = ec.generate_private_key(ec.SECP521R1()).public_key()
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    compressed = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
    )  # just the point: not an SPKI
    off_curve = der[:-1] + bytes([der[-1] ^ 1])
    header = _tlv(
        0x30, _tlv(0x06, bytes.fromhex("2A8648CE3D0201")) + _tlv(0x06, bytes.fromhex("2A8648CE3D030107"))
    )
    compressed_spki = _tlv(0x30, header + _tlv(0x03, b"\x00" + compressed))
    assert _tlv(0x30, header + _tlv(0x03, b"\x00" + der[-65:])) == der  # the same builder, uncompressed
    cases = {
        ocmf.OCMF_KEY_INVALID: [
            b"",
            b"\x30\x00",
            der + b"\x00",
            off_curve,
            rsa_key.public_bytes(*spki),
            compressed,
            compressed_spki,
            der.replace(b"\x03\x42\x00", b"\x03\x42\x01"),
        ],
        ocmf.OCMF_UNSUPPORTED_ALGORITHM: [p521.public_bytes(*spki)],
    }
    for reason, keys in cases.items():
        for key in keys:
            assert _reason(lambda k=key: ocmf.load_meter_key(k)) == reason, key.hex()
    assert _reason(lambda: ocmf.load_meter_key(der.hex())) == ocmf.OCMF_KEY_INVALID  # type: ignore[arg-type]
    assert ocmf.algorithm_for_key(der) == "ECDSA-secp256r1-SHA256"


def test_registration_policy() -> None:
    for name in ("ECDSA-secp192r1-SHA256", "ECDSA-secp192k1-SHA256"):
        assert _reason(lambda n=name: ocmf.check_registrable(n)) == ocmf.OCMF_INSECURE_CURVE
        assert ocmf.check_registrable(name, allow_insecure_192=True) == name
    assert ocmf.check_registrable("ECDSA-brainpoolP256r1-SHA256") == "ECDSA-brainpool256r1-SHA256"
    assert ocmf.check_registrable("ECDSA-secp384r1-SHA256") == "ECDSA-secp384r1-SHA256"
    assert (
        _reason(lambda: ocmf.check_registrable("ECDSA-secp521r1-SHA256")) == ocmf.OCMF_UNSUPPORTED_ALGORITHM
    )


# ---- DER ---------------------------------------------------------------------------------------------------


def test_non_canonical_der_is_refused(signed: tuple[str, bytes, Any]) -> None:
    record, public_der, _ = signed
    section = json.loads(record.split("|")[2])
    r, s = ocmf.decode_der_signature(bytes.fromhex(section["SD"]), ocmf.CURVES["secp256r1"].n)
    n = ocmf.CURVES["secp256r1"].n
    ints = _tlv(0x02, _der_int(r)) + _tlv(0x02, _der_int(s))
    variants = {
        "extra leading zero": _tlv(0x30, _tlv(0x02, _der_int(r, extra_zeros=1)) + _tlv(0x02, _der_int(s))),
        "negative r": _tlv(0x30, _tlv(0x02, b"\x80" + _der_int(r)) + _tlv(0x02, _der_int(s))),
        "long-form outer length": _tlv(0x30, ints, long_form=True),
        "long-form integer length": _tlv(
            0x30, _tlv(0x02, _der_int(r), long_form=True) + _tlv(0x02, _der_int(s))
        ),
        "trailing bytes": _tlv(0x30, ints) + b"\x00",
        "trailing element": _tlv(0x30, ints + _tlv(0x02, b"\x01")),
        "indefinite length": b"\x30\x80" + ints + b"\x00\x00",
        "r = 0": _tlv(0x30, _tlv(0x02, b"\x00") + _tlv(0x02, _der_int(s))),
        "s = 0": _tlv(0x30, _tlv(0x02, _der_int(r)) + _tlv(0x02, b"\x00")),
        "s = n": _tlv(0x30, _tlv(0x02, _der_int(r)) + _tlv(0x02, _der_int(n))),
        "s + n": _tlv(0x30, _tlv(0x02, _der_int(r)) + _tlv(0x02, _der_int(s + n))),
        "r >= n": _tlv(0x30, _tlv(0x02, _der_int(r + n)) + _tlv(0x02, _der_int(s))),
        "wrong tag": _tlv(0x31, ints),
        "truncated": _tlv(0x30, ints)[:-1],
        "empty sequence": b"\x30\x00",
        "raw r||s": r.to_bytes(32, "big") + s.to_bytes(32, "big"),
    }
    for name, der in variants.items():
        altered = _with_signature(record, {**section, "SD": der.hex()})
        assert _reason(lambda a=altered: _verify(a, public_der)) == ocmf.OCMF_DER_NONCANONICAL, name


def test_the_non_canonical_secp192r1_sample_holds_a_valid_signature(samples: list[dict[str, Any]]) -> None:
    # Re-encoded canonically, sample 21's (r, s) verifies: it is refused for its encoding alone.
    sample = samples[NON_CANONICAL_DER_SAMPLE]
    record = ocmf.parse_record(sample["ocmf"])
    der = record.signature
    r, s = int.from_bytes(der[4:28], "big"), int.from_bytes(der[30:], "big")
    canonical = _tlv(0x30, _tlv(0x02, _der_int(r)) + _tlv(0x02, _der_int(s))).hex()
    fixed = _with_signature(sample["ocmf"], {"SA": record.SA, "SD": canonical})
    _verify(fixed, bytes.fromhex(sample["public_key_hex"]))


# ---- signature section encodings -------------------------------------------------------------------------


def test_signature_encodings(signed: tuple[str, bytes, Any]) -> None:
    record, public_der, _ = signed
    section = json.loads(record.split("|")[2])
    der = bytes.fromhex(section["SD"])
    b64 = base64.b64encode(der).decode()
    _verify(_with_signature(record, {**section, "SD": section["SD"].lower()}), public_der)
    _verify(
        _with_signature(record, {**section, "SD": b64, "SE": "base64", "SM": "application/x-der"}), public_der
    )
    bad = [
        {"SD": section["SD"][:-1]}, {"SD": section["SD"] + "G0"}, {"SD": " " + section["SD"]}, {"SD": ""},
        {"SD": b64, "SE": "hex"}, {"SD": "AA", "SE": "base64"}, {"SD": "AA=", "SE": "base64"},
        {"SD": "AB==", "SE": "base64"}, {"SD": "AA-_", "SE": "base64"}, {"SD": b64 + "\n", "SE": "base64"},
        {"SD": "", "SE": "base64"}, {"SD": "A===", "SE": "base64"},
        {"SD": section["SD"], "SE": "HEX"}, {"SD": section["SD"], "SE": "base32"},
        {"SD": section["SD"], "SM": "application/x-p1363"},
    ]  # fmt: skip
    for changes in bad:
        altered = _with_signature(record, {"SA": section["SA"], **changes})
        assert _reason(lambda a=altered: ocmf.parse_record(a)) == ocmf.OCMF_SIGNATURE_ENCODING, changes
    for broken in ({"SA": section["SA"]}, {"SD": 12}, {"SD": section["SD"], "SA": 1}):
        assert _reason(lambda b=broken: ocmf.parse_record(_with_signature(record, b))) == ocmf.OCMF_FORMAT


# ---- structure, JSON and values ---------------------------------------------------------------------------


def test_record_structure(signed: tuple[str, bytes, Any]) -> None:
    record, _, _ = signed
    _, payload, signature = record.split("|")
    pipe_in_string = _payload(ID="a|b").decode()
    cases: dict[str, list[Any]] = {
        ocmf.OCMF_FORMAT: [
            f"ocmf|{payload}|{signature}", f" OCMF|{payload}|{signature}", f"{payload}|{signature}",
            f"OCMF|{payload}|{signature}|3059", f"OCMF|{pipe_in_string}|{signature}", f"OCMF|{payload}",
            f"OCMF|[{payload}]|{signature}", f"OCMF|{payload}|[]", f"OCMF|{payload[:-1]}|{signature}",
            f"OCMF|{payload}{{}}|{signature}", "OCMF||", 42,
            b"OCMF|" + payload.encode().replace(b"ESCROW", b"\xff\xfe") + b"|" + signature.encode(),
            "OCMF|" + payload.replace("ESCROW", "\ud800") + "|" + signature,
        ],
        ocmf.OCMF_TOO_LARGE: [
            record + " " * (ocmf.MAX_RECORD_BYTES - len(record) + 1),
            (record + " " * (ocmf.MAX_RECORD_BYTES - len(record) + 1)).encode(),
            record + "é" * ((ocmf.MAX_RECORD_BYTES - len(record)) // 2 + 1),
        ],
    }  # fmt: skip
    for reason, records in cases.items():
        for data in records:
            assert _reason(lambda d=data: ocmf.parse_record(d)) == reason, repr(data)[:80]
    at_limit = record[:-1] + " " * (ocmf.MAX_RECORD_BYTES - len(record)) + "}"
    assert ocmf.parse_record(bytearray(at_limit.encode())).raw == at_limit.encode()


def test_strict_json(signed: tuple[str, bytes, Any]) -> None:
    record, _, _ = signed
    _, payload, signature = record.split("|")
    deep = payload.replace('"PG":"T1"', '"PG":"T1","XV":' + "[" * 8 + "1" + "]" * 8)  # depth 9
    deepest = payload.replace('"PG":"T1"', '"PG":"T1","XV":' + "[" * 7000 + "]" * 7000)
    cases = {
        ocmf.OCMF_DUPLICATE_KEY: [
            payload.replace('"PG":"T1"', '"PG":"T1","PG":"T1"'),
            payload.replace('"ST":"G"', '"ST":"G","ST":"G"'),
            payload.replace('"PG":"T1"', '"PG":"T1","LC":{"LR":1,"LR":2}'),
        ],
        ocmf.OCMF_VALUE_INVALID: [
            payload.replace("1234.5678", "NaN"), payload.replace("1234.5678", "Infinity"),
            payload.replace("1234.5678", "-Infinity"), payload.replace('"VERIFIED"', "NaN"),
        ],
        ocmf.OCMF_FORMAT: [
            deep, deepest, payload.replace("1234.5678", "01234.5678"), payload.replace("true", "True"),
            payload.replace('"GI":"ESCROW-SIM"', '"GI":"\x01"'), payload.replace("1234.5678", "1234."),
        ],
    }  # fmt: skip
    for reason, payloads in cases.items():
        for altered in payloads:
            assert _reason(lambda a=altered: ocmf.parse_record(f"OCMF|{a}|{signature}")) == reason, altered
    at_depth = payload.replace('"PG":"T1"', '"PG":"T1","XV":' + "[" * 7 + "1" + "]" * 7)  # depth 8: fine
    assert ocmf.parse_record(f"OCMF|{at_depth}|{signature}").PG == "T1"
    duplicate_sd = signature[:-1] + ',"SD":"00"}'
    assert _reason(lambda: ocmf.parse_record(f"OCMF|{payload}|{duplicate_sd}")) == ocmf.OCMF_DUPLICATE_KEY


def _parse_payload(payload: bytes) -> ocmf.OcmfRecord:
    return ocmf.parse_record(b"OCMF|" + payload + b'|{"SD":"3006020101020101"}')


@pytest.mark.parametrize(
    ("rv", "reason"),
    [
        ("1" * 33, ocmf.OCMF_VALUE_INVALID),  # token too long
        ("1.0000000000001", ocmf.OCMF_VALUE_INVALID),  # 13 decimal places
        ("1e16", ocmf.OCMF_VALUE_INVALID),  # 10**16
        ("0e99", ocmf.OCMF_VALUE_INVALID),
        ("1e-13", ocmf.OCMF_VALUE_INVALID),
        ("-1", ocmf.OCMF_VALUE_INVALID),
        ("-0", ocmf.OCMF_VALUE_INVALID),
        ('" 12.5 "', ocmf.OCMF_VALUE_INVALID),  # padding on the left only
        ('"1e3"', ocmf.OCMF_VALUE_INVALID),
        ('"+1"', ocmf.OCMF_VALUE_INVALID),
        ('"1_000"', ocmf.OCMF_VALUE_INVALID),
        ('"١٢"', ocmf.OCMF_VALUE_INVALID),  # Arabic-Indic digits: Decimal would take them
        ('""', ocmf.OCMF_VALUE_INVALID),
        ('"' + " " * 30 + '1.5"', ocmf.OCMF_VALUE_INVALID),
        ("true", ocmf.OCMF_FORMAT),
        ("[1]", ocmf.OCMF_FORMAT),
        ("null", ocmf.OCMF_FORMAT),
    ],
)
def test_reading_value_refusals(rv: str, reason: str) -> None:
    assert _reason(lambda: _parse_payload(_payload(readings=[_reading("B", rv)]))) == reason


@pytest.mark.parametrize(
    ("rv", "expected"),
    [("0", "0"), ("0.0", "0.0"), ("2935.600", "2935.600"), ("1E+15", "1E+15"),
     ("1.606848e7", "1.606848E+7"), ('"       9.038"', "9.038"), ('"0000123.40"', "123.40"), ('"30"', "30"),
     ("9" * 16, "9" * 16),
     ("1e-12", "1E-12"), ("0.000000000001", "1E-12")],
)  # fmt: skip
def test_reading_values_are_exact(rv: str, expected: str) -> None:
    value = _parse_payload(_payload(readings=[_reading("B", rv)])).readings[0].RV
    assert (
        value is not None and value == Decimal(expected) and value.as_tuple() == Decimal(expected).as_tuple()
    )


@pytest.mark.parametrize(
    "tm",
    ["2019-08-13T10:03:15,000+0000", "2019-08-13T10:03:15.000+0000 S", "2019-08-13T10:03:15,00+0000 S",
     "2019-08-13T10:03:15,000Z S", "2019-08-13T10:03:15,000+00:00 S", "2019-08-13 10:03:15,000+0000 S",
     "2019-13-13T10:03:15,000+0000 S", "2019-02-30T10:03:15,000+0000 S", "2019-08-13T24:00:00,000+0000 S",
     "2019-08-13T10:60:15,000+0000 S", "2019-08-13T10:03:60,000+0000 S", "2019-08-13T10:03:15,000+2400 S",
     "2019-08-13T10:03:15,000+0060 S", "2019-08-13T10:03:15,000+0000 Q", "2019-08-13T10:03:15,000+0000  S",
     "2019-08-13T10:03:15,000+0000 S ", "2019-08-13T10:03:15,000+0000 s", "19-08-13T10:03:15,000+0000 S",
     "0000-08-13T10:03:15,000+0000 S", "２019-08-13T10:03:15,000+0000 S", ""],
)  # fmt: skip
def test_malformed_times_are_refused(tm: str) -> None:
    assert (
        _reason(lambda: _parse_payload(_payload(readings=[_reading("B", "1", tm=tm)])))
        == ocmf.OCMF_TIME_INVALID
    )


def test_times_parse_exactly() -> None:
    moment, status = ocmf.parse_time("2019-08-13T10:03:15,250-0130 R")
    assert status == "R" and moment.isoformat() == "2019-08-13T10:03:15.250000-01:30"
    later, _ = ocmf.parse_time("2019-08-13T11:33:15,251+0000 S")
    assert later - moment == timedelta(milliseconds=1)  # instants, compared after the offsets


def test_field_rules() -> None:
    cases: dict[str, list[bytes]] = {
        ocmf.OCMF_FORMAT: [
            _payload(readings=[]), _payload().replace(b'"RD":[', b'"RD":{"x":[').replace(b"]}", b"]}}"),
            _payload(readings=[_reading("B", "1", TM=None)]), _payload(readings=[{"TX": "B", "ST": "G"}]),
            _payload(readings=[{"TM": "2024-05-01T10:00:00,000+0000 S", "TX": "B"}]),
            _payload(readings=[_reading("B", "1"), {"RI": "1-b:2.8.0", "RV": "#2"}]),  # RI without RU
            _payload(readings=[{"TM": "2024-05-01T10:00:00,000+0000 S", "RV": "#1", "ST": "G"}]),  # no RU
            _payload(readings=[_reading("B", "1", TX=1)]),
            _payload(readings=[_reading("B", "1", RI=5, RU=6)]),
            _payload(readings=[42]), _payload(IS="true"), _payload(IF="RFID_NONE"), _payload(IF=[1]),
            _payload(GI=7), _payload(ID=None), _payload(PG=1),
            _payload().replace(b'"PG":"T1",', b""),
        ],
        ocmf.OCMF_VALUE_INVALID: [
            _payload(readings=[_reading("Q", "1")]), _payload(readings=[_reading("B", "1", ST="OK")]),
            _payload(readings=[_reading("B", "1", EF="Ex")]), _payload(PG="T01"), _payload(PG="X1"),
            _payload(PG="T"), _payload(PG="t1"), _payload(PG="T" + "9" * 19), _payload(TT="x" * 251),
        ],
    }  # fmt: skip
    for reason, payloads in cases.items():
        for payload in payloads:
            assert _reason(lambda p=payload: _parse_payload(p)) == reason, payload


def test_inheritance_within_a_record() -> None:
    readings = [
        _reading("B", "10.000", CL="#0"),
        {"RV": "#10.500"},
        {"TX": "T", "RV": "#11", "TM": "2024-05-01T10:15:00,000+0000 S"},
        {"TX": "E", "RV": "#12.25", "EF": "t", "RI": "1-b:1.8.0", "RU": "Wh"},
    ]
    record = _parse_payload(_payload(readings=readings))
    assert [r.TX for r in record.readings] == ["B", "B", "T", "E"]
    assert [r.TM[11:19] for r in record.readings] == ["10:00:00", "10:00:00", "10:15:00", "10:15:00"]
    assert [r.RU for r in record.readings] == ["kWh", "kWh", "kWh", "Wh"]
    assert {(r.RI, r.RT, r.ST) for r in record.readings} == {("1-b:1.8.0", "AC", "G")}
    assert [r.EF for r in record.readings] == ["", "", "", "t"] and Decimal(0) == record.readings[3].CL
    assert record.pagination_context == "T" and record.pagination_number == 1
    event_only = _parse_payload(
        _payload(readings=[{"TM": "2024-05-01T10:00:00,000+0000 U", "EF": "E", "ST": "E"}])
    )
    assert event_only.readings[0].RV is None and event_only.readings[0].TX is None


# ---- exact decimals: properties ---------------------------------------------------------------------------

# (coefficient, exponent) of in-bounds values: fewer than 17 digits left of the point, at most 12 right
in_bounds = st.integers(ocmf.MIN_DECIMAL_EXPONENT, ocmf.MAX_DECIMAL_ADJUSTED).flatmap(
    lambda exponent: st.tuples(st.integers(0, 10 ** min(16, 16 - exponent) - 1), st.just(exponent))
)
bounded_decimals = in_bounds.map(lambda pair: Decimal(pair[0]).scaleb(pair[1]))


@given(in_bounds, st.sampled_from(["plain", "exponent", "upper"]))
def test_tokens_parse_to_the_exact_decimal(pair: tuple[int, int], style: str) -> None:
    digits, exponent = pair
    value = Decimal(digits).scaleb(exponent)
    token = {
        "plain": format(value, "f"),
        "exponent": f"{digits}e{exponent}",
        "upper": f"{digits}E{exponent:+d}",
    }[style]
    if len(token) <= ocmf.MAX_NUMBER_CHARS:
        parsed = ocmf.decimal_from_token(token)
        assert parsed == value and parsed.as_tuple() == Decimal(token).as_tuple()


@given(bounded_decimals, st.integers(0, 8), st.integers(0, 4))
def test_padded_strings_parse_to_the_same_decimal(value: Decimal, spaces: int, zeros: int) -> None:
    text = " " * spaces + "0" * zeros + format(value, "f")
    if len(text) <= ocmf.MAX_NUMBER_CHARS:
        assert ocmf.decimal_from_padded_string(text) == value


@given(bounded_decimals)
def test_wh_to_kwh_is_exact(value: Decimal) -> None:
    kwh = ocmf.to_kwh(value, "Wh")
    assert kwh * 1000 == value and kwh == value.scaleb(-3)
    assert ocmf.to_kwh(value, "kWh") is value


@given(st.integers(16, 40), st.integers(1, 9))
def test_out_of_range_values_are_refused(power: int, leading: int) -> None:
    assert _reason(lambda: ocmf.decimal_from_token(f"{leading}e{power}")) == ocmf.OCMF_VALUE_INVALID
    assert _reason(lambda: ocmf.decimal_from_token(f"{leading}e-{power - 3}")) == ocmf.OCMF_VALUE_INVALID


def test_kwh_refusals() -> None:
    assert _reason(lambda: ocmf.to_kwh(Decimal(30), "sec")) == ocmf.OCMF_UNIT_UNSUPPORTED
    assert _reason(lambda: ocmf.to_kwh(Decimal("NaN"), "Wh")) == ocmf.OCMF_VALUE_INVALID
    assert _reason(lambda: ocmf.to_kwh(1.5, "Wh")) == ocmf.OCMF_VALUE_INVALID  # type: ignore[arg-type]
    assert _reason(lambda: ocmf.to_kwh(Decimal("1" * 120 + ".5"), "Wh")) == ocmf.OCMF_VALUE_INVALID
