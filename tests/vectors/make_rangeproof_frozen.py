"""Generate tests/vectors/rangeproof_frozen.json: range proofs made once with a deterministic rng.

The file freezes the proof format: tests/test_rangeproof.py checks that every stored proof still verifies
and that proving again with the same rng reproduces it byte for byte, so any change to the protocol,
the transcript, the generators or the encoding shows up as a failing test.

Regenerating is only legitimate when the proof format's version changes (zk.rangeproof.PROTOCOL, whose
value is stored in the file and checked by the test). Never regenerate to make a failing test pass: a
mismatch with an unchanged PROTOCOL means the code changed behaviour without a version bump.

    PYTHONPATH=. .venv/bin/python tests/vectors/make_rangeproof_frozen.py            # compare only
    PYTHONPATH=. .venv/bin/python tests/vectors/make_rangeproof_frozen.py --write    # overwrite

The deterministic rng (also written out, independently, in the test): call number k (from 0) with a
request for c bytes returns SHAKE-256(seed || k as 8 bytes big-endian) truncated to c bytes.
Blinding j of a vector is SHAKE-256(seed || "blinding" || j as 8 bytes big-endian), 64 bytes, mod r.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from zk import bn254, pedersen, rangeproof

OUT = Path(__file__).with_name("rangeproof_frozen.json")
SEED_PREFIX = b"escrow.v1/tests/rangeproof-frozen/"

# (name, bits, values): every supported n, m = 1, 2, 3 (padded to 4), the edge values 0 and 2^n - 1.
CASES: list[tuple[str, int, list[int]]] = [
    ("n8-m1", 8, [0xA5]),
    ("n16-m2-edges", 16, [0, 2**16 - 1]),
    ("n32-m3-padded", 32, [1, 2**32 - 1, 123_456_789]),
    ("n64-m1-max", 64, [2**64 - 1]),
    ("n64-m2-amounts", 64, [42_000_000, 2**63]),
]


class ShakeRng:
    """rng(c) for call number k: SHAKE-256(seed || k as 8 bytes big-endian), first c bytes."""

    def __init__(self, seed: bytes) -> None:
        self._seed = seed
        self._calls = 0

    def __call__(self, count: int) -> bytes:
        out = hashlib.shake_256(self._seed + self._calls.to_bytes(8, "big")).digest(count)
        self._calls += 1
        return out


def blinding(seed: bytes, j: int) -> int:
    """The j-th blinding of a vector: SHAKE-256(seed || "blinding" || j) as 64 bytes, mod r."""
    digest = hashlib.shake_256(seed + b"blinding" + j.to_bytes(8, "big")).digest(64)
    return int.from_bytes(digest, "big") % bn254.ORDER


def make_vector(name: str, bits: int, values: list[int]) -> dict[str, Any]:
    """One frozen proof with everything needed to check it and to make it again."""
    seed = SEED_PREFIX + name.encode()
    context = b"escrow.v1/test-vector/" + name.encode()
    blindings = [blinding(seed, j) for j in range(len(values))]
    proof = rangeproof.prove(values, blindings, bits, context, rng=ShakeRng(seed))
    commitments = [
        bn254.point_to_bytes(pedersen.commit(v, b)) for v, b in zip(values, blindings, strict=True)
    ]
    return {
        "name": name,
        "bits": bits,
        "values": [str(v) for v in values],
        "blindings": [b.to_bytes(32, "big").hex() for b in blindings],
        "context": context.hex(),
        "rng_seed": seed.hex(),
        "commitments": [c.hex() for c in commitments],
        "proof": proof.hex(),
    }


def build() -> dict[str, Any]:
    """The whole file's content."""
    return {
        "description": (
            "Frozen Bulletproofs range proofs (zk/rangeproof.py). Generated once by "
            "make_rangeproof_frozen.py; regenerate only when the proof format's version (protocol) changes."
        ),
        "protocol": rangeproof.PROTOCOL.decode(),
        "rng": (
            "call k (from 0) asking for c bytes returns SHAKE-256(rng_seed || k as 8 bytes big-endian)[:c]; "
            "blinding j = SHAKE-256(rng_seed || 'blinding' || j as 8 bytes big-endian)[:64] mod r"
        ),
        "encoding": (
            "values decimal strings; blindings 32-byte big-endian hex; context, commitments, proof hex"
        ),
        "vectors": [make_vector(name, bits, values) for name, bits, values in CASES],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="overwrite the frozen file (format change only)")
    args = parser.parse_args()
    text = json.dumps(build(), indent=2) + "\n"
    if args.write:
        OUT.write_text(text)
        print(f"wrote {OUT}")
        return 0
    if OUT.exists() and OUT.read_text() == text:
        print(f"{OUT.name} is up to date")
        return 0
    print(f"{OUT.name} differs from what the code produces now (or is missing)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
