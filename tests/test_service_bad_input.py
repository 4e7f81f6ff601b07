"""DESIGN §11 over real gRPC: every kind of bad input is refused with its exact status and stable reason,
and leaves the store, the ledger and every wallet's balance exactly as they were.

Each refusal goes through ``refused``: it takes a byte-exact digest of the whole SQLite store (every row
of every table, read through a separate read-only connection), the ledger head and the scanned balances
of the wallets involved, makes the call, checks the gRPC status code and the ``google.rpc.ErrorInfo``
reason, and compares everything again. One server serves the whole module. Requests that are only ever
refused share module fixtures (a prepared deposit, an OPENED and an ATTACHED session): a refusal changes
nothing, so the next test finds them as they were; anything a test must change successfully it builds
for itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import partial

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from service_harness import CURRENCY, PRICE_NUMERATOR, SESSION_FEE, Harness, store_digest

from clients.connection import EscrowError, call, error_from
from clients.issuer import Issuer
from clients.meter import SimulatedMeter
from clients.pole import Pole, PoleError, check_ack
from clients.wallet import PreparedDeposit, Session, Wallet
from escrow.core.notes import MintBody, mint_message, note_id, seal_note
from escrow.core.readings import session_tag
from escrow.core.registry import PoleBody
from escrow.core.session import (
    AttachBody,
    GetBody,
    OpenSecret,
    StopBody,
    attach_context,
    open_context,
    reading_context,
    signed_pair,
)
from escrow.core.settlement import proof_context
from escrow.core.signing import ed25519_key_id, ed25519_public_key, ed25519_sign, signed_message
from escrow.core.spending import OpenBody, RedeemBody, open_message, redeem_message, redeem_proof_context
from escrow.core.tariff import Tariff, sign_tariff
from escrow.v1 import attestation_pb2, charging_pb2, ledger_pb2, notes_pb2, notes_pb2_grpc, registry_pb2
from zk import bn254, envelope, pedersen, rangeproof, schnorr, stealth
from zk.errors import EncodingError
from zk.field import P as FIELD_P

Code = grpc.StatusCode
ISSUER_SEED = os.urandom(32)

# --- what every refusal is checked against ------------------------------------------------------------------


@dataclass(frozen=True)
class State:
    store: str  # SHA-256 over every row of every table
    height: int  # the ledger head the server reports
    wallets: tuple[tuple[int, tuple[bytes, ...]], ...]  # (balance, unspent note ids) after a scan


def state(h: Harness, wallets: Sequence[Wallet]) -> State:
    balances = []
    for wallet in wallets:
        wallet.scan(h.c, h.a)
        balances.append((wallet.balance(), tuple(sorted(n.note_id for n in wallet.unspent()))))
    head = call(h.c.ledger.GetHead, ledger_pb2.GetHeadRequest())
    return State(store_digest(h), head.head.height, tuple(balances))


def refused(
    h: Harness, action: Callable[[], object], code: grpc.StatusCode, reason: str | None, *wallets: Wallet
) -> EscrowError:
    """Run a call that must be refused with exactly (code, reason) and change nothing at all."""
    before = state(h, wallets)
    with pytest.raises(EscrowError) as caught:
        action()
    error = caught.value
    assert (error.code, error.reason) == (code, reason), error.message
    assert state(h, wallets) == before
    return error


def stream(h: Harness, envelopes: Sequence[charging_pb2.ReadingEnvelope]) -> list[charging_pb2.SignedAck]:
    """One StreamReadings call; a refusal becomes EscrowError like a unary call's."""
    try:
        return list(h.c.charging.StreamReadings(iter(envelopes), timeout=30))
    except grpc.RpcError as e:
        raise error_from(e) from None


def flip(data: bytes, index: int = -1) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


def rid() -> str:
    return os.urandom(12).hex()


def deadline_ms(seconds: float = 3600) -> int:
    return int((time.time() + seconds) * 1000)


# --- parties built by hand (keys the tests need to sign with) -----------------------------------------------


@dataclass
class Kit:
    """A registered pole, the operator seed and the meter key behind it."""

    pole: Pole
    seed: bytes
    meter_key: ec.EllipticCurvePrivateKey

    def twin(self, pagination: int, register_kwh: str = "0") -> SimulatedMeter:
        """Another meter object with the registered key: signs any pagination and register value."""
        return SimulatedMeter(self.meter_key, pagination=pagination, register_kwh=Decimal(register_kwh))


def register_pole(
    h: Harness, *, price: int = PRICE_NUMERATOR, fee: int = SESSION_FEE, tariff: bool = True
) -> Kit:
    seed, key, tag = os.urandom(32), ec.generate_private_key(ec.SECP256R1()), os.urandom(4).hex()
    pole = Pole(seed, SimulatedMeter(key), f"BAD-{tag}", f"DE*BAD*E{tag}", os.urandom(32))
    call(h.c.registry.RegisterPole, pole.register_request(h.a.chain_id))
    if tariff:
        call(h.c.registry.PublishTariff, pole.tariff_request(h.a.chain_id, CURRENCY, price, fee, sequence=1))
    return Kit(pole, seed, key)


def open_request(
    h: Harness, wallet: Wallet, prepared: PreparedDeposit, kit: Kit
) -> tuple[charging_pb2.OpenRequest, Session]:
    """The wallet's signed OPEN of ``prepared`` at the kit's pole and current tariff."""
    return wallet.open_request(h.a, prepared, kit.pole.pole_id, kit.pole.tariff_body, deadline_ms())


def open_session(h: Harness, wallet: Wallet, kit: Kit, deposit: int = 400) -> tuple[Session, bytes]:
    """OPEN a session at the kit's pole; returns it and the OPEN entry hash. The wallet is rescanned."""
    request, session = open_request(h, wallet, wallet.prepare_deposit(h.a, deposit), kit)
    answer = call(h.c.charging.Open, request)
    wallet.scan(h.c, h.a)
    return session, answer.entry.entry_hash


def attached_session(h: Harness, wallet: Wallet) -> tuple[Kit, Session]:
    kit = register_pole(h)
    session, _ = open_session(h, wallet, kit)
    h.attach(kit.pole, session)
    return kit, session


def mint_request(
    h: Harness,
    address: stealth.Address,
    amount: int = 100,
    *,
    commitment: bytes | None = None,
    owner_key: bytes | None = None,
) -> notes_pb2.MintRequest:
    """A MINT signed by the chain's issuer with any commitment or owner key the test chooses."""
    blinding = pedersen.random_blinding()
    honest = bn254.point_to_bytes(pedersen.commit(amount, blinding))
    honest_owner, sealed = seal_note(h.a.chain_id, address, honest, amount, blinding)
    body = MintBody(
        mint_reference=os.urandom(16),
        amount=amount,
        currency=CURRENCY,
        commitment=honest if commitment is None else commitment,
        owner_key=honest_owner if owner_key is None else owner_key,
        envelope_hash=hashlib.sha256(sealed).digest(),
        issuer_key_id=ed25519_key_id(ed25519_public_key(ISSUER_SEED)),
        expiry=int(time.time()) + 300,
    ).to_bytes()
    message = mint_message(h.a.chain_id, body)
    return notes_pb2.MintRequest(
        request_id=rid(),
        mint_body=body,
        issuer_signature=ed25519_sign(ISSUER_SEED, message),
        amount_proof=schnorr.prove_public_amount(amount, blinding, message),
        envelope=sealed,
    )


def redeem_request(
    h: Harness,
    ids: list[bytes],
    amount: int,
    blinding: int,
    signers: list[int],
    *,
    currency: str = CURRENCY,
    expiry_s: int = 300,
    malleate: Callable[[bytes], bytes] = bytes,
) -> notes_pb2.RedeemRequest:
    """A REDEEM of ``ids`` with a valid amount proof for ``blinding`` (passed through ``malleate``
    before it is hashed into the body), signed with the given scalars."""
    context = redeem_proof_context(h.a.chain_id, ids)
    proof = malleate(schnorr.prove_public_amount(amount, blinding % bn254.ORDER, context))
    body = RedeemBody(
        input_note_ids=ids,
        amount=amount,
        currency=currency,
        issuer_reference=b"bank-ref",
        proof_hash=hashlib.sha256(proof).digest(),
        expiry=int(time.time()) + expiry_s,
    ).to_bytes()
    message = redeem_message(h.a.chain_id, body)
    return notes_pb2.RedeemRequest(
        request_id=rid(),
        redeem_body=body,
        owner_signatures=[stealth.sign_with_scalar(x, message) for x in signers],
        amount_proof=proof,
    )


def resigned_open(
    h: Harness, request: charging_pb2.OpenRequest, signers: Sequence[int], **changes: object
) -> charging_pb2.OpenRequest:
    """A copy of the OPEN with body fields changed and every signature made again over the new body (a
    consistent request, so only the change itself can be what the server refuses)."""
    body = dataclasses.replace(OpenBody.from_bytes(request.open_body), **changes).to_bytes()  # type: ignore[arg-type]
    message = open_message(h.a.chain_id, body)
    out = charging_pb2.OpenRequest()
    out.CopyFrom(request)
    out.request_id = rid()
    out.open_body = body
    del out.owner_signatures[:]
    out.owner_signatures.extend(stealth.sign_with_scalar(x, message) for x in signers)
    return out


def owner_secrets(prepared: PreparedDeposit) -> list[int]:
    return [n.opened.secret_scalar for n in prepared.inputs]


def attach_body(h: Harness, kit: Kit, session_id: bytes) -> AttachBody:
    return AttachBody(
        session_id=session_id,
        pole_id=kit.pole.pole_id,
        evse_id=kit.pole.evse_id,
        tariff_hash=hashlib.sha256(kit.pole.tariff_body).digest(),
        payout_address=kit.pole.payout.address().to_bytes(),
        enclave_key_id=h.a.enclave_key_id,
        expiry=int(time.time()) + 300,
    )


def sealed_attach(h: Harness, session_id: bytes, body: AttachBody, signature: bytes) -> bytes:
    return envelope.seal(
        h.a.encryption_key, signed_pair(body.to_bytes(), signature), attach_context(h.a.chain_id, session_id)
    )


# --- module fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def h(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    tmp = tmp_path_factory.mktemp("bad-input")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ESCROW_NV_DIR", str(tmp / "nv"))
        # A long grace period: no session this module moves to CLOSING settles while the module runs.
        harness = Harness(tmp / "data", tmp / "nv", Issuer(ISSUER_SEED), grace_ms=3_600_000)
        harness.boot()
        try:
            yield harness
        finally:
            harness.stop()


@pytest.fixture(scope="module")
def car(h: Harness) -> Wallet:
    """The vehicle whose spends succeed: notes of 500, so any test can open a deposit of <= 500."""
    wallet = Wallet(os.urandom(32))
    h.fund(wallet, *[500] * 20)
    return wallet


@pytest.fixture(scope="module")
def spender(h: Harness) -> Wallet:
    """A wallet whose notes are only ever offered in refused spends: they must stay unspent."""
    wallet = Wallet(os.urandom(32))
    h.fund(wallet, 500, 500)
    return wallet


@pytest.fixture(scope="module")
def idle(h: Harness) -> Kit:
    """A pole that only ever sees refused OPENs."""
    return register_pole(h)


@pytest.fixture(scope="module")
def spare(h: Harness, spender: Wallet) -> PreparedDeposit:
    """A deposit of 300 from one of the spender's notes, proof made once, never opened."""
    return spender.prepare_deposit(h.a, 300)


@pytest.fixture(scope="module")
def spare_two(h: Harness, spender: Wallet) -> PreparedDeposit:
    """A deposit of 800 spending both of the spender's notes, never opened."""
    prepared = spender.prepare_deposit(h.a, 800)
    assert len(prepared.inputs) == 2
    return prepared


@pytest.fixture(scope="module")
def opened(h: Harness, car: Wallet) -> tuple[Kit, Session]:
    """A session that stays OPENED: only refused ATTACHes, readings, STOPs and GETs reach it."""
    kit = register_pole(h)
    session, _ = open_session(h, car, kit)
    return kit, session


@pytest.fixture(scope="module")
def attached(h: Harness, car: Wallet) -> tuple[Kit, Session]:
    """A session that stays ATTACHED without readings: only refused readings reach it."""
    return attached_session(h, car)


# === attestation ============================================================================================


@pytest.mark.parametrize("nonce", [b"", bytes(65)], ids=["empty", "65-bytes"])
def test_get_quote_refuses_an_empty_or_oversized_nonce(h: Harness, nonce: bytes) -> None:
    request = attestation_pb2.GetQuoteRequest(nonce=nonce)
    refused(h, lambda: call(h.c.attestation.GetQuote, request), Code.INVALID_ARGUMENT, "NONCE_INVALID")
    # the boundary itself is served
    assert call(h.c.attestation.GetQuote, attestation_pb2.GetQuoteRequest(nonce=bytes(64))).quote


# === the request around the body: ids, idempotency, size, bounds ============================================


@pytest.mark.parametrize("request_id", ["", "x" * 129, "two words", "tab\there", "caf\u00e9"])
def test_invalid_request_id_is_refused_before_anything_else(h: Harness, car: Wallet, request_id: str) -> None:
    request = h.issuer.mint_request(h.a, CURRENCY, car.address, 7)
    request.request_id = request_id
    refused(h, lambda: call(h.c.notes.Mint, request), Code.INVALID_ARGUMENT, "REQUEST_ID_INVALID", car)
    request.request_id = (rid() * 6)[:128]  # the same body under a valid id (128 chars) is applied
    call(h.c.notes.Mint, request)


def test_retried_mint_gets_the_byte_identical_answer_and_is_applied_once(h: Harness, car: Wallet) -> None:
    before = state(h, [car])
    request = h.issuer.mint_request(h.a, CURRENCY, car.address, 123)
    first = call(h.c.notes.Mint, request)
    after_first = state(h, [car])
    assert after_first.height == before.height + 1
    assert after_first.wallets[0][0] == before.wallets[0][0] + 123
    again = call(h.c.notes.Mint, request)
    assert again.SerializeToString() == first.SerializeToString()
    assert state(h, [car]) == after_first  # applied once: no new entry, row or note


def test_retried_attach_gets_the_byte_identical_ack(h: Harness, car: Wallet) -> None:
    kit = register_pole(h)
    session, _ = open_session(h, car, kit)
    request = kit.pole.attach_request(h.a, session.session_id)
    first = call(h.c.charging.Attach, request)
    after = state(h, [car])
    again = call(h.c.charging.Attach, request)
    assert again.SerializeToString() == first.SerializeToString()
    assert state(h, [car]) == after


def test_reused_request_id_with_another_body_is_refused(h: Harness, car: Wallet) -> None:
    request_id = rid()
    call(h.c.notes.Mint, h.issuer.mint_request(h.a, CURRENCY, car.address, 5, request_id=request_id))
    other = h.issuer.mint_request(h.a, CURRENCY, car.address, 6, request_id=request_id)
    refused(h, lambda: call(h.c.notes.Mint, other), Code.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED", car)


def test_message_over_4_mib_is_refused_by_grpc_itself(h: Harness, car: Wallet) -> None:
    request = h.issuer.mint_request(h.a, CURRENCY, car.address, 9)
    request.envelope = bytes((4 << 20) + 1024)
    # our client would refuse to send it; a peer with a larger send limit reaches the server
    options = [("grpc.max_send_message_length", 16 << 20)]
    with grpc.insecure_channel(f"127.0.0.1:{h.port}", options=options) as channel:
        stub = notes_pb2_grpc.NotesStub(channel)
        error = refused(h, lambda: call(stub.Mint, request), Code.RESOURCE_EXHAUSTED, None, car)
    assert "larger than max" in error.message  # gRPC's own limit, before any servicer ran


EMPTY_REQUESTS: dict[str, tuple[str, type, str]] = {  # method: (service, request type, reason)
    "Mint": ("notes", notes_pb2.MintRequest, "MINT_MALFORMED"),
    "Redeem": ("notes", notes_pb2.RedeemRequest, "SPEND_MALFORMED"),
    "RegisterPole": ("registry", registry_pb2.RegisterPoleRequest, "POLE_MALFORMED"),
    "PublishTariff": ("registry", registry_pb2.PublishTariffRequest, "TARIFF_MALFORMED"),
    "Open": ("charging", charging_pb2.OpenRequest, "SPEND_MALFORMED"),
    "Attach": ("charging", charging_pb2.AttachRequest, "REQUEST_MALFORMED"),
    "Stop": ("charging", charging_pb2.StopRequest, "SESSION_MALFORMED"),
    "GetSession": ("charging", charging_pb2.GetSessionRequest, "SESSION_MALFORMED"),
}


@pytest.mark.parametrize("method", sorted(EMPTY_REQUESTS))
def test_empty_request_is_malformed_never_internal(h: Harness, method: str) -> None:
    service, kind, reason = EMPTY_REQUESTS[method]
    request = kind(request_id=rid()) if "request_id" in kind.DESCRIPTOR.fields_by_name else kind()
    refused(h, partial(call, getattr(getattr(h.c, service), method), request), Code.INVALID_ARGUMENT, reason)


def test_fields_beyond_their_bounds_are_malformed(h: Harness, attached: tuple[Kit, Session]) -> None:
    _, session = attached
    for size in (15, 17):
        attach = charging_pb2.AttachRequest(
            request_id=rid(), session_id=bytes(size), attach_envelope=bytes(60)
        )
        refused(h, partial(call, h.c.charging.Attach, attach), Code.INVALID_ARGUMENT, "REQUEST_MALFORMED")
    redeem = notes_pb2.RedeemRequest(request_id=rid(), owner_signatures=[bytes(64)] * 17)
    refused(h, lambda: call(h.c.notes.Redeem, redeem), Code.INVALID_ARGUMENT, "REQUEST_MALFORMED")
    opening = charging_pb2.OpenRequest(request_id=rid(), owner_signatures=[bytes(65)])
    refused(h, lambda: call(h.c.charging.Open, opening), Code.INVALID_ARGUMENT, "REQUEST_MALFORMED")
    reading = charging_pb2.ReadingEnvelope(session_id=session.session_id, sequence=1, envelope=bytes(20_001))
    refused(h, lambda: stream(h, [reading]), Code.INVALID_ARGUMENT, "REQUEST_MALFORMED")


def test_read_endpoints_refuse_out_of_range_pages(h: Harness) -> None:
    malformed = (Code.INVALID_ARGUMENT, "REQUEST_MALFORMED")
    for height in (2**63, 2**64 - 1):
        request = notes_pb2.ListEnvelopesRequest(from_height=height)
        refused(h, partial(call, h.c.notes.ListEnvelopes, request), *malformed)
    refused(h, lambda: list(h.c.entries(2**63)), *malformed)
    for token in ("caf\u00e9", "x" * 65):
        page = registry_pb2.ListPolesRequest(page_token=token)
        refused(h, partial(call, h.c.registry.ListPoles, page), *malformed)


# === malformed bodies =======================================================================================

MALFORMED_KINDS = {
    "mint": "MINT_MALFORMED",
    "redeem": "SPEND_MALFORMED",
    "open": "SPEND_MALFORMED",
    "register": "POLE_MALFORMED",
    "tariff": "TARIFF_MALFORMED",
    "stop": "SESSION_MALFORMED",
    "get": "SESSION_MALFORMED",
}


@pytest.mark.parametrize("cut", ["truncated", "trailing"])
@pytest.mark.parametrize("kind", sorted(MALFORMED_KINDS))
def test_truncated_or_extended_body_is_malformed(
    h: Harness,
    spender: Wallet,
    idle: Kit,
    spare: PreparedDeposit,
    opened: tuple[Kit, Session],
    kind: str,
    cut: str,
) -> None:
    def damage(body: bytes) -> bytes:
        return body[:-1] if cut == "truncated" else body + b"\x00"

    request: object
    if kind == "mint":
        request = h.issuer.mint_request(h.a, CURRENCY, spender.address, 10)
        request.mint_body = damage(request.mint_body)
        method = h.c.notes.Mint
    elif kind == "redeem":
        (note,) = spare.inputs
        x, b = note.opened.secret_scalar, note.opened.blinding
        request = redeem_request(h, [note.note_id], note.value, b, [x])
        request.redeem_body = damage(request.redeem_body)
        method = h.c.notes.Redeem
    elif kind == "open":
        request, _ = open_request(h, spender, spare, idle)
        request.open_body = damage(request.open_body)
        method = h.c.charging.Open
    elif kind == "register":
        pole = Pole(os.urandom(32), SimulatedMeter.generate(), f"M-{rid()}", f"DE*M*{rid()}", os.urandom(32))
        request = pole.register_request(h.a.chain_id)
        request.pole_body = damage(request.pole_body)
        method = h.c.registry.RegisterPole
    elif kind == "tariff":
        kit = register_pole(h, tariff=False)
        request = kit.pole.tariff_request(h.a.chain_id, CURRENCY, PRICE_NUMERATOR, SESSION_FEE, sequence=1)
        request.tariff_body = damage(request.tariff_body)
        method = h.c.registry.PublishTariff
    elif kind == "stop":
        request = spender.stop_request(h.a, dataclasses.replace(opened[1]))  # a copy: its STOP sequence moves
        request.stop_body = damage(request.stop_body)
        method = h.c.charging.Stop
    else:
        request = spender.get_request(h.a, opened[1])
        request.request_body = damage(request.request_body)
        method = h.c.charging.GetSession
    refused(h, partial(call, method, request), Code.INVALID_ARGUMENT, MALFORMED_KINDS[kind], spender)


# === MINT ===================================================================================================


def _off_curve_x() -> bytes:
    x = 1
    while True:
        candidate = bytes([0x80]) + x.to_bytes(31, "big")
        try:
            bn254.point_from_bytes(candidate)
        except EncodingError:
            return candidate
        x += 1


_G = bn254.point_to_bytes(bn254.G)
_P = int(FIELD_P).to_bytes(32, "big")
BAD_POINTS = {
    "off-curve": _off_curve_x(),
    "identity": bytes([0x40]) + bytes(31),
    "x-not-below-p": bytes([_P[0] | 0x80]) + _P[1:],
    "reserved-flag-00": bytes([_G[0] & 0x3F]) + _G[1:],
    "infinity-flag-with-x": bytes([0x40]) + bytes(30) + b"\x01",
}
BAD_ED25519_KEYS = {
    "non-canonical-y": (2**255 - 19 + 1).to_bytes(32, "little"),  # y = p + 1: 1 written unreduced
    "small-order-identity": b"\x01" + bytes(31),
    "small-order-y-zero": bytes(32),  # y = 0: a point of order 4
}


@pytest.mark.parametrize("name", sorted(BAD_POINTS))
def test_mint_commitment_that_is_no_valid_point_is_malformed(h: Harness, spender: Wallet, name: str) -> None:
    request = mint_request(h, spender.address, commitment=BAD_POINTS[name])
    refused(h, lambda: call(h.c.notes.Mint, request), Code.INVALID_ARGUMENT, "MINT_MALFORMED", spender)


@pytest.mark.parametrize("name", sorted(BAD_ED25519_KEYS))
def test_mint_owner_key_that_is_no_valid_key_is_malformed(h: Harness, spender: Wallet, name: str) -> None:
    request = mint_request(h, spender.address, owner_key=BAD_ED25519_KEYS[name])
    refused(h, lambda: call(h.c.notes.Mint, request), Code.INVALID_ARGUMENT, "MINT_MALFORMED", spender)


def _unreduced_s(proof: bytes) -> bytes:
    """The same Schnorr proof with s written as s + r: a second encoding of the same scalar."""
    return proof[:32] + (int.from_bytes(proof[32:], "big") + bn254.ORDER).to_bytes(32, "big")


@pytest.mark.parametrize("damage", ["s-plus-r", "s-all-ones", "R-identity", "R-off-curve", "63-bytes"])
def test_mint_schnorr_proof_with_non_canonical_parts_is_invalid(
    h: Harness, spender: Wallet, damage: str
) -> None:
    request = mint_request(h, spender.address)
    proof = request.amount_proof
    R_part = proof[:32]
    request.amount_proof = {
        "s-plus-r": _unreduced_s(proof),  # the same s, unreduced: a malleated proof
        "s-all-ones": R_part + b"\xff" * 32,
        "R-identity": BAD_POINTS["identity"] + proof[32:],
        "R-off-curve": BAD_POINTS["off-curve"] + proof[32:],
        "63-bytes": proof[:63],
    }[damage]
    refused(h, lambda: call(h.c.notes.Mint, request), Code.INVALID_ARGUMENT, "MINT_PROOF_INVALID", spender)


def test_mint_by_an_unknown_issuer_is_refused(h: Harness, spender: Wallet) -> None:
    request = Issuer(os.urandom(32)).mint_request(h.a, CURRENCY, spender.address, 100)
    refused(h, lambda: call(h.c.notes.Mint, request), Code.PERMISSION_DENIED, "MINT_ISSUER_UNKNOWN", spender)


def test_mint_under_the_known_key_id_signed_by_another_key_is_refused(h: Harness, spender: Wallet) -> None:
    request = mint_request(h, spender.address)
    request.issuer_signature = ed25519_sign(os.urandom(32), mint_message(h.a.chain_id, request.mint_body))
    refused(
        h, lambda: call(h.c.notes.Mint, request), Code.PERMISSION_DENIED, "MINT_SIGNATURE_INVALID", spender
    )


def test_mint_reference_is_used_once(h: Harness, car: Wallet) -> None:
    reference = os.urandom(16)
    first = h.issuer.mint_request(h.a, CURRENCY, car.address, 11, reference=reference)
    call(h.c.notes.Mint, first)
    first.request_id = rid()  # the same signed MINT replayed as a new request
    refused(h, lambda: call(h.c.notes.Mint, first), Code.ALREADY_EXISTS, "MINT_REFERENCE_USED", car)
    again = h.issuer.mint_request(h.a, CURRENCY, car.address, 11, reference=reference)  # signed anew
    refused(h, lambda: call(h.c.notes.Mint, again), Code.ALREADY_EXISTS, "MINT_REFERENCE_USED", car)


@pytest.mark.parametrize(
    ("case", "code", "reason"),
    [
        ("expired", Code.FAILED_PRECONDITION, "MINT_EXPIRED"),
        ("other-currency", Code.INVALID_ARGUMENT, "MINT_CURRENCY_MISMATCH"),
        ("swapped-envelope", Code.INVALID_ARGUMENT, "MINT_ENVELOPE_MISMATCH"),
        ("flipped-signature", Code.PERMISSION_DENIED, "MINT_SIGNATURE_INVALID"),
        ("zero-amount", Code.INVALID_ARGUMENT, "MINT_MALFORMED"),
    ],
)
def test_other_mint_refusals(
    h: Harness, spender: Wallet, case: str, code: grpc.StatusCode, reason: str
) -> None:
    address = spender.address
    if case == "expired":
        request = h.issuer.mint_request(h.a, CURRENCY, address, 12, expiry_s=-5)
    elif case == "other-currency":
        request = h.issuer.mint_request(h.a, "USD", address, 12)
    elif case == "swapped-envelope":
        request = h.issuer.mint_request(h.a, CURRENCY, address, 12)
        request.envelope = h.issuer.mint_request(h.a, CURRENCY, address, 12).envelope
    elif case == "flipped-signature":
        request = h.issuer.mint_request(h.a, CURRENCY, address, 12)
        request.issuer_signature = flip(request.issuer_signature, 5)
    else:
        request = mint_request(h, address, 12)
        body = dataclasses.replace(MintBody.from_bytes(request.mint_body), amount=0).to_bytes()
        request.mint_body = body
        request.issuer_signature = ed25519_sign(ISSUER_SEED, mint_message(h.a.chain_id, body))
    refused(h, lambda: call(h.c.notes.Mint, request), code, reason, spender)


# === OPEN and REDEEM ========================================================================================


def test_open_with_duplicate_inputs_is_malformed(
    h: Harness, spender: Wallet, idle: Kit, spare: PreparedDeposit
) -> None:
    request, _ = open_request(h, spender, spare, idle)
    (note,) = spare.inputs
    bad = resigned_open(h, request, [note.opened.secret_scalar] * 2, input_note_ids=[note.note_id] * 2)
    refused(h, lambda: call(h.c.charging.Open, bad), Code.INVALID_ARGUMENT, "SPEND_MALFORMED", spender)


def test_open_with_unsorted_inputs_is_malformed(
    h: Harness, spender: Wallet, idle: Kit, spare_two: PreparedDeposit
) -> None:
    request, _ = open_request(h, spender, spare_two, idle)
    ids = [n.note_id for n in spare_two.inputs]
    bad = resigned_open(h, request, owner_secrets(spare_two)[::-1], input_note_ids=ids[::-1])
    refused(h, lambda: call(h.c.charging.Open, bad), Code.INVALID_ARGUMENT, "SPEND_MALFORMED", spender)


def test_redeem_with_duplicate_inputs_is_malformed(
    h: Harness, spender: Wallet, spare: PreparedDeposit
) -> None:
    (note,) = spare.inputs
    x, b = note.opened.secret_scalar, note.opened.blinding
    request = redeem_request(h, [note.note_id] * 2, 2 * note.value, 2 * b, [x, x])
    refused(h, lambda: call(h.c.notes.Redeem, request), Code.INVALID_ARGUMENT, "SPEND_MALFORMED", spender)


OPEN_STRUCTURE_CASES = [
    *(f"deposit-{name}" for name in BAD_POINTS),
    *(f"change-{name}" for name in BAD_POINTS),
    *(f"change-owner-{name}" for name in BAD_ED25519_KEYS),
    "signature-63-bytes",
    "no-signature",
    "range-proof-one-point-short",
    "no-inputs",
]


@pytest.mark.parametrize("case", OPEN_STRUCTURE_CASES)
def test_open_with_bad_points_keys_or_lengths_is_malformed(
    h: Harness, spender: Wallet, idle: Kit, spare: PreparedDeposit, case: str
) -> None:
    request, _ = open_request(h, spender, spare, idle)
    signers = owner_secrets(spare)
    field, _, name = case.partition("-")
    if field == "deposit":
        bad = resigned_open(h, request, signers, deposit=BAD_POINTS[name])
    elif case.startswith("change-owner-"):
        bad = resigned_open(
            h, request, signers, change_owner_key=BAD_ED25519_KEYS[case[len("change-owner-") :]]
        )
    elif field == "change":
        bad = resigned_open(h, request, signers, change_commitment=BAD_POINTS[name])
    elif case == "signature-63-bytes":
        bad = resigned_open(h, request, signers)
        bad.owner_signatures[0] = bad.owner_signatures[0][:63]
    elif case == "no-signature":
        bad = resigned_open(h, request, [])
    elif case == "range-proof-one-point-short":
        bad = resigned_open(h, request, signers)
        bad.range_proof = request.range_proof[:-32]
    else:
        bad = resigned_open(h, request, [], input_note_ids=[])
    refused(h, lambda: call(h.c.charging.Open, bad), Code.INVALID_ARGUMENT, "SPEND_MALFORMED", spender)


def test_a_deposit_is_never_an_input(
    h: Harness, car: Wallet, spender: Wallet, spare: PreparedDeposit
) -> None:
    kit = register_pole(h)
    prepared = car.prepare_deposit(h.a, 250)
    request, _ = open_request(h, car, prepared, kit)
    answer = call(h.c.charging.Open, request)
    deposit_id = note_id(answer.entry.entry_hash, 1)  # OPEN output 1 is D
    # a REDEEM of D that even proves D's opening (the vehicle knows it)
    redeem = redeem_request(h, [deposit_id], 250, prepared.deposit_blinding, owner_secrets(prepared))
    refused(
        h, lambda: call(h.c.notes.Redeem, redeem), Code.FAILED_PRECONDITION, "SPEND_DEPOSIT_AS_INPUT", car
    )
    # and an OPEN naming D as its input
    other, _ = open_request(h, spender, spare, kit)
    respent = resigned_open(h, other, owner_secrets(spare), input_note_ids=[deposit_id])
    refused(
        h,
        lambda: call(h.c.charging.Open, respent),
        Code.FAILED_PRECONDITION,
        "SPEND_DEPOSIT_AS_INPUT",
        car,
        spender,
    )


def test_redeem_by_someone_who_knows_the_opening_but_not_the_key(
    h: Harness, spender: Wallet, spare: PreparedDeposit
) -> None:
    # The issuer (or anyone shown (v, b)) can prove the amount, but only the owner key may spend.
    (note,) = spare.inputs
    thief = int.from_bytes(os.urandom(32), "big") % 2**252 + 1
    request = redeem_request(h, [note.note_id], note.value, note.opened.blinding, [thief])
    refused(
        h, lambda: call(h.c.notes.Redeem, request), Code.PERMISSION_DENIED, "SPEND_SIGNATURE_INVALID", spender
    )


def test_redeem_of_an_unknown_note_is_not_found(h: Harness, spender: Wallet) -> None:
    request = redeem_request(h, [os.urandom(32)], 10, pedersen.random_blinding(), [12345])
    refused(h, lambda: call(h.c.notes.Redeem, request), Code.NOT_FOUND, "SPEND_NOTE_NOT_FOUND", spender)


@pytest.mark.parametrize(
    ("case", "code", "reason"),
    [
        ("more-than-the-note-holds", Code.INVALID_ARGUMENT, "SPEND_PROOF_INVALID"),
        ("less-than-the-note-holds", Code.INVALID_ARGUMENT, "SPEND_PROOF_INVALID"),
        ("zero-amount", Code.INVALID_ARGUMENT, "SPEND_MALFORMED"),
        ("other-currency", Code.INVALID_ARGUMENT, "SPEND_CURRENCY_MISMATCH"),
        ("expired", Code.FAILED_PRECONDITION, "SPEND_EXPIRED"),
        ("proof-swapped-after-signing", Code.INVALID_ARGUMENT, "SPEND_ENVELOPE_MISMATCH"),
        ("proof-s-not-reduced-but-signed", Code.INVALID_ARGUMENT, "SPEND_PROOF_INVALID"),
        ("signature-over-another-body", Code.PERMISSION_DENIED, "SPEND_SIGNATURE_INVALID"),
    ],
)
def test_other_redeem_refusals(
    h: Harness, spender: Wallet, spare: PreparedDeposit, case: str, code: grpc.StatusCode, reason: str
) -> None:
    (note,) = spare.inputs
    ids, x, b = [note.note_id], note.opened.secret_scalar, note.opened.blinding
    amount = {"more-than-the-note-holds": note.value + 100, "less-than-the-note-holds": note.value - 1}
    value = 0 if case == "zero-amount" else amount.get(case, note.value)
    request = redeem_request(
        h,
        ids,
        value,
        b,
        [x],
        currency="USD" if case == "other-currency" else CURRENCY,
        expiry_s=-5 if case == "expired" else 300,
        malleate=_unreduced_s if case == "proof-s-not-reduced-but-signed" else bytes,
    )
    if case == "proof-swapped-after-signing":
        request.amount_proof = redeem_request(h, ids, value, b, [x]).amount_proof
    elif case == "signature-over-another-body":
        request.owner_signatures[0] = redeem_request(h, ids, value, b, [x]).owner_signatures[0]
    refused(h, lambda: call(h.c.notes.Redeem, request), code, reason, spender)


def test_the_same_note_in_two_opens_is_spent_once(h: Harness, car: Wallet) -> None:
    kit = register_pole(h)
    first = car.prepare_deposit(h.a, 200)
    second = car.prepare_deposit(h.a, 300)  # before a rescan the wallet picks the same note again
    assert [n.note_id for n in first.inputs] == [n.note_id for n in second.inputs]
    call(h.c.charging.Open, open_request(h, car, first, kit)[0])
    request_b, _ = open_request(h, car, second, kit)
    refused(h, lambda: call(h.c.charging.Open, request_b), Code.FAILED_PRECONDITION, "SPEND_NOTE_SPENT", car)
    (note,) = first.inputs  # a REDEEM of the spent note too
    redeem = redeem_request(h, [note.note_id], note.value, note.opened.blinding, [note.opened.secret_scalar])
    refused(h, lambda: call(h.c.notes.Redeem, redeem), Code.FAILED_PRECONDITION, "SPEND_NOTE_SPENT", car)


def test_replayed_redeem_under_a_new_request_id_is_refused(h: Harness, car: Wallet) -> None:
    note = max(car.unspent(), key=lambda n: n.value)
    x, b = note.opened.secret_scalar, note.opened.blinding
    request = redeem_request(h, [note.note_id], note.value, b, [x])
    call(h.c.notes.Redeem, request)
    request.request_id = rid()
    refused(h, lambda: call(h.c.notes.Redeem, request), Code.FAILED_PRECONDITION, "SPEND_NOTE_SPENT", car)


def test_replayed_open_under_a_new_request_id_is_refused(h: Harness, car: Wallet) -> None:
    kit = register_pole(h)
    request, _ = open_request(h, car, car.prepare_deposit(h.a, 150), kit)
    call(h.c.charging.Open, request)
    request.request_id = rid()
    refused(h, lambda: call(h.c.charging.Open, request), Code.ALREADY_EXISTS, "SESSION_EXISTS", car)


def test_range_proof_with_a_flipped_byte_no_longer_matches_its_signed_hash(
    h: Harness, spender: Wallet, idle: Kit, spare: PreparedDeposit
) -> None:
    request, _ = open_request(h, spender, spare, idle)
    request.range_proof = flip(request.range_proof, 100)
    refused(
        h, lambda: call(h.c.charging.Open, request), Code.INVALID_ARGUMENT, "SPEND_ENVELOPE_MISMATCH", spender
    )


def _open_context(h: Harness, prepared: PreparedDeposit) -> bytes:
    ids = [n.note_id for n in prepared.inputs]
    return proof_context("OPEN", h.a.chain_id, session_tag(prepared.session_id), ids)


def test_range_proof_for_other_values_is_invalid_even_when_hashed_and_signed(
    h: Harness, spender: Wallet, idle: Kit, spare: PreparedDeposit
) -> None:
    request, _ = open_request(h, spender, spare, idle)
    blindings = [pedersen.random_blinding(), pedersen.random_blinding()]
    other = rangeproof.prove([301, 199], blindings, 64, _open_context(h, spare))
    request.range_proof = other
    bad = resigned_open(h, request, owner_secrets(spare), range_proof_hash=hashlib.sha256(other).digest())
    refused(h, lambda: call(h.c.charging.Open, bad), Code.INVALID_ARGUMENT, "SPEND_PROOF_INVALID", spender)


def test_deposit_beyond_the_inputs_with_negative_change_is_refused(
    h: Harness, spender: Wallet, idle: Kit, spare: PreparedDeposit
) -> None:
    # D = 505 from one note of 500 and change = -5 (a value far beyond 2^64 mod r): the sum balances,
    # but no 64-bit range proof exists for the change, so whatever proof comes along is refused.
    request, _ = open_request(h, spender, spare, idle)
    (note,) = spare.inputs
    b_d, b_c = pedersen.random_blinding(), pedersen.random_blinding()
    d = pedersen.commit(505, b_d)
    change = bn254.point_from_bytes(note.commitment) - d
    proof = rangeproof.prove([505, 0], [b_d, b_c], 64, _open_context(h, spare))
    request.range_proof = proof
    bad = resigned_open(
        h,
        request,
        [note.opened.secret_scalar],
        deposit=bn254.point_to_bytes(d),
        change_commitment=bn254.point_to_bytes(change),
        range_proof_hash=hashlib.sha256(proof).digest(),
    )
    refused(h, lambda: call(h.c.charging.Open, bad), Code.INVALID_ARGUMENT, "SPEND_PROOF_INVALID", spender)


def test_owner_signature_over_another_body_is_refused(
    h: Harness, spender: Wallet, idle: Kit, spare: PreparedDeposit
) -> None:
    request, _ = open_request(h, spender, spare, idle)
    changed = dataclasses.replace(OpenBody.from_bytes(request.open_body), expiry=int(time.time()) + 200)
    request.open_body = changed.to_bytes()  # the signatures still cover the old body
    refused(
        h,
        lambda: call(h.c.charging.Open, request),
        Code.PERMISSION_DENIED,
        "SPEND_SIGNATURE_INVALID",
        spender,
    )


def test_deposit_below_the_session_fee_is_refused(h: Harness, spender: Wallet) -> None:
    kit = register_pole(h, fee=50)
    request, _ = open_request(h, spender, spender.prepare_deposit(h.a, 49), kit)
    refused(
        h, lambda: call(h.c.charging.Open, request), Code.FAILED_PRECONDITION, "DEPOSIT_BELOW_FEE", spender
    )


@pytest.mark.parametrize(
    ("case", "code", "reason"),
    [
        ("expired", Code.FAILED_PRECONDITION, "SPEND_EXPIRED"),
        ("deadline-in-the-past", Code.INVALID_ARGUMENT, "SPEND_DEADLINE_INVALID"),
        ("deadline-beyond-the-maximum", Code.INVALID_ARGUMENT, "SPEND_DEADLINE_INVALID"),
        ("another-enclave-key", Code.INVALID_ARGUMENT, "SPEND_WRONG_ENCLAVE_KEY"),
        ("swapped-change-envelope", Code.INVALID_ARGUMENT, "SPEND_ENVELOPE_MISMATCH"),
        ("enclave-envelope-of-another-session", Code.INVALID_ARGUMENT, "SESSION_ENVELOPE_INVALID"),
        ("opening-is-not-D", Code.INVALID_ARGUMENT, "SESSION_DEPOSIT_MISMATCH"),
        ("refund-address-invalid", Code.INVALID_ARGUMENT, "SESSION_MALFORMED"),
        ("session-key-small-order", Code.INVALID_ARGUMENT, "SESSION_MALFORMED"),
        ("secret-with-trailing-byte", Code.INVALID_ARGUMENT, "SESSION_ENVELOPE_INVALID"),
        ("unknown-pole", Code.NOT_FOUND, "POLE_NOT_FOUND"),
        ("pole-without-tariff", Code.FAILED_PRECONDITION, "TARIFF_MISMATCH"),
        ("tariff-of-another-pole", Code.FAILED_PRECONDITION, "TARIFF_MISMATCH"),
    ],
)
def test_other_open_refusals(
    h: Harness,
    spender: Wallet,
    idle: Kit,
    spare: PreparedDeposit,
    spare_two: PreparedDeposit,
    case: str,
    code: grpc.StatusCode,
    reason: str,
) -> None:
    prepared, signers = spare, owner_secrets(spare)
    pole_id, tariff_body, deadline = idle.pole.pole_id, idle.pole.tariff_body, deadline_ms()
    if case == "deadline-in-the-past":
        deadline = deadline_ms(-10)
    elif case == "deadline-beyond-the-maximum":
        deadline = deadline_ms(25 * 3600)  # GenesisConfig's default maximum is 24 h
    elif case == "opening-is-not-D":
        prepared = dataclasses.replace(prepared, deposit=prepared.deposit - 1)
    elif case == "unknown-pole":
        pole_id = "NO-SUCH-POLE"
    elif case == "pole-without-tariff":
        pole_id = register_pole(h, tariff=False).pole.pole_id
    elif case == "tariff-of-another-pole":
        tariff_body = register_pole(h).pole.tariff_body
    expiry_s = -5 if case == "expired" else 300
    request, _ = spender.open_request(h.a, prepared, pole_id, tariff_body, deadline, expiry_s=expiry_s)
    if case == "another-enclave-key":
        request = resigned_open(h, request, signers, enclave_key_id=os.urandom(32))
    elif case == "swapped-change-envelope":
        request.change_envelope = spare_two.change_envelope
    elif case == "enclave-envelope-of-another-session":
        other, _ = spender.open_request(h.a, spare_two, pole_id, tariff_body, deadline)
        request.enclave_envelope = other.enclave_envelope
        digest = hashlib.sha256(other.enclave_envelope).digest()
        request = resigned_open(h, request, signers, enclave_envelope_hash=digest)
    elif case in ("refund-address-invalid", "session-key-small-order", "secret-with-trailing-byte"):
        secret = OpenSecret(
            session_id=prepared.session_id,
            deposit_amount=prepared.deposit,
            deposit_blinding=prepared.deposit_blinding.to_bytes(32, "big"),
            pole_id=pole_id,
            tariff_hash=hashlib.sha256(tariff_body).digest(),
            refund_address=spender.address.to_bytes(),
            session_key=ed25519_public_key(os.urandom(32)),
        )
        if case == "refund-address-invalid":
            secret = dataclasses.replace(
                secret, refund_address=BAD_ED25519_KEYS["small-order-identity"] + bytes(32)
            )
        elif case == "session-key-small-order":
            secret = dataclasses.replace(secret, session_key=BAD_ED25519_KEYS["small-order-identity"])
        plain = secret.to_bytes() + (b"\x00" if case == "secret-with-trailing-byte" else b"")
        context = open_context(h.a.chain_id, session_tag(prepared.session_id))
        request.enclave_envelope = envelope.seal(h.a.encryption_key, plain, context)
        digest = hashlib.sha256(request.enclave_envelope).digest()
        request = resigned_open(h, request, signers, enclave_envelope_hash=digest)
    refused(h, lambda: call(h.c.charging.Open, request), code, reason, spender)


# === tariffs ================================================================================================


def test_open_at_an_old_cheaper_tariff_is_superseded(
    h: Harness, spender: Wallet, spare: PreparedDeposit
) -> None:
    kit = register_pole(h, price=30_000_000)
    cheap = kit.pole.tariff_body
    call(
        h.c.registry.PublishTariff,
        kit.pole.tariff_request(h.a.chain_id, CURRENCY, 60_000_000, 80, sequence=2),
    )
    request, _ = spender.open_request(h.a, spare, kit.pole.pole_id, cheap, deadline_ms())
    refused(
        h, lambda: call(h.c.charging.Open, request), Code.FAILED_PRECONDITION, "TARIFF_SUPERSEDED", spender
    )


def test_open_at_an_expired_tariff_is_refused(h: Harness, spender: Wallet, spare: PreparedDeposit) -> None:
    kit = register_pole(h, tariff=False)
    not_after = int(time.time()) + 2
    publish = kit.pole.tariff_request(
        h.a.chain_id, CURRENCY, PRICE_NUMERATOR, SESSION_FEE, sequence=1, not_after=not_after
    )
    call(h.c.registry.PublishTariff, publish)
    time.sleep(max(0.0, not_after - time.time()) + 0.05)  # until the window closes (at most 2 s)
    request, _ = open_request(h, spender, spare, kit)
    refused(h, lambda: call(h.c.charging.Open, request), Code.FAILED_PRECONDITION, "TARIFF_EXPIRED", spender)


@pytest.mark.parametrize(
    ("case", "code", "reason"),
    [
        ("signed-by-another-key", Code.PERMISSION_DENIED, "TARIFF_SIGNATURE_INVALID"),
        ("flipped-signature", Code.PERMISSION_DENIED, "TARIFF_SIGNATURE_INVALID"),
        ("older-sequence", Code.FAILED_PRECONDITION, "TARIFF_SUPERSEDED"),
        ("same-sequence", Code.FAILED_PRECONDITION, "TARIFF_SUPERSEDED"),
        ("already-expired", Code.FAILED_PRECONDITION, "TARIFF_EXPIRED"),
        ("not-yet-valid", Code.FAILED_PRECONDITION, "TARIFF_NOT_YET_VALID"),
        ("other-currency", Code.FAILED_PRECONDITION, "TARIFF_MISMATCH"),
        ("unknown-pole", Code.NOT_FOUND, "POLE_NOT_FOUND"),
    ],
)
def test_publish_tariff_refusals(h: Harness, case: str, code: grpc.StatusCode, reason: str) -> None:
    kit = register_pole(h)  # publishes sequence 1
    call(
        h.c.registry.PublishTariff,
        kit.pole.tariff_request(h.a.chain_id, CURRENCY, 41_000_000, 50, sequence=5),
    )
    now = int(time.time())
    tariff = dataclasses.replace(Tariff.from_bytes(kit.pole.tariff_body), sequence=6)
    seed = kit.seed
    if case == "signed-by-another-key":
        seed = os.urandom(32)
    elif case == "older-sequence":
        tariff = dataclasses.replace(tariff, sequence=4, price_numerator=1)
    elif case == "same-sequence":
        tariff = dataclasses.replace(tariff, sequence=5, price_numerator=1)
    elif case == "already-expired":
        tariff = dataclasses.replace(tariff, not_before=now - 100, not_after=now - 10)
    elif case == "not-yet-valid":
        tariff = dataclasses.replace(tariff, not_before=now + 100, not_after=now + 1000)
    elif case == "other-currency":
        tariff = dataclasses.replace(tariff, currency="USD")
    elif case == "unknown-pole":
        tariff = dataclasses.replace(tariff, pole_id="NO-SUCH-POLE")
    signature = sign_tariff(tariff, h.a.chain_id, seed)
    if case == "flipped-signature":
        signature = flip(signature, 3)
    request = registry_pb2.PublishTariffRequest(
        request_id=rid(), tariff_body=tariff.to_bytes(), operator_signature=signature
    )
    refused(h, lambda: call(h.c.registry.PublishTariff, request), code, reason)


def test_replayed_pole_registration_is_refused(h: Harness) -> None:
    pole = Pole(os.urandom(32), SimulatedMeter.generate(), f"R-{rid()}", f"DE*R*{rid()}", os.urandom(32))
    request = pole.register_request(h.a.chain_id)
    call(h.c.registry.RegisterPole, request)
    request.request_id = rid()
    refused(h, lambda: call(h.c.registry.RegisterPole, request), Code.ALREADY_EXISTS, "POLE_ID_IN_USE")


def test_pole_registration_with_a_used_meter_or_evse_is_refused(h: Harness, idle: Kit) -> None:
    same_meter = Pole(os.urandom(32), idle.pole.meter, f"P-{rid()}", f"DE*X*{rid()}", os.urandom(32))
    request = same_meter.register_request(h.a.chain_id)
    refused(h, lambda: call(h.c.registry.RegisterPole, request), Code.ALREADY_EXISTS, "POLE_METER_IN_USE")
    evse = idle.pole.evse_id.lower()  # EVSE ids compare case-insensitively
    same_evse = Pole(os.urandom(32), SimulatedMeter.generate(), f"P-{rid()}", evse, os.urandom(32))
    request = same_evse.register_request(h.a.chain_id)
    assert PoleBody.from_bytes(request.pole_body).evse_id != idle.pole.evse_id
    refused(h, lambda: call(h.c.registry.RegisterPole, request), Code.ALREADY_EXISTS, "POLE_EVSE_IN_USE")


# === ATTACH =================================================================================================


def test_host_tampering_with_the_attach_envelope_is_detected(
    h: Harness, car: Wallet, opened: tuple[Kit, Session]
) -> None:
    kit, session = opened
    request = kit.pole.attach_request(h.a, session.session_id)
    # the payout address sits inside the ciphertext; the host flips bits where it guesses it is
    request.attach_envelope = flip(request.attach_envelope, len(request.attach_envelope) // 2)
    refused(
        h, lambda: call(h.c.charging.Attach, request), Code.INVALID_ARGUMENT, "SESSION_ENVELOPE_INVALID", car
    )
    request.attach_envelope = request.attach_envelope[:40]  # shorter than any envelope
    request.request_id = rid()
    refused(
        h, lambda: call(h.c.charging.Attach, request), Code.INVALID_ARGUMENT, "SESSION_ENVELOPE_INVALID", car
    )


def test_attach_envelope_for_another_session_does_not_open(
    h: Harness, car: Wallet, opened: tuple[Kit, Session]
) -> None:
    kit, session = opened
    request = kit.pole.attach_request(h.a, os.urandom(16))
    request.session_id = session.session_id  # the envelope's context binds the session id it was made for
    refused(
        h, lambda: call(h.c.charging.Attach, request), Code.INVALID_ARGUMENT, "SESSION_ENVELOPE_INVALID", car
    )


def test_payout_address_swapped_after_the_operator_signed_is_refused(h: Harness, car: Wallet) -> None:
    kit = register_pole(h)
    session, _ = open_session(h, car, kit)
    honest = attach_body(h, kit, session.session_id)
    signature = ed25519_sign(kit.seed, signed_message("attach", h.a.chain_id, honest.to_bytes()))
    thief = Wallet(os.urandom(32)).address.to_bytes()
    swapped = dataclasses.replace(honest, payout_address=thief)
    request = charging_pb2.AttachRequest(
        request_id=rid(),
        session_id=session.session_id,
        attach_envelope=sealed_attach(h, session.session_id, swapped, signature),
    )
    refused(
        h, lambda: call(h.c.charging.Attach, request), Code.PERMISSION_DENIED, "ATTACH_SIGNATURE_INVALID", car
    )
    # the honest body with the same signature still attaches: only the swap was refused
    request.request_id = rid()
    request.attach_envelope = sealed_attach(h, session.session_id, honest, signature)
    assert (
        check_ack(h.a, session.session_id, call(h.c.charging.Attach, request).ack).body.decision == "ATTACHED"
    )


@pytest.mark.parametrize(
    ("case", "code", "reason"),
    [
        ("expired", Code.FAILED_PRECONDITION, "SESSION_EXPIRED"),
        ("another-tariff", Code.FAILED_PRECONDITION, "TARIFF_MISMATCH"),
        ("another-enclave-key", Code.INVALID_ARGUMENT, "SESSION_WRONG_ENCLAVE_KEY"),
        ("another-evse", Code.PERMISSION_DENIED, "ATTACH_WRONG_POLE"),
        ("names-another-session", Code.INVALID_ARGUMENT, "SESSION_MALFORMED"),
        ("payout-not-an-address", Code.INVALID_ARGUMENT, "SESSION_MALFORMED"),
        ("not-a-signed-pair", Code.INVALID_ARGUMENT, "SESSION_ENVELOPE_INVALID"),
    ],
)
def test_other_attach_refusals(
    h: Harness, car: Wallet, opened: tuple[Kit, Session], case: str, code: grpc.StatusCode, reason: str
) -> None:
    kit, session = opened
    all_changes: dict[str, dict[str, object]] = {
        "expired": {"expiry": int(time.time()) - 5},
        "another-tariff": {"tariff_hash": os.urandom(32)},
        "another-enclave-key": {"enclave_key_id": os.urandom(32)},
        "another-evse": {"evse_id": kit.pole.evse_id + "X"},
        "names-another-session": {"session_id": os.urandom(16)},
        "payout-not-an-address": {"payout_address": BAD_ED25519_KEYS["small-order-identity"] + bytes(32)},
    }
    changes = all_changes.get(case, {})
    body = dataclasses.replace(attach_body(h, kit, session.session_id), **changes)  # type: ignore[arg-type]
    signature = ed25519_sign(kit.seed, signed_message("attach", h.a.chain_id, body.to_bytes()))
    if case == "not-a-signed-pair":
        context = attach_context(h.a.chain_id, session.session_id)
        sealed = envelope.seal(h.a.encryption_key, body.to_bytes() + signature, context)
    else:
        sealed = sealed_attach(h, session.session_id, body, signature)
    request = charging_pb2.AttachRequest(
        request_id=rid(), session_id=session.session_id, attach_envelope=sealed
    )
    refused(h, lambda: call(h.c.charging.Attach, request), code, reason, car)


def test_attach_by_a_pole_the_vehicle_did_not_choose(
    h: Harness, car: Wallet, opened: tuple[Kit, Session]
) -> None:
    _, session = opened
    intruder = register_pole(h)
    request = intruder.pole.attach_request(h.a, session.session_id)  # properly signed by its own operator
    refused(h, lambda: call(h.c.charging.Attach, request), Code.PERMISSION_DENIED, "ATTACH_WRONG_POLE", car)


def test_second_attach_is_refused(h: Harness, car: Wallet, attached: tuple[Kit, Session]) -> None:
    kit, session = attached
    request = kit.pole.attach_request(h.a, session.session_id)
    refused(
        h, lambda: call(h.c.charging.Attach, request), Code.ALREADY_EXISTS, "SESSION_ALREADY_ATTACHED", car
    )


def test_forged_ack_is_caught_by_the_pole(h: Harness, car: Wallet) -> None:
    kit = register_pole(h)
    session, _ = open_session(h, car, kit)
    real = call(h.c.charging.Attach, kit.pole.attach_request(h.a, session.session_id)).ack
    check_ack(h.a, session.session_id, real)
    for index in (0, 20, -1):
        forged = charging_pb2.SignedAck(
            ack_body=flip(real.ack_body, index), enclave_signature=real.enclave_signature
        )
        with pytest.raises(PoleError):
            check_ack(h.a, session.session_id, forged)
        forged = charging_pb2.SignedAck(
            ack_body=real.ack_body, enclave_signature=flip(real.enclave_signature, index)
        )
        with pytest.raises(PoleError):
            check_ack(h.a, session.session_id, forged)
    with pytest.raises(PoleError):  # a genuine ACK, presented for another session
        check_ack(h.a, os.urandom(16), real)


# === readings ===============================================================================================


def test_readings_before_attach_are_refused(h: Harness, car: Wallet, opened: tuple[Kit, Session]) -> None:
    kit, session = opened
    record = kit.twin(1).begin(session.session_id)
    envelope_ = kit.pole.reading_envelope(h.a, session.session_id, record)
    refused(h, lambda: stream(h, [envelope_]), Code.FAILED_PRECONDITION, "SESSION_WRONG_STATE", car)


def test_reading_signed_by_another_meter_is_refused(
    h: Harness, car: Wallet, attached: tuple[Kit, Session]
) -> None:
    kit, session = attached
    record = SimulatedMeter.generate().begin(session.session_id)  # the right meter handle, the wrong key
    envelope_ = kit.pole.reading_envelope(h.a, session.session_id, record)
    refused(h, lambda: stream(h, [envelope_]), Code.PERMISSION_DENIED, "READING_SIGNATURE_INVALID", car)


def test_reading_for_another_session_is_refused(
    h: Harness, car: Wallet, attached: tuple[Kit, Session], opened: tuple[Kit, Session]
) -> None:
    kit, session = attached
    record = kit.twin(1).begin(opened[1].session_id)  # the registered meter, another session's handle
    envelope_ = kit.pole.reading_envelope(h.a, session.session_id, record)
    refused(h, lambda: stream(h, [envelope_]), Code.PERMISSION_DENIED, "READING_WRONG_SESSION", car)


def test_first_reading_that_is_not_the_begin_is_out_of_order(
    h: Harness, car: Wallet, attached: tuple[Kit, Session]
) -> None:
    kit, session = attached
    meter = kit.twin(1)
    meter.begin(session.session_id)  # signed, never sent
    meter.advance(Decimal("0.5"))
    envelope_ = kit.pole.reading_envelope(h.a, session.session_id, meter.reading())
    refused(h, lambda: stream(h, [envelope_]), Code.FAILED_PRECONDITION, "READING_OUT_OF_ORDER", car)


def test_reading_envelope_under_another_sequence_does_not_open(
    h: Harness, car: Wallet, attached: tuple[Kit, Session]
) -> None:
    kit, session = attached
    record = kit.twin(1).begin(session.session_id).encode()
    sealed = envelope.seal(h.a.encryption_key, record, reading_context(h.a.chain_id, session.session_id, 7))
    request = charging_pb2.ReadingEnvelope(session_id=session.session_id, sequence=8, envelope=sealed)
    refused(h, lambda: stream(h, [request]), Code.INVALID_ARGUMENT, "READING_ENVELOPE_INVALID", car)


def test_reading_with_non_canonical_der_signature_is_refused(
    h: Harness, car: Wallet, attached: tuple[Kit, Session]
) -> None:
    kit, session = attached
    record = kit.twin(1).begin(session.session_id)
    prefix, signature_json = record.rsplit("|", 1)
    sd = json.loads(signature_json)["SD"]
    der = bytes.fromhex(sd)
    assert der[0] == 0x30 and der[1] < 0x80
    long_form = (b"\x30\x81" + der[1:]).hex()  # the same SEQUENCE with a long-form length: BER, not DER
    forged = prefix + "|" + signature_json.replace(sd, long_form.upper() if sd.isupper() else long_form)
    envelope_ = kit.pole.reading_envelope(h.a, session.session_id, forged)
    refused(h, lambda: stream(h, [envelope_]), Code.PERMISSION_DENIED, "READING_SIGNATURE_INVALID", car)


@pytest.fixture(scope="module")
def charging(h: Harness, car: Wallet) -> tuple[Kit, Session, int]:
    """A session with its B (register 10 kWh) and one C (11 kWh) accepted; then only refusals reach it."""
    kit, session = attached_session(h, car)
    begin_pg = kit.pole.meter.pagination
    meter = kit.twin(begin_pg, "10")
    records = [meter.begin(session.session_id)]
    meter.advance(Decimal("1"))
    records.append(meter.reading())
    h.send(kit.pole, session.session_id, records)
    return kit, session, begin_pg


def _c_record(kit: Kit, pg: int, register_kwh: str, session_id: bytes) -> str:
    """A C record signed by the registered meter with PG T<pg> and the given register value."""
    twin = kit.twin(pg - 1, register_kwh)
    twin.begin(session_id)  # opens the meter's transaction; this B is never sent
    return twin.reading()


@pytest.mark.parametrize(
    ("case", "code", "reason"),
    [
        ("pg-skipped", Code.FAILED_PRECONDITION, "READING_OUT_OF_ORDER"),
        ("same-pg-other-content", Code.FAILED_PRECONDITION, "READING_PG_REUSED"),
        ("second-begin", Code.FAILED_PRECONDITION, "READING_DUPLICATE_BEGIN"),
        ("register-went-backwards", Code.FAILED_PRECONDITION, "READING_NOT_MONOTONE"),
        ("not-ocmf", Code.INVALID_ARGUMENT, "READING_MALFORMED"),
        ("over-16-kib", Code.INVALID_ARGUMENT, "READING_TOO_LARGE"),
    ],
)
def test_records_that_break_the_acceptance_rules_after_the_begin(
    h: Harness, car: Wallet, charging: tuple[Kit, Session, int], case: str, code: grpc.StatusCode, reason: str
) -> None:
    kit, session, begin_pg = charging  # next expected: T<begin_pg + 2>
    sid = session.session_id
    makers: dict[str, Callable[[], str]] = {
        "pg-skipped": lambda: _c_record(kit, begin_pg + 3, "11.5", sid),  # T<begin_pg + 2> signed and lost
        "same-pg-other-content": lambda: kit.twin(begin_pg + 1, "10.5").begin(sid),
        "second-begin": lambda: kit.twin(begin_pg + 2, "11").begin(sid),
        "register-went-backwards": lambda: _c_record(kit, begin_pg + 2, "10.5", sid),
        "not-ocmf": lambda: 'OCMF|{"FV":"1.0"}|{}',
        "over-16-kib": lambda: "OCMF|" + "x" * (16 * 1024),
    }
    record = makers[case]()
    envelope_ = kit.pole.reading_envelope(h.a, sid, record)
    refused(h, lambda: stream(h, [envelope_]), code, reason, car)


def test_replayed_reading_gets_its_original_ack_byte_for_byte_and_changes_nothing(
    h: Harness, car: Wallet
) -> None:
    kit, session = attached_session(h, car)
    begin = kit.pole.meter.begin(session.session_id)
    first_envelope = kit.pole.reading_envelope(h.a, session.session_id, begin)
    (first,) = stream(h, [first_envelope])
    kit.pole.meter.advance(Decimal("1"))
    stream(h, [kit.pole.reading_envelope(h.a, session.session_id, kit.pole.meter.reading())])
    before = state(h, [car])
    again_same = stream(h, [first_envelope])  # the very same envelope
    again_new = stream(h, [kit.pole.reading_envelope(h.a, session.session_id, begin)])  # resealed, new seq
    assert [a.SerializeToString() for a in again_same + again_new] == [first.SerializeToString()] * 2
    assert state(h, [car]) == before


def test_settled_session_refuses_everything_but_the_repeated_final_reading(h: Harness, car: Wallet) -> None:
    kit, session = attached_session(h, car)
    sid = session.session_id
    meter = kit.pole.meter
    begin = meter.begin(sid)
    meter.advance(Decimal("1"))
    end = meter.end()
    (_, final) = stream(h, [kit.pole.reading_envelope(h.a, sid, r) for r in (begin, end)])
    assert check_ack(h.a, sid, final).body.decision == "SETTLED"
    before = state(h, [car])
    (again,) = stream(h, [kit.pole.reading_envelope(h.a, sid, end)])
    assert again.SerializeToString() == final.SerializeToString()
    assert state(h, [car]) == before
    reading = kit.pole.reading_envelope(h.a, sid, begin)
    refused(h, lambda: stream(h, [reading]), Code.FAILED_PRECONDITION, "SESSION_SETTLED", car)
    stop = car.stop_request(h.a, session)
    refused(h, lambda: call(h.c.charging.Stop, stop), Code.FAILED_PRECONDITION, "SESSION_SETTLED", car)
    attach = kit.pole.attach_request(h.a, sid)
    refused(h, lambda: call(h.c.charging.Attach, attach), Code.FAILED_PRECONDITION, "SESSION_SETTLED", car)


# === STOP, GET and unknown sessions =========================================================================


def test_forged_stop_signature_is_refused(h: Harness, car: Wallet, opened: tuple[Kit, Session]) -> None:
    _, session = opened
    denied = (Code.PERMISSION_DENIED, "STOP_SIGNATURE_INVALID")
    body = StopBody(session.session_id, "vehicle", 1, "", int(time.time() * 1000)).to_bytes()
    signature = ed25519_sign(os.urandom(32), signed_message("stop", h.a.chain_id, body))
    stranger = charging_pb2.StopRequest(request_id=rid(), stop_body=body, signature=signature)
    refused(h, lambda: call(h.c.charging.Stop, stranger), *denied, car)
    flipped = car.stop_request(h.a, dataclasses.replace(session))
    flipped.signature = flip(flipped.signature, 7)
    refused(h, lambda: call(h.c.charging.Stop, flipped), *denied, car)
    # a STOP claiming to come from the pole, signed with the vehicle's session key
    as_pole = StopBody(session.session_id, "pole", 1, "", int(time.time() * 1000)).to_bytes()
    signature = ed25519_sign(session.session_key_seed, signed_message("stop", h.a.chain_id, as_pole))
    impostor = charging_pb2.StopRequest(request_id=rid(), stop_body=as_pole, signature=signature)
    refused(h, lambda: call(h.c.charging.Stop, impostor), *denied, car)


def test_replayed_stop_is_refused(h: Harness, car: Wallet) -> None:
    kit, session = attached_session(h, car)
    h.send(kit.pole, session.session_id, [kit.pole.meter.begin(session.session_id)])
    stop = car.stop_request(h.a, session)
    answer = call(h.c.charging.Stop, stop)
    assert answer.state == charging_pb2.SESSION_STATE_CLOSING
    assert call(h.c.charging.Stop, stop) == answer  # a retry: the first answer
    stop.request_id = rid()  # a replay: the same signed STOP as a new request
    refused(h, lambda: call(h.c.charging.Stop, stop), Code.FAILED_PRECONDITION, "STOP_REPLAYED", car)


def _get(
    h: Harness, session_id: bytes, party: str, seed: bytes, expiry: int
) -> charging_pb2.GetSessionRequest:
    body = GetBody(session_id, party, expiry).to_bytes()
    signature = ed25519_sign(seed, signed_message("session-get", h.a.chain_id, body))
    return charging_pb2.GetSessionRequest(session_id=session_id, request_body=body, signature=signature)


def test_get_session_by_a_non_party_is_refused(h: Harness, car: Wallet, opened: tuple[Kit, Session]) -> None:
    _, session = opened
    expiry = int(time.time()) + 300
    stranger, other_operator = os.urandom(32), register_pole(h).seed  # a pole, but not this session's
    for party, seed in (("vehicle", stranger), ("pole", stranger), ("pole", other_operator)):
        request = _get(h, session.session_id, party, seed, expiry)
        refused(
            h,
            partial(call, h.c.charging.GetSession, request),
            Code.PERMISSION_DENIED,
            "GET_SIGNATURE_INVALID",
            car,
        )
    assert h.get(car, session).state == charging_pb2.SESSION_STATE_OPENED  # the parties still can


def test_get_session_replayed_after_expiry_or_for_another_session_is_refused(
    h: Harness, car: Wallet, opened: tuple[Kit, Session]
) -> None:
    _, session = opened
    expired = _get(h, session.session_id, "vehicle", session.session_key_seed, int(time.time()) - 5)
    refused(
        h, lambda: call(h.c.charging.GetSession, expired), Code.FAILED_PRECONDITION, "SESSION_EXPIRED", car
    )
    moved = car.get_request(h.a, session)
    moved.session_id = os.urandom(16)  # a valid GET of one session, sent as a GET of another
    refused(h, lambda: call(h.c.charging.GetSession, moved), Code.INVALID_ARGUMENT, "SESSION_MALFORMED", car)


def test_unknown_session_is_not_found_everywhere(h: Harness, car: Wallet, idle: Kit) -> None:
    ghost = Session(os.urandom(16), os.urandom(32), idle.pole.pole_id, 100, bytes(32))
    not_found = (Code.NOT_FOUND, "SESSION_NOT_FOUND")
    attach = idle.pole.attach_request(h.a, ghost.session_id)
    refused(h, lambda: call(h.c.charging.Attach, attach), *not_found, car)
    reading = idle.pole.reading_envelope(h.a, ghost.session_id, idle.twin(1).begin(ghost.session_id))
    refused(h, lambda: stream(h, [reading]), *not_found, car)
    stop = car.stop_request(h.a, ghost)
    refused(h, lambda: call(h.c.charging.Stop, stop), *not_found, car)
    get = car.get_request(h.a, ghost)
    refused(h, lambda: call(h.c.charging.GetSession, get), *not_found, car)
