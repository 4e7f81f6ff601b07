"""The vehicle's wallet: notes found by scanning the ledger, deposits, sessions, redemptions (§6.1, §7).

Everything derives from one 32-byte seed (zk.stealth.WalletKeys): the wallet's address, the one-time key
of every note paid to it (found by scanning every note on the ledger: the server never filters by owner),
and the openings in their envelopes. A wallet restores from its seed alone by scanning from height 0.

Scanning reads whole entries (``Connection.entries``) and checks the chain and the enclave's signature on
each one under the key GENESIS and KEY entries name, which must end at the attested ledger key; outputs
and spends come from the payloads (escrow.core.entries.effects), so the wallet knows which of its notes
are spent without asking anyone.

A deposit is prepared before the pole is known (``prepare_deposit``: the inputs, D, the change note and
the aggregated range proof, which binds the session tag and the input ids but nothing about the pole),
and turned into an OPEN request once the vehicle has chosen a pole and its tariff (``open_request``).
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from itertools import combinations

from clients.connection import Attested, Connection
from escrow.core import entries
from escrow.core.ledger import Entry, Head, check_entry
from escrow.core.notes import OpenedNote, note_id, open_note, seal_note
from escrow.core.readings import session_tag
from escrow.core.session import (
    GetBody,
    OpenSecret,
    Progress,
    Receipt,
    StopBody,
    open_context,
    progress_context,
    receipt_context,
    split_receipt_plaintext,
    split_signed_pair,
)
from escrow.core.settlement import AMOUNT_BITS, MAX_INPUTS, proof_context
from escrow.core.signing import ed25519_public_key, ed25519_sign, p256_verify, signed_message
from escrow.core.spending import OpenBody, RedeemBody, open_message, redeem_message, redeem_proof_context
from escrow.v1 import charging_pb2, notes_pb2
from zk import bn254, envelope, pedersen, rangeproof, schnorr, stealth


class WalletError(Exception):
    """A wallet operation that cannot proceed (not enough funds, a ledger that does not verify, ...)."""


@dataclass
class OwnedNote:
    """A note this wallet owns."""

    note_id: bytes
    height: int
    commitment: bytes
    opened: OpenedNote
    spent: bool = False

    @property
    def value(self) -> int:
        return self.opened.value


@dataclass
class PreparedDeposit:
    """A deposit ready to be opened at any pole: everything expensive is done."""

    session_id: bytes
    inputs: list[OwnedNote]
    deposit: int
    deposit_blinding: int
    deposit_commitment: bytes
    change: int
    change_commitment: bytes
    change_owner_key: bytes
    change_envelope: bytes
    range_proof: bytes

    def __repr__(self) -> str:
        return f"PreparedDeposit(deposit={self.deposit}, inputs={len(self.inputs)})"


@dataclass
class Session:
    """The vehicle's side of one session: its id and the one-time session key that signs STOP and GET."""

    session_id: bytes
    session_key_seed: bytes = field(repr=False)
    pole_id: str
    deposit: int
    tariff_hash: bytes
    stop_sequence: int = 0

    @property
    def tag(self) -> bytes:
        return session_tag(self.session_id)


@dataclass(frozen=True)
class VerifiedReceipt:
    """A receipt whose enclave signature verified, with the OCMF records it lists (vehicle only)."""

    receipt: Receipt
    records: list[bytes]


class LedgerScanner:
    """Checks the chain entry by entry under the ledger key in force (GENESIS, then each KEY)."""

    def __init__(self) -> None:
        self.head = Head()
        self.key: bytes | None = None

    def check(self, entry: Entry) -> None:
        kind = entry.parsed.kind
        key = self.key
        if kind == "GENESIS":
            key = entries.decode_payload("GENESIS", entry.payload)["ledger_key"]
        if key is None:
            raise WalletError("the ledger does not start with GENESIS")
        self.head = check_entry(self.head, entry, key)
        if kind in ("GENESIS", "KEY"):
            self.key = entries.decode_payload(kind, entry.payload)["ledger_key"]


class Wallet:
    """A vehicle's (or any owner's) notes, from one seed."""

    def __init__(self, seed: bytes) -> None:
        self.keys = stealth.WalletKeys.from_seed(seed)
        self.address = self.keys.address()
        self.notes: dict[bytes, OwnedNote] = {}
        self._scanner = LedgerScanner()
        self._spent: set[bytes] = set()

    def __repr__(self) -> str:
        return f"Wallet(address={self.address.to_text()[:16]}..., notes={len(self.notes)})"

    # --- scanning -------------------------------------------------------------------------------

    @property
    def scanned_height(self) -> int:
        return self._scanner.head.height

    def scan(self, connection: Connection, attested: Attested) -> int:
        """Read the ledger from where the last scan stopped; returns how many notes were found. The chain
        must be the attested one and end under the attested ledger key."""
        found = 0
        for entry in connection.entries(self._scanner.head.height + 1):
            self._scanner.check(entry)
            found += self._take(entry, attested.chain_id if entry.parsed.kind != "GENESIS" else None)
        if self._scanner.head.chain_id != attested.chain_id or self._scanner.key != attested.ledger_key:
            raise WalletError("the ledger is not the attested enclave's chain")
        return found

    def _take(self, entry: Entry, chain_id: bytes | None) -> int:
        kind = entry.parsed.kind
        if chain_id is None:
            return 0
        fx = entries.effects(kind, entry.payload)
        for spent in fx.spent:
            self._spent.add(spent)
            if spent in self.notes:
                self.notes[spent].spent = True
        found = 0
        for out in fx.outputs:
            if out.is_deposit:
                continue
            opened = open_note(self.keys, chain_id, out.commitment, out.owner_key, out.envelope)
            if opened is None:
                continue
            nid = note_id(entry.entry_hash, out.index)
            self.notes[nid] = OwnedNote(nid, entry.parsed.height, out.commitment, opened, nid in self._spent)
            found += 1
        return found

    def unspent(self) -> list[OwnedNote]:
        return sorted((n for n in self.notes.values() if not n.spent), key=lambda n: (n.height, n.note_id))

    def balance(self) -> int:
        return sum(n.value for n in self.unspent())

    def _select(self, amount: int) -> list[OwnedNote]:
        chosen: list[OwnedNote] = []
        total = 0
        for note in sorted(self.unspent(), key=lambda n: -n.value):
            if total >= amount and chosen:
                break
            chosen.append(note)
            total += note.value
        if total < amount or not chosen:
            raise WalletError(f"not enough funds: {total} available, {amount} needed")
        if len(chosen) > MAX_INPUTS:
            raise WalletError(f"a spend takes at most {MAX_INPUTS} notes; consolidate first")
        return sorted(chosen, key=lambda n: n.note_id)

    # --- deposits and sessions ----------------------------------------------------------------------

    def prepare_deposit(self, attested: Attested, deposit: int) -> PreparedDeposit:
        """Choose inputs and build D, the change note and the range proof (the expensive part)."""
        if not 0 < deposit < 1 << AMOUNT_BITS:
            raise WalletError("a deposit is a positive amount below 2^64")
        inputs = self._select(deposit)
        total = sum(n.value for n in inputs)
        session_id = os.urandom(16)
        b_deposit = _random_scalar()
        b_change = (sum(n.opened.blinding for n in inputs) - b_deposit) % bn254.ORDER
        change = total - deposit
        d = bn254.point_to_bytes(pedersen.commit(deposit, b_deposit))
        c = bn254.point_to_bytes(pedersen.commit(change, b_change))
        owner_key, change_env = seal_note(attested.chain_id, self.address, c, change, b_change)
        ids = [n.note_id for n in inputs]
        context = proof_context("OPEN", attested.chain_id, session_tag(session_id), ids)
        proof = rangeproof.prove([deposit, change], [b_deposit, b_change], AMOUNT_BITS, context)
        return PreparedDeposit(
            session_id, inputs, deposit, b_deposit, d, change, c, owner_key, change_env, proof
        )

    def open_request(
        self,
        attested: Attested,
        prepared: PreparedDeposit,
        pole_id: str,
        tariff_body: bytes,
        deadline_ms: int,
        *,
        request_id: str | None = None,
        expiry_s: int = 300,
    ) -> tuple[charging_pb2.OpenRequest, Session]:
        """The signed OPEN for ``pole_id`` at the tariff it publishes, and the session it opens."""
        session_key_seed = os.urandom(32)
        tariff_hash = hashlib.sha256(tariff_body).digest()
        secret = OpenSecret(
            session_id=prepared.session_id,
            deposit_amount=prepared.deposit,
            deposit_blinding=prepared.deposit_blinding.to_bytes(32, "big"),
            pole_id=pole_id,
            tariff_hash=tariff_hash,
            refund_address=self.address.to_bytes(),
            session_key=ed25519_public_key(session_key_seed),
        )
        tag = session_tag(prepared.session_id)
        enclave_env = envelope.seal(
            attested.encryption_key, secret.to_bytes(), open_context(attested.chain_id, tag)
        )
        body = OpenBody(
            session_tag=tag,
            input_note_ids=[n.note_id for n in prepared.inputs],
            deposit=prepared.deposit_commitment,
            change_commitment=prepared.change_commitment,
            change_owner_key=prepared.change_owner_key,
            change_envelope_hash=hashlib.sha256(prepared.change_envelope).digest(),
            range_proof_hash=hashlib.sha256(prepared.range_proof).digest(),
            deadline=deadline_ms,
            enclave_envelope_hash=hashlib.sha256(enclave_env).digest(),
            enclave_key_id=attested.enclave_key_id,
            expiry=int(time.time()) + expiry_s,
        ).to_bytes()
        message = open_message(attested.chain_id, body)
        signatures = [stealth.sign_with_scalar(n.opened.secret_scalar, message) for n in prepared.inputs]
        request = charging_pb2.OpenRequest(
            request_id=request_id or os.urandom(16).hex(),
            open_body=body,
            owner_signatures=signatures,
            range_proof=prepared.range_proof,
            enclave_envelope=enclave_env,
            change_envelope=prepared.change_envelope,
        )
        return request, Session(prepared.session_id, session_key_seed, pole_id, prepared.deposit, tariff_hash)

    def stop_request(
        self, attested: Attested, session: Session, last_pg: str = "", *, request_id: str | None = None
    ) -> charging_pb2.StopRequest:
        session.stop_sequence += 1
        body = StopBody(
            session.session_id, "vehicle", session.stop_sequence, last_pg, int(time.time() * 1000)
        )
        data = body.to_bytes()
        signature = ed25519_sign(session.session_key_seed, signed_message("stop", attested.chain_id, data))
        return charging_pb2.StopRequest(
            request_id=request_id or os.urandom(16).hex(), stop_body=data, signature=signature
        )

    def get_request(self, attested: Attested, session: Session) -> charging_pb2.GetSessionRequest:
        body = GetBody(session.session_id, "vehicle", int(time.time()) + 300).to_bytes()
        signature = ed25519_sign(
            session.session_key_seed, signed_message("session-get", attested.chain_id, body)
        )
        return charging_pb2.GetSessionRequest(
            session_id=session.session_id, request_body=body, signature=signature
        )

    def open_receipt(self, attested: Attested, session_id: bytes, sealed: bytes) -> VerifiedReceipt:
        """Open and verify the vehicle's receipt (enclave signature, session, party)."""
        return open_receipt(self.keys, attested, session_id, "vehicle", sealed)

    def open_progress(self, attested: Attested, session_id: bytes, sealed: bytes) -> Progress:
        """Open and verify the enclave-signed progress a GET answers the vehicle while charging."""
        try:
            plain = envelope.open_envelope(
                self.keys.view_private, sealed, progress_context(attested.chain_id, session_id)
            )
        except Exception as e:
            raise WalletError(f"the progress does not open: {e}") from None
        body, signature = split_signed_pair(plain)
        p256_verify(attested.ledger_key, signed_message("progress", attested.chain_id, body), signature)
        progress = Progress.from_bytes(body)
        if progress.session_id != session_id:
            raise WalletError("the progress is for another session")
        return progress

    # --- redemption ---------------------------------------------------------------------------------

    def redeem_request(
        self,
        attested: Attested,
        currency: str,
        amount: int,
        issuer_reference: bytes,
        *,
        request_id: str | None = None,
    ) -> notes_pb2.RedeemRequest:
        """Spend notes worth exactly ``amount`` (a change-free REDEEM needs matching notes: the wallet takes
        the smallest set of unspent notes whose values sum to ``amount``)."""
        inputs = _exact_subset(self.unspent(), amount)
        ids = [n.note_id for n in inputs]
        total_blinding = sum(n.opened.blinding for n in inputs) % bn254.ORDER
        proof = schnorr.prove_public_amount(
            amount, total_blinding, redeem_proof_context(attested.chain_id, ids)
        )
        body = RedeemBody(
            input_note_ids=ids,
            amount=amount,
            currency=currency,
            issuer_reference=issuer_reference,
            proof_hash=hashlib.sha256(proof).digest(),
            expiry=int(time.time()) + 300,
        ).to_bytes()
        message = redeem_message(attested.chain_id, body)
        return notes_pb2.RedeemRequest(
            request_id=request_id or os.urandom(16).hex(),
            redeem_body=body,
            owner_signatures=[stealth.sign_with_scalar(n.opened.secret_scalar, message) for n in inputs],
            amount_proof=proof,
        )


def open_receipt(
    keys: stealth.WalletKeys, attested: Attested, session_id: bytes, party: str, sealed: bytes
) -> VerifiedReceipt:
    """Open a receipt sealed to ``keys``' view key and check the enclave's signature over it."""
    try:
        plain = envelope.open_envelope(
            keys.view_private, sealed, receipt_context(attested.chain_id, session_id, party)
        )
    except Exception as e:
        raise WalletError(f"the receipt does not open: {e}") from None
    body, signature, records = split_receipt_plaintext(plain)
    p256_verify(attested.ledger_key, signed_message("receipt", attested.chain_id, body), signature)
    receipt = Receipt.from_bytes(body)
    if receipt.session_id != session_id or receipt.party != party:
        raise WalletError("the receipt is for another session or party")
    hashes = [hashlib.sha256(r).digest() for r in records]
    if party == "vehicle" and hashes != list(receipt.record_hashes):
        raise WalletError("the receipt's records do not match its hashes")
    return VerifiedReceipt(receipt, records)


def _exact_subset(notes: list[OwnedNote], amount: int) -> list[OwnedNote]:
    """The first subset (by size) of at most 16 notes summing to ``amount``; WalletError if none."""
    candidates = sorted(notes, key=lambda n: n.value)[:24]
    for size in range(1, min(MAX_INPUTS, len(candidates)) + 1):
        for combo in combinations(candidates, size):
            if sum(n.value for n in combo) == amount:
                return sorted(combo, key=lambda n: n.note_id)
    raise WalletError(f"no set of unspent notes sums to exactly {amount}")


def _random_scalar() -> int:
    while True:
        k = int.from_bytes(os.urandom(64), "big") % bn254.ORDER
        if k:
            return k
