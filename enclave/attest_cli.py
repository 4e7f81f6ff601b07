"""`escrow-attest`: verify a live escrow server or an SGX DCAP v3 quote file, and compute MRENCLAVE.

    escrow-attest verify --target HOST:PORT [--root-ca FILE] [--at ISO-8601] [--expect-mrenclave HEX]
        [--expect-mrsigner HEX] [--expect-isvprodid N] [--min-isvsvn N] [--allow-tcb-status STATUS]...
        [--allow-debug-insecure] [--timeout-s N] [--json]
    escrow-attest verify-quote QUOTE --collateral FILE [--root-ca FILE] [--nonce HEX] [--keys FILE]
        [--at ISO-8601] [--expect-mrenclave HEX] [--expect-mrsigner HEX] [--expect-isvprodid N]
        [--min-isvsvn N] [--allow-tcb-status STATUS]... [--allow-debug-insecure] [--json]
    escrow-attest measure [--source DIR] [--isvprodid N] [--isvsvn N] [--debug-enclave] [--json]

Exit codes: 0 every check passed; 1 a check failed (the reason code is printed); 2 bad usage,
unreadable input or a server that cannot be reached. Without --root-ca only Intel's SGX root is
trusted; an emulated platform's root must be named explicitly.

``verify`` asks the server for a quote over a fresh random nonce (escrow.v1.Attestation/GetQuote) and
checks it like ``verify-quote`` with --nonce and --keys set to that nonce and the key bundle the server
returned, then reads the bundle (chain id, ledger key). This module is host-side tooling, not trusted
code: it may use grpc and the generated escrow.v1 modules, never escrow.core or clients.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from enclave.collateral import TCB_STATUSES
from enclave.measurement import EnclaveConfig, mrenclave, mrsigner
from enclave.trusted.keybundle import KeyBundle, KeyBundleError
from enclave.verifier import CheckResult, Policy, VerificationReport, check_quote
from escrow.v1 import attestation_pb2, attestation_pb2_grpc  # generated protocol code, not escrow.core

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _hex(value: str, name: str, size: int | None = None) -> bytes:
    try:
        data = bytes.fromhex(value)
    except ValueError:
        raise SystemExit(_usage(f"{name} must be hex")) from None
    if size is not None and len(data) != size:
        raise SystemExit(_usage(f"{name} must be {size} bytes ({2 * size} hex digits)"))
    return data


def _usage(message: str) -> int:
    print(f"escrow-attest: {message}", file=sys.stderr)
    return EXIT_USAGE


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise SystemExit(_usage(f"cannot read {what} {path}: {e.strerror}")) from None


def _parse_time(value: str) -> datetime:
    if value.isdigit():  # unix seconds, as the vectors' README gives them
        return datetime.fromtimestamp(int(value), UTC)
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise SystemExit(
            _usage("--at takes an ISO-8601 time such as 2025-06-27T00:00:00Z, or unix seconds")
        ) from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


ALLOWABLE_TCB_STATUSES = TCB_STATUSES - {"Revoked"}  # Revoked is never allowed


def _root_ca(path: str) -> bytes:
    data = _read(path, "root CA")
    if data.lstrip().startswith(b"-----BEGIN CERTIFICATE-----"):
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        try:
            return x509.load_pem_x509_certificate(data).public_bytes(Encoding.DER)
        except ValueError:
            raise SystemExit(_usage(f"{path} is not a PEM certificate")) from None
    return data


def policy_from_args(args: argparse.Namespace) -> Policy:
    """The verification policy the flags describe (fail-closed defaults)."""
    kwargs: dict[str, Any] = {}
    if args.root_ca:
        kwargs["root_ca_der"] = _root_ca(args.root_ca)
    if args.at:
        kwargs["at"] = _parse_time(args.at)
    if args.expect_mrenclave:
        kwargs["expect_mrenclave"] = _hex(args.expect_mrenclave, "--expect-mrenclave", 32)
    if args.expect_mrsigner:
        kwargs["expect_mrsigner"] = _hex(args.expect_mrsigner, "--expect-mrsigner", 32)
    if args.expect_isvprodid is not None:
        kwargs["expect_isv_prod_id"] = args.expect_isvprodid
    if args.min_isvsvn is not None:
        kwargs["min_isv_svn"] = args.min_isvsvn
    if args.allow_tcb_status:
        unknown = sorted(set(args.allow_tcb_status) - ALLOWABLE_TCB_STATUSES)
        if unknown:
            raise SystemExit(
                _usage(
                    f"unknown or never-allowed TCB status {', '.join(unknown)}; choose from "
                    f"{', '.join(sorted(ALLOWABLE_TCB_STATUSES))}"
                )
            )
        kwargs["allowed_tcb_statuses"] = frozenset({"UpToDate", *args.allow_tcb_status})
    if args.allow_debug_insecure:
        kwargs["allow_debug_insecure"] = True
    nonce = getattr(args, "nonce", None)
    if nonce is not None:
        kwargs["nonce"] = _hex(nonce, "--nonce")
        if not 1 <= len(kwargs["nonce"]) <= 64:
            raise SystemExit(_usage("--nonce must be 1 to 64 bytes"))
    keys = getattr(args, "keys", None)
    if keys:
        kwargs["key_bundle"] = _read(keys, "key bundle")
    return Policy(**kwargs)


def add_policy_flags(p: argparse.ArgumentParser, *, offline: bool = True) -> None:
    """The policy flags of verify-quote (``offline``: with --nonce and --keys) and verify --target (where
    the nonce is fresh and the key bundle comes from the server)."""
    p.add_argument(
        "--root-ca", metavar="FILE", help="trust this root CA (DER or PEM) instead of Intel's SGX root"
    )
    if offline:
        p.add_argument(
            "--nonce", metavar="HEX", help="REPORTDATA's second half must be SHA-256 of this nonce"
        )
        p.add_argument(
            "--keys", metavar="FILE", help="key bundle whose SHA-256 REPORTDATA's first half must be"
        )
    p.add_argument(
        "--at",
        metavar="TIME",
        help="evaluate certificates and collateral at this time (ISO-8601 or unix seconds)",
    )
    p.add_argument("--expect-mrenclave", metavar="HEX", help="required MRENCLAVE (64 hex digits)")
    p.add_argument("--expect-mrsigner", metavar="HEX", help="required MRSIGNER (64 hex digits)")
    p.add_argument("--expect-isvprodid", metavar="N", type=int, help="required ISVPRODID")
    p.add_argument("--min-isvsvn", metavar="N", type=int, help="minimum ISVSVN")
    p.add_argument(
        "--allow-tcb-status",
        metavar="STATUS",
        action="append",
        default=[],
        help="also accept this TCB status (repeatable; UpToDate is always accepted, Revoked never)",
    )
    p.add_argument(
        "--allow-debug-insecure",
        action="store_true",
        help="INSECURE: accept a debug enclave, whose memory the host can read",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _print_report(
    report: VerificationReport,
    as_json: bool,
    *,
    freshness_checked: bool,
    extra: dict[str, Any] | None = None,
) -> None:
    data = report.to_dict()
    data["freshness_checked"] = freshness_checked
    data.update(extra or {})
    if as_json:
        print(json.dumps(data, sort_keys=True))
        return
    if data.get("target"):
        print(f"target         {data['target']}")
        print(f"nonce          {data['nonce']} (fresh, random)")
    identity = data.get("identity") or {}
    if identity:
        print("quote identity:")
        for key in ("mr_enclave", "mr_signer", "isv_prod_id", "isv_svn", "debug", "report_data"):
            if key in identity:
                print(f"  {key:12s} {identity[key]}")
    if data.get("tcb_status"):
        advisories = ", ".join(data.get("advisory_ids") or []) or "none"
        print(f"  tcb_status   {data['tcb_status']} (advisories: {advisories})")
    bundle = data.get("key_bundle")
    if bundle:
        print("key bundle (what REPORTDATA commits to):")
        for key in KEY_BUNDLE_FIELDS:
            print(f"  {key:14s} {bundle[key]}")
    print("checks:")
    for check in data["checks"]:
        mark = "ok  " if check["passed"] else "FAIL"
        detail = f"  ({check['detail']})" if check.get("detail") else ""
        print(f"  {mark} {check['name']}{detail}")
    if data["ok"]:
        print("VERIFIED: every check passed")
        if not data.get("freshness_checked"):
            print("note: no --nonce given, so this quote may be a replay of an old one")
    else:
        print(f"REJECTED: {data['reason']}")


def cmd_verify_quote(args: argparse.Namespace) -> int:
    quote = _read(args.quote, "quote")
    collateral = _read(args.collateral, "collateral").decode("utf-8", errors="replace")
    policy = policy_from_args(args)
    report = check_quote(quote, collateral, policy)
    _print_report(report, args.json, freshness_checked=policy.nonce is not None)
    return EXIT_OK if report.ok else EXIT_FAILED


# --- verify --target: a live server -----------------------------------------------------------------

KEY_BUNDLE_FIELDS = (
    "chain_id",
    "ledger_key_id",
    "ledger_key",
    "encryption_key",
    "instance_id",
    "isv_svn",
    "head_height",
    "head_hash",
)
NONCE_BYTES = 32
DEFAULT_TIMEOUT_S = 10.0


class TargetError(Exception):
    """The server could not be asked (unreachable, refused the call, answered garbage)."""


def fetch_quote(target: str, nonce: bytes, timeout_s: float) -> attestation_pb2.GetQuoteResponse:
    """escrow.v1.Attestation/GetQuote on ``target``: the GetQuoteResponse for ``nonce``."""
    try:
        with grpc.insecure_channel(target) as channel:
            stub = attestation_pb2_grpc.AttestationStub(channel)
            answer: attestation_pb2.GetQuoteResponse = stub.GetQuote(
                attestation_pb2.GetQuoteRequest(nonce=nonce), timeout=timeout_s
            )
            return answer
    except grpc.RpcError as e:
        code = e.code().name if isinstance(e, grpc.Call) else "UNKNOWN"
        details = e.details() if isinstance(e, grpc.Call) else str(e)
        raise TargetError(f"cannot get a quote from {target}: {code}: {details}") from None


def key_bundle_summary(bundle: KeyBundle) -> dict[str, Any]:
    """The bundle's public fields as JSON values; ledger_key_id = SHA-256 of the 65-byte SEC1 key, the id
    that OPEN and ATTACH bodies name (escrow.core.signing.p256_key_id)."""
    return {
        "chain_id": bundle.chain_id.hex(),
        "ledger_key_id": hashlib.sha256(bundle.ledger_key).hexdigest(),
        "ledger_key": bundle.ledger_key.hex(),
        "encryption_key": bundle.encryption_key.hex(),
        "instance_id": bundle.instance_id.hex(),
        "isv_svn": bundle.isv_svn,
        "head_height": bundle.head_height,
        "head_hash": bundle.head_hash.hex(),
    }


def check_key_bundle(report: VerificationReport, raw: bytes) -> tuple[VerificationReport, KeyBundle | None]:
    """After the quote passed (REPORTDATA commits to ``raw``): the bundle must parse, name a chain, and
    carry the quote's ISVSVN. A failure is one more check, with reason KEY_BUNDLE_MISMATCH."""
    bundle: KeyBundle | None = None
    try:
        bundle = KeyBundle.from_bytes(raw)
    except KeyBundleError as e:
        problem = f"the key bundle does not parse: {e}"
    else:
        quoted_svn = report.identity.isv_svn if report.identity is not None else None
        if bundle.chain_id == bytes(32):
            problem = "the enclave has no chain yet (chain id zero)"
        elif bundle.isv_svn != quoted_svn:
            problem = f"key bundle ISVSVN {bundle.isv_svn}, quote ISVSVN {quoted_svn}"
        else:
            check = CheckResult(
                "key_bundle_contents",
                True,
                f"chain {bundle.chain_id.hex()[:16]}..., head height {bundle.head_height}",
            )
            return replace(report, checks=[*report.checks, check]), bundle
    failed = CheckResult("key_bundle_contents", False, problem, "KEY_BUNDLE_MISMATCH")
    return replace(
        report, ok=False, reason="KEY_BUNDLE_MISMATCH", detail=problem, checks=[*report.checks, failed]
    ), bundle


def cmd_verify(args: argparse.Namespace) -> int:
    policy = policy_from_args(args)
    if not args.target.strip():
        return _usage("--target is HOST:PORT")
    if not 0 < args.timeout_s <= 3600:
        return _usage("--timeout-s is 1 to 3600 seconds")
    nonce = os.urandom(NONCE_BYTES)
    try:
        answer = fetch_quote(args.target, nonce, float(args.timeout_s))
    except TargetError as e:
        print(f"escrow-attest: {e}", file=sys.stderr)
        return EXIT_USAGE
    report = check_quote(
        answer.quote, answer.collateral_json, replace(policy, nonce=nonce, key_bundle=answer.key_bundle)
    )
    bundle = None
    if report.ok:
        report, bundle = check_key_bundle(report, answer.key_bundle)
    extra: dict[str, Any] = {"target": args.target, "nonce": nonce.hex()}
    extra["key_bundle"] = key_bundle_summary(bundle) if bundle is not None else None
    _print_report(report, args.json, freshness_checked=True, extra=extra)
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_measure(args: argparse.Namespace) -> int:
    config = EnclaveConfig(isv_prod_id=args.isvprodid, isv_svn=args.isvsvn, debug=args.debug_enclave)
    source = Path(args.source) if args.source else None
    if source is not None and not (source / "zk").is_dir():
        return _usage(f"{source} does not look like a checkout (no zk/ package)")
    mre, mrs = mrenclave(config, source).hex(), mrsigner().hex()
    if args.json:
        print(
            json.dumps(
                {
                    "mrenclave": mre,
                    "mrsigner": mrs,
                    "isv_prod_id": config.isv_prod_id,
                    "isv_svn": config.isv_svn,
                    "debug": config.debug,
                }
            )
        )
    else:
        print(f"MRENCLAVE {mre}\nMRSIGNER  {mrs}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="escrow-attest", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ve = sub.add_parser(
        "verify",
        help="verify a live server: a quote over a fresh nonce, its collateral and its key bundle",
    )
    ve.add_argument("--target", required=True, metavar="HOST:PORT", help="the escrow server's gRPC address")
    ve.add_argument(
        "--timeout-s",
        type=int,
        default=int(DEFAULT_TIMEOUT_S),
        metavar="N",
        help=f"give up on the server after N seconds (default {int(DEFAULT_TIMEOUT_S)})",
    )
    add_policy_flags(ve, offline=False)
    ve.set_defaults(func=cmd_verify)
    vq = sub.add_parser("verify-quote", help="verify a quote file against its collateral")
    vq.add_argument("quote", help="the quote (binary, SGX DCAP v3)")
    vq.add_argument("--collateral", required=True, metavar="FILE", help="collateral JSON (dcap-qvl shape)")
    add_policy_flags(vq)
    vq.set_defaults(func=cmd_verify_quote)
    me = sub.add_parser("measure", help="compute the MRENCLAVE a checkout's trusted code produces")
    me.add_argument("--source", metavar="DIR", help="the checkout (default: the installed code)")
    me.add_argument("--isvprodid", type=int, default=EnclaveConfig().isv_prod_id)
    me.add_argument("--isvsvn", type=int, default=EnclaveConfig().isv_svn)
    me.add_argument("--debug-enclave", action="store_true", help="measure the debug configuration")
    me.add_argument("--json", action="store_true", help="print one JSON object")
    me.set_defaults(func=cmd_measure)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
