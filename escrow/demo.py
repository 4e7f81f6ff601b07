"""`make demo` for now: attestation of the emulated enclave, then the zk core's part of a session.

First the enclave starts on a temporary data directory (creating its emulated SGX platform), quotes
for a fresh nonce, and the quote is verified as a vehicle would before trusting it with a secret:
under the emulated root named explicitly, pinned to the MRENCLAVE this checkout's code measures, with
REPORTDATA bound to the nonce and the enclave's key bundle.

Then a deposit D is committed and range-proved; it is split into the pole's pay and the driver's refund,
two new commitments with one aggregated range proof, and the excess X = D - pay - refund is proved
to be a multiple of H (a Schnorr proof), so anyone can check that the split conserves value without
learning any amount. The service that runs this inside an enclave comes in later issues.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from enclave.host import EnclaveHost
from enclave.measurement import EnclaveConfig, mrenclave
from enclave.verifier import Policy, verify_quote
from zk import bn254, pedersen, rangeproof, schnorr


def _timed(label: str, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    ms = (time.perf_counter() - t0) * 1e3
    print(f"  {label:58s} {ms:8.1f} ms")
    return out, ms


def attest() -> str:
    """Start the enclave on a throwaway data directory, quote, verify; returns MRENCLAVE (hex)."""
    print("Attestation of the emulated enclave (SGX DCAP v3 quote, emulated root of trust)")
    with tempfile.TemporaryDirectory(prefix="escrow-demo-") as tmp:
        os.environ.setdefault("ESCROW_NV_DIR", str(Path(tmp) / "nv"))
        host, _ = _timed(
            "start the enclave (creates the emulated platform)", EnclaveHost.start, Path(tmp) / "data"
        )
        with host:
            nonce = os.urandom(32)
            qb, _ = _timed("quote for the verifier's fresh nonce", host.quote, nonce)
            expected = mrenclave(EnclaveConfig())
            policy = Policy(
                root_ca_der=qb.root_ca_der, expect_mrenclave=expected, nonce=nonce, key_bundle=qb.key_bundle
            )
            report, _ = _timed(
                "verify: chain, collateral, TCB, QE, signatures, policy",
                verify_quote,
                qb.quote,
                qb.collateral_json,
                policy,
            )
    print(
        f"  verified: {len(report.checks)} checks passed, TCB {report.tcb_status}, "
        f"MRENCLAVE {expected.hex()[:16]}..."
    )
    return expected.hex()


def main() -> None:
    """Run the demonstration and print one JSON summary line at the end."""
    started = time.perf_counter()
    measured = attest()
    deposit, pay = 2_000, 1_463  # euro cents: a deposit of EUR 20.00, a bill of EUR 14.63
    refund = deposit - pay
    context = b"demo/chain-id/OPEN/session-tag"
    print("Confidential charging escrow: the zk core (BN254 G1, Pedersen, Bulletproofs, Schnorr)")
    print("  warming up the fixed-base tables (once per process)...")
    _timed("build generator tables", rangeproof.prove, [0, 0], [1, 1], 64, b"warm-up")

    d_blind = pedersen.random_blinding()
    D, _ = _timed("commit to the deposit D = v*G + b*H", pedersen.commit, deposit, d_blind)
    D_bytes = bn254.point_to_bytes(D)
    proof, _ = _timed(
        "prove 0 <= deposit < 2^64 (672-byte proof)", rangeproof.prove, [deposit], [d_blind], 64, context
    )
    _timed("verify the deposit's range proof", rangeproof.verify, [D_bytes], proof, 64, context)

    pay_blind, refund_blind = pedersen.random_blinding(), pedersen.random_blinding()
    pay_c, refund_c = pedersen.commit(pay, pay_blind), pedersen.commit(refund, refund_blind)
    settle_ctx = b"demo/chain-id/SETTLE/session-tag"
    split_proof, _ = _timed(
        "prove pay and refund in range (aggregated, 736 bytes)",
        rangeproof.prove,
        [pay, refund],
        [pay_blind, refund_blind],
        64,
        settle_ctx,
    )
    outputs = [bn254.point_to_bytes(pay_c), bn254.point_to_bytes(refund_c)]
    _timed("verify the split's range proof", rangeproof.verify, outputs, split_proof, 64, settle_ctx)
    excess = (d_blind - pay_blind - refund_blind) % bn254.ORDER
    X = D - pay_c - refund_c
    excess_proof, _ = _timed("prove the excess X = e*H (Schnorr)", schnorr.prove, excess, settle_ctx)
    _timed("verify the excess proof", schnorr.verify, bn254.point_to_bytes(X), excess_proof, settle_ctx)
    conserved = pay_c + refund_c + X == D
    print(f"  D = pay + refund + X holds: {conserved}; the amounts never left this process")
    print(
        json.dumps(
            {
                "deposit_minor": deposit,
                "pay_minor": pay,
                "refund_minor": refund,
                "deposit_proof_bytes": len(proof),
                "split_proof_bytes": len(split_proof),
                "conserved": conserved,
                "mrenclave": measured,
                "seconds": round(time.perf_counter() - started, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
