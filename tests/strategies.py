"""Helpers shared by the test modules: hypothesis strategies and a reproducible byte source."""

from __future__ import annotations

import hashlib

from hypothesis import strategies as st

# hypothesis rarely draws very long integers from a wide range by itself: build some explicitly
huge_ints = st.builds(
    lambda hi, lo, sign: sign * (hi << 256 | lo),
    st.integers(1, 2**60),
    st.integers(0, 2**256 - 1),
    st.sampled_from([1, -1]),
)


class ShakeRng:
    """rng(c) for call number k: SHAKE-256(seed || k as 8 bytes big-endian), first c bytes."""

    def __init__(self, seed: bytes) -> None:
        self._seed = seed
        self._calls = 0

    def __call__(self, count: int) -> bytes:
        out = hashlib.shake_256(self._seed + self._calls.to_bytes(8, "big")).digest(count)
        self._calls += 1
        return out
