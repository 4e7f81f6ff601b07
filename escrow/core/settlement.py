"""The value equations of OPEN and SETTLE, proved and checked (DESIGN §6.2): nothing created, nothing lost.

OPEN:   sum(input commitments) = D + change, one aggregated 64-bit range proof over (D, change). The
        vehicle knows every blinding, so it picks change's blinding to make the sum exact.
SETTLE: D = pole + refund + X with X = e*H, one aggregated range proof over (pole, refund) and a
        Schnorr proof of knowledge of e. The enclave draws both new blindings, so the excess e keeps
        either party from computing the other's blinding from its own.

Every proof is bound to ``proof_context(kind, chain_id, session_tag, input_note_ids)`` (§6.3: domain
tag, chain id, kind, session tag, input note ids); the range proofs bind their commitments
themselves, and the excess proof's context adds D, pole and refund.
"""

from __future__ import annotations

from dataclasses import dataclass

from escrow.core.encoding import BodyError, Bytes, Fixed, ListOf, Text, encode
from escrow.core.errors import CoreError
from zk import bn254, pedersen, rangeproof, schnorr
from zk.errors import EncodingError, ProofError

AMOUNT_BITS = 64
MAX_INPUTS = 16


class SettlementError(CoreError):
    """An unbalanced or unproved OPEN or SETTLE; ``reason`` is stable: BALANCE_MALFORMED,
    BALANCE_UNBALANCED, BALANCE_RANGE_PROOF_INVALID, BALANCE_EXCESS_PROOF_INVALID."""


_CONTEXT_SCHEMA = (
    ("tag", Text(32)),
    ("chain_id", Fixed(32)),
    ("session_tag", Bytes(32)),
    ("input_note_ids", ListOf(Fixed(32), MAX_INPUTS)),
)


def proof_context(kind: str, chain_id: bytes, session_tag: bytes, input_note_ids: list[bytes]) -> bytes:
    """The canonical context every OPEN/SETTLE proof binds (input note ids in the order given)."""
    try:
        return encode(
            _CONTEXT_SCHEMA,
            {
                "tag": f"escrow.v1/proof/{kind}",
                "chain_id": chain_id,
                "session_tag": session_tag,
                "input_note_ids": input_note_ids,
            },
        )
    except BodyError as e:
        raise SettlementError("BALANCE_MALFORMED", str(e)) from None


def _point(data: bytes, what: str) -> bn254.Point:
    try:
        return bn254.point_from_bytes(bytes(data), allow_identity=False)
    except (EncodingError, TypeError) as e:
        raise SettlementError("BALANCE_MALFORMED", f"{what}: {e}") from None


def _range(commitments: list[bytes], proof: bytes, context: bytes) -> None:
    try:
        rangeproof.verify(commitments, proof, AMOUNT_BITS, context)
    except ProofError as e:
        raise SettlementError("BALANCE_RANGE_PROOF_INVALID", str(e)) from None


# --- OPEN -------------------------------------------------------------------------------------------


def verify_open_balance(
    inputs: list[bytes], deposit: bytes, change: bytes, range_proof: bytes, context: bytes
) -> None:
    """sum(inputs) = D + change and both are in [0, 2^64); raises SettlementError otherwise."""
    if not isinstance(inputs, list) or not 1 <= len(inputs) <= MAX_INPUTS:
        raise SettlementError("BALANCE_MALFORMED", f"1 to {MAX_INPUTS} inputs")
    total = bn254.IDENTITY
    for i, c in enumerate(inputs):
        total = total + _point(c, f"input {i}")
    if total != _point(deposit, "deposit") + _point(change, "change"):
        raise SettlementError("BALANCE_UNBALANCED", "inputs do not sum to deposit + change")
    _range([deposit, change], range_proof, context)


# --- SETTLE -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """The enclave's split of a deposit: public parts for the ledger, openings for the recipients."""

    pole_commitment: bytes
    refund_commitment: bytes
    excess: bytes
    range_proof: bytes
    excess_proof: bytes
    pole_opening: tuple[int, int]  # (amount, blinding), sealed to the pole's address
    refund_opening: tuple[int, int]  # sealed to the vehicle's refund address

    def __repr__(self) -> str:  # openings never reach a log
        return (
            f"Split(pole={self.pole_commitment.hex()[:16]}..., refund={self.refund_commitment.hex()[:16]}...)"
        )


def _excess_context(context: bytes, deposit: bytes, pole: bytes, refund: bytes) -> bytes:
    return context + deposit + pole + refund


def split_deposit(deposit_amount: int, deposit_blinding: int, pole_amount: int, context: bytes) -> Split:
    """Split D = (deposit_amount, deposit_blinding) into the pole's pay and the refund, with proofs.

    Raises SettlementError("BALANCE_MALFORMED") unless 0 <= pole_amount <= deposit_amount < 2^64."""
    if not (0 <= pole_amount <= deposit_amount < 1 << AMOUNT_BITS):
        raise SettlementError("BALANCE_MALFORMED", "need 0 <= pole amount <= deposit < 2^64")
    refund_amount = deposit_amount - pole_amount
    while True:
        b_pole, b_refund = pedersen.random_blinding(), pedersen.random_blinding()
        e = (deposit_blinding - b_pole - b_refund) % bn254.ORDER
        if e:  # e = 0 would make X the identity (probability 2^-254)
            break
    deposit = bn254.point_to_bytes(pedersen.commit(deposit_amount, deposit_blinding))
    pole = bn254.point_to_bytes(pedersen.commit(pole_amount, b_pole))
    refund = bn254.point_to_bytes(pedersen.commit(refund_amount, b_refund))
    proof = rangeproof.prove([pole_amount, refund_amount], [b_pole, b_refund], AMOUNT_BITS, context)
    excess = bn254.point_to_bytes(e * bn254.H)
    excess_proof = schnorr.prove(e, _excess_context(context, deposit, pole, refund))
    return Split(pole, refund, excess, proof, excess_proof, (pole_amount, b_pole), (refund_amount, b_refund))


def verify_split(
    deposit: bytes,
    pole: bytes,
    refund: bytes,
    excess: bytes,
    range_proof: bytes,
    excess_proof: bytes,
    context: bytes,
) -> None:
    """D = pole + refund + X, X = e*H proved, pole and refund in [0, 2^64); raises SettlementError."""
    D, P, R, X = (
        _point(c, n)
        for c, n in ((deposit, "deposit"), (pole, "pole"), (refund, "refund"), (excess, "excess"))
    )
    if D != P + R + X:
        raise SettlementError("BALANCE_UNBALANCED", "deposit != pole + refund + excess")
    try:
        schnorr.verify(excess, excess_proof, _excess_context(context, deposit, pole, refund))
    except ProofError as e:
        raise SettlementError("BALANCE_EXCESS_PROOF_INVALID", str(e)) from None
    _range([pole, refund], range_proof, context)
