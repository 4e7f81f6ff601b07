"""`escrow-server`: run the escrow service on a data directory, or export a quote from it.

    escrow-server [serve] [--data-dir DIR] [--listen HOST:PORT] [--debug-enclave]
        [--issuer-key HEX]... [--issuer-key-file FILE] [--currency CODE] [--decimals N]
        [--grace-s N] [--max-deadline-s N] [--json]
    escrow-server quote --data-dir DIR --nonce HEX --out DIR [--debug-enclave] [--json]

``serve`` (also what ``escrow-server`` does without a subcommand) starts the enclave with the escrow
engine, creating the emulated platform and the chain on first start, serves escrow.v1 over gRPC with
health checking and reflection, prints where it listens and what it is, and runs until SIGTERM or
SIGINT. ``quote`` writes quote.bin, collateral.json, root_ca.der and keys.bin (the key bundle that
REPORTDATA commits to) for an offline ``escrow-attest verify-quote``. docs/escrow-server.md has the
details and the exit codes.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import json
import logging
import os
import signal
import socket
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from enclave import fsutil
from enclave.errors import EnclaveError, PlatformError, RollbackError, SealingError
from enclave.host import LOCK_FILE, EnclaveHost
from enclave.measurement import EnclaveConfig
from enclave.trusted.keybundle import check_nonce
from escrow.core.errors import CoreError
from escrow.host.admission import Limits
from escrow.host.grpc_server import create_server
from escrow.host.node import STORE_FILE, EscrowNode, GenesisConfig
from escrow.host.store import Store
from escrow.host.workers import MAX_WORKERS

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
PROG = "escrow-server"
DEFAULT_DATA_DIR = "./escrow-data"
DEFAULT_LISTEN = "127.0.0.1:50051"
STOP_GRACE_S = 3.0
ISSUER_KEY_BYTES = 32  # an Ed25519 public key
MAX_ISSUER_KEYS = 64
MAX_ISSUER_KEY_FILE_BYTES = 64 * 1024
GENESIS_DEFAULTS = GenesisConfig(issuer_keys=())
GENESIS_FLAGS = (
    "--issuer-key",
    "--issuer-key-file",
    "--currency",
    "--decimals",
    "--grace-s",
    "--max-deadline-s",
)


class CliError(Exception):
    """A one-line message for stderr and the exit code that goes with it."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


# --- quote ------------------------------------------------------------------------------------------


def cmd_quote(args: argparse.Namespace) -> int:
    try:
        nonce = check_nonce(bytes.fromhex(args.nonce))
    except ValueError as e:  # KeyBundleError is a ValueError
        print(f"{PROG}: --nonce must be 1 to 64 bytes of hex ({e})", file=sys.stderr)
        return EXIT_USAGE
    config = EnclaveConfig(debug=args.debug_enclave)
    try:
        with EnclaveHost.start(Path(args.data_dir), config) as host:
            bundle = host.quote(nonce)
            identity, platform_id = host.identity, host.platform.platform_id
    except EnclaveError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as e:
        print(f"{PROG}: cannot use data directory {args.data_dir}: {e}", file=sys.stderr)
        return EXIT_FAILED
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fsutil.atomic_write(out / "quote.bin", bundle.quote)
        fsutil.atomic_write(out / "collateral.json", bundle.collateral_json.encode())
        fsutil.atomic_write(out / "root_ca.der", bundle.root_ca_der)
        fsutil.atomic_write(out / "keys.bin", bundle.key_bundle)
    except OSError as e:
        print(f"{PROG}: cannot write to {out}: {e}", file=sys.stderr)
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


# --- serve: parsing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ListenAddress:
    """A parsed --listen: the host as given (IPv6 without brackets) and the port (0 = any free port)."""

    host: str
    port: int

    def with_port(self, port: int) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{port}"


def parse_listen(text: str) -> ListenAddress:
    """HOST:PORT or [IPV6]:PORT, port 0 to 65535; CliError (usage) otherwise."""
    usage = f"--listen {text!r} is not HOST:PORT (for example 127.0.0.1:50051, [::1]:50051, 0.0.0.0:0)"
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep or not host or ":" not in host:
            raise CliError(usage, EXIT_USAGE)
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not host or ":" in host:
            raise CliError(usage, EXIT_USAGE)
    if not port.isascii() or not port.isdigit() or len(port) > 5 or int(port) > 65535:
        raise CliError(usage, EXIT_USAGE)
    if any(c.isspace() or c in "/[]" for c in host):
        raise CliError(usage, EXIT_USAGE)
    return ListenAddress(host, int(port))


def _issuer_key(text: str, where: str) -> bytes:
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise CliError(f"{where}: an issuer key is hex, got {text[:80]!r}", EXIT_USAGE) from None
    if len(key) != ISSUER_KEY_BYTES:
        raise CliError(
            f"{where}: an issuer key is {ISSUER_KEY_BYTES} bytes ({2 * ISSUER_KEY_BYTES} hex digits), "
            f"got {len(key)} bytes",
            EXIT_USAGE,
        )
    return key


def issuer_keys_from(args: argparse.Namespace) -> tuple[bytes, ...]:
    """--issuer-key values, then the keys in --issuer-key-file (one hex key a line; blank lines and
    lines starting with # are skipped), without duplicates, in the order given."""
    keys = [_issuer_key(k, "--issuer-key") for k in args.issuer_key or []]
    if args.issuer_key_file:
        path = Path(args.issuer_key_file)
        try:
            with path.open("rb") as f:
                data = f.read(MAX_ISSUER_KEY_FILE_BYTES + 1)
        except OSError as e:
            raise CliError(f"cannot read --issuer-key-file {path}: {e.strerror}", EXIT_USAGE) from None
        if len(data) > MAX_ISSUER_KEY_FILE_BYTES:
            raise CliError(
                f"--issuer-key-file {path} is larger than {MAX_ISSUER_KEY_FILE_BYTES} bytes", EXIT_USAGE
            )
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            raise CliError(
                f"--issuer-key-file {path} is not ASCII text (one hex key a line)", EXIT_USAGE
            ) from None
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if line and not line.startswith("#"):
                keys.append(_issuer_key(line, f"{path}:{number}"))
    unique = tuple(dict.fromkeys(keys))
    if len(unique) > MAX_ISSUER_KEYS:
        raise CliError(f"at most {MAX_ISSUER_KEYS} issuer keys", EXIT_USAGE)
    return unique


def genesis_from(args: argparse.Namespace) -> GenesisConfig | None:
    """The GenesisConfig the flags describe, or None when no issuer key was given."""
    keys = issuer_keys_from(args)
    if args.grace_s is not None and not 0 <= args.grace_s <= 86400:
        raise CliError("--grace-s is a whole number of seconds from 0 to 86400", EXIT_USAGE)
    if args.max_deadline_s is not None and args.max_deadline_s <= 0:
        raise CliError("--max-deadline-s is a whole number of seconds > 0", EXIT_USAGE)
    if args.decimals is not None and not 0 <= args.decimals <= 18:
        raise CliError("--decimals is 0 to 18", EXIT_USAGE)
    if not keys:
        return None
    d = GENESIS_DEFAULTS
    return GenesisConfig(
        issuer_keys=keys,
        currency=d.currency if args.currency is None else args.currency,
        decimals=d.decimals if args.decimals is None else args.decimals,
        grace_ms=d.grace_ms if args.grace_s is None else args.grace_s * 1000,
        max_deadline_ms=d.max_deadline_ms if args.max_deadline_s is None else args.max_deadline_s * 1000,
    )


def _genesis_flags_given(args: argparse.Namespace) -> list[str]:
    given = {
        "--issuer-key": bool(args.issuer_key),
        "--issuer-key-file": args.issuer_key_file is not None,
        "--currency": args.currency is not None,
        "--decimals": args.decimals is not None,
        "--grace-s": args.grace_s is not None,
        "--max-deadline-s": args.max_deadline_s is not None,
    }
    return [flag for flag in GENESIS_FLAGS if given[flag]]


def check_listen(listen: ListenAddress, text: str) -> None:
    """CliError unless ``listen`` resolves and some address of it is free: a probe before gRPC binds, so
    that the usual mistakes get a one-line message (gRPC's own failure to bind is still reported)."""
    try:
        infos = socket.getaddrinfo(listen.host, listen.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError):
        raise CliError(f"cannot listen on {text}: the host {listen.host!r} does not resolve") from None
    if listen.port == 0:
        return
    failures: list[OSError] = []
    for family, kind, proto, _, address in infos:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds
                probe.bind(address)
        except OSError as e:
            failures.append(e)
    if infos and len(failures) == len(infos):
        if any(e.errno == errno.EADDRINUSE for e in failures):
            raise CliError(_in_use_message(text))
        raise CliError(f"cannot listen on {text}: {failures[0].strerror}; pass another --listen")


# --- serve: the data directory ----------------------------------------------------------------------


def data_dir_in_use(data_dir: Path) -> bool:
    """Whether another process holds the data directory's lock (enclave.host takes it for as long as an
    enclave runs there). Only a probe: the lock is released again at once."""
    try:
        fd = os.open(data_dir / LOCK_FILE, os.O_RDWR)
    except FileNotFoundError:
        return False
    except OSError:
        return False  # starting will say what is wrong with the directory
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases a lock we took
    return False


def chain_exists(data_dir: Path) -> bool:
    """Whether the data directory's store already holds GENESIS."""
    path = data_dir / STORE_FILE
    if not path.exists():
        return False
    store = Store.open(path)
    try:
        return store.head() is not None
    finally:
        store.close()


def _locked_message(data_dir: Path) -> str:
    return (
        f"data directory {data_dir} is locked by another escrow-server (or escrow-server quote); "
        "stop that process first, or pass another --data-dir"
    )


def start_node(args: argparse.Namespace, data_dir: Path) -> EscrowNode:
    """Start the node on ``data_dir``; every refusal becomes a CliError that says what to do."""
    genesis = genesis_from(args)
    if data_dir_in_use(data_dir):
        raise CliError(_locked_message(data_dir))
    try:
        existing = chain_exists(data_dir)
    except CoreError as e:
        raise CliError(f"cannot open the store in {data_dir}: {e.reason}: {e.detail}") from None
    if existing:
        ignored = _genesis_flags_given(args)
        if ignored:
            print(
                f"{PROG}: the chain in {data_dir} exists; {', '.join(ignored)} apply only to a new chain "
                "and are ignored",
                file=sys.stderr,
            )
        genesis = None
    elif genesis is None:
        raise CliError(
            f"{data_dir} holds no chain yet: a new chain needs at least one issuer public key "
            "(--issuer-key HEX or --issuer-key-file FILE)"
        )
    config = EnclaveConfig(debug=args.debug_enclave)
    if not 0 <= args.proof_workers <= MAX_WORKERS:
        raise CliError(f"--proof-workers is 0 to {MAX_WORKERS}", EXIT_USAGE)
    try:
        return EscrowNode.start(data_dir, genesis, config=config, proof_workers=args.proof_workers)
    except RollbackError as e:
        raise CliError(
            f"rollback detected, refusing to start: {e}. Restore the newest copy of {data_dir} (the "
            "monotonic counter in $ESCROW_NV_DIR is never reset)"
        ) from None
    except PlatformError as e:
        if data_dir_in_use(data_dir):
            raise CliError(_locked_message(data_dir)) from None
        raise CliError(f"the emulated platform in {data_dir} cannot be used: {e}") from None
    except SealingError as e:
        raise CliError(
            f"the sealed state in {data_dir} does not open for this enclave: {e}; start it as it was created "
            "(with or without --debug-enclave) from a build at least as new"
        ) from None
    except EnclaveError as e:
        raise CliError(f"the enclave refused to start on {data_dir}: {type(e).__name__}: {e}") from None
    except CoreError as e:
        if e.reason == "GENESIS_CONFIG_MISSING":
            raise CliError(
                f"{data_dir} holds no chain yet: a new chain needs at least one issuer public key "
                "(--issuer-key HEX or --issuer-key-file FILE)"
            ) from None
        raise CliError(f"the escrow refused to start on {data_dir}: {e.reason}: {e.detail}") from None
    except OSError as e:
        raise CliError(f"cannot use data directory {data_dir}: {e}") from None


# --- serve ------------------------------------------------------------------------------------------


def server_limits(args: argparse.Namespace) -> Limits:
    """The transport limits from the --peer-* and --stream-idle-s flags (exit 2 if out of range)."""
    for flag, value, low, high in (
        ("--peer-rate", args.peer_rate, 1, 1_000_000),
        ("--peer-burst", args.peer_burst, 1, 1_000_000),
        ("--peer-calls", args.peer_calls, 1, Limits.rpc_threads),
        ("--peer-streams", args.peer_streams, 1, Limits.stream_slots),
        ("--stream-idle-s", args.stream_idle_s, 1, 86_400),
    ):
        if not low <= value <= high:
            raise CliError(f"{flag} is {low} to {high:,}", EXIT_USAGE)
    return Limits(
        peer_rate=args.peer_rate,
        peer_burst=args.peer_burst,
        peer_calls=args.peer_calls,
        peer_streams=args.peer_streams,
        stream_idle_s=args.stream_idle_s,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        return _serve(args)
    except CliError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return e.code


def _serve(args: argparse.Namespace) -> int:
    listen = parse_listen(args.listen)
    data_dir = Path(args.data_dir)
    check_listen(listen, args.listen)
    limits = server_limits(args)
    logging.basicConfig(level=logging.WARNING, format=f"{PROG}: %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    received: list[str] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        node = start_node(args, data_dir)
        try:
            try:
                server, port = create_server(node, listen.with_port(listen.port), limits)
            except (RuntimeError, OSError):
                raise CliError(_in_use_message(args.listen, maybe=True)) from None
            try:
                _announce(args, node, listen.with_port(port))
                code = _run(node, stop)
            finally:
                server.stop(grace=STOP_GRACE_S).wait()
        finally:
            node.close()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if code == EXIT_OK and received:
        print(f"{PROG}: stopped ({received[0]})", file=sys.stderr)
    return code


def _in_use_message(listen: str, *, maybe: bool = False) -> str:
    why = "the address is in use or not available here" if maybe else "the address is in use"
    return f"cannot listen on {listen}: {why}; stop what uses it, or pass another --listen (port 0: any port)"


def _announce(args: argparse.Namespace, node: EscrowNode, address: str) -> None:
    assert node.host is not None
    identity = node.host.identity
    if identity.debug:
        print(
            f"{PROG}: WARNING: debug enclave: the host can read its memory; verifiers refuse it unless "
            "told --allow-debug-insecure",
            file=sys.stderr,
        )
    if args.json:
        summary = {
            "address": address,
            "mrenclave": identity.mr_enclave.hex(),
            "mrsigner": identity.mr_signer.hex(),
            "chain_id": node.chain_id.hex(),
            "debug": identity.debug,
        }
        print(json.dumps(summary), flush=True)
    else:
        print(f"listening on {address}\nmrenclave {identity.mr_enclave.hex()}\nchain {node.chain_id.hex()}")
        sys.stdout.flush()


def _run(node: EscrowNode, stop: threading.Event) -> int:
    """Serve until a signal sets ``stop`` (exit 0) or the node halts (exit 1: a restart replays the store)."""
    while not stop.wait(0.25):
        if node.halted is not None:
            print(
                f"{PROG}: the escrow halted ({node.halted}); restart escrow-server: it replays the store "
                "exactly as after a crash",
                file=sys.stderr,
            )
            return EXIT_FAILED
    return EXIT_OK


# --- the command line -------------------------------------------------------------------------------


def add_serve_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        default=DEFAULT_DATA_DIR,
        metavar="DIR",
        help=f"the data directory: store, sealed state, emulated platform (default {DEFAULT_DATA_DIR})",
    )
    p.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"where to serve gRPC (default {DEFAULT_LISTEN}; port 0 picks a free port, printed once bound)",
    )
    p.add_argument(
        "--debug-enclave", action="store_true", help="INSECURE: run the enclave in debug mode (DEBUG set)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object once listening")
    g = p.add_argument_group(
        "new chain",
        "Used only on the first start, when the data directory holds no chain yet; on a later start the "
        "chain's own values apply and these flags are ignored (with a note on stderr).",
    )
    g.add_argument(
        "--issuer-key",
        action="append",
        metavar="HEX",
        help="an issuer's Ed25519 public key, 64 hex digits (repeatable; a new chain needs at least one)",
    )
    g.add_argument(
        "--issuer-key-file",
        metavar="FILE",
        help="issuer public keys, one hex key a line (blank lines and # comments skipped)",
    )
    g.add_argument("--currency", metavar="CODE", help="the chain's currency (default EUR)")
    g.add_argument("--decimals", metavar="N", type=int, help="minor-unit digits of the currency (default 2)")
    g.add_argument(
        "--grace-s",
        metavar="N",
        type=int,
        help="whole seconds a closing session (after a STOP or its deadline) waits for the meter's end "
        "reading before it settles (default 120, at most 86400)",
    )
    g.add_argument(
        "--max-deadline-s",
        metavar="N",
        type=int,
        help="the longest session deadline an OPEN may ask for, in whole seconds (default 86400)",
    )
    p.add_argument(
        "--peer-rate",
        metavar="N",
        type=int,
        default=int(Limits.peer_rate),
        help=f"requests per second one peer host may make, every message of a stream counted (default "
        f"{int(Limits.peer_rate)}; beyond it RATE_LIMITED)",
    )
    p.add_argument(
        "--peer-burst",
        metavar="N",
        type=int,
        default=Limits.peer_burst,
        help=f"requests a peer host may make at once before --peer-rate applies "
        f"(default {Limits.peer_burst})",
    )
    p.add_argument(
        "--peer-calls",
        metavar="N",
        type=int,
        default=Limits.peer_calls,
        help=f"calls one peer host may have in flight (default {Limits.peer_calls}; beyond it CALLS_LIMIT)",
    )
    p.add_argument(
        "--peer-streams",
        metavar="N",
        type=int,
        default=Limits.peer_streams,
        help=f"streaming calls one peer host may have open (default {Limits.peer_streams}; beyond it "
        "STREAMS_LIMIT)",
    )
    p.add_argument(
        "--stream-idle-s",
        metavar="N",
        type=int,
        default=int(Limits.stream_idle_s),
        help=f"whole seconds a streaming call may stay silent before the server cancels it (default "
        f"{int(Limits.stream_idle_s)})",
    )
    p.add_argument(
        "--proof-workers",
        metavar="N",
        type=int,
        default=0,
        help="worker processes for proof verification and settlement proofs (default 0: in the server's "
        "own process; one per spare core spreads the work)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run the escrow service (`serve`, the default) or export a quote (`quote`).",
        epilog="Without a subcommand, escrow-server serves: `escrow-server --data-dir DIR` is "
        "`escrow-server serve --data-dir DIR`. Exit codes: 0 stopped by SIGTERM/SIGINT or done; "
        "1 could not start or failed; 2 bad usage.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser(
        "serve",
        help="run the escrow service (the default)",
        description="Serve escrow.v1 over gRPC until SIGTERM or SIGINT. Prints `listening on HOST:PORT`, "
        "`mrenclave HEX` and `chain HEX` once listening (--json: one object).",
    )
    add_serve_flags(s)
    s.set_defaults(func=cmd_serve)
    q = sub.add_parser("quote", help="export a quote, its collateral, the root CA and the key bundle")
    q.add_argument("--data-dir", required=True, metavar="DIR", help="the server's data directory")
    q.add_argument("--nonce", required=True, metavar="HEX", help="the verifier's nonce (1 to 64 bytes, hex)")
    q.add_argument("--out", required=True, metavar="DIR", help="where to write the four files")
    q.add_argument("--debug-enclave", action="store_true", help="run the enclave in debug mode (DEBUG set)")
    q.add_argument("--json", action="store_true", help="print one JSON object")
    q.set_defaults(func=cmd_quote)
    return parser


def _with_default_command(argv: list[str]) -> list[str]:
    """`escrow-server [flags]` means `escrow-server serve [flags]`."""
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        return ["serve", *argv]
    return argv


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point."""
    args = build_parser().parse_args(_with_default_command(sys.argv[1:] if argv is None else argv))
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
