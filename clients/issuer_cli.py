"""`escrow-issuer`: an issuer's key, minting notes to an address, approving redemptions.

    escrow-issuer --keys FILE init [--json]
    escrow-issuer --keys FILE show [--json]
    escrow-issuer --target HOST:PORT --keys FILE mint --to ADDRESS --amount AMOUNT [--reference TEXT] [--json]
    escrow-issuer --target HOST:PORT redemptions [--from-height N] [--json]

The shared options (--target and the attestation policy, --keys, --json) go before or after the
command. docs/escrow-issuer.md has the details; clients/cli.py the exit codes and the error format.

The keys file is an encrypted secret file of kind ``issuer-keys`` (docs/secret-files.md) holding
{"version": 1, "seed": 64 hex digits}: the issuer's Ed25519 seed. Its public key is what
``escrow-server serve --issuer-key`` puts into a new chain's GENESIS; a mint signed by any other key is
refused (MINT_ISSUER_UNKNOWN), so ``mint`` checks that before it signs anything.

``redemptions`` lists the REDEEM entries of an audited ledger (clients.issuer.approve_redemptions: the
escrow is attested and the whole ledger audited first); the issuer pays each reference once.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from clients.cli import (
    EXIT_USAGE,
    PASSPHRASE_ENV,
    CliError,
    add_shared_options,
    attested_chain,
    check_decimal_syntax,
    emit,
    format_amount,
    need_file,
    parse_amount,
    policy_from,
    read_json_secret,
    request_reference,
    run,
    usage_error,
    write_json_secret,
)
from clients.connection import call
from clients.issuer import Issuer, RedemptionError, approve_redemptions
from zk.stealth import Address, StealthError

PROG = "escrow-issuer"
KEYS_KIND = "issuer-keys"
KEYS_VERSION = 1


def _read_issuer(path: str) -> Issuer:
    data = read_json_secret(path, KEYS_KIND, prompt=f"passphrase of the issuer keys {path}: ")
    seed = data.get("seed")
    try:
        if data.get("version") != KEYS_VERSION or not isinstance(seed, str):
            raise ValueError("not a version-1 issuer keys file")
        return Issuer(bytes.fromhex(seed))
    except ValueError:
        raise CliError(
            "SECRET_FILE_MALFORMED",
            f"{path} is not a version-{KEYS_VERSION} issuer keys file",
            "name the file escrow-issuer init wrote (--keys)",
        ) from None


def cmd_init(args: argparse.Namespace) -> int:
    path = need_file(args, "keys")
    if os.path.lexists(path):
        raise CliError(
            "SECRET_FILE_EXISTS",
            f"{path} already exists; refusing to overwrite it",
            "use another --keys file: replacing an issuer key loses the key GENESIS names",
            EXIT_USAGE,
        )
    seed = os.urandom(32)
    write_json_secret(
        path,
        KEYS_KIND,
        {"version": KEYS_VERSION, "seed": seed.hex()},
        prompt=f"passphrase for the new issuer keys {path}: ",
    )
    issuer = Issuer(seed)
    public = issuer.public_key.hex()
    emit(
        args,
        {"public_key": public, "key_id": issuer.key_id.hex(), "keys": path},
        f"issuer public key {public}\n"
        f"keys written to {path}\n"
        f"next: start a new chain with it: escrow-server serve --issuer-key {public}",
    )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    path = need_file(args, "keys")
    issuer = _read_issuer(path)
    public = issuer.public_key.hex()
    emit(
        args,
        {"public_key": public, "key_id": issuer.key_id.hex(), "keys": path},
        f"issuer public key {public}\nkey id {issuer.key_id.hex()}",
    )
    return 0


def cmd_mint(args: argparse.Namespace) -> int:
    path = need_file(args, "keys")
    try:
        address = Address.from_text(args.to.strip())
    except StealthError as e:
        raise CliError(
            "USAGE",
            f"--to is not an address ({e})",
            "copy the esc1... address the wallet printed",
            EXIT_USAGE,
        ) from None
    check_decimal_syntax(args.amount, "--amount")  # before connecting
    reference = request_reference(args.reference, "mint")
    issuer = _read_issuer(path)
    with attested_chain(args) as chain:
        amount = parse_amount(args.amount, chain.decimals, "--amount")
        if amount == 0:
            usage_error("--amount must be above 0")
        if issuer.public_key not in chain.genesis["issuer_keys"]:
            raise CliError(
                "MINT_ISSUER_UNKNOWN",
                f"issuer key {issuer.public_key.hex()} is not one of this chain's issuer keys",
                "use the keys file whose public key the server's GENESIS names (escrow-server serve "
                "--issuer-key HEX fixes them when the chain is created)",
            )
        request = issuer.mint_request(chain.attested, chain.currency, address, amount, reference=reference)
        answer = call(chain.connection.notes.Mint, request, args.timeout_s)
        result = {
            "height": answer.entry.height,
            "entry_hash": answer.entry.entry_hash.hex(),
            "note_id": answer.note_id.hex(),
            "amount_minor": amount,
            "amount": format_amount(amount, chain.decimals),
            "currency": chain.currency,
            "to": address.to_text(),
            "reference": reference.decode(),
        }
        emit(
            args,
            result,
            f"minted {chain.amount(amount)} to {address.to_text()[:20]}...\n"
            f"MINT entry at height {answer.entry.height}, note {answer.note_id.hex()}\n"
            f"reference {reference.decode()}",
        )
    return 0


def cmd_redemptions(args: argparse.Namespace) -> int:
    if args.from_height < 0:
        usage_error("--from-height is 0 or more")
    with attested_chain(args) as chain:
        try:
            approved = approve_redemptions(chain.connection, policy_from(args), from_height=args.from_height)
        except RedemptionError as e:
            raise CliError(
                e.reason,
                f"the ledger does not audit, so nothing may be paid out: {e.detail}",
                "escrow-audit shows the first bad entry; pay nothing until it passes",
            ) from None
        rows: list[dict[str, Any]] = []
        for r in approved:
            text = _text(r.reference)
            rows.append(
                {
                    "height": r.height,
                    "entry_hash": r.entry_hash.hex(),
                    "amount_minor": r.amount_minor,
                    "amount": format_amount(r.amount_minor, chain.decimals),
                    "currency": r.currency,
                    "reference": text,
                    "reference_hex": r.reference.hex(),
                    "notes_spent": len(r.input_note_ids),
                }
            )
        total = sum(r.amount_minor for r in approved if r.currency == chain.currency)
        result = {
            "redemptions": rows,
            "count": len(rows),
            "total_minor": total,
            "total": format_amount(total, chain.decimals),
            "currency": chain.currency,
            "from_height": args.from_height,
        }
        lines = [
            f"ledger audited: {len(rows)} redemption(s) from height {args.from_height}, "
            f"total {chain.amount(total)}"
        ]
        lines += [
            f"  height {row['height']:>8}  {row['amount']:>10} {row['currency']}  reference "
            f"{row['reference'] if row['reference'] is not None else '0x' + row['reference_hex']}"
            for row in rows
        ]
        emit(args, result, "\n".join(lines))
    return 0


def _text(raw: bytes) -> str | None:
    """A reference as text when it is printable UTF-8 (else None: use its hex)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if text.isprintable() else None


def _add_shared(parser: argparse.ArgumentParser, names: tuple[str, ...], *, suppress: bool) -> None:
    """The tool's shared options (clients.cli.add_shared_options) that ``names`` asks for."""
    files = {
        name: help_text
        for name, help_text in {"keys": "the issuer's encrypted keys file"}.items()
        if name in names
    }
    add_shared_options(parser, files, target="target" in names, suppress=suppress)


EPILOG = f"""\
exit codes: 0 done; 1 refused (the escrow's reason is printed), attestation or the audit failed, or a
local check failed (wrong passphrase, a key GENESIS does not name); 2 bad usage (an argument, a missing
or existing file); 3 the server cannot be reached. The passphrase comes from ${PASSPHRASE_ENV} or a
prompt. Docs: docs/escrow-issuer.md"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="The issuer: its key, minting notes to an address, approving redemptions.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_shared(parser, ("keys", "target"), suppress=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    later: list[tuple[argparse.ArgumentParser, tuple[str, ...]]] = []  # the shared options go last

    def command(name: str, text: str, shared: tuple[str, ...]) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=text,
            description=text,
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        later.append((sub, shared))
        return sub

    p = command("init", "create the keys file with a new issuer key; prints its public key", ("keys",))
    p.set_defaults(func=cmd_init)

    p = command(
        "show", "print the issuer's public key (what escrow-server serve --issuer-key takes)", ("keys",)
    )
    p.set_defaults(func=cmd_show)

    p = command("mint", "mint a note of AMOUNT to ADDRESS (a MINT entry)", ("keys", "target"))
    p.add_argument("--to", metavar="ADDRESS", required=True, help="the recipient wallet's esc1... address")
    p.add_argument("--amount", metavar="AMOUNT", required=True, help="major units with the chain's decimals")
    p.add_argument(
        "--reference",
        metavar="TEXT",
        help="the unique mint reference, e.g. the payment it is for (default: random); a reference "
        "already used is refused, so a retry with the same reference never mints twice",
    )
    p.set_defaults(func=cmd_mint)

    p = command(
        "redemptions",
        "audit the ledger and list the REDEEM entries to pay out (amount, reference)",
        ("target",),
    )
    p.add_argument("--from-height", metavar="N", type=int, default=0, help="first ledger height to list")
    p.set_defaults(func=cmd_redemptions)
    for sub, shared in later:
        _add_shared(sub, shared, suppress=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or bad usage (2, argparse's message is on stderr)
        return e.code if isinstance(e.code, int) else EXIT_USAGE

    def body() -> int:
        if args.command not in ("init", "show") and not getattr(args, "target", None):
            usage_error(f"--target HOST:PORT is required for {args.command}")
        result: int = args.func(args)
        return result

    return run(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
