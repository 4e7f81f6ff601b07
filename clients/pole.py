"""The pole: operator key, certified meter, registration, tariffs, attaching to a session, readings.

The operator signs the POLE registration (with the meter's proof-of-possession record), each TARIFF, each
ATTACH and any STOP or GET; the meter signs OCMF records (clients.meter). Readings travel to the enclave
inside envelopes bound to (chain, "reading", session id, sequence), and every acknowledgement comes back
signed by the enclave: ``check_ack`` verifies it under the attested ledger key, and the pole never
delivers energy beyond the last signed coverage limit.

Payouts go to the address of the operator's payout wallet (a stealth address from its own seed), given
in the ATTACH; every note paid to it gets a fresh one-time owner key, so payouts are unlinkable on the
ledger. The pole's receipt is sealed to the same address.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass

from clients.connection import Attested
from clients.meter import SimulatedMeter
from clients.wallet import VerifiedReceipt, open_receipt
from escrow.core.registry import PoleBody, pole_message, registration_challenge
from escrow.core.session import (
    AckBody,
    AttachBody,
    GetBody,
    StopBody,
    attach_context,
    reading_context,
    signed_pair,
)
from escrow.core.signing import ed25519_public_key, ed25519_sign, p256_verify, signed_message
from escrow.core.tariff import Tariff, sign_tariff
from escrow.v1 import charging_pb2, registry_pb2
from zk import envelope, stealth


class PoleError(Exception):
    """A pole operation that cannot proceed (an ACK that does not verify, ...)."""


@dataclass(frozen=True)
class CheckedAck:
    """An enclave-signed acknowledgement whose signature verified."""

    body: AckBody
    raw: charging_pb2.SignedAck


class Pole:
    """One charge point: its operator key, its meter, its payout wallet."""

    def __init__(
        self, operator_seed: bytes, meter: SimulatedMeter, pole_id: str, evse_id: str, payout_seed: bytes
    ) -> None:
        self._operator_seed = operator_seed
        self.operator_key = ed25519_public_key(operator_seed)
        self.meter = meter
        self.pole_id, self.evse_id = pole_id, evse_id
        self.payout = stealth.WalletKeys.from_seed(payout_seed)
        self.tariff_body: bytes = b""
        self._sequence = 0
        self._stop_sequence = 0

    def __repr__(self) -> str:
        return f"Pole({self.pole_id}, {self.evse_id})"

    # --- registration -------------------------------------------------------------------------------

    def register_request(
        self, chain_id: bytes, *, request_id: str | None = None, expiry_s: int = 300
    ) -> registry_pb2.RegisterPoleRequest:
        challenge = registration_challenge(chain_id, self.pole_id, self.evse_id, self.operator_key)
        pop = self.meter.proof_of_possession(challenge).encode()
        body = PoleBody(
            pole_id=self.pole_id,
            evse_id=self.evse_id,
            meter_public_key=self.meter.public_key_der,
            meter_algorithm=self.meter.algorithm,
            RI=self.meter.RI,
            RU=self.meter.RU,
            operator_key=self.operator_key,
            pop_record_hash=hashlib.sha256(pop).digest(),
            expiry=int(time.time()) + expiry_s,
        ).to_bytes()
        return registry_pb2.RegisterPoleRequest(
            request_id=request_id or os.urandom(16).hex(),
            pole_body=body,
            operator_signature=ed25519_sign(self._operator_seed, pole_message(chain_id, body)),
            meter_pop_record=pop,
        )

    def tariff_request(
        self,
        chain_id: bytes,
        currency: str,
        price_numerator: int,
        session_fee_minor: int,
        *,
        sequence: int,
        not_before: int | None = None,
        not_after: int | None = None,
        request_id: str | None = None,
    ) -> registry_pb2.PublishTariffRequest:
        now = int(time.time())
        tariff = Tariff(
            pole_id=self.pole_id,
            evse_id=self.evse_id,
            currency=currency,
            price_numerator=price_numerator,
            session_fee_minor=session_fee_minor,
            RI=self.meter.RI,
            RU=self.meter.RU,
            not_before=now - 60 if not_before is None else not_before,
            not_after=now + 365 * 86400 if not_after is None else not_after,
            sequence=sequence,
        )
        body = tariff.to_bytes()
        self.tariff_body = body
        return registry_pb2.PublishTariffRequest(
            request_id=request_id or os.urandom(16).hex(),
            tariff_body=body,
            operator_signature=sign_tariff(tariff, chain_id, self._operator_seed),
        )

    # --- a session ----------------------------------------------------------------------------------

    def attach_request(
        self, attested: Attested, session_id: bytes, *, request_id: str | None = None, expiry_s: int = 300
    ) -> charging_pb2.AttachRequest:
        body = AttachBody(
            session_id=session_id,
            pole_id=self.pole_id,
            evse_id=self.evse_id,
            tariff_hash=hashlib.sha256(self.tariff_body).digest(),
            payout_address=self.payout.address().to_bytes(),
            enclave_key_id=attested.enclave_key_id,
            expiry=int(time.time()) + expiry_s,
        ).to_bytes()
        signature = ed25519_sign(self._operator_seed, signed_message("attach", attested.chain_id, body))
        sealed = envelope.seal(
            attested.encryption_key,
            signed_pair(body, signature),
            attach_context(attested.chain_id, session_id),
        )
        return charging_pb2.AttachRequest(
            request_id=request_id or os.urandom(16).hex(), session_id=session_id, attach_envelope=sealed
        )

    def reading_envelope(
        self, attested: Attested, session_id: bytes, record: str | bytes
    ) -> charging_pb2.ReadingEnvelope:
        """One OCMF record sealed to the enclave, with the next sequence number."""
        self._sequence += 1
        raw = record.encode() if isinstance(record, str) else record
        sealed = envelope.seal(
            attested.encryption_key, raw, reading_context(attested.chain_id, session_id, self._sequence)
        )
        return charging_pb2.ReadingEnvelope(session_id=session_id, sequence=self._sequence, envelope=sealed)

    def stop_request(
        self, attested: Attested, session_id: bytes, last_pg: str = "", *, request_id: str | None = None
    ) -> charging_pb2.StopRequest:
        self._stop_sequence += 1
        body = StopBody(session_id, "pole", self._stop_sequence, last_pg, int(time.time() * 1000)).to_bytes()
        signature = ed25519_sign(self._operator_seed, signed_message("stop", attested.chain_id, body))
        return charging_pb2.StopRequest(
            request_id=request_id or os.urandom(16).hex(), stop_body=body, signature=signature
        )

    def get_request(self, attested: Attested, session_id: bytes) -> charging_pb2.GetSessionRequest:
        body = GetBody(session_id, "pole", int(time.time()) + 300).to_bytes()
        signature = ed25519_sign(self._operator_seed, signed_message("session-get", attested.chain_id, body))
        return charging_pb2.GetSessionRequest(session_id=session_id, request_body=body, signature=signature)

    def open_receipt(self, attested: Attested, session_id: bytes, sealed: bytes) -> VerifiedReceipt:
        return open_receipt(self.payout, attested, session_id, "pole", sealed)


def check_ack(attested: Attested, session_id: bytes, signed: charging_pb2.SignedAck) -> CheckedAck:
    """Verify an ACK's enclave signature under the attested ledger key and that it is for this session."""
    try:
        p256_verify(
            attested.ledger_key,
            signed_message("ack", attested.chain_id, signed.ack_body),
            signed.enclave_signature,
        )
    except Exception as e:
        raise PoleError(f"the ACK is not signed by the attested enclave: {e}") from None
    body = AckBody.from_bytes(signed.ack_body)
    if body.session_id != session_id:
        raise PoleError("the ACK is for another session")
    return CheckedAck(body, signed)
