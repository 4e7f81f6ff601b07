"""The one mapping from stable reasons to gRPC statuses (escrow.host.errors, DESIGN §8).

Two halves: the table itself (every reason has a deliberate, non-INTERNAL status except the store's own
refusals), and a source scan that finds every reason the trusted core and the host can raise towards a
caller and checks that the table names it, so a new reason cannot silently reach a client as INTERNAL.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from escrow.core import readings
from escrow.core.errors import CoreError
from escrow.host.errors import STATUS_BY_REASON, status_for

ROOT = Path(__file__).resolve().parents[1]
SCANNED_DIRS = ("escrow/core", "escrow/host")

# DESIGN §8: malformed input, wrong state, unknown object, duplicate, bad signature, limits; plus the two
# the host adds for itself (an enclave that is not running, a deadline too short to finish the call).
ALLOWED_STATUSES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}

# Library errors that never reach a caller as they are: each call site translates them into a reason of
# the table (or they only occur at start, before the gRPC server exists). Reasons raised with these
# classes *inside these modules* are internal; the same class raised elsewhere (e.g. BillingError
# DEPOSIT_BELOW_FEE in engine.py) counts as caller-facing.
INTERNAL_SITES = {
    # SignatureError: every verify is wrapped (SPEND_/MINT_/POLE_/TARIFF_/ATTACH_/STOP_/GET_SIGNATURE_INVALID)
    ("escrow/core/signing.py", "SignatureError"),
    # OcmfError: readings.py turns it into READING_MALFORMED / READING_SIGNATURE_INVALID, registry.py into
    # POLE_*; MeterRegistration only re-checks a meter that registration already accepted
    ("escrow/core/ocmf.py", "OcmfError"),
    ("escrow/core/ocmf_parse.py", "OcmfError"),
    ("escrow/core/readings.py", "OcmfError"),
    # LedgerError: chain checks while replaying the store at start (the engine reports STORE_INVALID)
    ("escrow/core/ledger.py", "LedgerError"),
    # SettlementError: spending.py maps BALANCE_* to SPEND_*; SETTLE is built by the enclave itself
    ("escrow/core/settlement.py", "SettlementError"),
    # BillingError in billing.py: coverage_limit is wrapped as READING_MALFORMED; settle_amounts only sees
    # values the engine has already validated (a u64 deposit, energy >= 0 from accepted readings)
    ("escrow/core/billing.py", "BillingError"),
    # StoreError: the store's refusals happen inside a persist (the engine then halts and the call is
    # INTERNAL); the one a caller can cause, IDEMPOTENCY_KEY_REUSED, is checked on its own below
    ("escrow/host/store.py", "StoreError"),
    # the same inside a persist's group commit: a failed batch halts the engine like a failed transaction
    ("escrow/host/groupcommit.py", "StoreError"),
}
# Reasons a caller reaches through the internal classes above, which therefore must be in the table.
SURFACED_INTERNAL_REASONS = {"IDEMPOTENCY_KEY_REUSED"}


@dataclass(frozen=True)
class Site:
    """One ``SomeError(<reason>, ...)`` construction found in the source."""

    path: str
    line: int
    cls: str
    reasons: tuple[str, ...]  # every literal the first argument can evaluate to; () if not resolvable
    expression: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line} {self.cls}({self.expression})"


class _Resolver:
    """The string values an expression can take, from literals, module constants, module dicts of
    reasons, conditional expressions and local assignments in the enclosing function."""

    def __init__(self, tree: ast.Module, module: object) -> None:
        self.module = module
        self.tree = tree
        self.functions = _enclosing_functions(tree)
        self.constants: dict[str, list[ast.expr]] = {}
        for node in tree.body:
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        self.constants.setdefault(target.id, []).append(node.value)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value:
                self.constants.setdefault(node.target.id, []).append(node.value)

    def values(self, expr: ast.expr, function: ast.AST | None, depth: int = 0) -> set[str] | None:
        if depth > 8:
            return None
        if isinstance(expr, ast.Constant):
            return {expr.value} if isinstance(expr.value, str) else None
        if isinstance(expr, ast.IfExp):
            return _union(
                self.values(expr.body, function, depth + 1), self.values(expr.orelse, function, depth + 1)
            )
        if isinstance(expr, ast.Dict):  # a module-level reason table: its values
            out: set[str] | None = set()
            for value in expr.values:
                out = _union(out, self.values(value, function, depth + 1))
            return out
        if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute) and expr.func.attr == "get":
            # TABLE.get(key, default): every value of TABLE and the default
            table = self.values(expr.func.value, function, depth + 1)
            default = self.values(expr.args[1], function, depth + 1) if len(expr.args) == 2 else set()
            return _union(table, default)
        if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name):
            owner = getattr(self.module, expr.value.id, None)
            attribute = getattr(owner, expr.attr, None)
            return {attribute} if isinstance(attribute, str) else None
        if isinstance(expr, ast.Name):
            if isinstance(function, ast.FunctionDef) and expr.id in _parameters(function):
                return self._arguments(function, expr.id, depth)
            local = _local_assignments(function, expr.id) if function is not None else []
            sources = local or self.constants.get(expr.id, [])
            if not sources:
                imported = getattr(self.module, expr.id, None)  # imported constants
                return {imported} if isinstance(imported, str) else None
            result: set[str] | None = set()
            for source in sources:
                result = _union(result, self.values(source, None if not local else function, depth + 1))
            return result
        return None

    def _arguments(self, function: ast.FunctionDef, name: str, depth: int) -> set[str] | None:
        """A parameter's values: what every call of the function in this module passes for it."""
        index = _parameters(function).index(name)
        calls = [
            (node, self.functions.get(node))
            for node in ast.walk(self.tree)
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == function.name
        ]
        if not calls:
            return None
        result: set[str] | None = set()
        for call, caller in calls:
            keyword = next((k.value for k in call.keywords if k.arg == name), None)
            argument = (
                keyword if keyword is not None else call.args[index] if index < len(call.args) else None
            )
            if argument is None:
                return None
            result = _union(result, self.values(argument, caller, depth + 1))
        return result


def _parameters(function: ast.FunctionDef) -> list[str]:
    return [a.arg for a in (*function.args.posonlyargs, *function.args.args)]


def _union(a: set[str] | None, b: set[str] | None) -> set[str] | None:
    return None if a is None or b is None else a | b


def _local_assignments(function: ast.AST, name: str) -> list[ast.expr]:
    out = []
    for node in ast.walk(function):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            out.append(node.value)
    return out


def _enclosing_functions(tree: ast.Module) -> dict[ast.AST, ast.AST]:
    """Each node -> the innermost function definition containing it."""
    owner: dict[ast.AST, ast.AST] = {}

    def visit(node: ast.AST, function: ast.AST | None) -> None:
        for child in ast.iter_child_nodes(node):
            inner = child if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else function
            if function is not None:
                owner[child] = function
            visit(child, inner)

    visit(tree, None)
    return owner


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def _called_name(func: ast.expr) -> str:
    """``Name`` for ``Name(...)`` and ``attr`` for ``module.attr(...)``; "" for anything else."""
    if isinstance(func, ast.Name):
        return func.id
    return func.attr if isinstance(func, ast.Attribute) else ""


def scan() -> Iterator[Site]:
    """Every construction of a CoreError subclass (the classes that carry a stable reason)."""
    for directory in SCANNED_DIRS:
        for path in sorted((ROOT / directory).glob("*.py")):
            module = importlib.import_module(_module_name(path))
            tree = ast.parse(path.read_text(), str(path))
            resolver = _Resolver(tree, module)
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call) or not node.args:
                    continue
                name = _called_name(node.func)
                cls = getattr(module, name, None)
                if not (isinstance(cls, type) and issubclass(cls, CoreError)):
                    continue
                values = resolver.values(node.args[0], resolver.functions.get(node))
                yield Site(
                    str(path.relative_to(ROOT)),
                    node.lineno,
                    name,
                    tuple(sorted(values)) if values else (),
                    ast.unparse(node.args[0]),
                )


SITES = list(scan())
CALLER_FACING = [s for s in SITES if (s.path, s.cls) not in INTERNAL_SITES]


# --- the table ------------------------------------------------------------------------------------------


def test_every_reason_maps_to_a_deliberate_status_and_only_store_ones_to_internal() -> None:
    for reason, code in STATUS_BY_REASON.items():
        assert reason == reason.upper() and " " not in reason, reason
        if reason.startswith("STORE_") or reason == "INTERNAL":
            assert code == grpc.StatusCode.INTERNAL, reason
        else:
            assert code in ALLOWED_STATUSES, (reason, code)
        assert status_for(reason) == code


def test_reason_families_follow_design_section_8() -> None:
    for reason, code in STATUS_BY_REASON.items():
        if reason.endswith("_MALFORMED"):
            assert code == grpc.StatusCode.INVALID_ARGUMENT, reason
        if reason.endswith("_SIGNATURE_INVALID"):
            assert code == grpc.StatusCode.PERMISSION_DENIED, reason
        if reason.endswith("_NOT_FOUND"):
            assert code == grpc.StatusCode.NOT_FOUND, reason
        if reason.endswith("_LIMIT"):
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, reason


def test_unknown_reason_is_internal() -> None:
    assert status_for("NO_SUCH_REASON_ANYWHERE") == grpc.StatusCode.INTERNAL
    assert status_for("") == grpc.StatusCode.INTERNAL


# --- the source scan --------------------------------------------------------------------------------------


def test_scan_finds_the_known_refusals() -> None:
    # Guards the scan itself: literals, imported constants, conditional reasons and reason tables.
    found = {r for s in CALLER_FACING for r in s.reasons}
    for reason in (
        "SPEND_MALFORMED",  # literal (spending.py)
        "TARIFF_SUPERSEDED",  # an imported constant (engine.py) and a module constant (tariff.py)
        "SESSION_ALREADY_ATTACHED",  # a local `reason = ... if ... else ...` (engine.py)
        "SPEND_UNBALANCED",  # a value of spending._BALANCE_REASONS via .get(...)
        "READING_TOO_LARGE",  # readings.py's conditional reason in _parse
        "IDEMPOTENCY_KEY_REUSED",  # not caller-facing by site, checked separately
    ):
        if reason == "IDEMPOTENCY_KEY_REUSED":
            assert any(reason in s.reasons for s in SITES)
        else:
            assert reason in found, reason
    assert len(CALLER_FACING) > 100


def test_every_caller_facing_reason_is_resolvable() -> None:
    unresolved = [str(s) for s in CALLER_FACING if not s.reasons]
    assert unresolved == [], "a reason the scan cannot read; name it with a literal or a constant"


def test_every_caller_facing_reason_is_in_the_table() -> None:
    missing = sorted(
        {f"{r} ({s.path}:{s.line})" for s in CALLER_FACING for r in s.reasons if r not in STATUS_BY_REASON}
    )
    assert missing == []


def test_reasons_the_host_surfaces_from_the_store_are_in_the_table() -> None:
    store_reasons = {r for s in SITES if s.path == "escrow/host/store.py" for r in s.reasons}
    assert store_reasons >= SURFACED_INTERNAL_REASONS
    for reason in SURFACED_INTERNAL_REASONS:
        assert STATUS_BY_REASON[reason] == grpc.StatusCode.ALREADY_EXISTS


def _abort_literals() -> list[tuple[str, int]]:
    """Every literal reason the servicers pass to ``abort(context, reason, message)``."""
    path = ROOT / "escrow/host/grpc_server.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "abort"
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
        ):
            found.append((str(node.args[1].value), node.lineno))
    return found


ABORT_LITERALS = _abort_literals()


def test_the_servicers_abort_with_reasons_of_the_table() -> None:
    assert {"REQUEST_MALFORMED", "READING_LIMIT"} <= {r for r, _ in ABORT_LITERALS}
    # INTERNAL is the deliberate answer to an unexpected exception: no reason of the table.
    missing = [
        (r, line) for r, line in ABORT_LITERALS if r not in STATUS_BY_REASON and r not in ("INTERNAL",)
    ]
    assert missing == []


def test_enclave_error_reason_is_in_the_table() -> None:
    assert "ENCLAVE_ERROR" in {r for r, _ in ABORT_LITERALS}
    assert "ENCLAVE_ERROR" in STATUS_BY_REASON


@pytest.mark.parametrize("reason", readings.REASONS)
def test_every_reading_reason_is_in_the_table(reason: str) -> None:
    assert reason.startswith("READING_")
    assert reason in STATUS_BY_REASON
    assert STATUS_BY_REASON[reason] != grpc.StatusCode.INTERNAL
