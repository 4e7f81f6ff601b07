"""`escrow-vehicle`: the driver's wallet, the poles, and charging with a deposit held by the escrow.

    escrow-vehicle --wallet FILE create
    escrow-vehicle --wallet FILE restore --seed HEX|- [--target HOST:PORT]
    escrow-vehicle --wallet FILE address
    escrow-vehicle --wallet FILE balance --target HOST:PORT
    escrow-vehicle poles --target HOST:PORT
    escrow-vehicle --wallet FILE charge --target HOST:PORT --pole ID --deposit AMOUNT
        [--deadline-minutes N] [--poll-s S] [--no-follow] [--records-out FILE]
    escrow-vehicle --wallet FILE status --target HOST:PORT --session ID [--follow] [--records-out FILE]
    escrow-vehicle --wallet FILE stop --target HOST:PORT --session ID
    escrow-vehicle --wallet FILE sessions

Every command that talks to the escrow attests it first (clients.cli: --root-ca, --expect-mrenclave, ...).
Options may come before or after the command. docs/escrow-vehicle.md has the outputs, the exit codes
(clients.cli: 0 done, 1 refused, 2 bad usage, 3 unavailable) and the wallet file.

The wallet file (clients.cli.create_wallet_file: encrypted, owner-only, written atomically) holds the seed
and, under "sessions", one entry per session this wallet opened, keyed by the session id in hex:

    {"session_key_seed": hex, "pole_id": str, "evse_id": str, "deposit": minor units,
     "tariff_hash": hex, "opened_at": unix s, "deadline_ms": unix ms, "stop_sequence": 0,
     "chain_id": hex, "target": "HOST:PORT", "currency": "EUR", "decimals": 2}

The one-time session key signs STOP and GET, so the entry is written before OPEN is sent: a session that
opened is never one this wallet cannot stop. A STOP's sequence is the current time in milliseconds (at
least the saved one plus one), so STOPs from two terminals never need a write to stay increasing.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import grpc

from clients import cli
from clients.cli import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, Chain, CliError
from clients.connection import EscrowError, call
from clients.secretfile import PassphraseError, SecretFileError
from clients.wallet import Session, VerifiedReceipt, Wallet, WalletError
from escrow.core.errors import CoreError
from escrow.core.ocmf import parse_record, verify_record
from escrow.core.readings import meter_handle
from escrow.core.registry import PoleBody
from escrow.core.session import Progress
from escrow.core.tariff import Tariff, verify_tariff
from escrow.v1 import charging_pb2, registry_pb2

TOOL = "escrow-vehicle"
WALLET_ENV = "ESCROW_WALLET"
SEED_BYTES = 32
SESSION_ID_BYTES = 16
POLES_PAGE = 256
MAX_DEADLINE_MINUTES = 7 * 24 * 60  # the enclave's own bound; the server's --max-deadline-s may be lower
SETTLED = charging_pb2.SESSION_STATE_SETTLED
STATE_NAMES = {
    charging_pb2.SESSION_STATE_OPENED: "OPENED",
    charging_pb2.SESSION_STATE_ATTACHED: "ATTACHED",
    charging_pb2.SESSION_STATE_CHARGING: "CHARGING",
    charging_pb2.SESSION_STATE_CLOSING: "CLOSING",
    charging_pb2.SESSION_STATE_SETTLED: "SETTLED",
}
SEED_WARNING = (
    "Write the seed down now and keep it offline. It is shown only this once; it alone restores every "
    "note of this wallet (escrow-vehicle restore --seed ...), and anyone who has it can spend them."
)


# --- the command line -----------------------------------------------------------------------------------


def _add_common(parser: argparse.ArgumentParser, *, server: bool, suppress: bool) -> None:
    """--wallet, --json and (``server``) the target and attestation options (cli.add_shared_options)."""
    cli.add_shared_options(
        parser,
        {"wallet": f"the encrypted wallet file (default ${WALLET_ENV})"},
        target=server,
        suppress=suppress,
        defaults={"wallet": os.environ.get(WALLET_ENV)},
    )


def _add_follow_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--poll-s", metavar="S", type=float, default=0.5, help="ask the escrow every S seconds (default 0.5)"
    )
    parser.add_argument(
        "--progress-s",
        metavar="S",
        type=float,
        default=2.0,
        help="print a progress line at most every S seconds, and at every change of state (default 2)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=TOOL,
        description="The driver's wallet and charging sessions at an attested escrow.",
        epilog=(
            "exit codes: 0 done; 1 refused (by the escrow, an attestation check, or a local check such as "
            "funds or the passphrase); 2 bad usage; 3 the server cannot be reached. The wallet passphrase "
            f"comes from ${cli.PASSPHRASE_ENV} or a prompt. See docs/escrow-vehicle.md."
        ),
    )
    _add_common(parser, server=True, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("create", help="create a new wallet (prints its seed once)")
    _add_common(p, server=False, suppress=True)

    p = sub.add_parser("restore", help="write a wallet from its seed; with --target, find its notes")
    p.add_argument(
        "--seed", required=True, metavar="HEX", help="the 64-hex-digit seed, or - to read it from stdin"
    )
    _add_common(p, server=True, suppress=True)

    p = sub.add_parser("address", help="print the wallet's address (esc1...), where notes are paid")
    _add_common(p, server=False, suppress=True)

    p = sub.add_parser("balance", help="scan the ledger and print the wallet's balance")
    _add_common(p, server=True, suppress=True)

    p = sub.add_parser("poles", help="list the registered poles and their current tariffs")
    _add_common(p, server=True, suppress=True)

    p = sub.add_parser("charge", help="open a session at a pole with a deposit and follow it to settlement")
    p.add_argument("--pole", required=True, metavar="ID", help="the pole id (see the poles command)")
    p.add_argument(
        "--deposit", required=True, metavar="AMOUNT", help="the deposit in major units, e.g. 12.34"
    )
    p.add_argument(
        "--deadline-minutes",
        metavar="N",
        type=int,
        default=60,
        help="the session settles at the latest this long after opening (default 60)",
    )
    _add_follow_options(p)
    p.add_argument(
        "--no-follow", action="store_true", help="print the session id and exit once the session is open"
    )
    p.add_argument("--records-out", metavar="FILE", help="write the receipt's OCMF records here, one a line")
    _add_common(p, server=True, suppress=True)

    p = sub.add_parser("status", help="one look at a saved session: its progress, or its settlement")
    p.add_argument("--session", required=True, metavar="ID", help="the session id (hex, or a unique prefix)")
    p.add_argument("--follow", action="store_true", help="keep following it to the settlement")
    _add_follow_options(p)
    p.add_argument("--records-out", metavar="FILE", help="write the receipt's OCMF records here, one a line")
    _add_common(p, server=True, suppress=True)

    p = sub.add_parser("stop", help="send a signed STOP for a saved session")
    p.add_argument("--session", required=True, metavar="ID", help="the session id (hex, or a unique prefix)")
    p.add_argument("--records-out", metavar="FILE", help="if it settles at once, write its OCMF records here")
    _add_common(p, server=True, suppress=True)

    p = sub.add_parser("sessions", help="list the sessions saved in the wallet file (no server needed)")
    _add_common(p, server=False, suppress=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return cli.run(TOOL, lambda: COMMANDS[args.command](args))


# --- small helpers --------------------------------------------------------------------------------------


def _wallet_path(args: argparse.Namespace) -> str:
    if not args.wallet:
        cli.usage_error(f"{args.command} needs --wallet FILE (or ${WALLET_ENV})")
    return str(args.wallet)


def _need_target(args: argparse.Namespace) -> None:
    target = args.target
    if not target:
        cli.usage_error(f"{args.command} needs --target HOST:PORT (the escrow server's address)")
    host, _, port = str(target).rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        cli.usage_error(f"--target is HOST:PORT, e.g. 127.0.0.1:50051, not {target!r}")


def _stamp(path: str) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_ino, st.st_mtime_ns, st.st_size


@dataclass
class WalletFile:
    """The wallet file as read, and how it looked on disk then (to notice another process's write)."""

    path: str
    data: dict[str, Any]
    seen: tuple[int, int, int]

    @classmethod
    def read(cls, path: str) -> WalletFile:
        seen = _stamp(path) if os.path.exists(path) else (0, 0, 0)  # before the read: a change re-reads
        with _secret_file_errors(path):
            return cls(path, cli.read_wallet_file(path), seen)

    @property
    def sessions(self) -> dict[str, Any]:
        sessions: dict[str, Any] = self.data["sessions"]
        return sessions

    def save_session(self, sid_hex: str, entry: dict[str, Any] | None) -> None:
        """Add (or with None remove) one session entry and rewrite the file atomically. If another
        process rewrote the file since it was read (another terminal's charge), its entries are kept."""
        if _stamp(self.path) != self.seen:
            fresh = WalletFile.read(self.path)
            if fresh.data["seed"] != self.data["seed"]:
                raise CliError(
                    "WALLET_REPLACED",
                    f"{self.path} holds another wallet than the one this command read",
                    "run the command again",
                )
            self.data, self.seen = fresh.data, fresh.seen
        if entry is None:
            self.sessions.pop(sid_hex, None)
        else:
            self.sessions[sid_hex] = entry
        with _secret_file_errors(self.path):
            cli.update_wallet_file(self.path, self.data)
        self.seen = _stamp(self.path)


@contextmanager
def _secret_file_errors(path: str) -> Iterator[None]:
    """A wallet file that cannot be read or written, as one clear error with what to do next."""
    try:
        yield
    except PassphraseError:
        raise
    except SecretFileError as e:
        hints = {
            "SECRET_FILE_PASSPHRASE": f"check ${cli.PASSPHRASE_ENV} or what you typed; the file is unchanged",
            "SECRET_FILE_KIND": "--wallet names another kind of key file",
        }
        code = EXIT_USAGE if e.reason == "SECRET_FILE_EXISTS" else EXIT_REFUSED
        detail = (
            "wrong passphrase, or the file was modified" if e.reason == "SECRET_FILE_PASSPHRASE" else e.detail
        )
        raise CliError(e.reason, f"{path}: {detail}", hints.get(e.reason, ""), code) from None


def _load(args: argparse.Namespace) -> tuple[WalletFile, Wallet]:
    wallet_file = WalletFile.read(_wallet_path(args))
    return wallet_file, Wallet(bytes.fromhex(wallet_file.data["seed"]))


def _scan(wallet: Wallet, chain: Chain) -> None:
    try:
        wallet.scan(chain.connection, chain.attested)
    except WalletError as e:
        raise CliError(
            "LEDGER_MISMATCH", str(e), "the server is not serving the attested chain; do not use it"
        ) from None


def _attested_line(args: argparse.Namespace, chain: Chain) -> None:
    identity = chain.attested.report.identity
    mr = identity.mr_enclave[:16] if identity is not None else "?"
    cli.say(args, f"attested {args.target}: MRENCLAVE {mr}..., chain {chain.attested.chain_id.hex()[:16]}...")


def _parse_seed(text: str) -> bytes:
    if text == "-":
        text = sys.stdin.readline()
    text = text.strip()
    try:
        seed = bytes.fromhex(text)
    except ValueError:
        seed = b""
    if len(seed) != SEED_BYTES:
        cli.usage_error(f"--seed is {2 * SEED_BYTES} hex digits (the seed create printed)")
    return seed


def _refuse_existing(path: str) -> None:
    if os.path.lexists(path):
        raise CliError(
            "WALLET_EXISTS",
            f"{path} exists already; refusing to overwrite a wallet",
            "choose another --wallet FILE (to recover a lost file, restore into a new file)",
            EXIT_USAGE,
        )


def _utc(unix_s: int) -> str:
    try:
        return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%d %H:%M UTC")
    except (OverflowError, OSError, ValueError):
        return "never"


def _major(chain: Chain, minor: int) -> str:
    """Major units without the currency, exact (for JSON)."""
    return cli.format_amount(minor, chain.decimals)


def _price_major(numerator: int, decimals: int) -> str:
    """A tariff numerator as a price per kWh in major units without the unit (for JSON), exact."""
    return cli.format_price(numerator, decimals, "CUR").removesuffix(" CUR/kWh")


@dataclass
class Listed:
    """A registered pole and its current tariff, as ListPoles shows them."""

    body: PoleBody
    tariff: Tariff | None
    tariff_body: bytes
    status: str  # "valid", "no tariff", "not yet valid", "expired", "bad tariff"
    height: int


def _list_poles(chain: Chain) -> list[Listed]:
    """Every registered pole (all pages), with its tariff checked under the operator's key."""
    found: list[Listed] = []
    token = ""
    now = int(time.time())
    while True:
        page = call(
            chain.connection.registry.ListPoles,
            registry_pb2.ListPolesRequest(page_size=POLES_PAGE, page_token=token),
            chain.connection.timeout_s,
        )
        for pole in page.poles:
            try:
                body = PoleBody.from_bytes(pole.pole_body)
            except CoreError:
                continue  # a listing we cannot read is not a pole we could charge at
            found.append(_with_tariff(chain, body, pole, now))
        token = page.next_page_token
        if not token or not page.poles:
            return found


def _with_tariff(chain: Chain, body: PoleBody, pole: registry_pb2.Pole, now: int) -> Listed:
    if not pole.tariff_body:
        return Listed(body, None, b"", "no tariff", pole.entry.height)
    try:
        tariff = Tariff.from_bytes(pole.tariff_body)
    except CoreError:
        return Listed(body, None, pole.tariff_body, "bad tariff", pole.entry.height)
    try:
        verify_tariff(
            pole.tariff_body, pole.tariff_signature, chain.attested.chain_id, body.operator_key, now
        )
        status = "valid"
    except CoreError as e:
        status = {"TARIFF_NOT_YET_VALID": "not yet valid", "TARIFF_EXPIRED": "expired"}.get(
            e.reason, "bad tariff"
        )
    if status == "valid" and (tariff.pole_id, tariff.evse_id) != (body.pole_id, body.evse_id):
        status = "bad tariff"
    if status == "valid" and tariff.currency != chain.currency:
        status = f"priced in {tariff.currency}, not {chain.currency}"
    return Listed(body, tariff, pole.tariff_body, status, pole.entry.height)


# --- wallet commands ------------------------------------------------------------------------------------


def cmd_create(args: argparse.Namespace) -> int:
    path = _wallet_path(args)
    _refuse_existing(path)
    seed = os.urandom(SEED_BYTES)
    with _secret_file_errors(path):
        cli.create_wallet_file(path, seed)
    address = Wallet(seed).address.to_text()
    human = "\n".join(
        [
            f"wallet   {path} (encrypted, readable by you only)",
            f"address  {address}",
            f"seed     {seed.hex()}",
            "",
            SEED_WARNING,
        ]
    )
    cli.emit(args, {"wallet": path, "address": address, "seed": seed.hex(), "warning": SEED_WARNING}, human)
    return EXIT_OK


def cmd_restore(args: argparse.Namespace) -> int:
    path = _wallet_path(args)
    seed = _parse_seed(args.seed)
    if args.target:
        _need_target(args)
    _refuse_existing(path)
    with _secret_file_errors(path):
        cli.create_wallet_file(path, seed)
    wallet = Wallet(seed)
    result: dict[str, Any] = {"wallet": path, "address": wallet.address.to_text()}
    cli.say(args, f"wallet   {path} written from the seed")
    lines = [f"address  {result['address']}"]
    if args.target:
        cli.say(args, f"scanning the ledger at {args.target} for this wallet's notes...")
        with cli.attested_chain(args) as chain:
            _scan(wallet, chain)
            notes = wallet.unspent()
            result.update(_balance_fields(chain, wallet))
            result["found"] = [
                {"height": n.height, "note_id": n.note_id.hex(), "value_minor": n.value} for n in notes
            ]
            lines += [f"note     {chain.amount(n.value)} at height {n.height}" for n in notes]
            lines.append(
                f"balance  {chain.amount(wallet.balance())} in {len(notes)} note(s) "
                f"(ledger height {wallet.scanned_height})"
            )
    else:
        lines.append("run balance --target HOST:PORT to find its notes on the ledger")
    lines.append(
        "sessions opened from the old wallet file cannot be stopped from this one: they settle at their "
        "deadline and refund to this address"
    )
    cli.emit(args, result, "\n".join(lines))
    return EXIT_OK


def cmd_address(args: argparse.Namespace) -> int:
    _, wallet = _load(args)
    address = wallet.address.to_text()
    cli.emit(args, {"address": address}, address)
    return EXIT_OK


def _balance_fields(chain: Chain, wallet: Wallet) -> dict[str, Any]:
    balance = wallet.balance()
    return {
        "balance_minor": balance,
        "balance": _major(chain, balance),
        "notes": len(wallet.unspent()),
        "currency": chain.currency,
        "decimals": chain.decimals,
        "height": wallet.scanned_height,
    }


def cmd_balance(args: argparse.Namespace) -> int:
    _need_target(args)
    _, wallet = _load(args)
    with cli.attested_chain(args) as chain:
        _scan(wallet, chain)
        result = _balance_fields(chain, wallet)
        result["address"] = wallet.address.to_text()
        human = (
            f"balance  {chain.amount(result['balance_minor'])} in {result['notes']} note(s) "
            f"(ledger height {result['height']})"
        )
        cli.emit(args, result, human)
    return EXIT_OK


def cmd_sessions(args: argparse.Namespace) -> int:
    wallet_file, _ = _load(args)
    sessions = wallet_file.sessions
    rows = []
    listed = []
    for sid, entry in sorted(sessions.items(), key=lambda kv: kv[1].get("opened_at", 0)):
        deposit = int(entry.get("deposit", 0))
        decimals, currency = entry.get("decimals"), entry.get("currency", "")
        shown = (
            f"{deposit} minor units" if decimals is None else cli.format_amount(deposit, decimals, currency)
        )
        listed.append(
            {
                "session_id": sid,
                "meter_handle": meter_handle(bytes.fromhex(sid)),
                "pole_id": entry.get("pole_id"),
                "deposit_minor": deposit,
                "currency": currency,
                "opened_at": entry.get("opened_at"),
                "deadline_ms": entry.get("deadline_ms"),
                "target": entry.get("target"),
            }
        )
        rows.append(
            f"{sid}  pole {entry.get('pole_id')}  deposit {shown}  "
            f"opened {_utc(int(entry.get('opened_at', 0)))}  at {entry.get('target')}"
        )
    human = "\n".join(rows) if rows else "no sessions saved in this wallet"
    cli.emit(args, {"sessions": listed}, human)
    return EXIT_OK


# --- poles ----------------------------------------------------------------------------------------------


def cmd_poles(args: argparse.Namespace) -> int:
    _need_target(args)
    with cli.attested_chain(args) as chain:
        poles = _list_poles(chain)
        out: list[dict[str, Any]] = []
        rows = [f"{'POLE':<24} {'EVSE':<24} {'PRICE':<18} {'SESSION FEE':<14} TARIFF"]
        for p in poles:
            entry: dict[str, Any] = {
                "pole_id": p.body.pole_id,
                "evse_id": p.body.evse_id,
                "status": p.status,
                "valid": p.status == "valid",
                "registered_height": p.height,
            }
            price = fee = "-"
            validity = p.status
            if p.tariff is not None:
                t = p.tariff
                price = cli.format_price(t.price_numerator, chain.decimals, t.currency)
                fee = cli.format_amount(t.session_fee_minor, chain.decimals, t.currency)
                entry.update(
                    {
                        "currency": t.currency,
                        "price_numerator": t.price_numerator,
                        "price_per_kwh": _price_major(t.price_numerator, chain.decimals),
                        "session_fee_minor": t.session_fee_minor,
                        "session_fee": _major(chain, t.session_fee_minor),
                        "not_before": t.not_before,
                        "not_after": t.not_after,
                        "tariff_sequence": t.sequence,
                    }
                )
                if p.status == "valid":
                    validity = f"valid until {_utc(t.not_after)}"
                elif p.status == "not yet valid":
                    validity = f"valid from {_utc(t.not_before)}"
                elif p.status == "expired":
                    validity = f"expired {_utc(t.not_after)}"
            out.append(entry)
            rows.append(f"{p.body.pole_id:<24} {p.body.evse_id:<24} {price:<18} {fee:<14} {validity}")
        if not poles:
            rows = ["no poles are registered at this escrow"]
        result = {"poles": out, "currency": chain.currency, "decimals": chain.decimals}
        cli.emit(args, result, "\n".join(rows))
    return EXIT_OK


# --- sessions: charge, follow, status, stop --------------------------------------------------------------


class _StopOnInterrupt:
    """While installed, the first Ctrl-C (SIGINT) asks for a STOP; the second one interrupts for real.
    The handler only sets a flag, so a call in flight is never torn in half."""

    def __init__(self) -> None:
        self.requested = 0
        self.sent = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested += 1
        if self.requested > 1:
            raise KeyboardInterrupt

    @contextmanager
    def installed(self) -> Iterator[_StopOnInterrupt]:
        try:
            previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread (an in-process caller): Ctrl-C keeps its default
            yield self
            return
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)

    @property
    def pending(self) -> bool:
        return self.requested > 0 and not self.sent

    def sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.pending and (left := end - time.monotonic()) > 0:
            time.sleep(min(left, 0.05))


def _session_from(sid: bytes, entry: dict[str, Any]) -> Session:
    try:
        return Session(
            session_id=sid,
            session_key_seed=bytes.fromhex(entry["session_key_seed"]),
            pole_id=str(entry["pole_id"]),
            deposit=int(entry["deposit"]),
            tariff_hash=bytes.fromhex(entry["tariff_hash"]),
            stop_sequence=int(entry.get("stop_sequence", 0)),
        )
    except (KeyError, TypeError, ValueError):
        raise CliError(
            "SECRET_FILE_MALFORMED", f"the wallet's entry for session {sid.hex()} is damaged"
        ) from None


def _find_session(wallet_file: WalletFile, text: str) -> tuple[bytes, dict[str, Any]]:
    """A saved session by its hex id or a unique prefix of at least 6 hex digits."""
    wanted = text.strip().lower()
    sessions = wallet_file.sessions
    if wanted in sessions:
        return bytes.fromhex(wanted), sessions[wanted]
    matches = [sid for sid in sessions if len(wanted) >= 6 and sid.startswith(wanted)]
    if len(matches) == 1:
        return bytes.fromhex(matches[0]), sessions[matches[0]]
    if len(matches) > 1:
        cli.usage_error(f"--session {text} matches {len(matches)} saved sessions; give more digits")
    raise CliError(
        "SESSION_NOT_IN_WALLET",
        f"no session {text} is saved in this wallet file",
        "check --wallet and the id (escrow-vehicle sessions lists the saved ones)",
        EXIT_USAGE,
    )


def _send_stop(chain: Chain, wallet: Wallet, session: Session, last_pg: str) -> Any:
    """A signed STOP; its sequence is the time in ms, so STOPs from other terminals stay increasing."""
    session.stop_sequence = max(session.stop_sequence, int(time.time() * 1000))
    request = wallet.stop_request(chain.attested, session, last_pg)
    return call(chain.connection.charging.Stop, request, chain.connection.timeout_s)


def _progress_line(chain: Chain, progress: Progress, started: float) -> str:
    elapsed = int(time.monotonic() - started)
    if progress.state in ("OPENED",):
        what = "waiting for the pole to attach"
    elif progress.state == "ATTACHED":
        what = "attached; waiting for the meter's begin reading"
    else:
        what = (
            f"{progress.energy_kwh} kWh  cost {chain.amount(progress.bill_minor)}  "
            f"cover left {chain.amount(progress.remaining_minor)}"
        )
    return f"[{elapsed:>5}s] {progress.state:<9} {what}"


def _follow(
    args: argparse.Namespace,
    chain: Chain,
    wallet: Wallet,
    session: Session,
    interrupt: _StopOnInterrupt,
    first: Any = None,
) -> bytes:
    """Poll GetSession, print each change of progress, send a STOP on the first Ctrl-C; return the
    vehicle's sealed receipt once the session is settled."""
    sid = session.session_id
    started = time.monotonic()
    shown: tuple[Any, ...] | None = None
    shown_at = started
    last_pg = ""
    unreachable = False
    answer = first
    while True:
        if interrupt.pending:
            cli.say(args, "stopping: sending a signed STOP (Ctrl-C again to leave it running)")
            try:
                stopped = _send_stop(chain, wallet, session, last_pg)
                interrupt.sent = True
                if stopped.state == SETTLED and stopped.receipt_envelope:
                    return bytes(stopped.receipt_envelope)
                cli.say(args, "STOP accepted: the session is closing; waiting for the settlement")
            except EscrowError as e:
                if e.reason == "SESSION_SETTLED":
                    interrupt.sent = True
                else:
                    cli.say(
                        args, f"the STOP failed ({e.reason or e.code.name}: {e.message}); Ctrl-C to retry"
                    )
                    interrupt.requested = 0
        if answer is None:
            try:
                answer = call(
                    chain.connection.charging.GetSession,
                    wallet.get_request(chain.attested, session),
                    chain.connection.timeout_s,
                )
                if unreachable:
                    cli.say(args, "the escrow answers again")
                unreachable = False
            except EscrowError as e:
                if e.reason is not None or e.code not in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                ):
                    raise
                if not unreachable:
                    cli.say(args, f"the escrow cannot be reached ({e.code.name}); retrying")
                unreachable = True
                interrupt.sleep(max(args.poll_s, 1.0))
                continue
        if answer.state == SETTLED:
            return bytes(answer.receipt_envelope)
        if answer.progress_envelope:
            try:
                progress = wallet.open_progress(chain.attested, sid, answer.progress_envelope)
            except (WalletError, CoreError) as e:
                raise CliError("PROGRESS_INVALID", f"the escrow's progress does not verify: {e}") from None
            last_pg = progress.last_pg
            key = (progress.state, progress.energy_kwh, progress.bill_minor, progress.remaining_minor)
            due = time.monotonic() - shown_at >= args.progress_s
            if shown is None or key[0] != shown[0] or (key != shown and due):
                shown, shown_at = key, time.monotonic()
                cli.say(args, _progress_line(chain, progress, started))
        answer = None
        interrupt.sleep(args.poll_s)


def _verify_records(records: list[bytes], pole: PoleBody | None, sid: bytes) -> bool | None:
    """True if every OCMF record is signed by the pole's registered meter and names this session's
    meter handle; None if the pole is not listed any more (nothing to check against)."""
    if pole is None:
        return None
    handle = meter_handle(sid)
    for raw in records:
        try:
            record = parse_record(raw)
            verify_record(record, pole.meter_public_key, algorithm=pole.meter_algorithm)
        except CoreError:
            return False
        if handle != record.ID:
            return False
    return True


def _settlement(
    args: argparse.Namespace,
    chain: Chain,
    wallet: Wallet,
    sid: bytes,
    entry: dict[str, Any],
    sealed: bytes,
    pole: PoleBody | None,
) -> tuple[dict[str, Any], list[str], VerifiedReceipt, bool | None]:
    """Open and check the vehicle's receipt; the JSON fields and the human lines of the settlement."""
    try:
        verified = wallet.open_receipt(chain.attested, sid, sealed)
    except (WalletError, CoreError) as e:
        raise CliError("RECEIPT_INVALID", f"the receipt does not verify: {e}") from None
    receipt = verified.receipt
    deposit = int(entry["deposit"])
    if receipt.bill_minor + receipt.note_amount_minor != deposit:
        raise CliError(
            "RECEIPT_MISMATCH",
            f"bill {receipt.bill_minor} + refund {receipt.note_amount_minor} is not the deposit {deposit}",
            "keep the receipt and report it to the escrow's operator",
        )
    if receipt.tariff_hash.hex() != entry["tariff_hash"]:
        raise CliError("RECEIPT_MISMATCH", "the receipt names another tariff than the one agreed")
    checked = _verify_records(verified.records, pole, sid)
    if args.records_out:
        Path(args.records_out).write_bytes(b"".join(r + b"\n" for r in verified.records))
    fields: dict[str, Any] = {
        "outcome": receipt.outcome,
        "energy_kwh": receipt.energy_kwh,
        "deposit_minor": deposit,
        "bill_minor": receipt.bill_minor,
        "refund_minor": receipt.note_amount_minor,
        "records": len(verified.records),
        "records_verified": checked,
        "settle_entry_hash": receipt.settle_entry_hash.hex(),
        "refund_note_id": receipt.note_id.hex(),
    }
    check = {
        True: "each signed by the pole's registered meter",
        False: "NOT all signed by the pole's registered meter",
        None: "",
    }
    lines = [
        f"settled: {receipt.outcome}",
        f"  energy        {receipt.energy_kwh} kWh",
        f"  bill          {chain.amount(receipt.bill_minor)}",
        f"  refund        {chain.amount(receipt.note_amount_minor)} (of the {chain.amount(deposit)} deposit)",
        f"  OCMF records  {len(verified.records)}{', ' if checked is not None and verified.records else ''}"
        f"{check[checked] if verified.records else ''}",
        f"  settle entry  {receipt.settle_entry_hash.hex()}",
    ]
    if args.records_out:
        lines.append(f"  records written to {args.records_out}")
    return fields, lines, verified, checked


def _finish(
    args: argparse.Namespace,
    chain: Chain,
    wallet: Wallet,
    sid: bytes,
    entry: dict[str, Any],
    sealed: bytes,
    pole: PoleBody | None,
    result: dict[str, Any],
) -> int:
    fields, lines, _, checked = _settlement(args, chain, wallet, sid, entry, sealed, pole)
    result.update(fields)
    _scan(wallet, chain)
    result.update(_balance_fields(chain, wallet))
    lines.append(f"balance {chain.amount(wallet.balance())} in {len(wallet.unspent())} note(s)")
    cli.emit(args, result, "\n".join(lines))
    if checked is False:
        print(
            f"{TOOL}: RECORDS_UNVERIFIED: an OCMF record in the receipt does not verify under the pole's "
            "registered meter key",
            file=sys.stderr,
        )
        print(f"{TOOL}: keep the records (--records-out) and report them to the operator", file=sys.stderr)
        return EXIT_REFUSED
    return EXIT_OK


def _choose_pole(chain: Chain, pole_id: str) -> Listed:
    for listed in _list_poles(chain):
        if listed.body.pole_id == pole_id:
            break
    else:
        raise CliError(
            "POLE_UNKNOWN",
            f"no pole {pole_id!r} is registered at this escrow",
            f"list the poles: {TOOL} poles --target {chain.connection.target}",
        )
    if listed.tariff is None or listed.status != "valid":
        what = "publishes no tariff" if listed.tariff is None else f"has no usable tariff ({listed.status})"
        raise CliError(
            "POLE_NO_TARIFF",
            f"pole {pole_id} {what}",
            "choose another pole, or ask its operator to publish a current tariff",
        )
    return listed


def cmd_charge(args: argparse.Namespace) -> int:
    _need_target(args)
    _wallet_path(args)  # a usage error before anything else
    if not 1 <= args.deadline_minutes <= MAX_DEADLINE_MINUTES:
        cli.usage_error(f"--deadline-minutes is 1 to {MAX_DEADLINE_MINUTES}")
    _check_follow_options(args)
    wallet_file, wallet = _load(args)
    with cli.attested_chain(args) as chain:
        deposit = _parse_deposit(args.deposit, chain)
        _attested_line(args, chain)
        listed = _choose_pole(chain, args.pole)
        tariff = listed.tariff
        assert tariff is not None
        price = cli.format_price(tariff.price_numerator, chain.decimals, chain.currency)
        fee = chain.amount(tariff.session_fee_minor)
        cli.say(args, f"pole {listed.body.pole_id} ({listed.body.evse_id}): {price} + {fee} per session")
        if deposit < tariff.session_fee_minor:
            raise CliError(
                "DEPOSIT_BELOW_FEE",
                f"the deposit {chain.amount(deposit)} is below the pole's session fee {fee}",
                "deposit at least the session fee, plus what the energy you want costs",
            )
        _scan(wallet, chain)
        balance = wallet.balance()
        if deposit > balance:
            raise CliError(
                "INSUFFICIENT_FUNDS",
                f"the deposit {chain.amount(deposit)} is more than the balance {chain.amount(balance)}",
                f"deposit less, or have notes minted to your address ({TOOL} address)",
            )
        try:
            prepared = wallet.prepare_deposit(chain.attested, deposit)
        except WalletError as e:
            raise CliError("DEPOSIT_NOT_POSSIBLE", str(e), "deposit less") from None
        deadline_ms = int((time.time() + 60 * args.deadline_minutes) * 1000)
        request, session = wallet.open_request(
            chain.attested, prepared, listed.body.pole_id, listed.tariff_body, deadline_ms
        )
        sid_hex = session.session_id.hex()
        entry = {
            "session_key_seed": session.session_key_seed.hex(),
            "pole_id": listed.body.pole_id,
            "evse_id": listed.body.evse_id,
            "deposit": deposit,
            "tariff_hash": session.tariff_hash.hex(),
            "opened_at": int(time.time()),
            "deadline_ms": deadline_ms,
            "stop_sequence": 0,
            "chain_id": chain.attested.chain_id.hex(),
            "target": args.target,
            "currency": chain.currency,
            "decimals": chain.decimals,
        }
        interrupt = _StopOnInterrupt()
        with interrupt.installed():
            wallet_file.save_session(sid_hex, entry)  # the session key is safe before the escrow hears of it
            try:
                call(chain.connection.charging.Open, request, chain.connection.timeout_s)
            except EscrowError as e:
                if e.reason is not None:  # refused: nothing opened; forget the session again
                    wallet_file.save_session(sid_hex, None)
                else:
                    print(
                        f"{TOOL}: the OPEN of session {sid_hex} may or may not have arrived; "
                        f"check with: {TOOL} status --session {sid_hex}",
                        file=sys.stderr,
                    )
                raise
            handle = meter_handle(session.session_id)
            result: dict[str, Any] = {
                "session_id": sid_hex,
                "meter_handle": handle,
                "pole_id": listed.body.pole_id,
                "evse_id": listed.body.evse_id,
                "deposit_minor": deposit,
                "deadline_ms": deadline_ms,
                "currency": chain.currency,
                "decimals": chain.decimals,
            }
            cli.say(args, f"session   {sid_hex}")
            cli.say(args, f"meter id  {handle}")
            cli.say(
                args,
                f"opened with a deposit of {chain.amount(deposit)}, settles by {_utc(deadline_ms // 1000)} "
                "at the latest; give the pole the session id (escrow-pole charge --session ID)",
            )
            if args.no_follow:
                result["state"] = "OPENED"
                if interrupt.pending:
                    result["state"] = STATE_NAMES.get(_send_stop(chain, wallet, session, "").state, "")
                    result["stop_sent"] = True
                cli.emit(
                    args, result, f"follow it with: {TOOL} status --session {sid_hex} --follow (or stop it)"
                )
                return EXIT_OK
            cli.say(args, "following the session (Ctrl-C sends a STOP)")
            try:
                sealed = _follow(args, chain, wallet, session, interrupt)
            except KeyboardInterrupt:
                raise _left_running(sid_hex) from None
        result["stop_sent"] = interrupt.sent
        result["state"] = "SETTLED"
        return _finish(args, chain, wallet, session.session_id, entry, sealed, listed.body, result)


def _parse_deposit(text: str, chain: Chain) -> int:
    example = cli.format_amount(1234, chain.decimals, chain.currency)
    try:
        deposit = cli.parse_amount(text, chain.decimals, "--deposit")
    except CliError as e:
        e.hint = (
            e.hint
            or f"type the deposit in {chain.currency} with at most {chain.decimals} decimals, e.g. {example}"
        )
        raise
    if deposit <= 0:
        raise CliError("USAGE", "--deposit must be more than 0", f"e.g. --deposit {example}", EXIT_USAGE)
    return deposit


def _check_follow_options(args: argparse.Namespace) -> None:
    if not 0.05 <= args.poll_s <= 60:
        cli.usage_error("--poll-s is 0.05 to 60 seconds")
    if not 0 <= args.progress_s <= 3600:
        cli.usage_error("--progress-s is 0 to 3600 seconds")


def _left_running(sid_hex: str) -> CliError:
    return CliError(
        "INTERRUPTED",
        f"stopped following session {sid_hex}; it goes on at the escrow",
        f"{TOOL} status --session {sid_hex} --follow, or {TOOL} stop --session {sid_hex}",
    )


def _pole_body(chain: Chain, pole_id: str) -> PoleBody | None:
    for listed in _list_poles(chain):
        if listed.body.pole_id == pole_id:
            return listed.body
    return None


def cmd_status(args: argparse.Namespace) -> int:
    _need_target(args)
    wallet_file, wallet = _load(args)
    sid, entry = _find_session(wallet_file, args.session)
    session = _session_from(sid, entry)
    _check_follow_options(args)
    with cli.attested_chain(args) as chain:
        result: dict[str, Any] = {
            "session_id": sid.hex(),
            "meter_handle": meter_handle(sid),
            "pole_id": session.pole_id,
            "deposit_minor": session.deposit,
            "currency": chain.currency,
            "decimals": chain.decimals,
        }
        answer = call(
            chain.connection.charging.GetSession,
            wallet.get_request(chain.attested, session),
            chain.connection.timeout_s,
        )
        if answer.state != SETTLED and args.follow:
            interrupt = _StopOnInterrupt()
            with interrupt.installed():
                try:
                    sealed = _follow(args, chain, wallet, session, interrupt, first=answer)
                except KeyboardInterrupt:
                    raise _left_running(sid.hex()) from None
            result["state"] = "SETTLED"
            return _finish(
                args, chain, wallet, sid, entry, sealed, _pole_body(chain, session.pole_id), result
            )
        if answer.state == SETTLED:
            result["state"] = "SETTLED"
            pole = _pole_body(chain, session.pole_id)
            return _finish(args, chain, wallet, sid, entry, bytes(answer.receipt_envelope), pole, result)
        state = STATE_NAMES.get(answer.state, "UNSPECIFIED")
        result["state"] = state
        lines = [f"session {sid.hex()}  meter id {meter_handle(sid)}  pole {session.pole_id}"]
        if answer.progress_envelope:
            try:
                progress = wallet.open_progress(chain.attested, sid, answer.progress_envelope)
            except (WalletError, CoreError) as e:
                raise CliError("PROGRESS_INVALID", f"the escrow's progress does not verify: {e}") from None
            result.update(
                {
                    "state": progress.state,
                    "energy_kwh": progress.energy_kwh,
                    "bill_minor": progress.bill_minor,
                    "remaining_minor": progress.remaining_minor,
                    "readings": progress.readings,
                    "last_pg": progress.last_pg,
                    "coverage_limit": progress.coverage_limit,
                }
            )
            lines.append(
                f"{progress.state}: {progress.energy_kwh} kWh, cost {chain.amount(progress.bill_minor)}, "
                f"cover left {chain.amount(progress.remaining_minor)} of {chain.amount(session.deposit)}"
            )
        else:
            lines.append(state)
        cli.emit(args, result, "\n".join(lines))
    return EXIT_OK


def cmd_stop(args: argparse.Namespace) -> int:
    _need_target(args)
    wallet_file, wallet = _load(args)
    sid, entry = _find_session(wallet_file, args.session)
    session = _session_from(sid, entry)
    with cli.attested_chain(args) as chain:
        result: dict[str, Any] = {
            "session_id": sid.hex(),
            "pole_id": session.pole_id,
            "deposit_minor": session.deposit,
            "currency": chain.currency,
            "decimals": chain.decimals,
        }
        try:
            stopped = _send_stop(chain, wallet, session, "")
        except EscrowError as e:
            if e.reason == "SESSION_SETTLED":
                raise CliError(
                    e.reason,
                    f"session {sid.hex()} is settled already",
                    f"see its settlement: {TOOL} status --session {sid.hex()}",
                ) from None
            raise
        if stopped.state == SETTLED and stopped.receipt_envelope:
            result["state"] = "SETTLED"
            pole = _pole_body(chain, session.pole_id)
            return _finish(args, chain, wallet, sid, entry, bytes(stopped.receipt_envelope), pole, result)
        result["state"] = STATE_NAMES.get(stopped.state, "UNSPECIFIED")
        human = (
            f"STOP accepted: session {sid.hex()} is {result['state']}; it settles after the meter's end "
            f"reading or the grace period ({TOOL} status --session {sid.hex()} --follow)"
        )
        cli.emit(args, result, human)
    return EXIT_OK


COMMANDS = {
    "create": cmd_create,
    "restore": cmd_restore,
    "address": cmd_address,
    "balance": cmd_balance,
    "poles": cmd_poles,
    "charge": cmd_charge,
    "status": cmd_status,
    "stop": cmd_stop,
    "sessions": cmd_sessions,
}


if __name__ == "__main__":
    raise SystemExit(main())
