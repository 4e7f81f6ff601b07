"""Schnorr proof of knowledge of b with P = b*H (public-amount notes, settlement excess), Fiat-Shamir.

Proof bytes (64): R || s, with R = k*H (32-byte point, not the identity) and s = k + c*b mod r,
c = challenge over the transcript (protocol, H, caller context, P, R). The verifier checks
s*H = R + c*P. Knowing b proves nothing but knowledge: spending always needs the owner's signature.
See zk/notes/schnorr.md.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from zk import bn254
from zk.errors import EncodingError, ProofError
from zk.field import R
from zk.g1 import affine_add, jac_to_affine, scalar_mul
from zk.transcript import Transcript

PROTOCOL = b"escrow.v1/schnorr/dlog-H/v1"
PROOF_BYTES = 64


def _challenge(context: bytes, P: bytes, R_bytes: bytes) -> int:
    t = Transcript(PROTOCOL)
    t.append(b"H", bn254.point_to_bytes(bn254.H))
    t.append(b"context", bytes(context))
    t.append(b"P", P)
    t.append(b"R", R_bytes)
    return t.challenge_scalar(b"c")


def prove(blinding: int, context: bytes, *, rng: Callable[[int], bytes] | None = None) -> bytes:
    """Prove knowledge of ``blinding`` for P = blinding*H; raises ValueError if it is 0 mod r."""
    b = int(blinding) % int(R)
    if b == 0:
        raise ValueError("the statement P = 0*H is the identity")
    rng = rng or os.urandom
    k = 0
    while k == 0:
        k = int.from_bytes(rng(64), "big") % int(R)
    P = bn254.point_to_bytes(b * bn254.H)
    R_bytes = bn254.point_to_bytes(k * bn254.H)
    s = (k + _challenge(context, P, R_bytes) * b) % int(R)
    return R_bytes + bn254.scalar_to_bytes(s)


def verify(statement: bytes, proof: bytes, context: bytes) -> None:
    """Check a proof that the prover knows b with statement = b*H; raises ProofError otherwise."""
    if not isinstance(proof, (bytes, bytearray)) or len(proof) != PROOF_BYTES:
        raise ProofError(f"a Schnorr proof is {PROOF_BYTES} bytes")
    try:
        P = bn254.point_from_bytes(bytes(statement), allow_identity=False)
        R_point = bn254.point_from_bytes(bytes(proof[:32]), allow_identity=False)
        s = bn254.scalar_from_bytes(bytes(proof[32:]))
    except (EncodingError, TypeError) as e:
        raise ProofError(f"malformed Schnorr proof or statement: {e}") from e
    c = _challenge(context, bytes(statement), bytes(proof[:32]))
    lhs = s * bn254.H
    rhs = affine_add(R_point.xy, jac_to_affine(scalar_mul(P.xy, c)))
    if lhs.xy != rhs:
        raise ProofError("Schnorr proof does not verify")


def public_amount_statement(commitment: bytes, amount: int) -> bytes:
    """P = C - amount*G: the statement that C commits to ``amount`` (as 32 bytes)."""
    if isinstance(amount, bool) or not isinstance(amount, int) or not 0 <= amount < (1 << 64):
        raise ProofError("amount must be an integer in [0, 2^64)")
    try:
        C = bn254.point_from_bytes(bytes(commitment), allow_identity=False)
    except (EncodingError, TypeError) as e:
        raise ProofError(f"malformed commitment: {e}") from e
    P = C - amount * bn254.G
    if P.is_identity():
        raise ProofError("commitment has a zero blinding")
    return bn254.point_to_bytes(P)


def prove_public_amount(blinding: int, context: bytes, *, rng: Callable[[int], bytes] | None = None) -> bytes:
    """Proof that C = amount*G + blinding*H opens to the public amount: a proof for C - amount*G."""
    return prove(blinding, context, rng=rng)


def verify_public_amount(commitment: bytes, amount: int, proof: bytes, context: bytes) -> None:
    """Check that ``commitment`` commits to ``amount`` (knowledge of its blinding); raises ProofError."""
    verify(public_amount_statement(commitment, amount), proof, context)
