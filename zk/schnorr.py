"""Schnorr proof of knowledge of b with P = b*H (public-amount notes, settlement excess), Fiat-Shamir.

Proof bytes (64): R || s, with R = k*H (32-byte point, not the identity) and s = k + c*b mod r,
c = challenge over the caller's transcript after appending (protocol, H, the statement's extra
items, P, R). The verifier checks s*H = R + c*P. For a public amount the extra items are the
commitment C and the amount, so the proof is bound to (C, amount), not only to P = C - amount*G.
Knowing b proves nothing but knowledge: spending always needs the owner's signature.
See zk/notes/schnorr.md.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from zk import bn254
from zk.errors import EncodingError, ProofError
from zk.field import R
from zk.g1 import affine_add, jac_to_affine, scalar_mul
from zk.pedersen import commit
from zk.transcript import Transcript, context_transcript

PROTOCOL = b"escrow.v1/schnorr/dlog-H/v1"
PROOF_BYTES = 64
MAX_AMOUNT = (1 << 64) - 1

Extra = Sequence[tuple[bytes, bytes]]


def _challenge(t: Transcript, P: bytes, R_bytes: bytes, extra: Extra) -> int:
    t.append(b"protocol", PROTOCOL)
    t.append(b"H", bn254.point_to_bytes(bn254.H))
    for label, data in extra:
        t.append(label, data)
    t.append(b"P", P)
    t.append(b"R", R_bytes)
    return t.challenge_scalar(b"c")


def prove_with_transcript(
    t: Transcript, blinding: int, *, extra: Extra = (), rng: Callable[[int], bytes] | None = None
) -> bytes:
    """Prove knowledge of ``blinding`` for P = blinding*H on the caller's transcript.

    Raises ValueError if the blinding is 0 mod r (the statement would be the identity)."""
    b = int(blinding) % int(R)
    if b == 0:
        raise ValueError("the statement P = 0*H is the identity")
    rng = rng or os.urandom
    k = 0
    for _ in range(8):  # k = 0 has probability 2^-254 per draw from a sound source
        data = rng(64)
        if not isinstance(data, bytes) or len(data) != 64:
            raise ValueError("the random source must return exactly the bytes asked for")
        k = int.from_bytes(data, "big") % int(R)
        if k:
            break
    else:
        raise ValueError("the random source keeps returning multiples of r")
    P = bn254.point_to_bytes(b * bn254.H)
    R_bytes = bn254.point_to_bytes(k * bn254.H)
    s = (k + _challenge(t, P, R_bytes, extra) * b) % int(R)
    return R_bytes + bn254.scalar_to_bytes(s)


def verify_with_transcript(t: Transcript, statement: bytes, proof: bytes, *, extra: Extra = ()) -> None:
    """Check a proof that the prover knows b with statement = b*H; raises ProofError otherwise."""
    if not isinstance(proof, (bytes, bytearray)) or len(proof) != PROOF_BYTES:
        raise ProofError(f"a Schnorr proof is {PROOF_BYTES} bytes")
    try:
        P = bn254.point_from_bytes(bytes(statement), allow_identity=False)
        R_point = bn254.point_from_bytes(bytes(proof[:32]), allow_identity=False)
        s = bn254.scalar_from_bytes(bytes(proof[32:]))
    except (EncodingError, TypeError) as e:
        raise ProofError(f"malformed Schnorr proof or statement: {e}") from e
    c = _challenge(t, bytes(statement), bytes(proof[:32]), extra)
    lhs = s * bn254.H
    rhs = affine_add(R_point.xy, jac_to_affine(scalar_mul(P.xy, c)))
    if lhs.xy != rhs:
        raise ProofError("Schnorr proof does not verify")


def _recipe_transcript(context: bytes) -> Transcript:
    try:
        return context_transcript(context)
    except TypeError as e:
        raise ProofError(str(e)) from e


def prove(blinding: int, context: bytes, *, rng: Callable[[int], bytes] | None = None) -> bytes:
    """Prove knowledge of ``blinding`` for P = blinding*H, bound to ``context`` (e.g. the excess X)."""
    return prove_with_transcript(context_transcript(context), blinding, rng=rng)


def verify(statement: bytes, proof: bytes, context: bytes) -> None:
    """Check a proof for ``statement`` = b*H bound to ``context``; raises ProofError otherwise."""
    verify_with_transcript(_recipe_transcript(context), statement, proof)


def _check_amount(amount: int) -> None:
    if isinstance(amount, bool) or not isinstance(amount, int) or not 0 <= amount <= MAX_AMOUNT:
        raise ProofError("amount must be an integer in [0, 2^64)")


def _amount_extra(commitment: bytes, amount: int) -> Extra:
    return ((b"C", bytes(commitment)), (b"amount", amount.to_bytes(8, "big")))


def public_amount_statement(commitment: bytes, amount: int) -> bytes:
    """P = C - amount*G: the statement that C commits to ``amount`` (as 32 bytes)."""
    _check_amount(amount)
    try:
        C = bn254.point_from_bytes(bytes(commitment), allow_identity=False)
    except (EncodingError, TypeError) as e:
        raise ProofError(f"malformed commitment: {e}") from e
    P = C - amount * bn254.G
    if P.is_identity():
        raise ProofError("commitment has a zero blinding")
    return bn254.point_to_bytes(P)


def prove_public_amount(
    amount: int, blinding: int, context: bytes, *, rng: Callable[[int], bytes] | None = None
) -> bytes:
    """Proof that C = amount*G + blinding*H opens to the public ``amount`` (MINT, REDEEM)."""
    if isinstance(amount, bool) or not isinstance(amount, int) or not 0 <= amount <= MAX_AMOUNT:
        raise ValueError("amount must be an integer in [0, 2^64)")
    C = bn254.point_to_bytes(commit(amount, blinding))
    return prove_with_transcript(
        context_transcript(context), blinding, extra=_amount_extra(C, amount), rng=rng
    )


def verify_public_amount(commitment: bytes, amount: int, proof: bytes, context: bytes) -> None:
    """Check that ``commitment`` commits to ``amount`` (knowledge of its blinding); raises ProofError."""
    statement = public_amount_statement(commitment, amount)
    verify_with_transcript(
        _recipe_transcript(context), statement, proof, extra=_amount_extra(commitment, amount)
    )
