"""`escrow-pole`: a charge point's operator key, its simulated certified meter, charging, payouts.

    escrow-pole [--keys FILE] [--wallet FILE] init [--pole-id ID] [--json]
    escrow-pole --keys FILE show [--json]
    escrow-pole --target HOST:PORT --keys FILE register --evse-id ID --price-per-kwh AMOUNT
        [--session-fee AMOUNT] [--currency CODE] [--json]
    escrow-pole --target HOST:PORT --keys FILE --wallet FILE charge --session ID --kwh X
        [--power-kw P] [--interval-s S] [--json]
    escrow-pole --target HOST:PORT --wallet FILE balance [--json]
    escrow-pole --target HOST:PORT --wallet FILE redeem --amount AMOUNT [--reference TEXT] [--json]

The shared options (--target and the attestation policy, --keys, --wallet, --json) go before or after
the command. docs/escrow-pole.md has the details; clients/cli.py the exit codes and the error format.

The keys file (an encrypted secret file of kind ``pole-keys``, docs/secret-files.md) holds one JSON
object: the operator's Ed25519 seed, the pole id, the meter's P-256 key (PKCS#8 PEM) with its serial,
billed register and unit, the meter's pagination counter and register value, the EVSE id and POLE entry
once registered, and the current tariff (sequence and signed body). The meter's counter and register
never go back: before the meter signs anything, the keys file is rewritten with both moved past every
record the command may sign (a reservation, so a crash skips numbers instead of reusing them), and once
it is done the file gets the values of the last record signed, whether the command succeeded or not.

The payout wallet (--wallet) is an ordinary wallet file (clients/cli.py): the pole is paid to one-time
addresses of its seed, and ``balance`` and ``redeem`` scan it like any wallet.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import queue
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from clients.cli import (
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    PASSPHRASE_ENV,
    Chain,
    CliError,
    add_shared_options,
    attested_chain,
    check_decimal_syntax,
    create_wallet_file,
    emit,
    format_amount,
    format_price,
    need_file,
    parse_amount,
    parse_decimal,
    parse_price,
    read_wallet_file,
    request_reference,
    run,
    say,
    usage_error,
    write_json_secret,
)
from clients.connection import EscrowError, call, error_from
from clients.meter import (
    DEFAULT_RI,
    MAX_INTERVAL_S,
    MAX_POWER_KW,
    RESOLUTION_KWH,
    MeterError,
    MeterIdentity,
    SimulatedMeter,
    charge_plan,
)
from clients.pole import Pole, PoleError, check_ack
from clients.secretfile import (
    passphrase_from,
    read_secret_file,
    write_secret_file,
)
from clients.wallet import Wallet, WalletError
from escrow.core.readings import meter_handle  # the OCMF ID the vehicle derives too
from escrow.core.registry import PoleBody
from escrow.core.session import AckBody
from escrow.core.signing import ed25519_public_key
from escrow.core.tariff import Tariff
from escrow.v1 import charging_pb2, registry_pb2

PROG = "escrow-pole"
KEYS_KIND = "pole-keys"
KEYS_VERSION = 1
DEFAULT_POWER_KW = "11"
# With --interval-s 0 (no sleeping) the plan still needs an interval: one simulated minute per reading,
# doubled until the session fits the escrow's limit.
SIMULATED_INTERVAL_S = Decimal(60)
# The escrow accepts at most 1,000 records per session (docs/sessions.md, READING_LIMIT): B, the C
# readings, the end reading.
MAX_SESSION_RECORDS = 1000
MAX_STEPS = MAX_SESSION_RECORDS - 2
TARIFF_VALIDITY_S = 365 * 86400
TARIFF_RENEW_S = 30 * 86400  # an unchanged tariff is published again when it expires within this
_ID = re.compile(r"[!-~]{1,64}")  # pole and EVSE ids: printable ASCII without spaces (escrow: <= 64)
_SESSION_HEX = re.compile(r"[0-9a-fA-F]{32}")
_LIMIT_TEXT = re.compile(r"[0-9]{1,20}(\.[0-9]{1,9})?")

SETTLED = charging_pb2.SESSION_STATE_SETTLED
_STATE_NAMES = {
    charging_pb2.SESSION_STATE_OPENED: "OPENED",
    charging_pb2.SESSION_STATE_ATTACHED: "ATTACHED",
    charging_pb2.SESSION_STATE_CHARGING: "CHARGING",
    charging_pb2.SESSION_STATE_CLOSING: "CLOSING",
    charging_pb2.SESSION_STATE_SETTLED: "SETTLED",
}


# --- the keys file ------------------------------------------------------------------------------------


@dataclass
class KeyFile:
    """The decrypted keys file and its passphrase, so it can be rewritten without asking again (the
    meter state is saved at the end of a charge that may have run for hours)."""

    path: str
    data: dict[str, Any]
    passphrase: bytes = field(repr=False)

    @classmethod
    def open(cls, path: str) -> KeyFile:
        if not Path(path).exists():
            raise CliError(
                "FILE_MISSING",
                f"{path} does not exist",
                f"create it first: {PROG} --keys {path} init",
                EXIT_USAGE,
            )
        passphrase = passphrase_from(PASSPHRASE_ENV, prompt=f"passphrase of the pole keys {path}: ")
        try:
            data = json.loads(read_secret_file(Path(path), KEYS_KIND, passphrase))
        except ValueError:
            data = None
        if not isinstance(data, dict) or data.get("version") != KEYS_VERSION:
            raise _malformed(path)
        return cls(path, data, passphrase)

    def save(self) -> None:
        """Rewrite the file atomically (owner-only, encrypted, the same passphrase)."""
        payload = json.dumps(self.data, sort_keys=True, separators=(",", ":")).encode()
        write_secret_file(Path(self.path), KEYS_KIND, payload, self.passphrase, overwrite=True)

    def meter(self) -> SimulatedMeter:
        m = self.data.get("meter")
        try:
            if not isinstance(m, dict):
                raise TypeError("no meter")
            key = serialization.load_pem_private_key(m["private_key_pem"].encode("ascii"), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ValueError("not an EC key")
            return SimulatedMeter(
                key,
                identity=MeterIdentity(MS=m["serial"]),
                RI=m["RI"],
                RU=m["RU"],
                register_kwh=Decimal(m["register_kwh"]),
                pagination=int(m["pagination"]),
            )
        except (KeyError, TypeError, ValueError, InvalidOperation):
            raise _malformed(self.path) from None

    def save_meter(
        self, meter: SimulatedMeter, *, reserve_records: int = 0, reserve_kwh: Decimal = Decimal(0)
    ) -> None:
        """Store the meter's counter and register, moved ahead by a reservation if one is given."""
        m = self.data["meter"]
        m["pagination"] = meter.pagination + reserve_records
        m["register_kwh"] = f"{meter.register_kwh + reserve_kwh:f}"
        self.save()

    def pole(self, payout_seed: bytes, meter: SimulatedMeter) -> Pole:
        try:
            seed = bytes.fromhex(self.data["operator_seed"])
            pole_id = self.data["pole_id"]
            if len(seed) != 32 or not isinstance(pole_id, str):
                raise ValueError("bad seed or pole id")
            tariff = self.data.get("tariff")
            tariff_body = bytes.fromhex(tariff["body"]) if isinstance(tariff, dict) else b""
        except (KeyError, TypeError, ValueError):
            raise _malformed(self.path) from None
        pole = Pole(seed, meter, pole_id, self.data.get("evse_id") or "-", payout_seed)
        pole.tariff_body = tariff_body
        return pole


def _malformed(path: str) -> CliError:
    return CliError(
        "SECRET_FILE_MALFORMED",
        f"{path} is not a version-{KEYS_VERSION} pole keys file",
        "name the file escrow-pole init wrote (--keys)",
    )


def _fingerprint(public_der: bytes) -> str:
    return hashlib.sha256(public_der).hexdigest()


# --- commands -------------------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    keys_path, wallet_path = need_file(args, "keys"), need_file(args, "wallet")
    pole_id = args.pole_id or f"POLE-{os.urandom(4).hex().upper()}"
    _check_id(pole_id, "--pole-id")
    if os.path.lexists(keys_path):
        raise CliError(
            "SECRET_FILE_EXISTS",
            f"{keys_path} already exists; refusing to overwrite it",
            "use another --keys file: a pole's keys (and its meter's counter) must never be replaced",
            EXIT_USAGE,
        )
    if os.path.lexists(wallet_path):
        wallet_seed = bytes.fromhex(read_wallet_file(wallet_path)["seed"])
        wallet_created = False
    else:
        wallet_seed = os.urandom(32)
        create_wallet_file(wallet_path, wallet_seed)
        wallet_created = True
    operator_seed = os.urandom(32)
    meter_key = ec.generate_private_key(ec.SECP256R1())
    public_der = meter_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    fingerprint = _fingerprint(public_der)
    pem = meter_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")
    values = {
        "version": KEYS_VERSION,
        "pole_id": pole_id,
        "operator_seed": operator_seed.hex(),
        "meter": {
            "private_key_pem": pem,
            "serial": f"SIM{fingerprint[:12].upper()}",
            "RI": DEFAULT_RI,
            "RU": "kWh",
            "pagination": 1,
            "register_kwh": "0.000",
        },
        "evse_id": None,
        "registered": None,
        "tariff": None,
    }
    write_json_secret(keys_path, KEYS_KIND, values, prompt=f"passphrase for the new pole keys {keys_path}: ")
    operator_key = ed25519_public_key(operator_seed).hex()
    payout = Wallet(wallet_seed).address.to_text()
    result = {
        "pole_id": pole_id,
        "operator_key": operator_key,
        "meter_fingerprint": fingerprint,
        "meter_algorithm": "ECDSA-secp256r1-SHA256",
        "keys": keys_path,
        "wallet": wallet_path,
        "wallet_created": wallet_created,
        "payout_address": payout,
    }
    emit(
        args,
        result,
        f"pole {pole_id}\n"
        f"operator key {operator_key}\n"
        f"meter key sha256:{fingerprint} (P-256, SIMULATED meter)\n"
        f"keys written to {keys_path}\n"
        f"payout wallet {wallet_path} ({'created' if wallet_created else 'existing'}): {payout}\n"
        f"next: {PROG} --target HOST:PORT --keys {keys_path} register --evse-id ID --price-per-kwh AMOUNT",
    )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    kf = KeyFile.open(need_file(args, "keys"))
    meter = kf.meter()
    pole = kf.pole(os.urandom(32), meter)
    registered = kf.data.get("registered")
    tariff = Tariff.from_bytes(pole.tariff_body) if pole.tariff_body else None
    fingerprint = _fingerprint(meter.public_key_der)
    result = {
        "pole_id": pole.pole_id,
        "evse_id": kf.data.get("evse_id"),
        "operator_key": pole.operator_key.hex(),
        "meter_fingerprint": fingerprint,
        "meter_algorithm": meter.algorithm,
        "meter_pagination": meter.pagination,
        "meter_register_kwh": f"{meter.register_kwh:f}",
        "registered_height": registered["height"] if isinstance(registered, dict) else None,
        "tariff_sequence": tariff.sequence if tariff else None,
        "tariff_hash": hashlib.sha256(pole.tariff_body).hexdigest() if tariff else None,
    }
    lines = [
        f"pole {pole.pole_id}" + (f" (EVSE {result['evse_id']})" if result["evse_id"] else ""),
        f"operator key {result['operator_key']}",
        f"meter key sha256:{fingerprint} (P-256, SIMULATED meter)",
        f"meter next PG T{meter.pagination}, register {meter.register_kwh:f} kWh",
        f"registered at height {result['registered_height']}" if registered else "not registered yet",
    ]
    if tariff is not None:
        lines.append(f"tariff {tariff.sequence} (the keys file's copy; prices need the chain's decimals)")
    emit(args, result, "\n".join(lines))
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    kf = KeyFile.open(need_file(args, "keys"))
    keys = kf.data
    registered = keys.get("registered")
    evse_id = args.evse_id or keys.get("evse_id")
    if not evse_id:
        usage_error("--evse-id ID is required to register the pole")
    _check_id(evse_id, "--evse-id")
    if registered and evse_id != keys.get("evse_id"):
        raise CliError(
            "EVSE_ID_FIXED",
            f"pole {keys['pole_id']} is registered with EVSE id {keys['evse_id']}, not {evse_id}",
            "a registration cannot change; omit --evse-id, or init a new pole for another EVSE",
            EXIT_USAGE,
        )
    check_decimal_syntax(args.price_per_kwh, "--price-per-kwh")  # before connecting
    check_decimal_syntax(args.session_fee, "--session-fee")
    with attested_chain(args) as chain:
        if args.currency is not None and args.currency != chain.currency:
            raise CliError(
                "CURRENCY_MISMATCH",
                f"the chain's currency is {chain.currency}, not {args.currency}",
                f"omit --currency or pass --currency {chain.currency}",
                EXIT_USAGE,
            )
        price = parse_price(args.price_per_kwh, chain.decimals)
        fee = parse_amount(args.session_fee, chain.decimals, "--session-fee")
        keys["evse_id"] = evse_id
        meter = kf.meter()
        pole = kf.pole(os.urandom(32), meter)  # the payout wallet plays no part in registering
        newly = False
        if not registered:
            registered, newly = _register(chain, kf, pole, args.timeout_s), True
        tariff, published = _publish_tariff(chain, kf, pole, price, fee, args.timeout_s)
        result = {
            "pole_id": pole.pole_id,
            "evse_id": evse_id,
            "registered_height": registered["height"],
            "newly_registered": newly,
            "currency": chain.currency,
            "price_numerator": tariff.price_numerator,
            "price_per_kwh": format_price(tariff.price_numerator, chain.decimals)
            .removesuffix("/kWh")
            .strip(),
            "session_fee_minor": tariff.session_fee_minor,
            "session_fee": format_amount(tariff.session_fee_minor, chain.decimals),
            "tariff_sequence": tariff.sequence,
            "tariff_published": published,
            "tariff_hash": hashlib.sha256(pole.tariff_body).hexdigest(),
            "tariff_not_after": tariff.not_after,
        }
        until = datetime.fromtimestamp(tariff.not_after, UTC).strftime("%Y-%m-%d")
        emit(
            args,
            result,
            (
                f"pole {pole.pole_id} registered at height {registered['height']} (EVSE {evse_id})"
                if newly
                else f"pole {pole.pole_id} is registered (height {registered['height']}, EVSE {evse_id})"
            )
            + "\n"
            + ("tariff " + str(tariff.sequence) + (" published: " if published else " unchanged: "))
            + f"{format_price(tariff.price_numerator, chain.decimals, chain.currency)}, "
            f"session fee {chain.amount(tariff.session_fee_minor)}, valid until {until}",
        )
    return 0


def _register(chain: Chain, kf: KeyFile, pole: Pole, timeout_s: float) -> dict[str, Any]:
    """RegisterPole (the meter signs its proof of possession: one pagination number, reserved first)."""
    conn = chain.connection
    kf.save_meter(pole.meter, reserve_records=1)
    try:
        request = pole.register_request(chain.attested.chain_id)
        try:
            answer = call(conn.registry.RegisterPole, request, timeout_s)
            registered = {"height": answer.entry.height, "entry_hash": answer.entry.entry_hash.hex()}
        except EscrowError as e:
            # Registered before, and the keys file did not learn it (a lost reply)? Then it is ours.
            listed = _find_pole(chain, pole.pole_id) if e.reason == "POLE_ID_IN_USE" else None
            body = PoleBody.from_bytes(listed.pole_body) if listed is not None else None
            if listed is None or body is None or body.operator_key != pole.operator_key:
                raise
            if body.evse_id != pole.evse_id:
                raise CliError(
                    "EVSE_ID_FIXED",
                    f"pole {pole.pole_id} is registered with EVSE id {body.evse_id}",
                    f"register again with --evse-id {body.evse_id}",
                    EXIT_USAGE,
                ) from None
            registered = {"height": listed.entry.height, "entry_hash": listed.entry.entry_hash.hex()}
        kf.data["registered"] = registered
        return registered
    finally:
        kf.save_meter(pole.meter)


def _publish_tariff(
    chain: Chain, kf: KeyFile, pole: Pole, price: int, fee: int, timeout_s: float
) -> tuple[Tariff, bool]:
    """The current tariff if it already says this (and is not about to expire), else a new one with
    the next sequence number."""
    stored = kf.data.get("tariff")
    now = int(time.time())
    if isinstance(stored, dict):
        current = Tariff.from_bytes(bytes.fromhex(stored["body"]))
        same = (current.currency, current.price_numerator, current.session_fee_minor) == (
            chain.currency,
            price,
            fee,
        )
        if (
            same
            and current.evse_id == pole.evse_id
            and current.not_before <= now < current.not_after - TARIFF_RENEW_S
        ):
            pole.tariff_body = bytes.fromhex(stored["body"])
            return current, False
        sequence = current.sequence + 1
    else:
        sequence = 1
    for attempt in range(2):
        request = pole.tariff_request(
            chain.attested.chain_id,
            chain.currency,
            price,
            fee,
            sequence=sequence,
            not_after=now + TARIFF_VALIDITY_S,
        )
        try:
            call(chain.connection.registry.PublishTariff, request, timeout_s)
            break
        except EscrowError as e:
            # The escrow holds a newer tariff than the keys file (restored from a backup?): go past it.
            listed = (
                _find_pole(chain, pole.pole_id) if e.reason == "TARIFF_SUPERSEDED" and attempt == 0 else None
            )
            if listed is None or not listed.tariff_body:
                raise
            sequence = Tariff.from_bytes(listed.tariff_body).sequence + 1
    kf.data["tariff"] = {"sequence": sequence, "body": pole.tariff_body.hex()}
    kf.save()
    return Tariff.from_bytes(pole.tariff_body), True


def _find_pole(chain: Chain, pole_id: str) -> registry_pb2.Pole | None:
    """The registry's listing of ``pole_id`` (ListPoles, every page)."""
    token = ""
    while True:
        page = call(
            chain.connection.registry.ListPoles,
            registry_pb2.ListPolesRequest(page_size=1024, page_token=token),
            chain.connection.timeout_s,
        )
        for listed in page.poles:
            if PoleBody.from_bytes(listed.pole_body).pole_id == pole_id:
                return listed  # type: ignore[no-any-return]
        token = page.next_page_token
        if not token:
            return None


# --- charge ------------------------------------------------------------------------------------------


@dataclass
class _Sent:
    record: str
    tx: str
    register_kwh: Decimal


@dataclass
class _Stream:
    begin_kwh: Decimal
    acks: list[AckBody] = field(default_factory=list)
    limit_kwh: Decimal | None = None
    settled: bool = False
    stopped_by: str | None = None  # "coverage_limit", "escrow" (an ACK STOP) or "operator" (Ctrl-C)


class _Watchdog:
    """Cancels the stream when the escrow stays silent for ``timeout_s`` after a record: the pole treats
    silence as stop."""

    def __init__(self, cancel: Callable[[], Any], timeout_s: float) -> None:
        self._cancel, self._timeout_s = cancel, timeout_s
        self._timer: threading.Timer | None = None
        self.fired = False

    def _fire(self) -> None:
        self.fired = True
        self._cancel()

    def arm(self) -> None:
        self.disarm()
        self._timer = threading.Timer(self._timeout_s, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def cmd_charge(args: argparse.Namespace) -> int:
    session_id = _session_id(args.session)
    total_kwh = Decimal(parse_decimal(args.kwh, 3, "--kwh")) * RESOLUTION_KWH
    power_kw = Decimal(parse_decimal(args.power_kw, 3, "--power-kw")).scaleb(-3)
    interval_s = Decimal(parse_decimal(args.interval_s, 3, "--interval-s")).scaleb(-3)
    if not 0 < power_kw <= MAX_POWER_KW:
        usage_error(f"--power-kw must be above 0 and at most {MAX_POWER_KW}")
    if interval_s > MAX_INTERVAL_S:
        usage_error(f"--interval-s is at most {MAX_INTERVAL_S}")
    plan = _plan(total_kwh, power_kw, interval_s)
    kf = KeyFile.open(need_file(args, "keys"))
    if not kf.data.get("registered") or not isinstance(kf.data.get("tariff"), dict):
        raise CliError(
            "POLE_NOT_REGISTERED",
            f"pole {kf.data.get('pole_id')} has no registration or tariff in {kf.path}",
            f"run {PROG} --keys {kf.path} register --evse-id ID --price-per-kwh AMOUNT first",
        )
    payout_seed = bytes.fromhex(read_wallet_file(need_file(args, "wallet"))["seed"])
    meter = kf.meter()
    pole = kf.pole(payout_seed, meter)
    tariff = Tariff.from_bytes(pole.tariff_body)
    with attested_chain(args) as chain:
        attested, conn = chain.attested, chain.connection
        try:
            answer = call(conn.charging.Attach, pole.attach_request(attested, session_id), args.timeout_s)
        except EscrowError as e:
            if e.reason not in _ATTACH_HINTS:
                raise
            raise CliError(
                e.reason, e.message.removeprefix(f"{e.reason}: "), _ATTACH_HINTS[e.reason]
            ) from None
        attach = _checked(attested, session_id, answer.ack)
        if attach.decision != "ATTACHED":
            raise CliError("ATTACH_REFUSED", f"the escrow answered the ATTACH with {attach.decision}")
        say(
            args,
            f"attached to session {session_id.hex()} at {pole.pole_id} "
            f"({format_price(tariff.price_numerator, chain.decimals, chain.currency)}, "
            f"session fee {chain.amount(tariff.session_fee_minor)}); meter handle {meter_handle(session_id)}",
        )
        # Reserve the counter and the register before the meter signs: B, every step, the end.
        kf.save_meter(meter, reserve_records=len(plan) + 2, reserve_kwh=total_kwh)
        try:
            stream = _stream(args, chain, pole, session_id, plan, interval_s)
        finally:
            kf.save_meter(meter)
        got = call(conn.charging.GetSession, pole.get_request(attested, session_id), args.timeout_s)
        delivered = meter.register_kwh - stream.begin_kwh
        result: dict[str, Any] = {
            "session_id": session_id.hex(),
            "pole_id": pole.pole_id,
            "state": _STATE_NAMES.get(got.state, "UNSPECIFIED"),
            "currency": chain.currency,
            "requested_kwh": f"{total_kwh:f}",
            "delivered_kwh": f"{delivered:f}",
            "begin_register_kwh": f"{stream.begin_kwh:f}",
            "end_register_kwh": f"{meter.register_kwh:f}",
            "coverage_limit_register_kwh": None if stream.limit_kwh is None else f"{stream.limit_kwh:f}",
            "stopped_early": delivered < total_kwh,
            "stopped_by": stream.stopped_by,
            "readings": len(stream.acks),
            "first_pg": stream.acks[0].pg if stream.acks else None,
            "last_pg": stream.acks[-1].pg if stream.acks else None,
        }
        if got.state != SETTLED:
            emit(args, result, f"session {session_id.hex()} is {result['state']}, not settled yet")
            raise CliError(
                "SESSION_NOT_SETTLED",
                f"the escrow did not settle the session (state {result['state']})",
                "it settles by itself once its grace period ends; the pole's note is then on the ledger "
                f"({PROG} balance)",
            )
        try:
            receipt = pole.open_receipt(attested, session_id, got.receipt_envelope).receipt
        except Exception as e:  # a receipt that does not open or verify: nothing to trust in it
            raise CliError("RECEIPT_INVALID", f"the pole's receipt does not verify: {e}") from None
        result.update(
            outcome=receipt.outcome,
            energy_kwh=receipt.energy_kwh,
            bill_minor=receipt.bill_minor,
            bill=format_amount(receipt.bill_minor, chain.decimals),
            pay_minor=receipt.note_amount_minor,
            pay=format_amount(receipt.note_amount_minor, chain.decimals),
            note_id=receipt.note_id.hex(),
            settle_entry_hash=receipt.settle_entry_hash.hex(),
        )
        why = {
            "coverage_limit": "at the deposit's coverage limit",
            "escrow": "the escrow said STOP",
            "operator": "stopped by the operator",
        }.get(stream.stopped_by or "", "")
        stop_note = f" of {total_kwh:f} requested ({why})" if delivered < total_kwh else ""
        emit(
            args,
            result,
            f"settled: {receipt.outcome}, {receipt.energy_kwh} kWh{stop_note}\n"
            f"pay {chain.amount(receipt.note_amount_minor)} (bill {chain.amount(receipt.bill_minor)})\n"
            f"payout note {receipt.note_id.hex()} in SETTLE entry {receipt.settle_entry_hash.hex()}",
        )
    return 0


_ATTACH_HINTS = {
    "SESSION_ALREADY_ATTACHED": "a pole attaches once: if an earlier charge of this session broke off, the "
    "session settles at its deadline with the readings the escrow acknowledged",
    "SESSION_SETTLED": "the session is over; ask the vehicle for a new session id",
    "TARIFF_MISMATCH": "the vehicle opened the session at another tariff; it must open again at the "
    "pole's current one",
    "TARIFF_SUPERSEDED": "the vehicle opened the session at an older tariff; it must open again at the "
    "pole's current one",
}


def _plan(total_kwh: Decimal, power_kw: Decimal, interval_s: Decimal) -> list[Decimal]:
    try:
        if interval_s > 0:
            plan = charge_plan(total_kwh, power_kw, interval_s)
            if len(plan) > MAX_STEPS:
                usage_error(
                    f"{len(plan)} readings are more than a session holds ({MAX_STEPS} between B and the end);"
                    " raise --interval-s or --power-kw"
                )
            return plan
        simulated = SIMULATED_INTERVAL_S
        while len(plan := charge_plan(total_kwh, power_kw, simulated)) > MAX_STEPS:
            simulated *= 2
        return plan
    except MeterError as e:
        raise CliError("USAGE", str(e), "raise --power-kw or --interval-s", EXIT_USAGE) from None


def _stream(
    args: argparse.Namespace,
    chain: Chain,
    pole: Pole,
    session_id: bytes,
    plan: list[Decimal],
    interval_s: Decimal,
) -> _Stream:
    """B, then one C per step, then the end reading, over ONE StreamReadings call. The request generator
    hands gRPC the next record only after the previous one's ACK arrived and verified, so nothing is
    delivered beyond the last signed coverage limit: a step that would pass it is cut at the limit, an
    ACK STOP (or a reached limit) sends the end reading at once. Ctrl-C stops delivering and sends the
    end reading (TX L, a local stop), so the session settles now; a second Ctrl-C abandons it."""
    attested, meter = chain.attested, pole.meter
    outbox: queue.Queue[charging_pb2.ReadingEnvelope | None] = queue.Queue()
    pending: list[_Sent] = []
    state = _Stream(begin_kwh=meter.register_kwh)
    ending = interrupted = False

    def requests() -> Iterator[charging_pb2.ReadingEnvelope]:
        while (item := outbox.get()) is not None:
            yield item

    def send(record: str, tx: str) -> None:
        pending.append(_Sent(record, tx, meter.register_kwh))
        outbox.put(pole.reading_envelope(attested, session_id, record))
        watchdog.arm()

    def stop_here(kind: str, why: str = "") -> None:
        nonlocal ending
        if why:
            say(args, f"  {why}: the meter signs the end reading")
        send(meter.end(kind), kind)
        ending = True

    steps = iter(plan)
    # The first Ctrl-C only raises a flag that the loop reads between readings (a KeyboardInterrupt
    # could land anywhere, even between signing a reading and sending it); a second one abandons.
    stop_requested = threading.Event()
    previous_handler = signal.getsignal(signal.SIGINT)

    def on_sigint(signum: int, frame: object) -> None:
        if stop_requested.is_set():
            signal.signal(signal.SIGINT, previous_handler)
            raise KeyboardInterrupt
        stop_requested.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, on_sigint)
    deadline_s = args.timeout_s + (len(plan) + 2) * (args.timeout_s + float(interval_s))
    begin = meter.begin(session_id)
    responses = chain.connection.charging.StreamReadings(requests(), timeout=deadline_s)
    watchdog = _Watchdog(responses.cancel, args.timeout_s)
    answers = iter(responses)
    send(begin, "B")
    try:
        while True:
            try:
                signed = next(answers, None)
            except KeyboardInterrupt:
                if ending:
                    raise
                interrupted = True
                stop_here("L", "interrupted (Ctrl-C again abandons the session)")
                continue
            if signed is None:
                break
            watchdog.disarm()
            sent = pending.pop(0) if pending else None
            ack = _checked(attested, session_id, signed)
            if sent is None or ack.reading_hash != hashlib.sha256(sent.record.encode()).digest():
                raise CliError("ACK_MISMATCH", "the escrow acknowledged a record this pole did not send")
            state.acks.append(ack)
            if ack.coverage_limit:
                state.limit_kwh = _limit_kwh(ack.coverage_limit, meter.RU)
            delivered = sent.register_kwh - state.begin_kwh
            limit_text = "-" if state.limit_kwh is None else f"{state.limit_kwh:f} kWh"
            say(
                args,
                f"  {ack.pg} {sent.tx}: {delivered:f} kWh delivered, register {sent.register_kwh:f} kWh, "
                f"coverage limit {limit_text}, {ack.decision}",
            )
            if ack.decision == "SETTLED":
                state.settled = True
                break
            if ending:
                if pending:
                    watchdog.arm()
                    continue  # the end reading's ACK is still to come
                break  # the end reading was answered without settling: GetSession tells the state
            if ack.decision == "STOP":  # deliver nothing more
                step, state.stopped_by = None, state.stopped_by or "escrow"
            else:
                step = next(steps, None)
            room = Decimal(0) if state.limit_kwh is None else state.limit_kwh - meter.register_kwh
            if step is not None and step > room:  # never beyond the signed coverage limit
                step, state.stopped_by = (room if room > 0 else None), "coverage_limit"
            if step is not None and interval_s > 0:
                stop_requested.wait(float(interval_s))  # the energy flows for one interval
            interrupted = interrupted or stop_requested.is_set()
            if step is not None and not interrupted:
                meter.advance(step)
                send(meter.reading(), "C")
            elif interrupted:
                stop_here("L", "interrupted (Ctrl-C again abandons the session)")
            else:
                stop_here("E", _STOP_WHY.get(state.stopped_by or "", ""))
    except grpc.RpcError as e:
        if watchdog.fired:
            raise CliError(
                "ACK_TIMEOUT",
                f"no acknowledgement within {args.timeout_s:g} s: the pole stopped delivering",
                "the session settles at its deadline with the readings the escrow acknowledged",
                EXIT_UNAVAILABLE,
            ) from None
        raise _stream_error(error_from(e)) from None
    finally:
        watchdog.disarm()
        outbox.put(None)  # ends the request stream (and the generator's thread)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, previous_handler)
    if interrupted:
        state.stopped_by = "operator"
    if not state.acks:
        raise CliError("NO_ACK", "the escrow closed the stream without acknowledging the B reading")
    return state


_STOP_WHY = {"coverage_limit": "coverage limit reached", "escrow": "the escrow said STOP"}


def _stream_error(e: EscrowError) -> CliError:
    if e.reason is None:
        unavailable = e.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        return CliError(
            e.code.name,
            f"the reading stream broke: {e.message}; the pole stopped delivering",
            "the session settles at its deadline with the readings the escrow acknowledged",
            EXIT_UNAVAILABLE if unavailable else EXIT_REFUSED,
        )
    return CliError(
        e.reason,
        f"the escrow refused a reading: {e.message.removeprefix(e.reason + ': ')}; "
        "the pole stopped delivering",
        "the session settles at its deadline with the readings the escrow acknowledged",
    )


def _checked(attested: Any, session_id: bytes, signed: charging_pb2.SignedAck) -> AckBody:
    try:
        return check_ack(attested, session_id, signed).body
    except (PoleError, ValueError) as e:
        raise CliError(
            "ACK_INVALID", f"an acknowledgement does not verify: {e}", "do not deliver energy"
        ) from None


def _limit_kwh(text: str, unit: str) -> Decimal:
    """The ACK's coverage limit (decimal text in the billed unit) in kWh."""
    if _LIMIT_TEXT.fullmatch(text) is None:
        raise CliError("ACK_INVALID", f"the coverage limit {text!r} is not a decimal number")
    value = Decimal(text)
    return value if unit == "kWh" else value.scaleb(-3)


# --- the payout wallet -------------------------------------------------------------------------------


def _scanned(args: argparse.Namespace, chain: Chain) -> Wallet:
    wallet = Wallet(bytes.fromhex(read_wallet_file(need_file(args, "wallet"))["seed"]))
    try:
        wallet.scan(chain.connection, chain.attested)
    except WalletError as e:
        raise CliError("LEDGER_INVALID", str(e), "check --target: the ledger does not verify") from None
    return wallet


def _notes(wallet: Wallet, chain: Chain) -> list[dict[str, Any]]:
    return [
        {
            "note_id": n.note_id.hex(),
            "height": n.height,
            "value_minor": n.value,
            "value": format_amount(n.value, chain.decimals),
        }
        for n in wallet.unspent()
    ]


def cmd_balance(args: argparse.Namespace) -> int:
    need_file(args, "wallet")
    with attested_chain(args) as chain:
        wallet = _scanned(args, chain)
        notes = _notes(wallet, chain)
        balance = wallet.balance()
        result = {
            "balance_minor": balance,
            "balance": format_amount(balance, chain.decimals),
            "currency": chain.currency,
            "notes": notes,
            "scanned_height": wallet.scanned_height,
            "address": wallet.address.to_text(),
        }
        lines = [
            f"balance {chain.amount(balance)} in {len(notes)} note(s) (ledger height {wallet.scanned_height})"
        ]
        lines += [
            f"  {n['value']:>10} {chain.currency}  note {n['note_id'][:16]}  height {n['height']}"
            for n in notes
        ]
        emit(args, result, "\n".join(lines))
    return 0


def cmd_redeem(args: argparse.Namespace) -> int:
    need_file(args, "wallet")
    check_decimal_syntax(args.amount, "--amount")  # before connecting
    reference = request_reference(args.reference, "redeem")
    with attested_chain(args) as chain:
        amount = parse_amount(args.amount, chain.decimals, "--amount")
        if amount == 0:
            usage_error("--amount must be above 0")
        wallet = _scanned(args, chain)
        balance = wallet.balance()
        if amount > balance:
            raise CliError(
                "INSUFFICIENT_FUNDS",
                f"the payout wallet holds {chain.amount(balance)}, less than {chain.amount(amount)}",
                f"{PROG} balance shows its notes",
            )
        try:
            request = wallet.redeem_request(chain.attested, chain.currency, amount, reference)
        except WalletError:
            values = ", ".join(chain.amount(n.value) for n in wallet.unspent())
            raise CliError(
                "NO_EXACT_NOTES",
                f"no set of unspent notes sums to exactly {chain.amount(amount)}: a REDEEM has no change "
                f"output, so it spends notes whose values add up to the amount exactly (notes: {values})",
                "redeem an amount that is the value of one note or a sum of several",
            ) from None
        answer = call(chain.connection.notes.Redeem, request, args.timeout_s)
        result = {
            "height": answer.entry.height,
            "entry_hash": answer.entry.entry_hash.hex(),
            "amount_minor": amount,
            "amount": format_amount(amount, chain.decimals),
            "currency": chain.currency,
            "reference": reference.decode(),
            "notes_spent": len(request.owner_signatures),
        }
        emit(
            args,
            result,
            f"redeemed {chain.amount(amount)}: REDEEM entry at height {answer.entry.height}, "
            f"reference {reference.decode()}\n"
            f"the issuer pays it out after approving it (escrow-issuer redemptions)",
        )
    return 0


# --- shared bits ----------------------------------------------------------------------------------------


def _check_id(value: str, option: str) -> None:
    if _ID.fullmatch(value) is None:
        usage_error(f"{option} is 1 to 64 printable ASCII characters without spaces, not {value!r}")


def _session_id(text: str) -> bytes:
    if _SESSION_HEX.fullmatch(text.strip()) is None:
        usage_error(f"--session is the session id the vehicle printed: 32 hex digits, not {text!r}")
    return bytes.fromhex(text.strip())


def _add_shared(parser: argparse.ArgumentParser, names: tuple[str, ...], *, suppress: bool) -> None:
    """The tool's shared options (clients.cli.add_shared_options) that ``names`` asks for."""
    files = {
        name: help_text
        for name, help_text in {
            "keys": "the pole's encrypted keys file",
            "wallet": "the pole's encrypted payout wallet file",
        }.items()
        if name in names
    }
    add_shared_options(parser, files, target="target" in names, suppress=suppress)


EPILOG = f"""\
exit codes: 0 done; 1 refused (the escrow's reason is printed), attestation failed, or a local check
failed (wrong passphrase, not enough funds); 2 bad usage (an argument, a missing or existing file);
3 the server cannot be reached. The passphrase comes from ${PASSPHRASE_ENV} or a prompt.
Docs: docs/escrow-pole.md"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="A charge point: operator and meter keys, registration and tariff, a simulated "
        "certified meter that charges a vehicle with signed OCMF readings, the payout wallet.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_shared(parser, ("keys", "wallet", "target"), suppress=False)
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

    p = command(
        "init",
        "create the keys file (operator key, meter key, pole id) and the payout wallet if it does not exist",
        ("keys", "wallet"),
    )
    p.add_argument("--pole-id", metavar="ID", help="the pole's id (default: POLE- and 8 random hex digits)")
    p.set_defaults(func=cmd_init)

    p = command("show", "print the pole's id, operator key, meter fingerprint and meter state", ("keys",))
    p.set_defaults(func=cmd_show)

    p = command(
        "register",
        "register the pole with its meter's proof of possession, and publish its tariff (again with a new "
        "price: only a new tariff is published)",
        ("keys", "target"),
    )
    p.add_argument("--evse-id", metavar="ID", help="the EVSE id (required the first time; it cannot change)")
    p.add_argument(
        "--price-per-kwh", metavar="AMOUNT", required=True, help="price per kWh in major units, e.g. 0.39"
    )
    p.add_argument("--session-fee", metavar="AMOUNT", default="0", help="fee per session in major units")
    p.add_argument("--currency", metavar="CODE", help="must be the chain's currency (default: the chain's)")
    p.set_defaults(func=cmd_register)

    p = command(
        "charge",
        "attach to a vehicle's session and charge it: the simulated meter streams signed OCMF readings, "
        "never beyond the escrow's signed coverage limit, then the end reading settles",
        ("keys", "wallet", "target"),
    )
    p.add_argument(
        "--session", metavar="ID", required=True, help="the session id the vehicle handed over (hex)"
    )
    p.add_argument("--kwh", metavar="X", required=True, help="energy to deliver, kWh with up to 3 decimals")
    p.add_argument("--power-kw", metavar="P", default=DEFAULT_POWER_KW, help="charging power (default 11)")
    p.add_argument(
        "--interval-s",
        metavar="S",
        default="0",
        help="seconds between readings (default 0: no waiting, one simulated minute per reading)",
    )
    p.set_defaults(func=cmd_charge)

    p = command("balance", "scan the ledger for the payout wallet's notes", ("wallet", "target"))
    p.set_defaults(func=cmd_balance)

    p = command(
        "redeem",
        "spend payout notes worth exactly AMOUNT into a REDEEM the issuer pays out",
        ("wallet", "target"),
    )
    p.add_argument(
        "--amount", metavar="AMOUNT", required=True, help="major units; notes must sum to it exactly"
    )
    p.add_argument("--reference", metavar="TEXT", help="the issuer's payout reference (default: random)")
    p.set_defaults(func=cmd_redeem)
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
        try:
            result: int = args.func(args)
        except MeterError as e:
            raise CliError("METER_REFUSED", str(e)) from None
        return result

    return run(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
