"""Multi-scalar multiplication on BN254 G1: Pippenger with batched-affine buckets, fixed-base tables.

Two entry points (derivations in zk/notes/arithmetic.md):
  * :func:`msm` for variable bases: GLV-split every point, signed c-bit windows, all buckets of all
    windows filled by one batched-affine tree reduction, the windows' weighted bucket sums run in
    lockstep (batched too), then Horner over the windows in Jacobian coordinates.
  * :class:`FixedBases` for generators known in advance: each base stores 2^(8k) * B_i for k < 32, so
    a fixed-base MSM is a single window of 128 buckets with no doublings at all.
Both are variable-time.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from gmpy2 import mpz

from zk.field import P, R
from zk.g1 import (
    BETA,
    JAC_INF,
    Affine,
    Jacobian,
    affine_add,
    affine_double,
    affine_sum,
    batch_add,
    batch_add_pairs,
    glv_split,
    jac_add_affine,
    jac_double,
    jac_to_affine,
    odd_multiples,
    straus,
    sum_lists,
    wnaf,
)

Point = tuple[mpz, mpz]


def bucket_sums(items: Sequence[tuple[int, Point]], nbuckets: int) -> list[Affine]:
    """Sum the points dropped into each bucket (batched-affine trees, see g1.sum_lists)."""
    buckets: list[list[Point]] = [[] for _ in range(nbuckets)]
    for b, pt in items:
        buckets[b].append(pt)
    return sum_lists(buckets)


def lockstep_add(accs: Sequence[Affine], addends: Sequence[Affine]) -> list[Affine]:
    """Element-wise accs[i] + addends[i] with all the finite pairs in one batched addition."""
    out = list(accs)
    idx = []
    lefts = []
    rights = []
    for i, (a, b) in enumerate(zip(accs, addends)):
        if b is None:
            continue
        if a is None:
            out[i] = b
        else:
            idx.append(i)
            lefts.append(a)
            rights.append(b)
    if idx:
        for i, s in zip(idx, batch_add(lefts, rights)):
            out[i] = s
    return out


def weighted_sums(lanes: Sequence[Sequence[Affine]]) -> tuple[list[Affine], list[Affine]]:
    """For each lane B_1..B_L (list index j-1), T = sum j*B_j and S = sum B_j, by running sums
    (S_j = S_{j+1} + B_j, T += S_j) advanced in lockstep across the lanes."""
    length = len(lanes[0])
    run: list[Affine] = [None] * len(lanes)
    tot: list[Affine] = [None] * len(lanes)
    for j in range(length - 1, -1, -1):
        run = lockstep_add(run, [lane[j] for lane in lanes])
        tot = lockstep_add(tot, run)
    return tot, run


def small_multiple(a: Affine, k: int) -> Affine:
    """k * a for a small non-negative k by double-and-add in affine coordinates."""
    acc: Affine = None
    for bit in bin(k)[2:]:
        acc = affine_double(acc)
        if bit == "1":
            acc = affine_add(acc, a)
    return acc


def reduce_buckets(buckets: Sequence[Affine], segments: int = 16) -> Affine:
    """sum_{j>=1} j * buckets[j-1], splitting the buckets into lanes of equal length so that the
    running sums batch: j = q*L + i gives sum_q T_q + L * sum_q q * S_q."""
    n = len(buckets)
    if n % segments:
        segments = 1
    lane_len = n // segments
    lanes = [buckets[q * lane_len : (q + 1) * lane_len] for q in range(segments)]
    tots, sums = weighted_sums(lanes)
    if segments == 1:
        return tots[0]
    outer, _ = weighted_sums([sums[1:]])  # sum_q q * S_q
    return affine_sum([*tots, small_multiple(outer[0], lane_len)])


# --- fixed bases -------------------------------------------------------------------------------

FIXED_WINDOW = 8
FIXED_WINDOWS = 32  # k + OFFSET < 2^256 for every k < r < 2^254
_FIXED_OFFSET = int.from_bytes(b"\x80" * FIXED_WINDOWS, "little")
_HALF = 1 << (FIXED_WINDOW - 1)


def batch_double_n(points: Sequence[Point], times: int) -> list[Point]:
    """2^times * a for many points at once, each doubling step one shared inversion."""
    from zk.field import batch_inverse

    pts = list(points)
    for _ in range(times):
        invs = batch_inverse([2 * y for _, y in pts])
        nxt = []
        for (x, y), inv in zip(pts, invs):
            lam = 3 * x * x * inv % P
            x3 = (lam * lam - 2 * x) % P
            nxt.append((x3, (lam * (x - x3) - y) % P))
        pts = nxt
    return pts


COMB_ROWS = 10  # h: a scalar's 260 bits as 10 rows of 26 columns
COMB_COLS = 26  # d
COMB_MAX_BASES = 2 + 2 * 128  # G, H and G_i, H_i for n*m <= 128: about 45 MB of tables
_COMB_INDEX = {format(m, f"0{COMB_ROWS}b"): m for m in range(1 << COMB_ROWS)}


class FixedBases:
    """Bases known in advance, with precomputed tables for a fixed-base MSM with no bucket reduction.

    Comb (Lim-Lee) tables for the first COMB_MAX_BASES bases: comb[b][m] = sum of 2^(26 i) B_b over
    the bits i of the 10-bit mask m. Column j of a scalar (bits j, j+26, ..., j+234) picks one table
    point per base, so sum_b k_b B_b = sum_j 2^j S_j where S_j sums the picked points of column j:
    26 columns summed as buckets by batched-affine trees, then Horner with 25 doublings.

    Window tables for every base: [2^(8k) B, -2^(8k) B for k < 32]; k + 0x8080...80 gives signed
    byte digits b_k - 128, one table point per base and window into bucket |b_k - 128| (used past
    COMB_MAX_BASES, where comb tables would take too much memory).
    """

    def __init__(self, bases: Sequence[Point]) -> None:
        self.bases = list(bases)
        self.tables: list[list[Point]] = []  # per base: [+T_0, ..., +T_31] then [-T_0, ..., -T_31]
        self.comb: list[list[Point]] = []  # per base: 1024 points, index 0 unused
        self._extend_lock = threading.RLock()  # two threads extending at once would append twice

    def extend_to(self, count: int) -> None:
        """Build the tables of the first ``count`` bases (built lazily, kept for the process)."""
        self._extend_windows(count)
        self._extend_comb(min(count, COMB_MAX_BASES))

    def _extend_windows(self, count: int) -> None:
        if count <= len(self.tables):
            return
        with self._extend_lock:
            self._extend_windows_locked(count)

    def _extend_windows_locked(self, count: int) -> None:
        start = len(self.tables)
        if count <= start:
            return
        column = list(self.bases[start:count])
        cols = [column]
        for _ in range(FIXED_WINDOWS - 1):
            column = batch_double_n(column, FIXED_WINDOW)
            cols.append(column)
        for i in range(count - start):
            pos = [c[i] for c in cols]
            self.tables.append(pos + [(x, P - y) for x, y in pos])

    def _extend_comb(self, count: int) -> None:
        if count <= len(self.comb):
            return
        with self._extend_lock:
            self._extend_comb_locked(count)

    def _extend_comb_locked(self, count: int) -> None:
        start = len(self.comb)
        if count <= start:
            return
        rows = [list(self.bases[start:count])]  # rows[i][b] = 2^(26 i) B_b
        for _ in range(COMB_ROWS - 1):
            rows.append(batch_double_n(rows[-1], COMB_COLS))
        tables: list[list[Point]] = [[None] * (1 << COMB_ROWS) for _ in rows[0]]  # type: ignore[list-item]
        for m in range(1, 1 << COMB_ROWS):
            low = m & (m - 1)
            row = rows[(m & -m).bit_length() - 1]
            if low == 0:
                for t, pt in zip(tables, row):
                    t[m] = pt
                continue
            sums = batch_add([t[low] for t in tables], row)
            for t, pt2 in zip(tables, sums):
                assert pt2 is not None  # distinct multiples of a point of prime order
                t[m] = pt2
        self.comb.extend(tables)

    def msm(self, scalars: Sequence[int], indices: Sequence[int] | None = None) -> Jacobian:
        """sum scalars[t] * bases[indices[t]] (indices default to 0, 1, 2, ...)."""
        if indices is None:
            indices = range(len(scalars))
        top = max(indices, default=-1) + 1
        if top <= COMB_MAX_BASES:
            self._extend_comb(top)
            return self._msm_comb(scalars, indices)
        self._extend_windows(top)
        return self._msm_windows(scalars, indices)

    def _msm_comb(self, scalars: Sequence[int], indices: Sequence[int]) -> Jacobian:
        r = int(R)
        width = f"0{COMB_ROWS * COMB_COLS}b"
        bit_strings = [format(int(k) % r, width) for k in scalars]
        tables = [self.comb[i] for i in indices]
        index = _COMB_INDEX
        step = COMB_COLS
        last = COMB_COLS - 1
        columns = []
        for j in range(COMB_COLS):
            column = [t[index[bits[last - j :: step]]] for t, bits in zip(tables, bit_strings)]
            if None in column:  # an all-zero column of a scalar (mask 0) picks nothing
                column = [pt for pt in column if pt is not None]
            columns.append(column)
        sums = sum_lists(columns)
        acc = JAC_INF
        for j in range(last, -1, -1):
            acc = jac_add_affine(jac_double(acc), sums[j])
        return acc

    def _msm_windows(self, scalars: Sequence[int], indices: Sequence[int]) -> Jacobian:
        items: list[tuple[int, Point]] = []
        append = items.append
        tables = self.tables
        offset = _FIXED_OFFSET
        for idx, k in zip(indices, scalars):
            k = int(k) % int(R)
            if not k:
                continue
            table = tables[idx]
            for w, byte in enumerate((k + offset).to_bytes(FIXED_WINDOWS, "little")):
                if byte > _HALF:
                    append((byte - _HALF - 1, table[w]))
                elif byte < _HALF:
                    append((_HALF - byte - 1, table[FIXED_WINDOWS + w]))
        buckets = bucket_sums(items, _HALF)
        total = reduce_buckets(buckets)
        return JAC_INF if total is None else (total[0], total[1], mpz(1))


# --- variable bases ----------------------------------------------------------------------------

GLV_BITS = 130  # |k1|, |k2| < 2^129 for the basis in zk.g1 (checked in tests)
STRAUS_MAX = 20  # points (before the GLV split) up to which Straus beats Pippenger here


def _window_for(npoints: int) -> int:
    """The window c that minimises npoints*W + W*2^c with W = ceil((GLV_BITS+1)/c), the count of
    bucket insertions plus running-sum additions."""
    best = min(range(2, 14), key=lambda c: (-(-(GLV_BITS + 1) // c)) * (npoints + (1 << c)))
    return best


def msm(points: Sequence[Affine], scalars: Sequence[int]) -> Jacobian:
    """sum scalars[i] * points[i] for arbitrary points of G1 (variable time)."""
    split: list[tuple[Point, int]] = []
    for pt, k in zip(points, scalars):
        k = mpz(k) % R
        if pt is None or k == 0:
            continue
        k1, k2 = glv_split(k)
        x, y = pt
        split.append(((x, y) if k1 >= 0 else (x, P - y), int(abs(k1))))
        split.append(((BETA * x % P, y if k2 >= 0 else P - y), int(abs(k2))))
    if not split:
        return JAC_INF
    if len(split) <= 2 * STRAUS_MAX:
        return straus([(wnaf(k, 5), odd_multiples(pt, 8)) for pt, k in split])
    c = _window_for(len(split))
    nwin = -(-(GLV_BITS + 1) // c)
    half = 1 << (c - 1)
    mask = (1 << c) - 1
    offset = sum(half << (c * w) for w in range(nwin))
    lists: list[list[Point]] = [[] for _ in range(nwin * half)]
    for pt, k in split:
        kk = k + offset
        neg = (pt[0], P - pt[1])
        base = -1
        for _ in range(nwin):
            d = (kk & mask) - half
            kk >>= c
            if d > 0:
                lists[base + d].append(pt)
            elif d < 0:
                lists[base - d].append(neg)
            base += half
    buckets = sum_lists(lists)
    lanes = [buckets[w * half : (w + 1) * half] for w in range(nwin)]
    window_sums, _ = weighted_sums(lanes)
    acc = JAC_INF
    for w in range(nwin - 1, -1, -1):
        for _ in range(c):
            acc = jac_double(acc)
        acc = jac_add_affine(acc, window_sums[w])
    return acc


def msm_affine(points: Sequence[Affine], scalars: Sequence[int]) -> Affine:
    """:func:`msm` normalised to affine coordinates."""
    return jac_to_affine(msm(points, scalars))


# --- one fixed base, full window tables --------------------------------------------------------

TABLE_WINDOW = 12


class WindowTable:
    """k * B for one fixed base B with no doublings: rows[i][d-1] = d * 2^(w i) * B for d <= 2^(w-1).

    k + OFFSET = sum_i (d_i + 2^(w-1)) 2^(w i), so k * B = sum_i d_i 2^(w i) B is one table point
    (or its negation) per non-zero digit, summed as a batched-affine tree. Built on first use.
    """

    def __init__(self, base: Point, window: int = TABLE_WINDOW) -> None:
        self.base = base
        self.window = window
        self.windows = -(-256 // window)
        self.half = 1 << (window - 1)
        self.offset = sum(self.half << (window * i) for i in range(self.windows))
        self.rows: list[list[Point]] = []
        self._build_lock = threading.Lock()

    def _build(self) -> None:
        with self._build_lock:  # threads that meet an unbuilt table wait for one build, not race it
            if not self.rows:
                self._build_locked()

    def _build_locked(self) -> None:
        starts = [self.base]
        for _ in range(self.windows - 1):
            starts.append(batch_double_n([starts[-1]], self.window)[0])
        rows = [[s] for s in starts]
        for _ in range(self.half - 1):  # row_i gains (j+1) * start_i from j * start_i, all rows batched
            sums = batch_add_pairs([(row[-1], row[0]) for row in rows])
            for row, s in zip(rows, sums):
                assert s is not None
                row.append(s)
        self.rows = rows

    def points_for(self, k: int) -> list[Point]:
        """The table points whose sum is k * B."""
        if not self.rows:
            self._build()
        k = int(k) % int(R)
        kk = k + self.offset
        mask = (1 << self.window) - 1
        half = self.half
        out = []
        for row in self.rows:
            d = (kk & mask) - half
            kk >>= self.window
            if d > 0:
                out.append(row[d - 1])
            elif d < 0:
                x, y = row[-d - 1]
                out.append((x, P - y))
        return out

    def mul(self, k: int) -> Affine:
        """k * B in affine coordinates."""
        return affine_sum(self.points_for(k))
