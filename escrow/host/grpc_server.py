"""The gRPC servicers of escrow.v1: decode, call the enclave, encode; nothing else.

Every servicer method takes the request's bytes fields as they came, hands them to the escrow engine
through the node (``EscrowNode.call`` / ``mutate``), and turns the answer into the response message.
Refusals become one status with a ``google.rpc.ErrorInfo`` carrying the stable reason (errors.py).
Public reads (the ledger, note envelopes, the head) come straight from the store: they are public.

Limits (DESIGN §10): the server refuses messages above ``MAX_MESSAGE_BYTES``, and an expensive call
whose remaining deadline is below ``MIN_DEADLINE_S`` (DEADLINE_TOO_SHORT) before doing any of it.
Streams per connection, calls in flight, streaming slots, idle streams and the per-peer request rate
are escrow.host.admission's (``Limits``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from enclave.errors import EnclaveError
from enclave.trusted.keybundle import KeyBundleError, check_nonce
from escrow.core import engine as eng
from escrow.core.encoding import BodyError, decode, encode
from escrow.core.errors import CoreError
from escrow.host.admission import (
    IdleMonitor,
    IdleWatch,
    Limits,
    PeerShares,
    RateLimiter,
    StreamSlots,
    peer_host,
)
from escrow.host.errors import DOMAIN, status_for
from escrow.host.node import EscrowNode, HostError
from escrow.host.store import MAX_PAGE_ENTRIES, MAX_PAGE_NOTES, StoreError
from escrow.v1 import (
    attestation_pb2,
    attestation_pb2_grpc,
    charging_pb2,
    charging_pb2_grpc,
    common_pb2,
    ledger_pb2,
    ledger_pb2_grpc,
    notes_pb2,
    notes_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)

log = logging.getLogger("escrow.server")

MAX_MESSAGE_BYTES = 4 << 20
MIN_DEADLINE_S = 0.05
MAX_READINGS_PER_STREAM = 100_000
SERVICE_NAMES = tuple(
    f"escrow.v1.{name}" for name in ("Attestation", "Registry", "Notes", "Charging", "Ledger")
)
T = TypeVar("T")

_STATES = {
    "OPENED": charging_pb2.SESSION_STATE_OPENED,
    "ATTACHED": charging_pb2.SESSION_STATE_ATTACHED,
    "CHARGING": charging_pb2.SESSION_STATE_CHARGING,
    "CLOSING": charging_pb2.SESSION_STATE_CLOSING,
    "SETTLED": charging_pb2.SESSION_STATE_SETTLED,
}


def abort(context: grpc.ServicerContext, reason: str, message: str) -> NoReturn:
    """End the call with the reason's status and an ErrorInfo naming the reason."""
    info = error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN)
    detail = any_pb2.Any()
    detail.Pack(info)
    code = status_for(reason)
    status = status_pb2.Status(
        code=getattr(code_pb2, code.name), message=f"{reason}: {message}", details=[detail]
    )
    context.abort_with_status(rpc_status.to_status(status))
    raise AssertionError("abort_with_status returned")  # pragma: no cover


def _guard(method: Callable[..., T]) -> Callable[..., T]:
    """Map every refusal to its status; unexpected errors become INTERNAL without details."""

    def run(self: Any, request: Any, context: grpc.ServicerContext) -> T:
        try:
            return method(self, request, context)
        except CoreError as e:
            abort(context, e.reason, e.detail)
        except BodyError as e:
            abort(context, "REQUEST_MALFORMED", str(e))
        except EnclaveError as e:
            log.error("enclave error in %s: %s", method.__name__, type(e).__name__)
            abort(context, "ENCLAVE_ERROR", "the enclave refused the call")
        except Exception:
            log.exception("internal error in %s", method.__name__)
            abort(context, "INTERNAL", "internal error")

    run.__name__ = method.__name__
    run.__doc__ = method.__doc__
    return run


def _check_deadline(context: grpc.ServicerContext) -> None:
    remaining = context.time_remaining()
    if remaining is not None and remaining < MIN_DEADLINE_S:
        raise HostError("DEADLINE_TOO_SHORT", f"less than {MIN_DEADLINE_S} s left; the call would not finish")


def _entry_ref(data: bytes) -> common_pb2.EntryRef:
    v = decode(eng.ENTRY_REF, data)
    return common_pb2.EntryRef(height=v["height"], entry_hash=v["entry_hash"])


def _signed_ack(data: bytes) -> charging_pb2.SignedAck:
    v = decode(eng.SIGNED_ACK, data)
    return charging_pb2.SignedAck(ack_body=v["ack_body"], enclave_signature=v["signature"])


class Servicers(
    attestation_pb2_grpc.AttestationServicer,
    registry_pb2_grpc.RegistryServicer,
    notes_pb2_grpc.NotesServicer,
    charging_pb2_grpc.ChargingServicer,
    ledger_pb2_grpc.LedgerServicer,
):
    """All five services over one node."""

    def __init__(self, node: EscrowNode) -> None:
        self.node = node

    def _now(self) -> int:
        return self.node.clock()

    def _mutate(self, method: str, request: Any, schema: Any, fields: dict[str, Any], ecall: str) -> bytes:
        """A mutating call through the node's idempotency (the key hashes the request's deterministic
        serialisation); the ecall payload is ``fields`` with the idempotency key and the host's time."""
        return self.node.mutate(
            method,
            request.request_id,
            request.SerializeToString(deterministic=True),
            lambda key: encode(schema, {"idempotency": key, "now_ms": self._now(), **fields}),
            ecall,
        )

    # --- Attestation ------------------------------------------------------------------------------

    @_guard
    def GetQuote(self, request: attestation_pb2.GetQuoteRequest, context: grpc.ServicerContext) -> Any:
        try:
            nonce = check_nonce(request.nonce)
        except KeyBundleError as e:
            raise HostError("NONCE_INVALID", str(e)) from None
        host = self.node.host
        if host is None:
            raise HostError("ENCLAVE_NOT_READY", "the enclave is not running")
        bundle = host.quote(nonce)
        return attestation_pb2.GetQuoteResponse(
            quote=bundle.quote,
            collateral_json=bundle.collateral_json,
            root_ca_der=bundle.root_ca_der,
            key_bundle=bundle.key_bundle,
        )

    @_guard
    def GetMeasurement(self, request: Any, context: grpc.ServicerContext) -> Any:
        host = self.node.host
        if host is None:
            raise HostError("ENCLAVE_NOT_READY", "the enclave is not running")
        i = host.identity
        return attestation_pb2.GetMeasurementResponse(
            mr_enclave=i.mr_enclave,
            mr_signer=i.mr_signer,
            isv_prod_id=i.isv_prod_id,
            isv_svn=i.isv_svn,
            debug=i.debug,
        )

    # --- Registry ---------------------------------------------------------------------------------

    @_guard
    def RegisterPole(self, request: registry_pb2.RegisterPoleRequest, context: grpc.ServicerContext) -> Any:
        _check_deadline(context)
        fields = {
            "pole_body": request.pole_body,
            "operator_signature": request.operator_signature,
            "pop_record": request.meter_pop_record,
        }
        result = self._mutate("RegisterPole", request, eng.REGISTER_CALL, fields, "register_pole")
        return registry_pb2.RegisterPoleResponse(entry=_entry_ref(result))

    @_guard
    def PublishTariff(self, request: registry_pb2.PublishTariffRequest, context: grpc.ServicerContext) -> Any:
        fields = {"tariff_body": request.tariff_body, "operator_signature": request.operator_signature}
        result = self._mutate("PublishTariff", request, eng.TARIFF_CALL, fields, "publish_tariff")
        return registry_pb2.PublishTariffResponse(tariff_hash=result)

    @_guard
    def ListPoles(self, request: registry_pb2.ListPolesRequest, context: grpc.ServicerContext) -> Any:
        limit = request.page_size or 100
        answer = decode(
            eng.POLES_RESULT,
            self.node.call(
                "list_poles", encode(eng.POLES_PAGE, {"after": request.page_token, "limit": min(limit, 1024)})
            ),
        )
        poles = []
        for raw in answer["poles"]:
            p = decode(eng.POLE_LISTING, raw)
            poles.append(
                registry_pb2.Pole(
                    pole_body=p["pole_body"],
                    operator_signature=p["operator_signature"],
                    entry=common_pb2.EntryRef(height=p["height"], entry_hash=p["entry_hash"]),
                    tariff_body=p["tariff_body"],
                    tariff_signature=p["tariff_signature"],
                )
            )
        return registry_pb2.ListPolesResponse(poles=poles, next_page_token=answer["next"])

    # --- Notes ------------------------------------------------------------------------------------

    @_guard
    def Mint(self, request: notes_pb2.MintRequest, context: grpc.ServicerContext) -> Any:
        _check_deadline(context)
        fields = {
            "mint_body": request.mint_body,
            "issuer_signature": request.issuer_signature,
            "amount_proof": request.amount_proof,
            "envelope": request.envelope,
        }
        result = self._mutate("Mint", request, eng.MINT_CALL, fields, "mint")
        v = decode(eng.MINT_RESULT, result)
        return notes_pb2.MintResponse(
            entry=common_pb2.EntryRef(height=v["height"], entry_hash=v["entry_hash"]), note_id=v["note_id"]
        )

    @_guard
    def Redeem(self, request: notes_pb2.RedeemRequest, context: grpc.ServicerContext) -> Any:
        _check_deadline(context)
        fields = {
            "redeem_body": request.redeem_body,
            "owner_signatures": list(request.owner_signatures),
            "amount_proof": request.amount_proof,
        }
        result = self._mutate("Redeem", request, eng.REDEEM_CALL, fields, "redeem")
        return notes_pb2.RedeemResponse(entry=_entry_ref(result))

    @_guard
    def ListEnvelopes(self, request: notes_pb2.ListEnvelopesRequest, context: grpc.ServicerContext) -> Any:
        # A page never ends inside an entry (an entry has at most two outputs), so next_height is exact.
        limit = max(2, min(request.max_notes or MAX_PAGE_NOTES, MAX_PAGE_NOTES))
        try:
            notes = self.node.store.notes_from(request.from_height, limit + 1)
        except StoreError as e:
            raise HostError("REQUEST_MALFORMED", e.detail) from None
        if len(notes) <= limit:
            page = notes
            next_height = page[-1].height + 1 if page else request.from_height
        else:
            next_height = notes[limit].height  # the first entry not (wholly) in this page
            page = [n for n in notes[:limit] if n.height != next_height]
        return notes_pb2.ListEnvelopesResponse(
            notes=[
                notes_pb2.NoteEnvelope(
                    note_id=n.note_id,
                    height=n.height,
                    commitment=n.commitment,
                    owner_key=n.owner_key,
                    envelope=n.envelope,
                )
                for n in page
            ],
            next_height=next_height,
        )

    # --- Charging ---------------------------------------------------------------------------------

    @_guard
    def Open(self, request: charging_pb2.OpenRequest, context: grpc.ServicerContext) -> Any:
        _check_deadline(context)
        fields = {
            "open_body": request.open_body,
            "owner_signatures": list(request.owner_signatures),
            "range_proof": request.range_proof,
            "change_envelope": request.change_envelope,
            "enclave_envelope": request.enclave_envelope,
        }
        result = self._mutate("Open", request, eng.OPEN_CALL, fields, "open")
        v = decode(eng.OPEN_RESULT, result)
        return charging_pb2.OpenResponse(
            entry=common_pb2.EntryRef(height=v["height"], entry_hash=v["entry_hash"]),
            session_tag=v["session_tag"],
        )

    @_guard
    def Attach(self, request: charging_pb2.AttachRequest, context: grpc.ServicerContext) -> Any:
        fields = {"session_id": request.session_id, "attach_envelope": request.attach_envelope}
        result = self._mutate("Attach", request, eng.ATTACH_CALL, fields, "attach")
        return charging_pb2.AttachResponse(ack=_signed_ack(result))

    def StreamReadings(
        self, requests: Iterator[charging_pb2.ReadingEnvelope], context: grpc.ServicerContext
    ) -> Iterator[charging_pb2.SignedAck]:
        """One signed ACK per reading envelope, in order; a refused reading ends the stream with its
        status (state unchanged); the pole reopens the stream to go on."""
        for count, request in enumerate(requests, start=1):
            if count > MAX_READINGS_PER_STREAM:
                abort(context, "READING_LIMIT", f"at most {MAX_READINGS_PER_STREAM} readings per stream")
            try:
                result = self.node.call(
                    "reading",
                    encode(
                        eng.READING_CALL,
                        {
                            "now_ms": self._now(),
                            "session_id": request.session_id,
                            "sequence": request.sequence,
                            "envelope": request.envelope,
                        },
                    ),
                )
            except CoreError as e:
                abort(context, e.reason, e.detail)
            except BodyError as e:
                abort(context, "REQUEST_MALFORMED", str(e))
            except EnclaveError as e:
                log.error("enclave error in StreamReadings: %s", type(e).__name__)
                abort(context, "ENCLAVE_ERROR", "the enclave refused the call")
            except Exception:
                log.exception("internal error in StreamReadings")
                abort(context, "INTERNAL", "internal error")
            yield _signed_ack(result)

    @_guard
    def Stop(self, request: charging_pb2.StopRequest, context: grpc.ServicerContext) -> Any:
        _check_deadline(context)
        fields = {"stop_body": request.stop_body, "signature": request.signature}
        result = self._mutate("Stop", request, eng.STOP_CALL, fields, "stop")
        v = decode(eng.STATE_RESULT, result)
        return charging_pb2.StopResponse(state=_STATES[v["state"]], receipt_envelope=v["receipt_envelope"])

    @_guard
    def GetSession(self, request: charging_pb2.GetSessionRequest, context: grpc.ServicerContext) -> Any:
        result = self.node.call(
            "get",
            encode(
                eng.GET_CALL,
                {
                    "now_ms": self._now(),
                    "session_id": request.session_id,
                    "get_body": request.request_body,
                    "signature": request.signature,
                },
            ),
        )
        v = decode(eng.STATE_RESULT, result)
        response = charging_pb2.GetSessionResponse(
            state=_STATES[v["state"]],
            receipt_envelope=v["receipt_envelope"],
            progress_envelope=v["progress_envelope"],
        )
        if v["last_ack"] is not None:
            response.last_ack.CopyFrom(_signed_ack(v["last_ack"]))
        return response

    # --- Ledger -----------------------------------------------------------------------------------

    def StreamEntries(
        self, request: ledger_pb2.StreamEntriesRequest, context: grpc.ServicerContext
    ) -> Iterator[common_pb2.LedgerEntry]:
        """Entries from ``from_height`` to the head (or ``max_entries``), paged from the store."""
        height, left = request.from_height, request.max_entries or (1 << 32)
        if height >= 1 << 63:
            abort(context, "REQUEST_MALFORMED", "from_height out of range")
        while left > 0 and context.is_active():
            page = self.node.store.entries_from(height, min(left, MAX_PAGE_ENTRIES))
            if not page:
                return
            for entry in page:
                yield common_pb2.LedgerEntry(
                    header=entry.header, payload=entry.payload, enclave_signature=entry.signature
                )
            height = page[-1].parsed.height + 1
            left -= len(page)

    @_guard
    def GetHead(self, request: ledger_pb2.GetHeadRequest, context: grpc.ServicerContext) -> Any:
        head = self.node.store.chain_head()
        return ledger_pb2.GetHeadResponse(
            chain_id=head.chain_id,
            head=common_pb2.EntryRef(height=max(head.height, 0), entry_hash=head.entry_hash),
        )


class _Undecodable:
    """What a request that is not valid protobuf turns into (the handler answers REQUEST_MALFORMED)."""


_UNDECODABLE = _Undecodable()


def _safe_deserializer(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception:  # DecodeError and anything else a hostile byte string provokes
            return _UNDECODABLE

    return deserialize


class _Gate:
    """The admission state of one server (escrow.host.admission), applied to every call as it starts."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.rate = RateLimiter(limits.peer_rate, limits.peer_burst)
        self.streams = StreamSlots(limits.stream_slots)
        self.peer_calls = PeerShares(limits.peer_calls)
        self.peer_streams = PeerShares(limits.peer_streams, streams=True)
        self.idle = IdleMonitor(min(1.0, limits.message_wait_s / 4, limits.stream_idle_s / 4))

    def take(self, context: grpc.ServicerContext, host: str) -> None:
        """One request's token from its peer's bucket, or the call ends RATE_LIMITED."""
        try:
            self.rate.take(host)
        except HostError as e:
            abort(context, e.reason, e.detail)

    @contextmanager
    def call(self, context: grpc.ServicerContext, *, streaming: bool) -> Iterator[IdleWatch]:
        """Admit a call that has just started (no message read yet): its token, its peer's share of
        the calls, for a stream a slot and its peer's share of them; and a watch that cancels the call
        while it waits too long for the client (its first message: message_wait_s; later, for a stream:
        stream_idle_s). Everything taken is given back exactly once when the call ends, however."""
        host = peer_host(context.peer())
        self.take(context, host)
        held: list[Callable[[], None]] = []
        released = threading.Lock()

        def release() -> None:
            if released.acquire(blocking=False):
                for undo in reversed(held):
                    undo()

        try:
            self.peer_calls.acquire(host)
            held.append(lambda: self.peer_calls.release(host))
            if streaming:
                self.streams.acquire()
                held.append(self.streams.release)
                self.peer_streams.acquire(host)
                held.append(lambda: self.peer_streams.release(host))
        except HostError as e:
            release()
            abort(context, e.reason, e.detail)

        def cancel_quiet() -> None:
            log.warning("cancelling a call from %s that stayed quiet", host)
            context.cancel()

        watch = self.idle.watch(cancel_quiet, self.limits.message_wait_s)
        held.append(lambda: self.idle.unwatch(watch))
        context.add_callback(release)  # also when grpc abandons the call without closing the generator
        try:
            yield watch
        finally:
            release()


def _first_request(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
    """The one request message of a unary call or server stream."""
    request = next(requests, _UNDECODABLE)
    if request is _UNDECODABLE:
        abort(context, "REQUEST_MALFORMED", "the request is missing or is not a valid protobuf message")
    return request


def _admitted(handler: grpc.RpcMethodHandler[Any, Any], gate: _Gate) -> grpc.RpcMethodHandler[Any, Any]:
    """The same method behind the gate, registered as a bidirectional stream (the same bytes on the wire)
    so that admission runs when the call starts, not once its request has arrived (escrow.host.admission).
    A request that does not parse gets INVALID_ARGUMENT REQUEST_MALFORMED (gRPC's own answer would be
    INTERNAL, and its failed stream would keep a connection slot)."""
    parse = handler.request_deserializer
    deserializer = _safe_deserializer(parse) if parse is not None else None
    idle_s = gate.limits.stream_idle_s
    if handler.unary_unary is not None:
        unary = handler.unary_unary

        def unary_unary(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
            with gate.call(context, streaming=False) as watch:
                request = _first_request(requests, context)
                watch.begin()
                response = unary(request, context)
                watch.end()
                yield response

        behavior = unary_unary
    elif handler.unary_stream is not None:
        server_stream = handler.unary_stream

        def unary_stream(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
            with gate.call(context, streaming=True) as watch:
                request = _first_request(requests, context)
                watch.limit_s = idle_s
                watch.begin()
                for response in server_stream(request, context):
                    watch.end()  # a client that stops reading blocks the yield: its silence, not ours
                    yield response
                    watch.begin()

        behavior = unary_stream
    elif handler.stream_stream is not None:
        bidi = handler.stream_stream

        def checked(
            requests: Iterator[Any], context: grpc.ServicerContext, watch: IdleWatch
        ) -> Iterator[Any]:
            host = peer_host(context.peer())  # once per stream, not per message
            for count, request in enumerate(requests):
                watch.begin()
                if count:
                    gate.take(context, host)  # the first message came with the call's token
                if request is _UNDECODABLE:
                    abort(context, "REQUEST_MALFORMED", "a message is not a valid protobuf message")
                yield request

        def stream_stream(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
            with gate.call(context, streaming=True) as watch:
                watch.limit_s = idle_s  # a stream may wait for its first message as long as for any
                for response in bidi(checked(requests, context, watch), context):
                    watch.end()  # one answer per request (StreamReadings: one ACK per reading)
                    yield response

        behavior = stream_stream
    else:
        raise ValueError("escrow.v1 has no client-streaming methods")
    return grpc.stream_stream_rpc_method_handler(behavior, deserializer, handler.response_serializer)


class _Registrar:
    """Stands in for the server while the generated add_*Servicer_to_server functions register their
    handlers, so that each can be wrapped (_admitted) before the real server sees it."""

    def __init__(self, server: grpc.Server, gate: _Gate) -> None:
        self._server, self._gate = server, gate
        self.generic: set[str] = set()
        self.registered: set[str] = set()

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """Not passed on: generated code registers the same handlers by method too (below), which are
        wrapped and added both ways. Which services came this way is kept for ``check``."""
        for handler in handlers:
            name = getattr(handler, "service_name", None)
            self.generic.add(name() if callable(name) else repr(handler))

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        self.registered.add(service)
        wrapped = {name: _admitted(h, self._gate) for name, h in handlers.items()}
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, wrapped),))
        self._server.add_registered_method_handlers(service, wrapped)

    def check(self) -> None:
        """Raise if a service registered only generic handlers: it would be missing, or (added as it
        came) outside admission. Generated code of another grpcio version might do that."""
        unwrapped = self.generic - self.registered
        if unwrapped:
            raise RuntimeError(f"services registered without per-method handlers: {sorted(unwrapped)}")


def create_server(
    node: EscrowNode, address: str = "127.0.0.1:0", limits: Limits | None = None
) -> tuple[grpc.Server, int]:
    """A started gRPC server for ``node`` on ``address`` (port 0 picks a free port); returns it and the
    port. Health (every escrow.v1 service SERVING until the node halts) and reflection are on, behind
    the same admission limits (escrow.host.admission; ``limits`` defaults to Limits()). Raises OSError
    if the address cannot be bound."""
    limits = limits or Limits()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=limits.rpc_threads, thread_name_prefix="escrow-rpc"),
        maximum_concurrent_rpcs=limits.rpc_threads,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_concurrent_streams", limits.connection_streams),
            ("grpc.so_reuseport", 0),
        ],
    )
    gate = _Gate(limits)
    servicers, registrar = Servicers(node), _Registrar(server, gate)
    attestation_pb2_grpc.add_AttestationServicer_to_server(servicers, registrar)
    registry_pb2_grpc.add_RegistryServicer_to_server(servicers, registrar)
    notes_pb2_grpc.add_NotesServicer_to_server(servicers, registrar)
    charging_pb2_grpc.add_ChargingServicer_to_server(servicers, registrar)
    ledger_pb2_grpc.add_LedgerServicer_to_server(servicers, registrar)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, registrar)  # type: ignore[arg-type]
    for name in ("", *SERVICE_NAMES):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    def not_serving() -> None:  # a halted node refuses every call until restarted: say so
        for name in ("", *SERVICE_NAMES):
            health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    node.on_halt.append(not_serving)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME),
        registrar,  # type: ignore[arg-type]
    )
    registrar.check()
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as e:  # grpcio raises when it cannot bind
        server.stop(None)
        raise OSError(f"could not listen on {address}: {e}") from None
    if port == 0:
        server.stop(None)
        raise OSError(f"could not listen on {address}")
    server.start()
    return server, port
