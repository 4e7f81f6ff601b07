"""The issuer: turns money into notes (MINT) for an address, and pays out redemptions (DESIGN §6.1, §6.3).

The issuer holds one Ed25519 key, named in GENESIS. A MINT pays ``amount`` to an address: a fresh
blinding b gives C = amount*G + b*H, a fresh one-time owner key and envelope for the address
(escrow.core.notes.seal_note), a body naming a unique mint reference, and the issuer's signature and the
Schnorr proof that C - amount*G is a multiple of H, both over the same signed message.

Redemption: an owner spends notes into a REDEEM entry naming an amount and an opaque issuer reference
(e.g. a bank transfer id). Before the issuer pays that amount out in fiat it approves the entry:
``approve_redemptions`` attests the escrow, audits the whole ledger (clients.auditor: the chain, every
proof and signature, each note spent once) and returns the REDEEM entries from a height, each with its
amount, currency and reference. The issuer pays each reference once; the ledger's order is its order.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass

from clients.auditor import audit
from clients.connection import Attested, Connection
from enclave.verifier import Policy
from escrow.core import entries
from escrow.core.notes import MintBody, mint_message, seal_note
from escrow.core.signing import ed25519_key_id, ed25519_public_key, ed25519_sign
from escrow.core.spending import RedeemBody
from escrow.v1 import notes_pb2
from zk import bn254, pedersen, schnorr, stealth


class Issuer:
    """An issuer's key and the MINT requests it signs."""

    def __init__(self, seed: bytes) -> None:
        if not isinstance(seed, bytes) or len(seed) != 32:
            raise ValueError("an issuer seed is 32 bytes")
        self._seed = seed
        self.public_key = ed25519_public_key(seed)
        self.key_id = ed25519_key_id(self.public_key)

    def __repr__(self) -> str:
        return f"Issuer(key_id={self.key_id.hex()[:16]}...)"

    def mint_request(
        self,
        attested: Attested,
        currency: str,
        address: stealth.Address,
        amount: int,
        *,
        reference: bytes | None = None,
        request_id: str | None = None,
        expiry_s: int = 300,
    ) -> notes_pb2.MintRequest:
        """A signed MINT of ``amount`` minor units to ``address``."""
        if not 0 < amount < 1 << 64:
            raise ValueError("a mint amount is a positive amount below 2^64")
        blinding = int.from_bytes(os.urandom(64), "big") % bn254.ORDER
        commitment = bn254.point_to_bytes(pedersen.commit(amount, blinding))
        owner_key, sealed = seal_note(attested.chain_id, address, commitment, amount, blinding)
        body = MintBody(
            mint_reference=reference or os.urandom(16),
            amount=amount,
            currency=currency,
            commitment=commitment,
            owner_key=owner_key,
            envelope_hash=hashlib.sha256(sealed).digest(),
            issuer_key_id=self.key_id,
            expiry=int(time.time()) + expiry_s,
        ).to_bytes()
        message = mint_message(attested.chain_id, body)
        return notes_pb2.MintRequest(
            request_id=request_id or os.urandom(16).hex(),
            mint_body=body,
            issuer_signature=ed25519_sign(self._seed, message),
            amount_proof=schnorr.prove_public_amount(amount, blinding, message),
            envelope=sealed,
        )


class RedemptionError(Exception):
    """The ledger did not audit: nothing may be paid out. ``reason`` is the audit's stable reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class Redemption:
    """A REDEEM entry on an audited ledger: pay ``amount_minor`` of ``currency`` against ``reference``."""

    height: int
    entry_hash: bytes
    amount_minor: int
    currency: str
    reference: bytes
    input_note_ids: tuple[bytes, ...]


def approve_redemptions(connection: Connection, policy: Policy, *, from_height: int = 0) -> list[Redemption]:
    """Attest, audit the whole ledger under ``policy``, and list the REDEEM entries at or after
    ``from_height``. Raises RedemptionError if the audit fails (and AttestationError if the quote does)."""
    attested = connection.attest(policy)
    ledger = list(connection.entries())
    report = audit(
        ledger,
        policy,
        expect_ledger_key=attested.ledger_key,
        expect_chain_id=attested.chain_id,
        expect_head=(attested.bundle.head_height, attested.bundle.head_hash),
    )
    if not report.ok:
        raise RedemptionError(
            report.reason or "AUDIT_FAILED", f"entry {report.first_bad_height}: {report.detail}"
        )
    out = []
    for entry in ledger:
        header = entry.parsed
        if header.kind != "REDEEM" or header.height < from_height:
            continue
        body = RedeemBody.from_bytes(entries.decode_payload("REDEEM", entry.payload)["redeem_body"])
        out.append(
            Redemption(
                header.height,
                entry.entry_hash,
                body.amount,
                body.currency,
                body.issuer_reference,
                tuple(body.input_note_ids),
            )
        )
    return out
