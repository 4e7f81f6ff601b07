"""Benchmarks of the zk core against DESIGN §12's targets, with baselines measured in the same run.

Prints the median of repeated runs for: G1 scalar multiplication (and py_ecc's optimized_bn128, and
mcl's native BN254 when the mclbn256 package is importable), a Pedersen commitment, the verifier's
147-point MSM of a real 64-bit proof, prove and verify for one and two 64-bit values, and batch
verification of 64 proofs. ``--json`` prints one JSON object instead of the table.

    python benchmarks/zk_bench.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zk import bn254, g1, pedersen, rangeproof
from zk import generators as gens
from zk.msm import msm
from zk.transcript import context_transcript

TARGETS_MS = {
    "scalar_mul": 0.22,
    "commitment": 0.05,
    "verifier_msm_147": 8.0,
    "prove_64x1": 35.0,
    "verify_64x1": 6.0,
    "prove_64x2": 80.0,
    "verify_64x2": 11.0,
    "batch_verify_64_per_proof": 1.2,
}


def median_ms(fn: Callable[[], object], reps: int) -> float:
    """Median wall time of ``reps`` calls, in milliseconds (one warm-up call first)."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def random_point() -> bn254.Point:
    return random.randrange(1, bn254.ORDER) * bn254.G


def bench_scalar_mul(reps: int) -> dict[str, float | None]:
    points = [random_point() for _ in range(16)]
    scalars = [random.randrange(bn254.ORDER) for _ in range(16)]
    it = iter(range(1 << 30))

    def ours() -> object:
        i = next(it) % 16
        return g1.scalar_mul(points[i].xy, scalars[i])

    out: dict[str, float | None] = {"scalar_mul": median_ms(ours, reps)}
    try:
        from py_ecc import optimized_bn128 as ref

        ref_points = []
        for p in points:
            xy = bn254.to_affine(p)
            assert xy is not None
            ref_points.append((ref.FQ(xy[0]), ref.FQ(xy[1]), ref.FQ(1)))

        def baseline() -> object:
            i = next(it) % 16
            return ref.multiply(ref_points[i], scalars[i])

        out["py_ecc_scalar_mul"] = median_ms(baseline, max(5, reps // 20))
    except ImportError:
        out["py_ecc_scalar_mul"] = None
    out["mcl_scalar_mul"] = bench_mcl(points, scalars, reps)
    return out


def load_mcl() -> object | None:
    """mclbn256 switched to alt_bn128 (mcl's MCL_BN_SNARK1 = 4), or None when not installed."""
    try:
        import mclbn256.mclbn256 as mcl  # type: ignore[import-not-found]
    except ImportError:
        return None
    if mcl.lib.mclBn_init(4, mcl.MCLBN_COMPILED_TIME_VAR) != 0:
        raise RuntimeError("mclbn256 refused to switch to alt_bn128")
    generator = mcl.G1().fromstr(b"1 1 2", 10)
    check = generator * mcl.Fr().fromstr(b"12345", 10)
    expected = bn254.to_affine(12345 * bn254.G)
    assert expected is not None
    if check.tostr(10) != f"1 {expected[0]} {expected[1]}".encode():
        raise RuntimeError("mclbn256 does not compute on alt_bn128 after init")
    return mcl


def _mcl_point(mcl: object, pt: bn254.Point) -> object:
    xy = bn254.to_affine(pt)
    assert xy is not None
    return mcl.G1().fromstr(f"1 {xy[0]} {xy[1]}".encode(), 10)  # type: ignore[attr-defined]


def bench_mcl(points: list[bn254.Point], scalars: list[int], reps: int) -> float | None:
    """mcl's native G1 multiplication on alt_bn128, if mclbn256 is installed."""
    mcl = load_mcl()
    if mcl is None:
        return None
    base = _mcl_point(mcl, points[0])
    k = mcl.Fr().fromstr(str(scalars[0]).encode(), 10)  # type: ignore[attr-defined]
    return median_ms(lambda: base * k, reps)


def bench_mcl_msm(count: int, reps: int) -> float | None:
    """mcl's native mulVec over ``count`` random points (the verifier-MSM baseline)."""
    mcl = load_mcl()
    if mcl is None:
        return None
    pts = (mcl.G1 * count)(*[_mcl_point(mcl, random_point()) for _ in range(count)])  # type: ignore[attr-defined]
    frs = (mcl.Fr * count)(  # type: ignore[attr-defined]
        *[mcl.Fr().fromstr(str(random.randrange(bn254.ORDER)).encode(), 10) for _ in range(count)]  # type: ignore[attr-defined]
    )
    out = mcl.G1()  # type: ignore[attr-defined]
    return median_ms(lambda: mcl.lib.mclBnG1_mulVec(out.d, pts, frs, count), reps)  # type: ignore[attr-defined]


def bench_commitment(reps: int) -> float:
    pairs = [(random.randrange(1 << 64), random.randrange(bn254.ORDER)) for _ in range(16)]
    it = iter(range(1 << 30))

    def run() -> object:
        v, b = pairs[next(it) % 16]
        return pedersen.commit(v, b)

    return median_ms(run, reps)


def make_proof(m: int) -> tuple[list[bytes], bytes]:
    values = [random.randrange(1 << 64) for _ in range(m)]
    blindings = [random.randrange(bn254.ORDER) for _ in range(m)]
    commitments = [bn254.point_to_bytes(pedersen.commit(v, b)) for v, b in zip(values, blindings)]
    return commitments, rangeproof.prove(values, blindings, 64, b"bench")


def bench_verifier_msm(reps: int) -> float:
    """The MSM that verify() evaluates for one 64-bit proof: 130 fixed generators + 17 proof points."""
    commitments, proof = make_proof(1)
    points, scalars, fixed = rangeproof._verification_terms(
        context_transcript(b"bench"), commitments, proof, 64, rangeproof.mpz(1), rangeproof._random_weight()
    )
    assert len(points) + len(fixed) == 147
    return median_ms(lambda: rangeproof._check_identity(points, scalars, fixed, 64), reps)


def bench_generic_msm(reps: int) -> float:
    points = [random_point().xy for _ in range(147)]
    scalars = [random.randrange(bn254.ORDER) for _ in range(147)]
    return median_ms(lambda: msm(points, scalars), reps)


def bench_proofs(m: int, reps: int) -> tuple[float, float]:
    values = [random.randrange(1 << 64) for _ in range(m)]
    blindings = [random.randrange(bn254.ORDER) for _ in range(m)]
    commitments = [bn254.point_to_bytes(pedersen.commit(v, b)) for v, b in zip(values, blindings)]
    proof = rangeproof.prove(values, blindings, 64, b"bench")
    prove_ms = median_ms(lambda: rangeproof.prove(values, blindings, 64, b"bench"), reps)
    verify_ms = median_ms(lambda: rangeproof.verify(commitments, proof, 64, b"bench"), reps * 2)
    return prove_ms, verify_ms


def bench_batch(k: int, reps: int) -> float:
    items = []
    for _ in range(k):
        commitments, proof = make_proof(1)
        items.append((commitments, proof, 64, b"bench"))
    return median_ms(lambda: rangeproof.verify_batch(items), reps) / k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke run)")
    args = parser.parse_args()
    random.seed(2026)
    q = args.quick
    gens.fixed_bases(128)  # build the generator tables before timing
    bn254.G._table.mul(1)  # type: ignore[union-attr]
    bn254.H._table.mul(1)  # type: ignore[union-attr]

    results: dict[str, object] = {}
    results.update(bench_scalar_mul(50 if q else 400))
    results["commitment"] = bench_commitment(50 if q else 400)
    results["verifier_msm_147"] = bench_verifier_msm(5 if q else 40)
    results["generic_msm_147_variable"] = bench_generic_msm(3 if q else 15)
    results["mcl_msm_147"] = bench_mcl_msm(147, 5 if q else 50)
    results["prove_64x1"], results["verify_64x1"] = bench_proofs(1, 3 if q else 15)
    results["prove_64x2"], results["verify_64x2"] = bench_proofs(2, 3 if q else 10)
    results["batch_verify_64_per_proof"] = bench_batch(8 if q else 64, 1 if q else 3)
    sm, ref = results["scalar_mul"], results.get("py_ecc_scalar_mul")
    results["speedup_vs_py_ecc"] = ref / sm if isinstance(ref, float) and isinstance(sm, float) else None
    mcl = results.get("mcl_scalar_mul")
    results["ratio_to_mcl"] = sm / mcl if isinstance(mcl, float) and isinstance(sm, float) else None
    vm, mm = results["verifier_msm_147"], results.get("mcl_msm_147")
    results["msm_ratio_to_mcl"] = vm / mm if isinstance(mm, float) and isinstance(vm, float) else None
    results["machine"] = f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"
    results["unit"] = "ms (median)"

    if args.json:
        print(json.dumps(results, sort_keys=True))
        return
    print(f"zk benchmarks, medians in ms ({results['machine']})")
    for key, value in results.items():
        if key in ("machine", "unit"):
            continue
        target = TARGETS_MS.get(key)
        shown = "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)
        verdict = (
            ""
            if target is None or not isinstance(value, float)
            else (f"  target <= {target} ms: {'met' if value <= target else 'MISSED'}")
        )
        print(f"  {key:32s} {shown:>10s}{verdict}")
    if isinstance(results["speedup_vs_py_ecc"], float):
        ok = results["speedup_vs_py_ecc"] >= 25
        print(
            f"  scalar multiplication is {results['speedup_vs_py_ecc']:.1f}x py_ecc (target >= 25x: "
            f"{'met' if ok else 'MISSED'})"
        )


if __name__ == "__main__":
    main()
