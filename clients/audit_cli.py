"""`escrow-audit`: verify an escrow's public ledger, live or exported, and export it.

    escrow-audit verify --target HOST:PORT [attestation options] [--workers N] [--json]
    escrow-audit verify --ledger FILE [--root-ca FILE] [--expect-mrenclave HEX | --expect-mrsigner HEX]
        [--min-isvsvn N] [--allow-debug-insecure] [--workers N] [--json]
    escrow-audit export --target HOST:PORT --out FILE [--force] [attestation options] [--json]

``verify --target`` attests the server (fresh nonce, the policy of the options), streams its whole
ledger and replays it with clients.auditor.audit: the GENESIS and KEY quotes under the same policy, the
chain must be the attested one, contain the attested head and end under the attested ledger key.
``verify --ledger`` replays an export file; the quotes are checked only when a policy is named
(--root-ca, --expect-mrenclave, --expect-mrsigner or --min-isvsvn), and the output says so when not.
``export`` attests the server, streams its ledger, checks that it is the attested chain up to the
attested head, and writes the export file atomically (docs/ledger.md, "The export file").

Exit codes (clients/cli.py): 0 the ledger verifies / the export is written; 1 the audit failed (the
first bad entry is named), the export file is damaged (EXPORT_TRUNCATED, EXPORT_MALFORMED,
EXPORT_TRAILER_MISMATCH, EXPORT_TRAILING_BYTES), an attestation check failed, or the server's ledger is
not the attested one; 2 bad usage, a missing or unreadable file, a file that is no ledger export at all
(EXPORT_MAGIC), an --out that exists without --force; 3 the server cannot be reached.
docs/escrow-audit.md has the details.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from clients.auditor import AuditReport, LedgerFileError, audit, export_ledger, read_ledger
from clients.cli import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    CliError,
    add_target_options,
    attested_chain,
    emit,
    format_amount,
    policy_from,
    run,
    say,
    usage_error,
)
from clients.connection import Attested, Connection
from enclave.trusted.keybundle import KeyBundleError
from enclave.verifier import Policy
from escrow.core.ledger import KINDS, Entry, Header

PROG = "escrow-audit"
_FILE_REASONS = ("EXPORT_TRUNCATED", "EXPORT_MALFORMED", "EXPORT_TRAILER_MISMATCH", "EXPORT_TRAILING_BYTES")
_CHAIN_REASONS = ("AUDIT_CHAIN_MISMATCH", "AUDIT_HEAD_MISMATCH", "AUDIT_LEDGER_KEY_MISMATCH")


# --- the entries as they pass to the audit ------------------------------------------------------------


class _Tracked:
    """Entries on their way to the audit: remembers each one's kind by position (one byte each, so the
    first bad entry can be named however far the batched range proofs lag behind), and holds a
    LedgerFileError that ends an export early, so the audit reports what came before it."""

    def __init__(self, entries: Iterable[Entry]) -> None:
        self._entries = entries
        self._kinds = bytearray()  # 0: a header that does not parse, else 1 + its index in KINDS
        self.file_error: LedgerFileError | None = None

    def __iter__(self) -> Iterator[Entry]:
        try:
            for entry in self._entries:
                self._kinds.append(_kind_code(entry))
                yield entry
        except LedgerFileError as e:
            if e.reason == "EXPORT_MAGIC":  # not an export at all: the caller named the wrong file
                raise
            self.file_error = e

    @property
    def count(self) -> int:
        return len(self._kinds)

    def kind_at(self, height: int | None) -> str | None:
        if height is None or not 0 <= height < len(self._kinds) or self._kinds[height] == 0:
            return None
        return KINDS[self._kinds[height] - 1]


def _kind_code(entry: Entry) -> int:
    try:
        return 1 + KINDS.index(Header.from_bytes(entry.header).kind)
    except Exception:  # any header the audit will refuse: its kind is unknown
        return 0


# --- verify ---------------------------------------------------------------------------------------------


def _policy_named(args: argparse.Namespace) -> bool:
    return bool(args.root_ca or args.expect_mrenclave or args.expect_mrsigner) or args.min_isvsvn is not None


def _pinned(policy: Policy) -> bool:
    return policy.expect_mrenclave is not None or policy.expect_mrsigner is not None


def cmd_verify(args: argparse.Namespace) -> int:
    if (args.target is None) == (args.ledger is None):
        usage_error(
            "verify needs exactly one of --target HOST:PORT (a live server) or --ledger FILE (an export)"
        )
    if args.workers < 0:
        usage_error("--workers is 0 (audit in this process) or more")
    if args.target is not None:
        report, tracked, context = _verify_target(args)
    else:
        report, tracked, context = _verify_ledger(args)
    _show(args, report, tracked, context)
    return EXIT_OK if report.ok else EXIT_REFUSED


def _verify_target(args: argparse.Namespace) -> tuple[AuditReport, _Tracked, dict[str, Any]]:
    policy = policy_from(args)
    say(args, f"attesting {args.target} ...")
    with Connection(args.target, timeout_s=args.timeout_s) as connection:
        attested = _attest(connection, policy)
        bundle = attested.bundle
        say(args, f"attested; auditing the ledger up to at least height {bundle.head_height} ...")
        tracked = _Tracked(connection.entries())
        report = audit(
            tracked,
            policy,
            expect_ledger_key=attested.ledger_key,
            expect_chain_id=attested.chain_id,
            expect_head=(bundle.head_height, bundle.head_hash),
            workers=args.workers,
        )
    identity = attested.report.identity
    context: dict[str, Any] = {
        "source": "target",
        "target": args.target,
        "quotes_checked": True,
        "measurement_pinned": _pinned(policy),
        "attested": {
            "mrenclave": identity.mr_enclave if identity else None,
            "mrsigner": identity.mr_signer if identity else None,
            "debug": identity.debug if identity else None,
            "chain_id": attested.chain_id.hex(),
            "head_height": bundle.head_height,
            "head_hash": bundle.head_hash.hex(),
        },
    }
    return report, tracked, context


def _attest(connection: Connection, policy: Policy) -> Attested:
    try:
        return connection.attest(policy)
    except KeyBundleError as e:  # the quote vouches for bytes that are no key bundle
        raise CliError("KEY_BUNDLE_MISMATCH", f"the attested key bundle does not parse: {e}") from None


def _verify_ledger(args: argparse.Namespace) -> tuple[AuditReport, _Tracked, dict[str, Any]]:
    path = Path(args.ledger)
    if not path.exists():
        raise CliError(
            "FILE_MISSING",
            f"{path} does not exist",
            "name an export file (escrow-audit export --target HOST:PORT --out FILE writes one)",
            EXIT_USAGE,
        )
    if not path.is_file():
        raise CliError("FILE_UNREADABLE", f"{path} is not a file", "name an export file", EXIT_USAGE)
    policy = policy_from(args) if _policy_named(args) else None
    tracked = _Tracked(read_ledger(path))
    try:
        report = audit(tracked, policy, workers=args.workers)
    except LedgerFileError as e:  # only EXPORT_MAGIC gets here: _Tracked holds the others
        raise CliError(
            e.reason,
            f"{path}: {e.detail}",
            "name a file that escrow-audit export wrote",
            EXIT_USAGE,
        ) from None
    except OSError as e:
        raise CliError(
            "FILE_UNREADABLE", f"{path}: {e.strerror or e}", "check the path and its permissions", EXIT_USAGE
        ) from None
    error = tracked.file_error
    if error is not None:
        at = tracked.count  # the entry the file broke in (or the trailer, after the last entry)
        if report.ok or report.first_bad_height is None or report.first_bad_height >= at:
            report = replace(report, ok=False, first_bad_height=at, reason=error.reason, detail=error.detail)
    context: dict[str, Any] = {
        "source": "ledger",
        "ledger": str(path),
        "quotes_checked": policy is not None,
        "measurement_pinned": policy is not None and _pinned(policy),
        "attested": None,
    }
    return report, tracked, context


# --- output ---------------------------------------------------------------------------------------------


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _where(report: AuditReport, tracked: _Tracked) -> str:
    """What sits at the first bad height: the entry's kind, or why there is none."""
    if report.reason in _FILE_REASONS:
        return "export file"
    kind = tracked.kind_at(report.first_bad_height)
    if kind is not None:
        return kind
    if report.first_bad_height is not None and report.first_bad_height >= tracked.count:
        return "past the last entry"
    return "header unreadable"


def failure_line(report: AuditReport, tracked: _Tracked) -> str:
    """``first bad entry: height N (KIND): REASON: detail``."""
    return (
        f"first bad entry: height {report.first_bad_height} ({_where(report, tracked)}): "
        f"{report.reason}: {report.detail}"
    )


def _hint(reason: str | None) -> str:
    if reason in _FILE_REASONS:
        return (
            "the file is damaged or incomplete: export it again (escrow-audit export --force) and verify that"
        )
    if reason == "AUDIT_QUOTE_INVALID":
        return (
            "the GENESIS or KEY quote fails your policy: check --root-ca and --expect-mrenclave (a chain "
            "with KEY upgrades needs --expect-mrsigner instead of one MRENCLAVE)"
        )
    if reason in _CHAIN_REASONS:
        return (
            "the server's ledger is not the one its enclave attests: do not trust it; keep an export as "
            "evidence"
        )
    return (
        "the ledger breaks a rule at that entry (docs/ledger.md lists every reason): do not trust the "
        "escrow's state from there on, and keep an export as evidence"
    )


def _show(args: argparse.Namespace, report: AuditReport, tracked: _Tracked, context: dict[str, Any]) -> None:
    result: dict[str, Any] = {
        **report.to_dict(),
        **context,
        "first_bad_kind": None if report.ok else tracked.kind_at(report.first_bad_height),
    }

    def amount(minor: int) -> str:
        return format_amount(minor, report.decimals, report.currency)

    lines = []
    if context["source"] == "target":
        lines.append(f"ledger of        {context['target']}")
        attested = context["attested"]
        debug = " (DEBUG enclave)" if attested["debug"] else ""
        lines.append(f"attested         MRENCLAVE {attested['mrenclave']}{debug}")
        lines.append(f"                 MRSIGNER  {attested['mrsigner']}")
    else:
        lines.append(f"ledger file      {context['ledger']}")
    outcomes = ", ".join(f"{name} {n}" for name, n in sorted(report.outcomes.items()))
    heights = f" (heights 0 to {report.head_height})" if report.entries_checked else ""
    lines += [
        f"entries checked  {report.entries_checked}{heights}",
        f"sessions         {report.sessions_opened} opened, {report.sessions_settled} settled, "
        f"{report.sessions_open} open" + (f" ({outcomes})" if outcomes else ""),
        f"issued           {amount(report.total_issued_minor)} in {_plural(report.mints, 'mint')}",
        f"redeemed         {amount(report.total_redeemed_minor)} in {_plural(report.redeems, 'redemption')}",
        f"unspent notes    {report.notes_unspent}",
        f"poles            {report.poles}",
        f"key changes      {report.key_entries}",
    ]
    if not context["quotes_checked"]:
        lines.append(
            "quotes           NOT CHECKED: no attestation policy given (name --root-ca and "
            "--expect-mrenclave or --expect-mrsigner to check the GENESIS and KEY quotes)"
        )
    else:
        note = (
            ""
            if context["measurement_pinned"]
            else " (no MRENCLAVE or MRSIGNER pinned: any enclave under the root passes)"
        )
        lines.append(f"quotes           {report.quotes_verified} verified under the attestation policy{note}")
    if report.entries_checked:
        lines += [
            f"chain id         {report.chain_id}",
            f"head             height {report.head_height}, {report.head_hash}",
        ]
    else:
        lines.append("head             none: no entry verified")
    if report.ok:
        lines.append("OK: every entry verifies")
    else:
        lines.append(f"FAILED: {failure_line(report, tracked)}")
        if report.entries_checked:
            lines.append(f"(the counts above cover heights 0 to {report.head_height}, which verify)")
    emit(args, result, "\n".join(lines))
    if not report.ok:
        if getattr(args, "json", False):
            print(f"{PROG}: {failure_line(report, tracked)}", file=sys.stderr)
        print(f"{PROG}: {_hint(report.reason)}", file=sys.stderr, flush=True)


# --- export ---------------------------------------------------------------------------------------------


class _AttestedStream:
    """The server's entries, checked on the way to the file against what the quote vouches for: entry 0
    is the attested chain's GENESIS and the attested head is on the chain. A mismatch raises before
    anything is written (export_ledger writes only after the last entry)."""

    def __init__(self, entries: Iterable[Entry], attested: Attested) -> None:
        self._entries = entries
        self._attested = attested
        self.count = 0
        self.last_hash = bytes(32)

    def __iter__(self) -> Iterator[Entry]:
        bundle = self._attested.bundle
        for entry in self._entries:
            entry_hash = entry.entry_hash
            if self.count == 0 and entry_hash != self._attested.chain_id:
                raise CliError("CHAIN_MISMATCH", "the server streams another chain than the attested one")
            if self.count == bundle.head_height and entry_hash != bundle.head_hash:
                raise CliError(
                    "HEAD_MISMATCH", f"the entry at the attested head's height {bundle.head_height} differs"
                )
            self.count += 1
            self.last_hash = entry_hash
            yield entry
        if self.count <= bundle.head_height:
            raise CliError(
                "HEAD_MISMATCH",
                f"the server's ledger ends at height {self.count - 1}, before the attested head "
                f"{bundle.head_height}",
            )


def cmd_export(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.is_dir():
        usage_error(f"--out {out} is a directory: name the file to write")
    if out.exists() and not args.force:
        raise CliError(
            "FILE_EXISTS",
            f"{out} exists",
            "pass --force to replace it, or name another --out",
            EXIT_USAGE,
        )
    if not out.parent.is_dir():
        raise CliError(
            "FILE_MISSING", f"the directory {out.parent} does not exist", "create it first", EXIT_USAGE
        )
    say(args, f"attesting {args.target} ...")
    with attested_chain(args) as chain:
        stream = _AttestedStream(chain.connection.entries(), chain.attested)
        try:
            count = export_ledger(stream, out)
        except LedgerFileError as e:  # an entry out of the format's bounds
            raise CliError(
                e.reason, f"the server sent an entry that cannot be exported: {e.detail}"
            ) from None
        except OSError as e:
            raise CliError(
                "FILE_UNWRITABLE",
                f"{out}: {e.strerror or e}",
                "check the path and its permissions",
                EXIT_USAGE,
            ) from None
        identity = chain.attested.report.identity
        result = {
            "ok": True,
            "out": str(out),
            "entries_written": count,
            "chain_id": chain.attested.chain_id.hex(),
            "head_height": count - 1,
            "head_hash": stream.last_hash.hex(),
            "currency": chain.currency,
            "decimals": chain.decimals,
            "mrenclave": identity.mr_enclave if identity else None,
        }
    pin = (
        f"--expect-mrsigner {args.expect_mrsigner}"
        if args.expect_mrsigner and not args.expect_mrenclave
        else f"--expect-mrenclave {result['mrenclave']}"
    )
    human = "\n".join(
        [
            f"wrote {count} {'entry' if count == 1 else 'entries'} to {out}",
            f"chain id         {result['chain_id']}",
            f"head             height {result['head_height']}, {result['head_hash']}",
            f"attested         MRENCLAVE {result['mrenclave']}",
            f"verify it with   {PROG} verify --ledger {out} --root-ca {args.root_ca or 'ROOT_CA.der'} {pin}",
        ]
    )
    emit(args, result, human)
    return EXIT_OK


# --- the command line -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Verify an escrow's public ledger (a live server or an export file) without learning "
        "any amount but the public ones, or export it. Exit codes: 0 ok; 1 the audit, an attestation "
        "check or the export file failed; 2 bad usage or a missing file; 3 the server cannot be reached.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    verify = sub.add_parser(
        "verify",
        help="replay a ledger and check every rule (docs/ledger.md)",
        description="Replay a ledger from GENESIS and check every entry: the chain, signatures, proofs, "
        "each note spent once, each session settled once. --target: attest the server first (fresh "
        "nonce), and the ledger must be the attested chain. --ledger: an export file; the GENESIS and KEY "
        "quotes are checked only if --root-ca, --expect-mrenclave, --expect-mrsigner or --min-isvsvn is "
        "given. Prints the counts, the totals issued and redeemed, the chain head, and on failure the "
        "first bad entry: 'first bad entry: height N (KIND): REASON: detail'.",
    )
    add_target_options(verify, required=False)
    verify.add_argument(
        "--ledger", metavar="FILE", help="an export file (escrow-audit export) instead of --target"
    )
    verify.add_argument(
        "--workers",
        metavar="N",
        type=int,
        default=0,
        help="verify range proofs in N worker processes (default 0: in this process; "
        "pays off for long ledgers)",
    )
    verify.add_argument("--json", action="store_true", help="print one JSON object (the audit report)")
    verify.set_defaults(func=cmd_verify)

    export = sub.add_parser(
        "export",
        help="write a server's ledger to a file",
        description="Attest the server (fresh nonce), stream its ledger, check that it is the attested "
        "chain up to the attested head, and write it atomically to --out in the export format of "
        "docs/ledger.md. Nothing is written if any of that fails.",
    )
    add_target_options(export)
    export.add_argument("--out", metavar="FILE", required=True, help="the export file to write")
    export.add_argument("--force", action="store_true", help="replace --out if it exists")
    export.add_argument("--json", action="store_true", help="print one JSON object")
    export.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    command = args.func
    return run(PROG, lambda: int(command(args)))


if __name__ == "__main__":
    sys.exit(main())
