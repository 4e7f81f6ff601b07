"""`escrow-server`: the escrow service's entry point.

    escrow-server quote --data-dir DIR --nonce HEX --out DIR [--debug-enclave]

writes quote.bin, collateral.json, root_ca.der and keys.bin (the key bundle that REPORTDATA commits
to) from the data directory's emulated platform, creating the platform and the enclave's keys on first
use. Serving the gRPC API is issue 4's work: `escrow-server serve` says so and exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from enclave import fsutil
from enclave.errors import EnclaveError
from enclave.host import EnclaveHost
from enclave.measurement import EnclaveConfig
from enclave.trusted.keybundle import check_nonce

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def cmd_quote(args: argparse.Namespace) -> int:
    try:
        nonce = check_nonce(bytes.fromhex(args.nonce))
    except ValueError as e:  # KeyBundleError is a ValueError
        print(f"escrow-server: --nonce must be 1 to 64 bytes of hex ({e})", file=sys.stderr)
        return EXIT_USAGE
    config = EnclaveConfig(debug=args.debug_enclave)
    try:
        with EnclaveHost.start(Path(args.data_dir), config) as host:
            bundle = host.quote(nonce)
            identity, platform_id = host.identity, host.platform.platform_id
    except EnclaveError as e:
        print(f"escrow-server: {e}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as e:
        print(f"escrow-server: cannot use data directory {args.data_dir}: {e}", file=sys.stderr)
        return EXIT_FAILED
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fsutil.atomic_write(out / "quote.bin", bundle.quote)
        fsutil.atomic_write(out / "collateral.json", bundle.collateral_json.encode())
        fsutil.atomic_write(out / "root_ca.der", bundle.root_ca_der)
        fsutil.atomic_write(out / "keys.bin", bundle.key_bundle)
    except OSError as e:
        print(f"escrow-server: cannot write to {out}: {e}", file=sys.stderr)
        return EXIT_FAILED
    summary = {
        "out": str(out),
        "mrenclave": identity.mr_enclave.hex(),
        "mrsigner": identity.mr_signer.hex(),
        "debug": identity.debug,
        "platform_id": platform_id,
    }
    print(json.dumps(summary) if args.json else "\n".join(f"{k:12s} {v}" for k, v in summary.items()))
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    print("escrow-server: the gRPC service is not built yet (issue 4); only `quote` works", file=sys.stderr)
    return EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="escrow-server", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    q = sub.add_parser("quote", help="export a quote, its collateral, the root CA and the key bundle")
    q.add_argument("--data-dir", required=True, metavar="DIR", help="the server's data directory")
    q.add_argument("--nonce", required=True, metavar="HEX", help="the verifier's nonce (1 to 64 bytes, hex)")
    q.add_argument("--out", required=True, metavar="DIR", help="where to write the four files")
    q.add_argument("--debug-enclave", action="store_true", help="run the enclave in debug mode (DEBUG set)")
    q.add_argument("--json", action="store_true", help="print one JSON object")
    q.set_defaults(func=cmd_quote)
    s = sub.add_parser("serve", help="run the escrow service (not built yet)")
    s.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
