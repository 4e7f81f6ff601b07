"""POLE registration: a valid pole, every refusal reason, replayed and foreign PoP records, 192-bit curves.

The meter side (private keys, sign_payload) and the operator side (Ed25519 seed) build the request; the
registry side sees only the body bytes, the operator signature and the PoP record bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from escrow.core import ocmf, registry
from escrow.core.registry import PoleBody, RegistryError
from escrow.core.signing import ed25519_public_key, ed25519_sign

CHAIN_ID = hashlib.sha256(b"test chain").digest()
OTHER_CHAIN_ID = hashlib.sha256(b"other chain").digest()
NOW = 1_714_557_600
P256 = "ECDSA-secp256r1-SHA256"
P192 = "ECDSA-secp192r1-SHA256"
RI = "1-b:1.8.0"


# ---- the meter and operator side ---------------------------------------------------------------------


@dataclasses.dataclass
class Request:
    body: bytes
    signature: bytes
    pop_record: bytes


def _meter(algorithm: str = P256) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    curve = ocmf.ALGORITHMS[algorithm].backend
    assert curve is not None
    private_key = ec.generate_private_key(curve())
    der = private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_key, der


def _pop_record(
    private_key: ec.EllipticCurvePrivateKey, algorithm: str, record_id: str, ri: str = RI, ru: str = "kWh"
) -> bytes:
    payload = {
        "FV": "1.0", "GI": "ESCROW-SIM", "GS": "POLE-0001", "GV": "1.0.0", "PG": "F1", "MV": "Sim",
        "MM": "SM-1", "MS": "SM-0001", "IS": True, "IL": "VERIFIED", "IT": "LOCAL", "ID": record_id,
        "RD": [{"TM": "2024-05-01T10:00:00,000+0000 S", "RV": 1.5, "RI": ri, "RU": ru, "ST": "G"}],
    }  # fmt: skip
    text = json.dumps(payload, separators=(",", ":")).encode()
    return ocmf.sign_payload(text, private_key, algorithm).encode()


def _request(
    algorithm: str = P256,
    meter: tuple[ec.EllipticCurvePrivateKey, bytes] | None = None,
    pop: bytes | None = None,
    challenge: str | None = None,
    seed: bytes = b"\x07" * 32,
    chain_id: bytes = CHAIN_ID,
    **fields: Any,
) -> Request:
    private_key, der = meter if meter is not None else _meter(algorithm)
    values: dict[str, Any] = {
        "pole_id": "pole-1", "evse_id": "DE*ESC*E0001*1", "meter_public_key": der,
        "meter_algorithm": algorithm, "RI": RI, "RU": "kWh", "operator_key": ed25519_public_key(seed),
        "expiry": NOW + 600,
    }  # fmt: skip
    values.update(fields)
    if challenge is None:
        challenge = registry.registration_challenge(
            chain_id, values["pole_id"], values["evse_id"], values["operator_key"]
        )
    if pop is None:
        pop = _pop_record(private_key, algorithm, challenge, values["RI"], values["RU"])
    values.setdefault("pop_record_hash", hashlib.sha256(pop).digest())
    body = PoleBody(**values).to_bytes()
    return Request(body, ed25519_sign(seed, registry.pole_message(chain_id, body)), pop)


def _verify(request: Request, **options: Any) -> PoleBody:
    return registry.verify_pole(CHAIN_ID, request.body, request.signature, request.pop_record, NOW, **options)


def _reason(request: Request, **options: Any) -> str:
    with pytest.raises(RegistryError) as info:
        _verify(request, **options)
    return info.value.reason


# ---- tests ---------------------------------------------------------------------------------------------


def test_valid_registration_round_trips() -> None:
    request = _request()
    pole = _verify(request)
    assert pole.pole_id == "pole-1" and pole.RU == "kWh" and pole.meter_algorithm == P256
    assert pole.to_bytes() == request.body
    assert PoleBody.from_bytes(pole.to_bytes()) == pole


def test_challenge_is_deterministic_bound_and_fits_ocmf_id() -> None:
    key = b"\x01" * 32
    challenge = registry.registration_challenge(CHAIN_ID, "p", "e", key)
    assert challenge == registry.registration_challenge(CHAIN_ID, "p", "e", key)
    assert len(challenge) == registry.CHALLENGE_CHARS == 20
    assert set(challenge) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
    others = {
        registry.registration_challenge(OTHER_CHAIN_ID, "p", "e", key),
        registry.registration_challenge(CHAIN_ID, "q", "e", key),
        registry.registration_challenge(CHAIN_ID, "p", "f", key),
        registry.registration_challenge(CHAIN_ID, "p", "e", b"\x02" * 32),
        registry.registration_challenge(CHAIN_ID, "pe", "", key),  # canonical encoding: no ambiguity
    }
    assert challenge not in others and len(others) == 5


def test_wh_registration_accepted() -> None:
    assert _verify(_request(RU="Wh")).RU == "Wh"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda body: body + b"\x00",
        lambda body: body[:-1],
        lambda body: b"",
        lambda body: b"\xff" * 4 + body[4:],
    ],
)
def test_malformed_body(mutate: Any) -> None:
    request = _request()
    request.body = mutate(request.body)
    assert _reason(request) == "POLE_MALFORMED"


@pytest.mark.parametrize(
    "fields",
    [
        {"RU": "MWh"},
        {"pole_id": ""},
        {"evse_id": "DE ESC"},
        {"RI": ""},
        {"meter_algorithm": "ECDSA-brainpoolP256r1-SHA256"},  # not the canonical spelling
        {"meter_algorithm": "ECDSA-ed25519-SHA512"},
    ],
)
def test_malformed_fields(fields: dict[str, Any]) -> None:
    assert _reason(_request(**fields)) == "POLE_MALFORMED"


def test_oversized_pop_record_is_malformed() -> None:
    pop = b"x" * (ocmf.MAX_RECORD_BYTES + 1)
    assert _reason(_request(pop=pop)) == "POLE_MALFORMED"


def test_expired() -> None:
    assert _reason(_request(expiry=NOW - 1)) == "POLE_EXPIRED"
    assert _verify(_request(expiry=NOW)).expiry == NOW


def test_operator_key_invalid() -> None:
    request = _request(operator_key=b"\x00" * 32)  # y = 0: a point of order 4
    assert _reason(request) == "POLE_KEY_INVALID"


def test_meter_key_invalid_or_not_matching_algorithm() -> None:
    private_key, der = _meter()
    garbage = _request(meter=(private_key, der[:-1] + bytes([der[-1] ^ 1])))  # point off the curve
    assert _reason(garbage) == "POLE_KEY_INVALID"
    assert _reason(_request(meter=(private_key, b"\x30\x00"))) == "POLE_KEY_INVALID"
    other_curve = _request(algorithm="ECDSA-secp384r1-SHA256", meter=_meter(P256), pop=b"OCMF|{}|{}")
    assert _reason(other_curve) == "POLE_KEY_INVALID"


def test_192_bit_curve_refused_unless_allowed() -> None:
    request = _request(algorithm=P192)
    assert _reason(request) == "POLE_INSECURE_CURVE"
    assert _verify(request, allow_insecure_192=True).meter_algorithm == P192


def test_operator_signature_invalid() -> None:
    request = _request()
    request.signature = bytes([request.signature[0] ^ 1]) + request.signature[1:]
    assert _reason(request) == "POLE_SIGNATURE_INVALID"
    request.signature = b"\x00" * 10
    assert _reason(request) == "POLE_SIGNATURE_INVALID"


def test_signed_for_another_chain_or_by_another_key() -> None:
    assert _reason(_request(chain_id=OTHER_CHAIN_ID)) == "POLE_SIGNATURE_INVALID"
    request = _request()
    request.signature = _request(seed=b"\x08" * 32).signature
    assert _reason(request) == "POLE_SIGNATURE_INVALID"


def test_pop_record_not_the_signed_one() -> None:
    meter = _meter()
    request = _request(meter=meter)
    request.pop_record = _request(meter=meter, pole_id="pole-2").pop_record
    assert _reason(request) == "POLE_POP_MISMATCH"


def test_pop_record_of_another_pole_rejected() -> None:
    meter = _meter()
    other = _request(meter=meter, pole_id="pole-2").pop_record  # the challenge of pole-2
    assert _reason(_request(meter=meter, pop=other)) == "POLE_POP_INVALID"


def test_pop_record_for_another_chain_rejected() -> None:
    private_key, der = _meter()
    challenge = registry.registration_challenge(
        OTHER_CHAIN_ID, "pole-1", "DE*ESC*E0001*1", ed25519_public_key(b"\x07" * 32)
    )
    assert _reason(_request(meter=(private_key, der), challenge=challenge)) == "POLE_POP_INVALID"


def test_pop_record_signed_by_another_meter_rejected() -> None:
    _, der = _meter()
    thief_key, _ = _meter()
    assert _reason(_request(meter=(thief_key, der))) == "POLE_POP_INVALID"


def test_pop_record_with_other_register_or_unit_rejected() -> None:
    private_key, der = _meter()
    probe = _request(meter=(private_key, der))
    pole = PoleBody.from_bytes(probe.body)
    challenge = registry.registration_challenge(CHAIN_ID, pole.pole_id, pole.evse_id, pole.operator_key)
    for ri, ru in (("1-b:2.8.0", "kWh"), (RI, "Wh")):
        pop = _pop_record(private_key, P256, challenge, ri, ru)
        assert _reason(_request(meter=(private_key, der), pop=pop)) == "POLE_POP_INVALID"


def test_pop_record_unparseable_rejected() -> None:
    assert _reason(_request(pop=b"OCMF|{}|{}")) == "POLE_POP_INVALID"
    assert _reason(_request(pop=os.urandom(64))) == "POLE_POP_INVALID"


def test_unique_meter_key_and_evse_id() -> None:
    pole = _verify(_request())
    registry.check_unique(pole, set(), set())
    registry.check_unique(pole, {_meter()[1]}, {"DE*ESC*E0002*1"})
    with pytest.raises(RegistryError) as info:
        registry.check_unique(pole, {pole.meter_public_key}, set())
    assert info.value.reason == "POLE_METER_IN_USE"
    with pytest.raises(RegistryError) as info:
        registry.check_unique(pole, [], ["de*esc*e0001*1"])
    assert info.value.reason == "POLE_EVSE_IN_USE"


def test_reasons_are_checked_cheapest_first() -> None:
    # Expired and badly signed with a foreign PoP: expiry is reported, not the later failures.
    request = _request(expiry=NOW - 1, pop=b"OCMF|{}|{}")
    request.signature = b"\x00" * 64
    assert _reason(request) == "POLE_EXPIRED"
    insecure = _request(algorithm=P192, pop=b"OCMF|{}|{}")
    insecure.signature = b"\x00" * 64
    assert _reason(insecure) == "POLE_INSECURE_CURVE"
