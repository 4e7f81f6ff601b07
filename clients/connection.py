"""A client's connection to an escrow: the gRPC channel, attestation before any secret, error reasons.

Every role starts the same way (DESIGN §7.1 step 2): connect, fetch a quote for a fresh nonce, verify it
against a pinned policy (the root CA, the expected MRENCLAVE or MRSIGNER, the minimum ISVSVN), and only
then use the keys the quote commits to. ``Connection.attest`` returns those keys as ``Attested``; nothing
in the clients seals a secret to an enclave key that did not come from there.

Errors: a refused call raises ``EscrowError`` with the server's stable reason (from
``google.rpc.ErrorInfo``) and its gRPC status; transport failures keep their gRPC status with reason None.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from enclave.errors import AttestationError
from enclave.trusted.keybundle import KeyBundle
from enclave.verifier import Policy, VerificationReport, verify_quote
from escrow.core.ledger import Entry
from escrow.core.signing import p256_key_id
from escrow.v1 import (
    attestation_pb2,
    attestation_pb2_grpc,
    charging_pb2_grpc,
    ledger_pb2,
    ledger_pb2_grpc,
    notes_pb2_grpc,
    registry_pb2_grpc,
)

DEFAULT_TIMEOUT_S = 30.0
STREAM_PAGE = 4096  # entries per StreamEntries call
MAX_MESSAGE_BYTES = 4 << 20
T = TypeVar("T")


class EscrowError(Exception):
    """A call the escrow refused: ``reason`` is its stable reason (None for transport failures)."""

    def __init__(self, code: grpc.StatusCode, reason: str | None, message: str) -> None:
        super().__init__(f"{reason or code.name}: {message}")
        self.code, self.reason, self.message = code, reason, message


def error_from(e: grpc.RpcError) -> EscrowError:
    """The EscrowError of a failed call, with the ErrorInfo reason if the server sent one."""
    code = e.code() if isinstance(e, grpc.Call) else grpc.StatusCode.UNKNOWN
    message = e.details() if isinstance(e, grpc.Call) else str(e)
    reason = None
    status = rpc_status.from_call(e) if isinstance(e, grpc.Call) else None
    if status is not None:
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Is(info.DESCRIPTOR) and detail.Unpack(info):
                reason = info.reason
    return EscrowError(code, reason, message or "")


def call(fn: Callable[..., T], request: Any, timeout: float = DEFAULT_TIMEOUT_S, **kwargs: Any) -> T:
    """Invoke a unary RPC with a deadline; failures become EscrowError."""
    try:
        return fn(request, timeout=timeout, **kwargs)
    except grpc.RpcError as e:
        raise error_from(e) from None


@dataclass(frozen=True)
class Attested:
    """What a verified quote vouches for: the enclave's keys and chain, and the verification report."""

    bundle: KeyBundle
    report: VerificationReport
    root_ca_der: bytes

    @property
    def chain_id(self) -> bytes:
        return self.bundle.chain_id

    @property
    def ledger_key(self) -> bytes:
        return self.bundle.ledger_key

    @property
    def encryption_key(self) -> bytes:
        return self.bundle.encryption_key

    @property
    def enclave_key_id(self) -> bytes:
        return p256_key_id(self.bundle.ledger_key)


class Connection:
    """A channel to one escrow server, over its own TCP connection, with a stub per service."""

    def __init__(self, target: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self.channel = grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                # its own TCP connection: gRPC would otherwise share one among every channel of the
                # process to the same target, and with it the server's per-connection stream limit
                ("grpc.use_local_subchannel_pool", 1),
            ],
        )
        self.attestation = attestation_pb2_grpc.AttestationStub(self.channel)
        self.registry = registry_pb2_grpc.RegistryStub(self.channel)
        self.notes = notes_pb2_grpc.NotesStub(self.channel)
        self.charging = charging_pb2_grpc.ChargingStub(self.channel)
        self.ledger = ledger_pb2_grpc.LedgerStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def attest(self, policy: Policy) -> Attested:
        """Fetch a quote for a fresh 32-byte nonce and verify it under ``policy`` (its nonce and key bundle
        are filled in here). Raises AttestationError (stable reason) unless every check passes, and
        refuses an enclave that has no chain yet."""
        nonce = os.urandom(32)
        answer = call(self.attestation.GetQuote, attestation_pb2.GetQuoteRequest(nonce=nonce), self.timeout_s)
        report = verify_quote(
            answer.quote, answer.collateral_json, replace(policy, nonce=nonce, key_bundle=answer.key_bundle)
        )
        bundle = KeyBundle.from_bytes(answer.key_bundle)
        if bundle.chain_id == bytes(32):
            raise AttestationError("KEY_BUNDLE_MISMATCH", "the enclave has no chain yet")
        return Attested(bundle=bundle, report=report, root_ca_der=policy.root_ca_der)

    def entries(
        self, from_height: int = 0, max_entries: int = 0, *, page: int = STREAM_PAGE
    ) -> Iterator[Entry]:
        """The ledger's entries from a height (all of them to the head when ``max_entries`` is 0), as the
        server streams them: one StreamEntries call per ``page`` entries, each with its own deadline, so
        a slow consumer (an audit) never runs one call out of time."""
        if page < 1:
            raise ValueError("page is at least 1")
        height, left = from_height, max_entries or None
        while left is None or left > 0:
            want = page if left is None else min(page, left)
            request = ledger_pb2.StreamEntriesRequest(from_height=height, max_entries=want)
            count = 0
            try:
                for e in self.ledger.StreamEntries(request, timeout=max(self.timeout_s, 300.0)):
                    count += 1
                    yield Entry(e.header, e.payload, e.enclave_signature)
            except grpc.RpcError as e:
                raise error_from(e) from None
            height += count
            if left is not None:
                left -= count
            if count < want:
                return
