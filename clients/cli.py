"""What every role's command line shares: the target and its attestation policy, amounts typed in major
units, encrypted key files, human or JSON output, and exit codes that mean something.

Exit codes (every escrow-* role command):

  0  done
  1  refused: the escrow refused the request (its stable reason is printed), an attestation check or an
     audit failed, or a local check failed (not enough funds, a wrong passphrase)
  2  bad usage: an argument that does not parse, a missing file, a file that exists when it must not
  3  unavailable: the server cannot be reached, or it is not serving

Errors go to stderr as one line, ``<tool>: <REASON>: <what happened>``, followed by a line that says
what to do next. With --json the one result object goes to stdout and errors stay on stderr.

Attestation: every command that talks to a server first verifies its quote for a fresh nonce under the
policy its options name (--root-ca, --expect-mrenclave / --expect-mrsigner, --min-isvsvn,
--allow-debug-insecure; environment defaults ESCROW_ROOT_CA, ESCROW_MRENCLAVE, ESCROW_MRSIGNER), and
nothing secret leaves before that succeeds. Without --root-ca only Intel's root is trusted, which an
emulated enclave never chains to: name the server's root (escrow-server writes it to
DATA_DIR/platform/root_ca.der).

Amounts are typed in major units with the chain's decimals ("12.34" EUR = 1234 cents) and parsed with
Decimal from the text, never through a float; more decimals than the currency has are refused.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, NoReturn

import grpc

from clients.connection import Attested, Connection, EscrowError
from clients.secretfile import (
    PassphraseError,
    SecretFileError,
    passphrase_from,
    read_secret_file,
    write_secret_file,
)
from enclave.errors import AttestationError
from enclave.verifier import Policy
from escrow.core import entries
from escrow.core.ledger import Head, check_entry
from escrow.core.tariff import PRICE_DENOMINATOR

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3
PASSPHRASE_ENV = "ESCROW_PASSPHRASE"
ROOT_CA_ENV, MRENCLAVE_ENV, MRSIGNER_ENV = "ESCROW_ROOT_CA", "ESCROW_MRENCLAVE", "ESCROW_MRSIGNER"
_DECIMAL = re.compile(r"[0-9]{1,20}(\.[0-9]{1,20})?")


class CliError(Exception):
    """A failure to report: a stable reason, what happened, what to do next, and the exit code."""

    def __init__(self, reason: str, message: str, hint: str = "", code: int = EXIT_REFUSED) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason, self.message, self.hint, self.code = reason, message, hint, code


# --- amounts --------------------------------------------------------------------------------------------


def parse_decimal(text: str, places: int, what: str) -> int:
    """``text`` (digits, optionally a point and at most ``places`` digits) times 10^places, exactly."""
    if not isinstance(text, str) or _DECIMAL.fullmatch(text.strip()) is None:
        raise CliError(
            "USAGE", f"{what} must be a plain decimal number like 12.34, not {text!r}", code=EXIT_USAGE
        )
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise CliError("USAGE", f"{what} is not a number: {text!r}", code=EXIT_USAGE) from None
    scaled = value.scaleb(places)
    if scaled != scaled.to_integral_value():
        raise CliError("USAGE", f"{what} has more than {places} decimals: {text!r}", code=EXIT_USAGE)
    result = int(scaled)
    if result >= 1 << 64:
        raise CliError("USAGE", f"{what} is too large", code=EXIT_USAGE)
    return result


def check_decimal_syntax(text: str, what: str) -> None:
    """An amount's syntax alone, as parse_decimal's (before the chain's decimals are known)."""
    if _DECIMAL.fullmatch(text.strip()) is None:
        usage_error(f"{what} must be a plain decimal number like 12.34, not {text!r}")


def parse_amount(text: str, decimals: int, what: str = "the amount") -> int:
    """Major units ("12.34") to minor units (1234 for 2 decimals)."""
    return parse_decimal(text, decimals, what)


def parse_price(text: str, decimals: int) -> int:
    """A price per kWh in major units to the tariff's numerator (millionths of a minor unit)."""
    return parse_decimal(text, decimals + 6, "the price per kWh") * PRICE_DENOMINATOR // 10**6


def format_amount(minor: int, decimals: int, currency: str = "") -> str:
    """1234, 2, "EUR" -> "12.34 EUR" (exact)."""
    text = (
        str(Decimal(minor).scaleb(-decimals).quantize(Decimal(1).scaleb(-decimals)))
        if decimals
        else str(minor)
    )
    return f"{text} {currency}".strip()


def format_price(numerator: int, decimals: int, currency: str = "") -> str:
    """A tariff numerator as a price per kWh in major units, exact, without trailing zeros beyond the
    currency's decimals."""
    value = Decimal(numerator).scaleb(-(decimals + 6))
    quantum = Decimal(1).scaleb(-decimals)
    text = str(value.quantize(quantum)) if value == value.quantize(quantum) else str(value.normalize())
    return f"{text} {currency}/kWh" if currency else f"{text}/kWh"


# --- key files --------------------------------------------------------------------------------------------


_PASSPHRASES: dict[Path, bytes] = {}  # per file, for this process: a command asks once per file


def _passphrase(path: str, prompt: str, *, confirm: bool = False) -> bytes:
    key = Path(path).resolve()
    if key not in _PASSPHRASES:
        _PASSPHRASES[key] = passphrase_from(PASSPHRASE_ENV, prompt=prompt, confirm=confirm)
    return _PASSPHRASES[key]


def read_json_secret(path: str, kind: str, *, prompt: str) -> dict[str, Any]:
    """A JSON object from an encrypted secret file (passphrase from $ESCROW_PASSPHRASE or a prompt,
    asked once per file and process)."""
    if not Path(path).exists():
        raise CliError(
            "FILE_MISSING",
            f"{path} does not exist",
            "create it first (the init or create command)",
            EXIT_USAGE,
        )
    passphrase = _passphrase(path, prompt)
    try:
        data = json.loads(read_secret_file(Path(path), kind, passphrase))
    except SecretFileError:
        _PASSPHRASES.pop(Path(path).resolve(), None)
        raise
    if not isinstance(data, dict):
        raise CliError("SECRET_FILE_MALFORMED", f"{path} does not hold a {kind}")
    return data


def write_json_secret(
    path: str, kind: str, values: dict[str, Any], *, prompt: str, overwrite: bool = False
) -> None:
    """Write a JSON object to an encrypted, owner-only secret file atomically."""
    passphrase = _passphrase(path, prompt, confirm=not overwrite)
    payload = json.dumps(values, sort_keys=True, separators=(",", ":")).encode()
    write_secret_file(Path(path), kind, payload, passphrase, overwrite=overwrite)


# --- the target and its attestation ---------------------------------------------------------------------


def add_target_options(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    """--target and the attestation policy options."""
    parser.add_argument(
        "--target", required=required, metavar="HOST:PORT", help="the escrow server's address"
    )
    parser.add_argument(
        "--root-ca",
        metavar="FILE",
        default=os.environ.get(ROOT_CA_ENV),
        help=f"root CA (DER) the quote must chain to (default ${ROOT_CA_ENV}; else Intel's SGX root)",
    )
    parser.add_argument(
        "--expect-mrenclave",
        metavar="HEX",
        default=os.environ.get(MRENCLAVE_ENV),
        help=f"required MRENCLAVE (default ${MRENCLAVE_ENV}; see escrow-attest measure)",
    )
    parser.add_argument(
        "--expect-mrsigner", metavar="HEX", default=os.environ.get(MRSIGNER_ENV), help="required MRSIGNER"
    )
    parser.add_argument("--min-isvsvn", metavar="N", type=int, help="minimum ISVSVN")
    parser.add_argument(
        "--allow-debug-insecure", action="store_true", help="accept a DEBUG enclave (never in production)"
    )
    parser.add_argument("--timeout-s", metavar="S", type=float, default=30.0, help="per-call deadline")


def add_shared_options(
    parser: argparse.ArgumentParser,
    files: dict[str, str],
    *,
    target: bool,
    suppress: bool,
    defaults: dict[str, str | None] | None = None,
) -> None:
    """Options every command of a tool takes, before or after the command name: one ``--NAME FILE`` per
    entry of ``files`` (name -> help), --json, and (``target``) the target and attestation options. On
    a command's own parser (``suppress``) their defaults are suppressed, so a value given before the
    command is not reset by the command's parser."""
    first = len(parser._actions)
    for name, help_text in files.items():
        default = (defaults or {}).get(name)
        parser.add_argument(f"--{name}", metavar="FILE", default=default, help=help_text)
    parser.add_argument("--json", action="store_true", help="print one JSON object (errors stay on stderr)")
    if target:
        add_target_options(parser, required=False)
    if suppress:
        for action in parser._actions[first:]:
            action.default = argparse.SUPPRESS


def policy_from(args: argparse.Namespace) -> Policy:
    """The attestation policy the options name."""
    kwargs: dict[str, Any] = {"allow_debug_insecure": bool(args.allow_debug_insecure)}
    if args.root_ca:
        try:
            kwargs["root_ca_der"] = Path(args.root_ca).read_bytes()
        except OSError as e:
            raise CliError(
                "FILE_MISSING", f"--root-ca {args.root_ca}: {e.strerror}", code=EXIT_USAGE
            ) from None
    for name, key in (("expect_mrenclave", "expect_mrenclave"), ("expect_mrsigner", "expect_mrsigner")):
        value = getattr(args, name)
        if value:
            try:
                raw = bytes.fromhex(value)
            except ValueError:
                raw = b""
            if len(raw) != 32:
                raise CliError("USAGE", f"--{name.replace('_', '-')} is 64 hex digits", code=EXIT_USAGE)
            kwargs[key] = raw
    if args.min_isvsvn is not None:
        kwargs["min_isv_svn"] = args.min_isvsvn
    return Policy(**kwargs)


@dataclass
class Chain:
    """The attested escrow and the chain parameters its GENESIS names."""

    connection: Connection
    attested: Attested
    currency: str
    decimals: int
    genesis: dict[str, Any]

    def amount(self, minor: int) -> str:
        return format_amount(minor, self.decimals, self.currency)


@contextmanager
def attested_chain(args: argparse.Namespace) -> Iterator[Chain]:
    """Connect to --target, verify its quote under the options' policy, read and check GENESIS (its
    hash is the attested chain id, its signature the attested key's or an earlier one's)."""
    connection = Connection(args.target, timeout_s=args.timeout_s)
    try:
        attested = connection.attest(policy_from(args))
        first = next(connection.entries(0, 1), None)
        if first is None or first.parsed.kind != "GENESIS" or first.entry_hash != attested.chain_id:
            raise CliError("CHAIN_MISMATCH", "the server's GENESIS is not the attested chain's")
        genesis = entries.decode_payload("GENESIS", first.payload)
        check_entry(Head(), first, genesis["ledger_key"])
        yield Chain(connection, attested, genesis["currency"], genesis["decimals"], genesis)
    finally:
        connection.close()


# --- output and the error wrapper ---------------------------------------------------------------------


def emit(args: argparse.Namespace, result: dict[str, Any], human: str) -> None:
    """The result: one JSON object with --json, else the human text."""
    if getattr(args, "json", False):
        print(json.dumps(result, sort_keys=True))
    else:
        print(human)
    sys.stdout.flush()


def say(args: argparse.Namespace, text: str) -> None:
    """Progress for people (stderr under --json, so stdout keeps exactly one object)."""
    print(text, file=sys.stderr if getattr(args, "json", False) else sys.stdout, flush=True)


_HINTS = {
    "SPEND_NOTE_SPENT": "rescan the wallet (balance) and try again",
    "TARIFF_SUPERSEDED": "list the poles again: the pole published a new tariff",
    "DEPOSIT_BELOW_FEE": "deposit at least the pole's session fee",
    "ATTACH_WRONG_POLE": "the vehicle chose another pole; check the session id",
    "SESSION_NOT_FOUND": "check the session id the vehicle printed",
    "MINT_ISSUER_UNKNOWN": "this issuer key is not in the chain's GENESIS",
    "POLE_METER_IN_USE": "this meter is registered for another pole",
    "POLE_EVSE_IN_USE": "this EVSE id is registered for another pole",
    "POLE_ID_IN_USE": "this pole is registered already",
    "IDEMPOTENCY_KEY_REUSED": "use a new request id",
    "SESSION_ALREADY_ATTACHED": "the session is attached already: this pole or another took it",
    "TARIFF_MISMATCH": "the vehicle agreed to another tariff: list the poles and open again",
    "ENCLAVE_HALTED": "restart the server",
}


_SECRET_HINTS = {
    "SECRET_FILE_PASSPHRASE": f"check the passphrase (${PASSPHRASE_ENV} or the prompt) and the file name",
    "SECRET_FILE_KIND": "name the right file: --keys takes a keys file, --wallet a wallet file",
    "SECRET_FILE_EXISTS": "use another file name",
    "SECRET_FILE_PERMISSIONS": "make the file readable by its owner only (chmod 600)",
}


def run(tool: str, main: Callable[[], int]) -> int:
    """Run a command body and turn every failure into one clear line on stderr and an exit code."""
    try:
        return main()
    except CliError as e:
        return _fail(tool, e.reason, e.message, e.hint, e.code)
    except EscrowError as e:
        if e.reason is None:
            unavailable = e.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            code = EXIT_UNAVAILABLE if unavailable else EXIT_REFUSED
            return _fail(tool, e.code.name, e.message, "is the server running at --target?", code)
        return _fail(
            tool, e.reason, e.message.removeprefix(f"{e.reason}: "), _HINTS.get(e.reason, ""), EXIT_REFUSED
        )
    except AttestationError as e:
        hint = "check --root-ca and --expect-mrenclave (escrow-attest verify --target shows every check)"
        return _fail(tool, e.reason, e.detail, hint, EXIT_REFUSED)
    except PassphraseError as e:
        return _fail(tool, e.reason, str(e), f"set ${PASSPHRASE_ENV} or run in a terminal", EXIT_USAGE)
    except SecretFileError as e:
        return _fail(
            tool, e.reason, str(e), "", EXIT_USAGE if e.reason == "SECRET_FILE_EXISTS" else EXIT_REFUSED
        )
    except KeyboardInterrupt:
        return _fail(tool, "INTERRUPTED", "stopped by the user", "", EXIT_REFUSED)


def _fail(tool: str, reason: str, message: str, hint: str, code: int) -> int:
    print(f"{tool}: {reason}: {message}", file=sys.stderr)
    if hint:
        print(f"{tool}: {hint}", file=sys.stderr)
    return code


def usage_error(message: str) -> NoReturn:
    raise CliError("USAGE", message, code=EXIT_USAGE)


# --- wallet files (the vehicle's, and the pole's payout wallet) -----------------------------------------

WALLET_KIND = "wallet"
WALLET_VERSION = 1


MAX_REFERENCE_BYTES = 64  # a MINT's or REDEEM's reference


def request_reference(text: str | None, prefix: str) -> bytes:
    """--reference as bytes (1 to MAX_REFERENCE_BYTES of printable text), or a fresh random one."""
    if text is None:
        return f"{prefix}-{os.urandom(12).hex()}".encode()
    raw = text.encode("utf-8", errors="surrogateescape")
    if not 0 < len(raw) <= MAX_REFERENCE_BYTES or not text.isprintable():
        usage_error(f"--reference is 1 to {MAX_REFERENCE_BYTES} bytes of printable text")
    return raw


def need_file(args: argparse.Namespace, name: str) -> str:
    """The path given as --NAME, which this command requires."""
    value = getattr(args, name, None)
    if not value:
        usage_error(f"--{name} FILE is required for {args.command}")
    return str(value)


def create_wallet_file(path: str, seed: bytes) -> None:
    """A new encrypted wallet file holding ``seed`` (and no sessions yet); refuses an existing file."""
    values = {"version": WALLET_VERSION, "seed": seed.hex(), "sessions": {}}
    write_json_secret(path, WALLET_KIND, values, prompt=f"passphrase for the new wallet {path}: ")


def read_wallet_file(path: str) -> dict[str, Any]:
    """The wallet file's JSON: {"version": 1, "seed": hex, "sessions": {session id hex: {...}}}."""
    data = read_json_secret(path, WALLET_KIND, prompt=f"passphrase of the wallet {path}: ")
    seed = data.get("seed")
    if data.get("version") != WALLET_VERSION or not isinstance(seed, str) or len(seed) != 64:
        raise CliError("SECRET_FILE_MALFORMED", f"{path} is not a version-{WALLET_VERSION} wallet")
    data.setdefault("sessions", {})
    return data


def update_wallet_file(path: str, data: dict[str, Any]) -> None:
    """Rewrite the wallet file atomically (same passphrase source)."""
    write_json_secret(path, WALLET_KIND, data, prompt=f"passphrase of the wallet {path}: ", overwrite=True)
