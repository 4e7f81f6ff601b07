"""The issuer: turns money into notes (MINT) for an address (DESIGN §6.1, §6.3).

The issuer holds one Ed25519 key, named in GENESIS. A MINT pays ``amount`` to an address: a fresh
blinding b gives C = amount*G + b*H, a fresh one-time owner key and envelope for the address
(escrow.core.notes.seal_note), a body naming a unique mint reference, and the issuer's signature and the
Schnorr proof that C - amount*G is a multiple of H, both over the same signed message.
"""

from __future__ import annotations

import hashlib
import os
import time

from clients.connection import Attested
from escrow.core.notes import MintBody, mint_message, seal_note
from escrow.core.signing import ed25519_key_id, ed25519_public_key, ed25519_sign
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
