"""One mapping from the escrow's stable reasons to gRPC status codes (DESIGN §8, docs/errors.md).

Every refusal in the trusted core and the host carries a stable ``reason`` (escrow.core.errors.CoreError).
``status_for`` names its gRPC code: malformed input is INVALID_ARGUMENT, a valid request in the wrong
state FAILED_PRECONDITION, an unknown object NOT_FOUND, a duplicate ALREADY_EXISTS, a bad signature or a
party that may not act PERMISSION_DENIED, a limit RESOURCE_EXHAUSTED. The reason travels to the client as
``google.rpc.ErrorInfo`` (domain "escrow.v1") next to the status; the message says what went wrong and
never carries a secret. A reason missing from the table is a bug: ``status_for`` reports it as INTERNAL,
and a test keeps every reason the code can raise in the table.
"""

from __future__ import annotations

import grpc

DOMAIN = "escrow.v1"

_INVALID = grpc.StatusCode.INVALID_ARGUMENT
_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
_NOT_FOUND = grpc.StatusCode.NOT_FOUND
_EXISTS = grpc.StatusCode.ALREADY_EXISTS
_DENIED = grpc.StatusCode.PERMISSION_DENIED
_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE

STATUS_BY_REASON: dict[str, grpc.StatusCode] = {
    # requests and bodies
    "REQUEST_MALFORMED": _INVALID,
    "REQUEST_ID_INVALID": _INVALID,
    "REQUEST_TOO_LARGE": _EXHAUSTED,
    "BODY_MALFORMED": _INVALID,
    "PAYLOAD_MALFORMED": _INVALID,
    "IDEMPOTENCY_KEY_REUSED": _EXISTS,
    "DEADLINE_TOO_SHORT": grpc.StatusCode.DEADLINE_EXCEEDED,
    "RATE_LIMITED": _EXHAUSTED,
    "STREAMS_LIMIT": _EXHAUSTED,
    "CALLS_LIMIT": _EXHAUSTED,
    "SESSIONS_LIMIT": _EXHAUSTED,
    # the enclave
    "ENCLAVE_HALTED": _UNAVAILABLE,
    "ENCLAVE_NOT_READY": _UNAVAILABLE,
    "ENCLAVE_STARTED": _PRECONDITION,
    "ENCLAVE_ERROR": _UNAVAILABLE,  # the enclave runtime failed (sealing, boundary): restart the server
    "INTERNAL": grpc.StatusCode.INTERNAL,  # an unexpected error: logged on the server, no details sent
    "NONCE_INVALID": _INVALID,
    # MINT
    "MINT_MALFORMED": _INVALID,
    "MINT_ISSUER_UNKNOWN": _DENIED,
    "MINT_EXPIRED": _PRECONDITION,
    "MINT_CURRENCY_MISMATCH": _INVALID,
    "MINT_ENVELOPE_MISMATCH": _INVALID,
    "MINT_SIGNATURE_INVALID": _DENIED,
    "MINT_PROOF_INVALID": _INVALID,
    "MINT_REFERENCE_USED": _EXISTS,
    # OPEN and REDEEM
    "SPEND_MALFORMED": _INVALID,
    "SPEND_EXPIRED": _PRECONDITION,
    "SPEND_DEADLINE_INVALID": _INVALID,
    "SPEND_WRONG_ENCLAVE_KEY": _INVALID,
    "SPEND_CURRENCY_MISMATCH": _INVALID,
    "SPEND_ENVELOPE_MISMATCH": _INVALID,
    "SPEND_NOTE_NOT_FOUND": _NOT_FOUND,
    "SPEND_DEPOSIT_AS_INPUT": _PRECONDITION,
    "SPEND_NOTE_SPENT": _PRECONDITION,
    "SPEND_SIGNATURE_INVALID": _DENIED,
    "SPEND_UNBALANCED": _INVALID,
    "SPEND_PROOF_INVALID": _INVALID,
    # POLE
    "POLE_MALFORMED": _INVALID,
    "POLE_EXPIRED": _PRECONDITION,
    "POLE_KEY_INVALID": _INVALID,
    "POLE_INSECURE_CURVE": _INVALID,
    "POLE_SIGNATURE_INVALID": _DENIED,
    "POLE_POP_MISMATCH": _INVALID,
    "POLE_POP_INVALID": _DENIED,
    "POLE_METER_IN_USE": _EXISTS,
    "POLE_EVSE_IN_USE": _EXISTS,
    "POLE_ID_IN_USE": _EXISTS,
    "POLE_NOT_FOUND": _NOT_FOUND,
    # TARIFF and billing
    "TARIFF_MALFORMED": _INVALID,
    "TARIFF_EXPIRED": _PRECONDITION,
    "TARIFF_NOT_YET_VALID": _PRECONDITION,
    "TARIFF_SIGNATURE_INVALID": _DENIED,
    "TARIFF_SUPERSEDED": _PRECONDITION,
    "TARIFF_MISMATCH": _PRECONDITION,
    "DEPOSIT_BELOW_FEE": _PRECONDITION,
    # sessions
    "SESSION_MALFORMED": _INVALID,
    "SESSION_ENVELOPE_INVALID": _INVALID,
    "SESSION_DEPOSIT_MISMATCH": _INVALID,
    "SESSION_EXISTS": _EXISTS,
    "SESSION_NOT_FOUND": _NOT_FOUND,
    "SESSION_WRONG_STATE": _PRECONDITION,
    "SESSION_ALREADY_ATTACHED": _EXISTS,
    "SESSION_SETTLED": _PRECONDITION,
    "SESSION_EXPIRED": _PRECONDITION,
    "SESSION_WRONG_ENCLAVE_KEY": _INVALID,
    "ATTACH_WRONG_POLE": _DENIED,
    "ATTACH_SIGNATURE_INVALID": _DENIED,
    "STOP_SIGNATURE_INVALID": _DENIED,
    "STOP_REPLAYED": _PRECONDITION,
    "GET_SIGNATURE_INVALID": _DENIED,
    "ACK_MALFORMED": _INVALID,
    "RECEIPT_MALFORMED": _INVALID,
    "PROGRESS_MALFORMED": _INVALID,
    # readings (escrow.core.readings)
    "READING_ENVELOPE_INVALID": _INVALID,
    "READING_TOO_LARGE": _INVALID,
    "READING_MALFORMED": _INVALID,
    "READING_LIMIT": _EXHAUSTED,
    "READING_AFTER_DEADLINE": _PRECONDITION,
    "READING_NOT_TRANSACTION": _INVALID,
    "READING_WRONG_SESSION": _DENIED,
    "READING_SIGNATURE_INVALID": _DENIED,
    "READING_PG_REUSED": _PRECONDITION,
    "READING_AFTER_END": _PRECONDITION,
    "READING_OUT_OF_ORDER": _PRECONDITION,
    "READING_DUPLICATE_BEGIN": _PRECONDITION,
    "READING_WRONG_REGISTER": _INVALID,
    "READING_NOT_MONOTONE": _PRECONDITION,
    "READING_STATUS_NOT_GOOD": _PRECONDITION,
    "READING_ERROR_FLAG": _PRECONDITION,
    # billing and settlement internals that reach a caller only through bad input
    "BILLING_AMOUNT_INVALID": _INVALID,
    "BALANCE_MALFORMED": _INVALID,
    # the store's own refusals (an honest host never hits these from a valid request)
    "STORE_INVALID": grpc.StatusCode.INTERNAL,
    "STORE_FOREIGN": grpc.StatusCode.INTERNAL,
    "STORE_ROLLED_BACK": grpc.StatusCode.INTERNAL,
    "GENESIS_INVALID": _INVALID,
    "GENESIS_CONFIG_MISSING": _PRECONDITION,
}


def status_for(reason: str) -> grpc.StatusCode:
    """The gRPC status of a stable reason (INTERNAL for a reason missing from the table: a bug)."""
    return STATUS_BY_REASON.get(reason, grpc.StatusCode.INTERNAL)
