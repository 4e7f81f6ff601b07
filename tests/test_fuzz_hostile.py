"""Hostile input (issue 6 item 3): property-based fuzzing of every decoder, of every request the server
takes, and the named attacks (replays, a reading for someone else's session, a swapped meter key, a tariff
edited after signing, a double spend raced from two connections at once).

Three layers:

* library: every decoder fed random bytes and mutations of a valid encoding (byte flips, truncations,
  extensions, splices, oversized length prefixes) raises only its documented exception type, never an
  IndexError, a bare ValueError, a TypeError, an OverflowError or a RecursionError from inside;
* service: one in-process server for the module; mutated requests (and random bytes as the serialized
  protobuf, through a generic channel with identity serializers) are refused with a status whose
  ErrorInfo reason is in STATUS_BY_REASON and maps to that status, never INTERNAL or UNKNOWN, the server
  stays SERVING, and the byte-exact store digest (tests/test_service_bad_input.store_digest) is unchanged;
* scenarios: the attacks named in the issue, each checked for its exact reason and an unchanged store.

Example counts are modest (FUZZ_EXAMPLES below, SERVICE_EXAMPLES for calls over gRPC) so the module runs
in about a minute; raise them locally with the HYPOTHESIS_PROFILE machinery or by editing the constants.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import partial
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from service_harness import CURRENCY, Harness
from test_service_bad_input import Kit, register_pole, rid, store_digest

from clients.connection import Connection, EscrowError, call, error_from
from clients.issuer import Issuer
from clients.meter import SimulatedMeter
from clients.pole import Pole, PoleError, check_ack
from clients.wallet import Session, Wallet
from enclave.errors import AttestationError, QuoteFormatError, SealingError
from enclave.quote import parse_quote
from enclave.trusted.keybundle import KeyBundle, KeyBundleError
from enclave.trusted.sealing import EnclaveIdentity, KeyPolicy, Slot, seal, unseal
from enclave.verifier import verify_quote
from escrow.core import ocmf
from escrow.core.encoding import BodyError
from escrow.core.entries import SCHEMAS, PayloadError, decode_payload
from escrow.core.errors import CoreError
from escrow.core.ledger import Header, LedgerError
from escrow.core.notes import MintBody, MintError
from escrow.core.registry import PoleBody, RegistryError
from escrow.core.session import (
    AckBody,
    AttachBody,
    GetBody,
    SessionError,
    StopBody,
    signed_pair,
    split_signed_pair,
)
from escrow.core.spending import OpenBody, RedeemBody, SpendError
from escrow.core.tariff import Tariff, TariffError
from escrow.host.errors import STATUS_BY_REASON
from escrow.v1 import attestation_pb2, charging_pb2, ledger_pb2, notes_pb2, registry_pb2
from zk import bn254, envelope, pedersen, rangeproof, schnorr, stealth
from zk.errors import EncodingError, EnvelopeError, ProofError

Code = grpc.StatusCode
FUZZ_EXAMPLES = 60  # per library decoder: these are pure functions, most cost microseconds
SLOW_FUZZ_EXAMPLES = 25  # range-proof and quote verification cost milliseconds each
SERVICE_EXAMPLES = 20  # per gRPC method: each example is a call plus a store digest
RACES = 10

FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
SLOW_FUZZ = settings(max_examples=SLOW_FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
SERVICE = settings(max_examples=SERVICE_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))

# reasons a refusal of hostile input must never carry: each means the server broke, not the input
BROKEN_REASONS = {
    "INTERNAL",
    "ENCLAVE_ERROR",
    "ENCLAVE_HALTED",
    "STORE_INVALID",
    "STORE_FOREIGN",
    "STORE_ROLLED_BACK",
}


# === mutations ==============================================================================================


@st.composite
def mutation_of(draw: st.DrawFn, valid: bytes) -> bytes:
    """A hostile variant of ``valid``: never equal to it."""
    n = len(valid)
    kind = draw(st.sampled_from(["flip", "truncate", "extend", "splice", "delete", "length", "random"]))
    out = bytearray(valid)
    if kind == "flip" and n:
        for _ in range(draw(st.integers(1, 4))):
            out[draw(st.integers(0, n - 1))] ^= draw(st.integers(1, 255))
    elif kind == "truncate" and n:
        out = out[: draw(st.integers(0, n - 1))]
    elif kind == "extend":
        out += draw(st.binary(min_size=1, max_size=64))
    elif kind == "splice":
        at = draw(st.integers(0, n))
        out[at:at] = draw(st.binary(min_size=1, max_size=32))
    elif kind == "delete" and n:
        at = draw(st.integers(0, n - 1))
        del out[at : at + draw(st.integers(1, 16))]
    elif kind == "length" and n:  # a huge or off-by-some big-endian length where a prefix may sit
        at = draw(st.integers(0, n - 1))
        width = draw(st.sampled_from([1, 2, 4, 8]))
        value = draw(
            st.sampled_from([0, 1, 2 ** (8 * width) - 1, 2 ** (8 * width - 1)]) | st.integers(0, 2**16)
        )
        out[at : at + width] = (value % 2 ** (8 * width)).to_bytes(width, "big")
    else:
        out = bytearray(draw(st.binary(max_size=max(2 * n, 64))))
    result = bytes(out)
    assume(result != valid)
    return result


def hostile(valid: bytes) -> st.SearchStrategy[bytes]:
    """Mutations of ``valid`` and plain random bytes."""
    return mutation_of(valid) | st.binary(max_size=256)


def only(errors: type[BaseException] | tuple[type[BaseException], ...], fn: Callable[[], object]) -> None:
    """Run fn; it may succeed or raise one of ``errors``, nothing else (anything else propagates)."""
    try:
        fn()
    except errors as e:
        reason = getattr(e, "reason", None)
        assert reason is None or isinstance(reason, str)


def refuses(errors: type[BaseException] | tuple[type[BaseException], ...], fn: Callable[[], object]) -> None:
    """fn must raise one of ``errors``."""
    with pytest.raises(errors):
        fn()


# === library: zk decoders ===================================================================================


VALID_POINT = bn254.point_to_bytes(pedersen.commit(123, 456))
VALID_SCALAR = bn254.scalar_to_bytes(bn254.ORDER - 2)
CONTEXT = b"fuzz-context"


@FUZZ
@given(st.data())
def test_point_and_scalar_decoders_raise_only_encoding_error(data: st.DataObject) -> None:
    point = data.draw(hostile(VALID_POINT) | st.binary(min_size=32, max_size=32))
    only(EncodingError, lambda: bn254.point_from_bytes(point))
    only(EncodingError, lambda: bn254.point_from_bytes(point, allow_identity=False))
    scalar = data.draw(hostile(VALID_SCALAR) | st.binary(min_size=32, max_size=32))
    only(EncodingError, lambda: bn254.scalar_from_bytes(scalar))


def test_point_and_scalar_boundaries() -> None:
    refuses(EncodingError, lambda: bn254.scalar_from_bytes(bn254.ORDER.to_bytes(32, "big")))
    refuses(EncodingError, lambda: bn254.scalar_from_bytes(b"\xff" * 32))
    refuses(EncodingError, lambda: bn254.point_from_bytes(b"\xff" * 32))
    refuses(EncodingError, lambda: bn254.point_from_bytes(bytes(31)))
    refuses(EncodingError, lambda: bn254.point_from_bytes(bytes(33)))


@pytest.fixture(scope="module")
def range_proof() -> tuple[list[bytes], bytes]:
    blindings = [pedersen.random_blinding(), pedersen.random_blinding()]
    proof = rangeproof.prove([5, 2**63], blindings, 64, CONTEXT)
    commitments = [bn254.point_to_bytes(pedersen.commit(v, b)) for v, b in zip([5, 2**63], blindings)]
    rangeproof.verify(commitments, proof, 64, CONTEXT)
    return commitments, proof


@SLOW_FUZZ
@given(data=st.data())
def test_range_proof_verifier_raises_only_proof_error(
    range_proof: tuple[list[bytes], bytes], data: st.DataObject
) -> None:
    commitments, proof = range_proof
    target = data.draw(st.sampled_from(["proof", "commitment", "bits"]))
    if target == "proof":
        bad = data.draw(mutation_of(proof))
        refuses(ProofError, lambda: rangeproof.verify(commitments, bad, 64, CONTEXT))
    elif target == "commitment":
        which = data.draw(st.integers(0, 1))
        changed = list(commitments)
        changed[which] = data.draw(hostile(commitments[which]))
        refuses(ProofError, lambda: rangeproof.verify(changed, proof, 64, CONTEXT))
    else:
        bits = data.draw(st.integers(-(2**70), 2**70) | st.sampled_from([0, 1, 7, 8, 16, 32, 65, 128]))
        assume(bits != 64)
        refuses(ProofError, lambda: rangeproof.verify(commitments, proof, bits, CONTEXT))


@FUZZ
@given(st.data())
def test_schnorr_verifiers_raise_only_proof_error(data: st.DataObject) -> None:
    blinding = pedersen.random_blinding()
    commitment = bn254.point_to_bytes(pedersen.commit(77, blinding))
    proof = schnorr.prove_public_amount(77, blinding, CONTEXT)
    schnorr.verify_public_amount(commitment, 77, proof, CONTEXT)
    target = data.draw(st.sampled_from(["proof", "commitment", "amount"]))
    if target == "proof":
        bad = data.draw(mutation_of(proof))
        refuses(ProofError, lambda: schnorr.verify_public_amount(commitment, 77, bad, CONTEXT))
        refuses(ProofError, lambda: schnorr.verify(commitment, bad, CONTEXT))
    elif target == "commitment":
        bad = data.draw(hostile(commitment))
        refuses(ProofError, lambda: schnorr.verify_public_amount(bad, 77, proof, CONTEXT))
        only(ProofError, lambda: schnorr.verify(bad, proof, CONTEXT))
    else:
        amount = data.draw(st.integers(-(2**80), 2**80))
        assume(amount != 77)
        refuses(ProofError, lambda: schnorr.verify_public_amount(commitment, amount, proof, CONTEXT))


@FUZZ
@given(st.data())
def test_envelope_open_raises_only_envelope_error(data: st.DataObject) -> None:
    private, public = envelope.generate_keypair()
    sealed = envelope.seal(public, b"an opening", CONTEXT)
    bad = data.draw(hostile(sealed))
    refuses(EnvelopeError, lambda: envelope.open_envelope(private, bad, CONTEXT))


@FUZZ
@given(st.binary(max_size=80))
def test_stealth_address_decoder_raises_only_stealth_error(data: bytes) -> None:
    only(stealth.StealthError, lambda: stealth.Address.from_bytes(data))


# === library: OCMF records and meter keys ===================================================================


METER = SimulatedMeter.generate()
RECORD = METER.begin(os.urandom(16)).encode()
RECORD_KEY = METER.public_key_der


def test_the_valid_record_parses_and_verifies() -> None:
    ocmf.verify_record(ocmf.parse_record(RECORD), RECORD_KEY)


@st.composite
def hostile_record(draw: st.DrawFn) -> bytes:
    """Byte mutations, and structural ones: a section or a JSON value replaced."""
    kind = draw(st.sampled_from(["bytes", "section", "json"]))
    if kind == "bytes":
        return draw(hostile(RECORD))
    head, payload, signature = RECORD.split(b"|")
    if kind == "section":
        junk = draw(
            st.sampled_from([b"", b"{}", b"[]", b"null", b"1e999", b"{" * 2000, b'"x"', b'{"a":1}'])
            | st.binary(max_size=40)
        )
        parts = [head, payload, signature]
        parts[draw(st.integers(0, 2))] = junk
        return b"|".join(parts)
    text = payload.decode()
    value = draw(
        st.sampled_from(
            [
                "null",
                "true",
                "-1",
                "1e308",
                "9" * 400,
                '""',
                "[]",
                "{}",
                '"\\u0000"',
                '"\\ud800"',
                "[" * 500 + "]" * 500,
                "0.0000000000000000001",
            ]
        )
    )
    key = draw(
        st.sampled_from(
            [
                '"PG"',
                '"RD"',
                '"FV"',
                '"IS"',
                '"IF"',
                '"TT"',
                '"RV"',
                '"TM"',
                '"ST"',
                '"RI"',
                '"RU"',
                '"EF"',
                '"GI"',
            ]
        )
    )
    at = text.find(key)
    if at < 0:
        return (text[:-1] + "," + key + ":" + value + "}").encode()  # type: ignore[no-any-return]
    colon = text.index(":", at)
    return f"{head.decode()}|{text[: colon + 1]}{value},{text[colon + 1 :]}|{signature.decode()}".encode()


@FUZZ
@given(hostile_record())
def test_ocmf_parse_and_verify_raise_only_ocmf_error(record: bytes) -> None:
    try:
        parsed = ocmf.parse_record(record)
    except ocmf.OcmfError:
        return
    only(ocmf.OcmfError, lambda: ocmf.verify_record(parsed, RECORD_KEY))


@FUZZ
@given(st.data())
def test_ocmf_meter_key_and_der_signature_decoders_raise_only_ocmf_error(data: st.DataObject) -> None:
    key = data.draw(hostile(RECORD_KEY))
    only(ocmf.OcmfError, lambda: ocmf.load_meter_key(key))
    der = data.draw(st.binary(max_size=80) | mutation_of(bytes.fromhex("3006020101020101")))
    only(ocmf.OcmfError, lambda: ocmf.decode_der_signature(der, 2**256 - 2**224 + 2**192 - 1))


# === library: sealed blobs ==================================================================================


ROOT = hashlib.sha256(b"fuzz root").digest()
ENCLAVE = EnclaveIdentity(
    mr_enclave=hashlib.sha256(b"fuzz build").digest(),
    mr_signer=hashlib.sha256(b"fuzz signer").digest(),
    isv_prod_id=1,
    isv_svn=3,
    debug=False,
)
SLOT = Slot(kind="enclave-state", object_id=b"main", version=1)
BLOB = seal(ROOT, ENCLAVE, KeyPolicy.MRENCLAVE, SLOT, b"secret state")


@FUZZ
@given(st.data())
def test_unseal_raises_only_sealing_error(data: st.DataObject) -> None:
    blob = data.draw(hostile(BLOB))
    refuses(SealingError, lambda: unseal(ROOT, ENCLAVE, blob, SLOT))


# === library: canonical bodies and ledger payloads (samples taken from the running server) ==================


@FUZZ
@given(st.data())
def test_canonical_body_decoders_raise_only_their_core_error(
    samples: dict[str, bytes], data: st.DataObject
) -> None:
    decoders: dict[str, tuple[Callable[[bytes], object], type[Exception]]] = {
        "mint": (MintBody.from_bytes, MintError),
        "open": (OpenBody.from_bytes, SpendError),
        "redeem": (RedeemBody.from_bytes, SpendError),
        "pole": (PoleBody.from_bytes, RegistryError),
        "tariff": (Tariff.from_bytes, TariffError),
        "attach": (AttachBody.from_bytes, SessionError),
        "ack": (AckBody.from_bytes, SessionError),
        "stop": (StopBody.from_bytes, SessionError),
        "get": (GetBody.from_bytes, SessionError),
        "signed_pair": (split_signed_pair, SessionError),
        "header": (Header.from_bytes, LedgerError),
        "key_bundle": (KeyBundle.from_bytes, KeyBundleError),
    }
    name = data.draw(st.sampled_from(sorted(decoders)))
    decoder, error = decoders[name]
    bad = data.draw(hostile(samples[name]), label=name)
    try:
        decoder(bad)
    except error as e:
        if isinstance(e, CoreError) and not isinstance(e, LedgerError):
            assert e.reason in STATUS_BY_REASON, e.reason  # a reason the server can send
    except BodyError as e:  # a BodyError escaping a from_bytes is allowed only where it is documented
        pytest.fail(f"{name}: bare BodyError {e!r} escaped instead of {error.__name__}")


@FUZZ
@given(st.data())
def test_ledger_payload_decoder_raises_only_payload_error(
    samples: dict[str, bytes], data: st.DataObject
) -> None:
    kinds = sorted(k for k in SCHEMAS if f"payload:{k}" in samples)
    kind = data.draw(st.sampled_from(kinds))
    bad = data.draw(hostile(samples[f"payload:{kind}"]), label=kind)
    try:
        decode_payload(kind, bad)
    except PayloadError as e:
        assert e.reason == "PAYLOAD_MALFORMED"


# === library: quotes ========================================================================================


@SLOW_FUZZ
@given(data=st.data())
def test_quote_parser_and_verifier_raise_only_attestation_errors(
    quote: tuple[bytes, str, Any], data: st.DataObject
) -> None:
    raw, collateral, policy = quote
    bad = data.draw(hostile(raw))
    only(QuoteFormatError, lambda: parse_quote(bad))
    refuses(AttestationError, lambda: verify_quote(bad, collateral, policy))


# === the module's server ====================================================================================


ISSUER_SEED = os.urandom(32)


@pytest.fixture(scope="module")
def h(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    tmp = tmp_path_factory.mktemp("fuzz-hostile")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ESCROW_NV_DIR", str(tmp / "nv"))
        harness = Harness(tmp / "data", tmp / "nv", Issuer(ISSUER_SEED), grace_ms=3_600_000)
        harness.boot()
        try:
            yield harness
        finally:
            # Harness.stop waits for the gRPC server without a bound; after this module's hostile traffic
            # that wait has been seen never to end (see the report with the stream-slot leak), so bound it.
            if harness.conn is not None:
                harness.conn.close()
                harness.conn = None
            if harness.server is not None:
                harness.server.stop(grace=None).wait(10)
                harness.server = None
            harness.stop()


@dataclass
class World:
    """What the service fuzz mutates: valid requests that are never applied, and the parties behind them."""

    car: Wallet
    kit: Kit  # pole of the OPENED and ATTACHED sessions
    opened: Session
    attached: Session
    mint: notes_pb2.MintRequest
    open: charging_pb2.OpenRequest
    attach: charging_pb2.AttachRequest
    stop: charging_pb2.StopRequest
    get: charging_pb2.GetSessionRequest
    register: registry_pb2.RegisterPoleRequest
    tariff: registry_pb2.PublishTariffRequest
    redeem: notes_pb2.RedeemRequest
    reading: charging_pb2.ReadingEnvelope


def new_pole(prefix: str) -> Pole:
    """A pole the server has never seen (its registration is built, never sent)."""
    tag = os.urandom(3).hex()
    meter = SimulatedMeter(ec.generate_private_key(ec.SECP256R1()))
    return Pole(os.urandom(32), meter, f"{prefix}-{tag}", f"DE*{prefix[:3]}*E{tag}", os.urandom(32))


def _open(h: Harness, wallet: Wallet, kit: Kit, deposit: int = 300) -> Session:
    request, session = wallet.open_request(
        h.a, wallet.prepare_deposit(h.a, deposit), kit.pole.pole_id, kit.pole.tariff_body, _deadline()
    )
    call(h.c.charging.Open, request)
    wallet.scan(h.c, h.a)
    return session


def open_at(h: Harness, wallet: Wallet, kit: Kit, deposit: int) -> tuple[charging_pb2.OpenRequest, Session]:
    """A signed OPEN of ``deposit`` at the kit's pole (built, not sent)."""
    prepared = wallet.prepare_deposit(h.a, deposit)
    return wallet.open_request(h.a, prepared, kit.pole.pole_id, kit.pole.tariff_body, _deadline())


def _deadline(seconds: float = 3600) -> int:
    return int((time.time() + seconds) * 1000)


@pytest.fixture(scope="module")
def world(h: Harness) -> World:
    car = Wallet(os.urandom(32))
    h.fund(car, *[500] * 6)
    kit = register_pole(h)
    opened = _open(h, car, kit)
    attached = _open(h, car, kit)
    h.attach(kit.pole, attached)
    spare_pole = register_pole(h, tariff=False)
    unregistered = new_pole("FUZZ")
    open_request, _ = car.open_request(
        h.a, car.prepare_deposit(h.a, 300), kit.pole.pole_id, kit.pole.tariff_body, _deadline()
    )
    stop = car.stop_request(h.a, dataclasses.replace(opened))
    return World(
        car=car,
        kit=kit,
        opened=opened,
        attached=attached,
        mint=h.issuer.mint_request(h.a, CURRENCY, car.address, 9),
        open=open_request,
        attach=kit.pole.attach_request(h.a, opened.session_id),
        stop=stop,
        get=car.get_request(h.a, opened),
        register=unregistered.register_request(h.a.chain_id),
        tariff=spare_pole.pole.tariff_request(h.a.chain_id, CURRENCY, 1, 1, sequence=1),
        redeem=car.redeem_request(h.a, CURRENCY, 500, b"fuzz-ref"),
        reading=kit.pole.reading_envelope(h.a, attached.session_id, kit.twin(1).begin(attached.session_id)),
    )


@pytest.fixture(scope="module")
def samples(h: Harness, world: World) -> dict[str, bytes]:
    """One valid encoding per decoder, taken from real requests and the real ledger."""
    ack = call(h.c.charging.GetSession, world.get)  # read-only: proves the GET sample is valid
    assert ack.state == charging_pb2.SESSION_STATE_OPENED
    attach_answer_body = AttachBody(
        session_id=world.opened.session_id,
        pole_id=world.kit.pole.pole_id,
        evse_id=world.kit.pole.evse_id,
        tariff_hash=hashlib.sha256(world.kit.pole.tariff_body).digest(),
        payout_address=world.kit.pole.payout.address().to_bytes(),
        enclave_key_id=h.a.enclave_key_id,
        expiry=int(time.time()) + 300,
    ).to_bytes()
    ack_body = b""
    for answer in h.c.charging.StreamReadings(iter([world.reading]), timeout=30):  # a replay: the old ACK
        ack_body = answer.ack_body
    out = {
        "mint": world.mint.mint_body,
        "open": world.open.open_body,
        "redeem": world.redeem.redeem_body,
        "pole": world.register.pole_body,
        "tariff": world.tariff.tariff_body,
        "attach": attach_answer_body,
        "ack": ack_body,
        "stop": world.stop.stop_body,
        "get": world.get.request_body,
        "key_bundle": h.a.bundle.to_bytes(),
    }
    out["signed_pair"] = signed_pair(attach_answer_body, bytes(64))
    for entry in h.c.entries():
        header = Header.from_bytes(entry.header)
        out.setdefault("header", entry.header)
        out.setdefault(f"payload:{header.kind}", entry.payload)
    for name in ("mint", "open", "redeem", "pole", "tariff", "attach", "stop", "get", "ack", "header"):
        assert out[name], name
    return out


@pytest.fixture(scope="module")
def quote(h: Harness) -> tuple[bytes, str, Any]:
    nonce = os.urandom(32)
    answer = call(h.c.attestation.GetQuote, attestation_pb2.GetQuoteRequest(nonce=nonce))
    policy = dataclasses.replace(h.policy(), nonce=nonce, key_bundle=answer.key_bundle)
    verify_quote(answer.quote, answer.collateral_json, policy)
    return answer.quote, answer.collateral_json, policy


# === service: helpers =======================================================================================


def snapshot(h: Harness) -> tuple[str, int]:
    head = call(h.c.ledger.GetHead, ledger_pb2.GetHeadRequest())
    return store_digest(h), head.head.height


def assert_serving(h: Harness) -> None:
    stub = health_pb2_grpc.HealthStub(h.c.channel)
    for service in ("", "escrow.v1.Notes", "escrow.v1.Charging", "escrow.v1.Registry"):
        answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


def assert_documented(error: EscrowError) -> None:
    """A refusal with a documented reason whose status is the one the table names."""
    assert error.code not in (Code.INTERNAL, Code.UNKNOWN), (error.code, error.reason, error.message)
    assert error.reason is not None, (error.code, error.message)
    assert error.reason in STATUS_BY_REASON, error.reason
    assert error.reason not in BROKEN_REASONS, (error.reason, error.message)
    assert STATUS_BY_REASON[error.reason] == error.code, (error.reason, error.code)


def stream(h: Harness, envelopes: Sequence[charging_pb2.ReadingEnvelope]) -> list[charging_pb2.SignedAck]:
    try:
        return list(h.c.charging.StreamReadings(iter(envelopes), timeout=30))
    except grpc.RpcError as e:
        raise error_from(e) from None


def refused_unchanged(h: Harness, action: Callable[[], object]) -> EscrowError:
    before = snapshot(h)
    try:
        answer = action()
    except EscrowError as e:
        assert_documented(e)
        assert snapshot(h) == before, (e.reason, e.message)
        return e
    raise AssertionError(f"a hostile request was accepted: {answer!r}")


def mutate_fields(data: st.DataObject, request: Any, fields: Sequence[str]) -> Any:
    """A copy of ``request`` with a fresh request id and one or two of its bytes fields made hostile."""
    out = type(request)()
    out.CopyFrom(request)
    if "request_id" in out.DESCRIPTOR.fields_by_name:
        out.request_id = rid()
    for name in data.draw(st.lists(st.sampled_from(fields), min_size=1, max_size=2, unique=True)):
        value = getattr(out, name)
        if isinstance(value, bytes):
            setattr(out, name, data.draw(hostile(value), label=name))
        else:  # a repeated bytes field: mutate one element, drop one, or add a hostile one
            items = list(value)
            how = data.draw(st.sampled_from(["mutate", "drop", "add", "duplicate"]))
            if how == "mutate" and items:
                i = data.draw(st.integers(0, len(items) - 1))
                items[i] = data.draw(hostile(items[i]), label=name)
            elif how == "drop" and items:
                items.pop(data.draw(st.integers(0, len(items) - 1)))
            elif how == "duplicate" and items:
                items.append(items[0])
            else:
                items.append(data.draw(st.binary(max_size=80), label=name))
            del value[:]
            value.extend(items)
    assume(out.SerializeToString() != request.SerializeToString() or "request_id" not in fields)
    return out


# === service: mutated requests ==============================================================================


UNARY = {  # method: (stub attribute, World attribute, bytes fields)
    "Mint": ("notes", "mint", ["mint_body", "issuer_signature", "amount_proof", "envelope"]),
    "Redeem": ("notes", "redeem", ["redeem_body", "owner_signatures", "amount_proof"]),
    "Open": (
        "charging",
        "open",
        ["open_body", "owner_signatures", "range_proof", "enclave_envelope", "change_envelope"],
    ),
    "Attach": ("charging", "attach", ["session_id", "attach_envelope"]),
    "Stop": ("charging", "stop", ["stop_body", "signature"]),
    "GetSession": ("charging", "get", ["session_id", "request_body", "signature"]),
    "RegisterPole": ("registry", "register", ["pole_body", "operator_signature", "meter_pop_record"]),
    "PublishTariff": ("registry", "tariff", ["tariff_body", "operator_signature"]),
}


@pytest.mark.parametrize("method", sorted(UNARY))
def test_mutated_requests_are_refused_with_a_documented_reason_and_change_nothing(
    h: Harness, world: World, method: str
) -> None:
    service, attribute, fields = UNARY[method]
    fn = getattr(getattr(h.c, service), method)

    @SERVICE
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        request = mutate_fields(data, getattr(world, attribute), fields)
        refused_unchanged(h, lambda: call(fn, request))

    run()
    assert_serving(h)


def test_mutated_reading_envelopes_are_refused_with_a_documented_reason_and_change_nothing(
    h: Harness, world: World
) -> None:
    @SERVICE
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        base = charging_pb2.ReadingEnvelope()
        base.CopyFrom(world.reading)
        # a fresh record (PG 2 after the accepted begin would be a valid reading: make it hostile)
        envelope_ = mutate_fields(data, base, ["session_id", "envelope"])
        if data.draw(st.booleans()):
            envelope_.sequence = data.draw(st.integers(0, 2**64 - 1))
        refused_unchanged(h, lambda: stream(h, [envelope_]))

    run()
    assert_serving(h)


# === service: random bytes as the serialized request ========================================================


METHODS = {
    "/escrow.v1.Notes/Mint": notes_pb2.MintRequest,
    "/escrow.v1.Notes/Redeem": notes_pb2.RedeemRequest,
    "/escrow.v1.Charging/Open": charging_pb2.OpenRequest,
    "/escrow.v1.Charging/Attach": charging_pb2.AttachRequest,
    "/escrow.v1.Charging/Stop": charging_pb2.StopRequest,
    "/escrow.v1.Charging/GetSession": charging_pb2.GetSessionRequest,
    "/escrow.v1.Registry/RegisterPole": registry_pb2.RegisterPoleRequest,
    "/escrow.v1.Registry/PublishTariff": registry_pb2.PublishTariffRequest,
    "/escrow.v1.Attestation/GetQuote": attestation_pb2.GetQuoteRequest,
    "/escrow.v1.Ledger/GetHead": ledger_pb2.GetHeadRequest,
}
STREAM_METHOD = "/escrow.v1.Charging/StreamReadings"


def raw_call(h: Harness, method: str, payload: bytes) -> EscrowError | None:
    """Send ``payload`` as the serialized request over a channel of its own (an unparsable request costs
    its connection a stream slot: see test_unparsable_requests_do_not_wedge_the_connection); the refusal,
    or None when the call succeeded."""
    with grpc.insecure_channel(f"127.0.0.1:{h.port}") as channel:
        try:
            if method == STREAM_METHOD:
                fn = channel.stream_stream(method, request_serializer=None, response_deserializer=None)
                list(fn(iter([payload]), timeout=30))
            else:
                channel.unary_unary(method, request_serializer=None, response_deserializer=None)(
                    payload, timeout=30
                )
        except grpc.RpcError as e:
            return error_from(e)
    return None


def parses(method: str, payload: bytes) -> bool:
    message = charging_pb2.ReadingEnvelope() if method == STREAM_METHOD else METHODS[method]()
    try:
        message.ParseFromString(payload)
    except DecodeError:
        return False
    return True


@st.composite
def raw_payload(draw: st.DrawFn, world: World, method: str) -> bytes:
    bases = {
        "/escrow.v1.Notes/Mint": world.mint,
        "/escrow.v1.Notes/Redeem": world.redeem,
        "/escrow.v1.Charging/Open": world.open,
        "/escrow.v1.Charging/Attach": world.attach,
        "/escrow.v1.Charging/Stop": world.stop,
        "/escrow.v1.Charging/GetSession": world.get,
        "/escrow.v1.Registry/RegisterPole": world.register,
        "/escrow.v1.Registry/PublishTariff": world.tariff,
        STREAM_METHOD: world.reading,
    }
    base = bases.get(method)
    if base is not None and draw(st.booleans()):
        payload = draw(mutation_of(base.SerializeToString()))
        # a mutation that only renamed the request id or added unknown fields is the valid request itself
        assume(not same_request(base, payload))
        return payload
    return draw(st.binary(max_size=512))


def same_request(base: Any, payload: bytes) -> bool:
    """Whether ``payload`` parses as ``base`` up to its request id and unknown fields."""
    parsed = type(base)()
    try:
        parsed.ParseFromString(payload)
    except DecodeError:
        return False
    parsed.DiscardUnknownFields()
    original = type(base)()
    original.CopyFrom(base)
    for message in (parsed, original):
        if "request_id" in message.DESCRIPTOR.fields_by_name:
            message.request_id = ""
    return parsed.SerializeToString(deterministic=True) == original.SerializeToString(deterministic=True)


READ_ONLY = {"/escrow.v1.Attestation/GetQuote", "/escrow.v1.Ledger/GetHead", "/escrow.v1.Charging/GetSession"}


@pytest.mark.parametrize("method", [*sorted(METHODS), STREAM_METHOD])
def test_random_bytes_as_the_request_never_break_the_server(h: Harness, world: World, method: str) -> None:
    """Bytes that parse as the request are refused with a documented reason (or, for a read, answered);
    bytes that do not parse are refused too. Either way nothing changes and the server stays SERVING.
    (What status an unparsable message gets is pinned separately, below.)"""

    @SERVICE
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        payload = data.draw(raw_payload(world, method))
        before = snapshot(h)
        error = raw_call(h, method, payload)
        if error is None:
            assert method in READ_ONLY or method == STREAM_METHOD, f"accepted: {payload.hex()}"
        elif parses(method, payload):
            assert_documented(error)
        else:
            assert error.code not in (Code.OK,)
        assert snapshot(h) == before

    run()
    assert_serving(h)


UNPARSABLE = [
    b"\x0a\x02\xff\xfe",  # field 1 (request_id, a string) holding invalid UTF-8
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",  # a varint tag longer than 10 bytes
    b"\x12\x10abc",  # field 2 with a length beyond the message
    b"\x07",  # wire type 7 does not exist
]


@pytest.mark.parametrize("payload", UNPARSABLE, ids=["bad-utf8", "long-varint", "short-field", "wire-type-7"])
def test_unparsable_request_is_invalid_argument_never_internal(h: Harness, payload: bytes) -> None:
    method = "/escrow.v1.Notes/Mint"
    assert not parses(method, payload)
    before = snapshot(h)
    error = raw_call(h, method, payload)
    assert error is not None
    assert snapshot(h) == before
    assert_serving(h)
    assert error.code in (Code.INVALID_ARGUMENT, Code.RESOURCE_EXHAUSTED), (error.code, error.message)


def test_unparsable_requests_do_not_wedge_the_connection(h: Harness) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{h.port}") as channel:
        fn = channel.unary_unary("/escrow.v1.Notes/Mint", request_serializer=None, response_deserializer=None)
        for _ in range(70):
            with pytest.raises(grpc.RpcError):
                fn(b"\x07", timeout=10)
        head = channel.unary_unary(
            "/escrow.v1.Ledger/GetHead",
            request_serializer=ledger_pb2.GetHeadRequest.SerializeToString,
            response_deserializer=ledger_pb2.GetHeadResponse.FromString,
        )
        head(ledger_pb2.GetHeadRequest(), timeout=10)  # the same connection still serves a valid call


def test_unparsable_requests_leave_the_server_serving_and_the_store_unchanged(h: Harness) -> None:
    before = snapshot(h)
    for method in [*METHODS, STREAM_METHOD]:
        for payload in UNPARSABLE:
            error = raw_call(h, method, payload)
            if parses(method, payload):  # field 1 is bytes here, not a string: a request after all
                assert error is None or assert_documented(error) is None
            else:
                assert error is not None
    assert snapshot(h) == before
    assert_serving(h)


# === scenarios: replays =====================================================================================


def test_replayed_reading_envelopes_get_their_original_acks_and_change_nothing(h: Harness) -> None:
    car = Wallet(os.urandom(32))
    h.fund(car, 500)
    kit = register_pole(h)
    session = _open(h, car, kit)
    h.attach(kit.pole, session)
    sid = session.session_id
    meter = kit.pole.meter
    envelopes = [kit.pole.reading_envelope(h.a, sid, meter.begin(sid))]
    for step in ("0.5", "1.25"):
        meter.advance(Decimal(step))
        envelopes.append(kit.pole.reading_envelope(h.a, sid, meter.reading()))
    first = [a.SerializeToString() for a in stream(h, envelopes)]
    assert len(first) == 3
    after = snapshot(h)
    with Connection(f"127.0.0.1:{h.port}") as other:  # the replay comes from another connection, too
        again = list(other.charging.StreamReadings(iter(envelopes), timeout=30))
    assert [a.SerializeToString() for a in again] == first
    assert [a.SerializeToString() for a in stream(h, envelopes[::-1])] == first[::-1]
    assert snapshot(h) == after


def _concurrently(calls: Sequence[Callable[[], Any]]) -> list[Any]:
    """Run the calls at the same instant from their own threads; each result or the exception it raised."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except Exception as e:  # collected for the test to judge
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def _replayed_once(h: Harness, send: Callable[[Connection], Any]) -> None:
    """The same request sent at once over two connections, then once more: one answer, applied once."""
    before = snapshot(h)
    with Connection(f"127.0.0.1:{h.port}") as one, Connection(f"127.0.0.1:{h.port}") as two:
        results = _concurrently([lambda: send(one), lambda: send(two)])
        for r in results:
            assert not isinstance(r, Exception), r
        third = send(one)
    assert results[0].SerializeToString() == results[1].SerializeToString() == third.SerializeToString()
    after = snapshot(h)
    assert after[1] == before[1] + 1  # exactly one ledger entry


def test_replayed_mutating_requests_are_answered_the_same_and_applied_once(h: Harness) -> None:
    car = Wallet(os.urandom(32))
    h.fund(car, 500, 500)
    mint = h.issuer.mint_request(h.a, CURRENCY, car.address, 11)
    _replayed_once(h, lambda c: call(c.notes.Mint, mint))

    pole = new_pole("RPL")
    register = pole.register_request(h.a.chain_id)
    _replayed_once(h, lambda c: call(c.registry.RegisterPole, register))
    tariff = pole.tariff_request(h.a.chain_id, CURRENCY, 39_000_000, 50, sequence=1)
    before = snapshot(h)
    first = call(h.c.registry.PublishTariff, tariff)
    assert call(h.c.registry.PublishTariff, tariff).SerializeToString() == first.SerializeToString()
    assert snapshot(h)[1] == before[1]  # a tariff is host state, not an entry: still published once

    car.scan(h.c, h.a)
    open_request, session = car.open_request(
        h.a, car.prepare_deposit(h.a, 300), pole.pole_id, pole.tariff_body, _deadline()
    )
    _replayed_once(h, lambda c: call(c.charging.Open, open_request))
    attach = pole.attach_request(h.a, session.session_id)
    before = snapshot(h)
    answers = _concurrently([lambda: call(h.c.charging.Attach, attach)] * 2)
    assert answers[0].SerializeToString() == answers[1].SerializeToString()
    assert snapshot(h)[1] == before[1]  # ATTACH adds no entry

    car.scan(h.c, h.a)
    redeem = car.redeem_request(h.a, CURRENCY, 500, b"replayed")
    _replayed_once(h, lambda c: call(c.notes.Redeem, redeem))
    # the same signed REDEEM as a new request: its notes are spent
    redeem.request_id = rid()
    e = refused_unchanged(h, lambda: call(h.c.notes.Redeem, redeem))
    assert e.reason == "SPEND_NOTE_SPENT"


def test_a_replayed_ack_is_useless_to_the_pole_client(h: Harness, world: World) -> None:
    ack = stream(h, [world.reading])[0]  # the attached session's begin, replayed: its genuine ACK
    assert check_ack(h.a, world.attached.session_id, ack).body.decision
    for other in (world.opened.session_id, os.urandom(16)):
        with pytest.raises(PoleError):
            check_ack(h.a, other, ack)


# === scenarios: readings and tariffs ========================================================================


def test_a_pole_reading_for_someone_elses_session_is_refused(h: Harness, world: World) -> None:
    kit = world.kit  # the pole of both sessions: its registered meter, the other session's handle
    record = kit.twin(2, "0").begin(world.opened.session_id)
    envelope_ = kit.pole.reading_envelope(h.a, world.attached.session_id, record)
    e = refused_unchanged(h, lambda: stream(h, [envelope_]))
    assert (e.code, e.reason) == (Code.PERMISSION_DENIED, "READING_WRONG_SESSION")
    # a second pole's genuine reading for its own session, pushed into this session
    other = register_pole(h)
    record = other.twin(1).begin(world.attached.session_id)
    envelope_ = kit.pole.reading_envelope(h.a, world.attached.session_id, record)
    e = refused_unchanged(h, lambda: stream(h, [envelope_]))
    assert (e.code, e.reason) == (Code.PERMISSION_DENIED, "READING_SIGNATURE_INVALID")


def test_records_from_a_swapped_meter_key_are_refused(h: Harness, world: World) -> None:
    sid = world.attached.session_id
    swapped = SimulatedMeter(ec.generate_private_key(ec.SECP256R1()), pagination=2, register_kwh=Decimal("1"))
    begin = swapped.begin(sid)
    swapped.advance(Decimal("0.5"))
    # the begin the pole has not sent yet, and a later reading, both signed by a key that is not registered
    for record in (SimulatedMeter.generate().begin(sid), begin, swapped.reading()):
        envelope_ = world.kit.pole.reading_envelope(h.a, sid, record)
        e = refused_unchanged(h, partial(stream, h, [envelope_]))
        assert (e.code, e.reason) == (Code.PERMISSION_DENIED, "READING_SIGNATURE_INVALID")


def test_a_tariff_edited_after_signing_is_refused(h: Harness) -> None:
    kit = register_pole(h, tariff=False)
    request = kit.pole.tariff_request(h.a.chain_id, CURRENCY, 39_000_000, 50, sequence=1)
    tariff = Tariff.from_bytes(request.tariff_body)
    edits = {
        "cheaper": {"price_numerator": 1},
        "no-fee": {"session_fee_minor": 0},
        "longer": {"not_after": tariff.not_after + 86400},
        "other-evse": {"evse_id": kit.pole.evse_id + "X"},
        "later-sequence": {"sequence": 2},
    }
    for name, change in edits.items():
        edited = registry_pb2.PublishTariffRequest()
        edited.CopyFrom(request)
        edited.request_id = rid()
        edited.tariff_body = dataclasses.replace(tariff, **change).to_bytes()  # type: ignore[arg-type]
        e = refused_unchanged(h, partial(call, h.c.registry.PublishTariff, edited))
        assert (e.code, e.reason) == (Code.PERMISSION_DENIED, "TARIFF_SIGNATURE_INVALID"), name
    call(h.c.registry.PublishTariff, request)  # the body as signed is published


# === scenarios: a double spend raced from two connections ===================================================


def _race(h: Harness, first: Any, second: Any, method: Callable[[Connection], Callable[..., Any]]) -> None:
    before = snapshot(h)
    with Connection(f"127.0.0.1:{h.port}") as one, Connection(f"127.0.0.1:{h.port}") as two:
        results = _concurrently([lambda: call(method(one), first), lambda: call(method(two), second)])
    wins = [r for r in results if not isinstance(r, Exception)]
    losses = [r for r in results if isinstance(r, Exception)]
    assert len(wins) == 1 and len(losses) == 1, results
    assert isinstance(losses[0], EscrowError), repr(losses[0])
    assert (losses[0].code, losses[0].reason) == (Code.FAILED_PRECONDITION, "SPEND_NOTE_SPENT"), losses[0]
    assert snapshot(h)[1] == before[1] + 1  # exactly one spend reached the ledger
    assert_serving(h)


def test_a_double_open_raced_from_two_connections_spends_once(h: Harness, world: World) -> None:
    for _ in range(RACES):
        car = Wallet(os.urandom(32))
        h.fund(car, 500)
        one, _ = open_at(h, car, world.kit, 300)
        two, _ = open_at(h, car, world.kit, 200)
        inputs = [OpenBody.from_bytes(r.open_body).input_note_ids for r in (one, two)]
        assert inputs[0] == inputs[1]
        _race(h, one, two, lambda c: c.charging.Open)
        car.scan(h.c, h.a)
        assert car.balance() in (200, 300)  # the change of the one OPEN that went through


def test_a_double_redeem_raced_from_two_connections_spends_once(h: Harness) -> None:
    for _ in range(RACES):
        car = Wallet(os.urandom(32))
        h.fund(car, 500)
        one = car.redeem_request(h.a, CURRENCY, 500, b"bank-1")
        two = car.redeem_request(h.a, CURRENCY, 500, b"bank-2")
        _race(h, one, two, lambda c: c.notes.Redeem)
        car.scan(h.c, h.a)
        assert car.balance() == 0


def test_an_open_and_a_redeem_of_the_same_note_raced_spend_once(h: Harness, world: World) -> None:
    for _ in range(RACES // 2):
        car = Wallet(os.urandom(32))
        h.fund(car, 500)
        opening, _ = open_at(h, car, world.kit, 300)
        redeem = car.redeem_request(h.a, CURRENCY, 500, b"bank")
        before = snapshot(h)
        with Connection(f"127.0.0.1:{h.port}") as one, Connection(f"127.0.0.1:{h.port}") as two:
            results = _concurrently(
                [partial(call, one.charging.Open, opening), partial(call, two.notes.Redeem, redeem)]
            )
        losses = [r for r in results if isinstance(r, Exception)]
        assert len(losses) == 1, results
        assert isinstance(losses[0], EscrowError) and losses[0].reason == "SPEND_NOTE_SPENT", losses[0]
        assert snapshot(h)[1] == before[1] + 1
