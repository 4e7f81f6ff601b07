"""Pedersen commitments C = value * G + blinding * H on BN254 G1 (fixed-base tables, no doublings)."""

from __future__ import annotations

import secrets

from zk import bn254
from zk.field import R
from zk.g1 import affine_sum


def commit(value: int, blinding: int) -> bn254.Point:
    """value * G + blinding * H (both reduced mod r)."""
    g_table, h_table = bn254.G._table, bn254.H._table
    assert g_table is not None and h_table is not None
    xy = affine_sum(g_table.points_for(value) + h_table.points_for(blinding))
    return bn254.Point(xy, _trusted=True)


def random_blinding() -> int:
    """A uniformly random non-zero scalar from the OS."""
    return 1 + secrets.randbelow(int(R) - 1)
