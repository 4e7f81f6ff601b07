"""Aggregated Bulletproofs range proofs (Buenz et al. 2018) on BN254 G1, with batch verification.

Symbols follow the paper and zk/notes/rangeproof.md: V_j = v_j G + gamma_j H, A, S, T1, T2, y, z, x,
t_x, tau_x, mu, w (Q = w G), and the inner-product rounds L_j, R_j, u_j ending in the scalars a, b.
Proof bytes (32 * (9 + 2 log2(n m))):
  A || S || T1 || T2 || tau_x || mu || t_x || L_1 || R_1 || ... || L_k || R_k || a || b
Points use the 32-byte encoding of zk.bn254 (the identity is rejected); scalars are 32-byte big-endian
and < r. The number of values m is padded to a power of two with v = 0, gamma = 0, whose commitment is
the identity: both sides add it implicitly, and the transcript binds m and the padded m.
Verification raises ProofError; it never returns a boolean.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Sequence

from gmpy2 import mpz

from zk import bn254
from zk import generators as gens
from zk.errors import EncodingError, ProofError
from zk.field import P, R, batch_inverse, inv_r
from zk.g1 import affine_sum, jac_add, jac_to_affine
from zk.msm import msm
from zk.pedersen import commit
from zk.transcript import Transcript, context_transcript

SUPPORTED_BITS = (8, 16, 32, 64)
MAX_VALUES = 64
PROTOCOL = b"escrow.v1/bulletproofs/range-proof/v1"

RandomSource = Callable[[int], bytes]


def padded_count(m: int) -> int:
    """m rounded up to a power of two."""
    return 1 << (m - 1).bit_length()


def proof_size(bits: int, m: int) -> int:
    """Bytes in a proof for m values of ``bits`` bits: 32 * (9 + 2 log2(bits * padded m))."""
    return 32 * (9 + 2 * (bits * padded_count(m)).bit_length() - 2)


def _check_shape(bits: int, m: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}")
    if not 1 <= m <= MAX_VALUES:
        raise ValueError(f"between 1 and {MAX_VALUES} values per proof")


def _bind_statement(t: Transcript, bits: int, m: int, commitments: Sequence[bytes]) -> None:
    """Append the statement: protocol and version, n, m, padded m, generator set, every V_j."""
    mp = padded_count(m)
    t.append(b"protocol", PROTOCOL)
    t.append_u64(b"n", bits)
    t.append_u64(b"m", m)
    t.append_u64(b"m_padded", mp)
    t.append(b"generators", gens.generator_set_hash(bits * mp))
    identity = bn254.point_to_bytes(bn254.IDENTITY)
    for c in [*commitments, *([identity] * (mp - m))]:
        t.append(b"V", c)


def _rand_scalar(rng: RandomSource) -> mpz:
    """A scalar from 64 bytes of ``rng``; raises ValueError if the source returns anything else."""
    data = rng(64)
    if not isinstance(data, bytes) or len(data) != 64:
        raise ValueError("the random source must return exactly the bytes asked for")
    return mpz(int.from_bytes(data, "big")) % R


def _inner(a: Sequence[mpz], b: Sequence[mpz]) -> mpz:
    return sum((x * y for x, y in zip(a, b)), mpz(0)) % R


def _point_bytes(xy: object) -> bytes:
    return bn254.point_to_bytes(bn254.Point(xy, _trusted=True))  # type: ignore[arg-type]


def _fixed_point(scalars: Sequence[mpz], indices: Sequence[int], count: int) -> bytes:
    """Encoding of sum scalars[t] * base[indices[t]] over the fixed-base set."""
    return _point_bytes(jac_to_affine(gens.fixed_bases(count).msm(scalars, indices)))


def prove(
    values: list[int],
    blindings: list[int],
    bits: int,
    context: bytes,
    *,
    rng: RandomSource | None = None,
) -> bytes:
    """Prove 0 <= v_j < 2^bits for the commitments V_j = v_j G + blinding_j H; returns the proof bytes.

    ``context`` (the application's canonical bytes) is bound into the transcript. Raises ValueError
    for a value outside [0, 2^bits), a commitment that would be the identity (v = 0 with blinding 0),
    mismatched lists or an unsupported shape. ``rng`` defaults to the OS; pass one only for
    reproducible tests.
    """
    return prove_with_transcript(context_transcript(context), values, blindings, bits, rng=rng)


def prove_with_transcript(
    t: Transcript,
    values: list[int],
    blindings: list[int],
    bits: int,
    *,
    rng: RandomSource | None = None,
) -> bytes:
    """:func:`prove` on a transcript the caller owns (the proof only appends to it)."""
    m = len(values)
    _check_shape(bits, m)
    if len(blindings) != m:
        raise ValueError("one blinding per value")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < (1 << bits):
            raise ValueError(f"value outside [0, 2^{bits})")
    rng = rng or os.urandom
    n = bits
    mp = padded_count(m)
    N = n * mp
    fixed = gens.fixed_bases(N)
    vs = [mpz(v) for v in values] + [mpz(0)] * (mp - m)
    gammas = [mpz(g) % R for g in blindings] + [mpz(0)] * (mp - m)
    if any(v == 0 and g == 0 for v, g in zip(vs[:m], gammas[:m])):
        raise ValueError("value 0 with blinding 0 commits to the identity")
    commitments = [bn254.point_to_bytes(commit(int(v), int(g))) for v, g in zip(vs[:m], gammas[:m])]
    _bind_statement(t, bits, m, commitments)

    aL = [(vs[i // n] >> (i % n)) & 1 for i in range(N)]
    alpha = _rand_scalar(rng)
    G_vec, H_vec = gens.vector_G(N), gens.vector_H(N)
    A_terms = [G_vec[i] if aL[i] else (H_vec[i][0], P - H_vec[i][1]) for i in range(N)]
    assert bn254.H._table is not None
    A = _point_bytes(affine_sum(A_terms + bn254.H._table.points_for(alpha)))
    rho = _rand_scalar(rng)
    sL = [_rand_scalar(rng) for _ in range(N)]
    sR = [_rand_scalar(rng) for _ in range(N)]
    S = _fixed_point(
        [rho, *sL, *sR],
        [
            gens.INDEX_BLINDING_BASE,
            *(gens.index_G(i) for i in range(N)),
            *(gens.index_H(i) for i in range(N)),
        ],
        N,
    )
    t.append(b"A", A)
    t.append(b"S", S)
    y = mpz(t.challenge_scalar(b"y"))
    z = mpz(t.challenge_scalar(b"z"))

    y_pow = _powers(y, N)
    zz = z * z % R
    z_block = _powers(z, mp)  # z^j; the block weight of value j is z^(2+j)
    l0 = [(aL[i] - z) % R for i in range(N)]
    r0 = [(y_pow[i] * (aL[i] - 1 + z) + zz * z_block[i // n] * (1 << (i % n))) % R for i in range(N)]
    r1 = [y_pow[i] * sR[i] % R for i in range(N)]
    t1 = (_inner(l0, r1) + _inner(sL, r0)) % R
    t2 = _inner(sL, r1)
    tau1, tau2 = _rand_scalar(rng), _rand_scalar(rng)
    T1 = bn254.point_to_bytes(commit(int(t1), int(tau1)))
    T2 = bn254.point_to_bytes(commit(int(t2), int(tau2)))
    t.append(b"T1", T1)
    t.append(b"T2", T2)
    x = mpz(t.challenge_scalar(b"x"))

    l_vec = [(l0[i] + sL[i] * x) % R for i in range(N)]
    r_vec = [(r0[i] + r1[i] * x) % R for i in range(N)]
    t_x = _inner(l_vec, r_vec)
    tau_x = (tau2 * x * x + tau1 * x + zz * _inner(z_block, gammas)) % R
    mu = (alpha + rho * x) % R
    for label, s in ((b"t_x", t_x), (b"tau_x", tau_x), (b"mu", mu)):
        t.append(label, bn254.scalar_to_bytes(int(s)))
    w = mpz(t.challenge_scalar(b"w"))

    parts = [A, S, T1, T2] + [bn254.scalar_to_bytes(int(s)) for s in (tau_x, mu, t_x)]
    parts += _prove_inner_product(t, l_vec, r_vec, y, w, N, fixed)
    return b"".join(parts)


def _powers(base: mpz, count: int) -> list[mpz]:
    out = [mpz(1)] * count
    for i in range(1, count):
        out[i] = out[i - 1] * base % R
    return out


def _prove_inner_product(
    t: Transcript, a: list[mpz], b: list[mpz], y: mpz, w: mpz, N: int, fixed: object
) -> list[bytes]:
    """The inner-product rounds against G_i and H'_i = y^-i H_i with Q = w G.

    The generators are never folded: coefG[k], coefH[k] track the factor of original generator k in
    the current folded vector, so L and R are fixed-base MSMs over the original generators.
    """
    coefG = [mpz(1)] * N
    coefH = _powers(inv_r(y), N)
    out: list[bytes] = []
    length = N
    idx_G = [gens.index_G(k) for k in range(N)]
    idx_H = [gens.index_H(k) for k in range(N)]
    while length > 1:
        half = length // 2
        mask = length - 1
        aL_, aR_, bL_, bR_ = a[:half], a[half:], b[:half], b[half:]
        cL = _inner(aL_, bR_)
        cR = _inner(aR_, bL_)
        L_sc, L_ix, R_sc, R_ix = [cL * w % R], [gens.INDEX_VALUE_BASE], [cR * w % R], [gens.INDEX_VALUE_BASE]
        for k in range(N):
            i = k & mask
            if i >= half:  # G_R side for L, H_R side for R
                L_sc.append(a[i - half] * coefG[k] % R)
                L_ix.append(idx_G[k])
                R_sc.append(b[i - half] * coefH[k] % R)
                R_ix.append(idx_H[k])
            else:
                L_sc.append(b[half + i] * coefH[k] % R)
                L_ix.append(idx_H[k])
                R_sc.append(a[half + i] * coefG[k] % R)
                R_ix.append(idx_G[k])
        L = _point_bytes(jac_to_affine(fixed.msm(L_sc, L_ix)))  # type: ignore[attr-defined]
        Rp = _point_bytes(jac_to_affine(fixed.msm(R_sc, R_ix)))  # type: ignore[attr-defined]
        t.append(b"L", L)
        t.append(b"R", Rp)
        u = mpz(t.challenge_scalar(b"u"))
        u_inv = inv_r(u)
        a = [(aL_[i] * u + aR_[i] * u_inv) % R for i in range(half)]
        b = [(bL_[i] * u_inv + bR_[i] * u) % R for i in range(half)]
        for k in range(N):
            if k & mask < half:
                coefG[k] = coefG[k] * u_inv % R
                coefH[k] = coefH[k] * u % R
            else:
                coefG[k] = coefG[k] * u % R
                coefH[k] = coefH[k] * u_inv % R
        out += [L, Rp]
        length = half
    return [*out, bn254.scalar_to_bytes(int(a[0])), bn254.scalar_to_bytes(int(b[0]))]


# --- verification ------------------------------------------------------------------------------


class _Parsed:
    """A proof split into its points (affine) and scalars, strictly decoded."""

    def __init__(self, proof: bytes, bits: int, m: int) -> None:
        if not isinstance(proof, (bytes, bytearray)):
            raise ProofError("proof must be bytes")
        if len(proof) != proof_size(bits, m):
            raise ProofError(f"proof must be {proof_size(bits, m)} bytes for n={bits}, m={m}")
        chunks = [bytes(proof[i : i + 32]) for i in range(0, len(proof), 32)]
        self.rounds = (len(chunks) - 9) // 2
        try:
            pts = [bn254.point_from_bytes(c, allow_identity=False) for c in chunks[:4]]
            self.tau_x, self.mu, self.t_x = (mpz(bn254.scalar_from_bytes(c)) for c in chunks[4:7])
            lr = [bn254.point_from_bytes(c, allow_identity=False) for c in chunks[7 : 7 + 2 * self.rounds]]
            self.a, self.b = (mpz(bn254.scalar_from_bytes(c)) for c in chunks[-2:])
        except EncodingError as e:
            raise ProofError(f"malformed proof: {e}") from e
        self.chunks = chunks
        self.A, self.S, self.T1, self.T2 = (p.xy for p in pts)
        self.L = [p.xy for p in lr[0::2]]
        self.R = [p.xy for p in lr[1::2]]


def _decode_commitments(commitments: Sequence[bytes]) -> list[object]:
    try:
        return [bn254.point_from_bytes(bytes(c), allow_identity=False).xy for c in commitments]
    except (EncodingError, TypeError) as e:
        raise ProofError(f"malformed commitment: {e}") from e


def _verification_terms(
    t: Transcript, commitments: Sequence[bytes], proof: bytes, bits: int, weight: mpz, c: mpz
) -> tuple[list[object], list[mpz], dict[int, mpz]]:
    """The proof's check as MSM terms, all multiplied by ``weight``: (variable points, their scalars,
    {fixed-base index: scalar}). The proof holds iff the full MSM is the identity (for random c)."""
    m = len(commitments)
    _check_shape_for_verify(bits, m)
    V = _decode_commitments(commitments)
    pr = _Parsed(proof, bits, m)
    n, mp = bits, padded_count(m)
    N = n * mp
    _bind_statement(t, bits, m, [bytes(x) for x in commitments])
    t.append(b"A", pr.chunks[0])
    t.append(b"S", pr.chunks[1])
    y = mpz(t.challenge_scalar(b"y"))
    z = mpz(t.challenge_scalar(b"z"))
    t.append(b"T1", pr.chunks[2])
    t.append(b"T2", pr.chunks[3])
    x = mpz(t.challenge_scalar(b"x"))
    for label, chunk in ((b"t_x", pr.chunks[6]), (b"tau_x", pr.chunks[4]), (b"mu", pr.chunks[5])):
        t.append(label, chunk)
    w = mpz(t.challenge_scalar(b"w"))
    us = []
    for j in range(pr.rounds):
        t.append(b"L", pr.chunks[7 + 2 * j])
        t.append(b"R", pr.chunks[8 + 2 * j])
        us.append(mpz(t.challenge_scalar(b"u")))
    u_invs = batch_inverse(us, R)
    u_sq = [u * u % R for u in us]
    u_inv_sq = [u * u % R for u in u_invs]

    # s_k = prod_j u_j^(+1 if bit (K-j) of k else -1); s_k^-1 = s_{N-1-k}
    s = [mpz(0)] * N
    acc = mpz(1)
    for ui in u_invs:
        acc = acc * ui % R
    s[0] = acc
    K = pr.rounds
    for k in range(1, N):
        top = k.bit_length() - 1
        s[k] = s[k - (1 << top)] * u_sq[K - 1 - top] % R
    y_inv = inv_r(y)
    zz = z * z % R
    a, b = pr.a, pr.b
    z_block = _powers(z, mp)
    sum_y = _geometric_sum(y, N)
    sum_2 = (1 << n) - 1
    delta = ((z - zz) * sum_y - zz * z * sum_2 * _geometric_sum(z, mp)) % R

    fixed: dict[int, mpz] = {}
    fixed[gens.INDEX_VALUE_BASE] = weight * (w * (pr.t_x - a * b) + c * (delta - pr.t_x)) % R
    fixed[gens.INDEX_BLINDING_BASE] = weight * (-pr.mu - c * pr.tau_x) % R
    y_inv_k = mpz(1)
    minus_z = -z
    for k in range(N):
        fixed[gens.index_G(k)] = weight * (minus_z - a * s[k]) % R
        h = z + y_inv_k * (zz * z_block[k // n] * (1 << (k % n)) - b * s[N - 1 - k])
        fixed[gens.index_H(k)] = weight * h % R
        y_inv_k = y_inv_k * y_inv % R

    points: list[object] = [pr.A, pr.S, pr.T1, pr.T2, *pr.L, *pr.R, *V]
    scalars = [weight, weight * x % R, weight * c * x % R, weight * c * x % R * x % R]
    scalars += [weight * q % R for q in u_sq] + [weight * q % R for q in u_inv_sq]
    scalars += [weight * c * zz % R * zj % R for zj in z_block[:m]]
    return points, scalars, fixed


def _geometric_sum(base: mpz, count: int) -> mpz:
    """1 + base + ... + base^(count-1) mod r."""
    total, term = mpz(0), mpz(1)
    for _ in range(count):
        total += term
        term = term * base % R
    return total % R


def _check_shape_for_verify(bits: int, m: int) -> None:
    try:
        _check_shape(bits, m)
    except ValueError as e:
        raise ProofError(str(e)) from e


def _random_weight() -> mpz:
    """A uniformly random weight in [1, 2^128)."""
    return mpz(1 + secrets.randbelow((1 << 128) - 1))


def _check_identity(points: list[object], scalars: list[mpz], fixed: dict[int, mpz], count: int) -> None:
    base = gens.fixed_bases(count)
    indices = list(fixed)
    total = jac_add(base.msm([fixed[i] for i in indices], indices), msm(points, scalars))  # type: ignore[arg-type]
    if total[2] != 0:
        raise ProofError("range proof does not verify")


def verify(commitments: list[bytes], proof: bytes, bits: int, context: bytes) -> None:
    """Check a range proof over the encoded commitments; raises ProofError unless it holds."""
    try:
        t = context_transcript(context)
    except TypeError as e:
        raise ProofError(f"malformed item: {e}") from e
    verify_batch_with_transcripts([(t, commitments, proof, bits)])


def verify_with_transcript(t: Transcript, commitments: list[bytes], proof: bytes, bits: int) -> None:
    """:func:`verify` on a transcript the caller owns."""
    verify_batch_with_transcripts([(t, commitments, proof, bits)])


def verify_batch(items: list[tuple[list[bytes], bytes, int, bytes]]) -> None:
    """Check k independent proofs (commitments, proof, bits, context) in one MSM with random weights.

    Raises ProofError naming the first proof that fails (found by checking them one by one only
    after the combined check has failed).
    """
    if not isinstance(items, (list, tuple)):
        raise ProofError("items must be a list of (commitments, proof, bits, context)")
    prepared = []
    for idx, item in enumerate(items):
        try:
            commitments, proof, bits, context = item
            prepared.append((context_transcript(context), commitments, proof, bits))
        except (TypeError, ValueError) as e:
            raise ProofError(f"proof {idx}: malformed item: {e}") from e
    _verify_prepared(prepared, name_items=True)


def verify_batch_with_transcripts(items: Sequence[tuple[Transcript, list[bytes], bytes, int]]) -> None:
    """:func:`verify_batch` on transcripts the callers own, as (transcript, commitments, proof, bits).

    Each transcript is appended to exactly as a single verification would; pristine copies are kept
    only to re-check the proofs one by one when the combined check fails.
    """
    _verify_prepared(items, name_items=len(items) > 1)


def _verify_prepared(
    items: Sequence[tuple[Transcript, list[bytes], bytes, int]], *, name_items: bool
) -> None:
    if not items:
        return
    points: list[object] = []
    scalars: list[mpz] = []
    fixed: dict[int, mpz] = {}
    count = 0
    single = len(items) == 1
    pristine: list[Transcript] = []
    for idx, item in enumerate(items):
        where = f"proof {idx}: " if name_items else ""
        try:
            t, commitments, proof, bits = item
            if not isinstance(t, Transcript):
                raise ProofError("a transcript is required")
            if not isinstance(commitments, (list, tuple)):
                raise ProofError("commitments must be a list of 32-byte encodings")
            if isinstance(bits, bool) or not isinstance(bits, int):
                raise ProofError("bits must be an integer")
            if not single:
                pristine.append(t.clone())
            weight = mpz(1) if single else _random_weight()
            p, s, f = _verification_terms(t, commitments, proof, bits, weight, _random_weight())
        except ProofError as e:
            raise ProofError(f"{where}{e}") from e
        except (TypeError, ValueError) as e:
            raise ProofError(f"{where}malformed item: {e}") from e
        points += p
        scalars += s
        for i, v in f.items():
            fixed[i] = (fixed.get(i, 0) + v) % R
        count = max(count, bits * padded_count(len(commitments)))
    try:
        _check_identity(points, scalars, fixed, count)
    except ProofError:
        if not single:
            for idx, (copy, (_, commitments, proof, bits)) in enumerate(zip(pristine, items)):
                try:
                    _verify_prepared([(copy, commitments, proof, bits)], name_items=False)
                except ProofError as e:
                    raise ProofError(f"proof {idx}: {e}") from e
        raise
