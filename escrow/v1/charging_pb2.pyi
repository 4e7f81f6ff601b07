from escrow.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SessionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SESSION_STATE_UNSPECIFIED: _ClassVar[SessionState]
    SESSION_STATE_OPENED: _ClassVar[SessionState]
    SESSION_STATE_ATTACHED: _ClassVar[SessionState]
    SESSION_STATE_CHARGING: _ClassVar[SessionState]
    SESSION_STATE_CLOSING: _ClassVar[SessionState]
    SESSION_STATE_SETTLED: _ClassVar[SessionState]
SESSION_STATE_UNSPECIFIED: SessionState
SESSION_STATE_OPENED: SessionState
SESSION_STATE_ATTACHED: SessionState
SESSION_STATE_CHARGING: SessionState
SESSION_STATE_CLOSING: SessionState
SESSION_STATE_SETTLED: SessionState

class OpenRequest(_message.Message):
    __slots__ = ("request_id", "open_body", "owner_signatures", "range_proof", "enclave_envelope", "change_envelope")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OPEN_BODY_FIELD_NUMBER: _ClassVar[int]
    OWNER_SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    RANGE_PROOF_FIELD_NUMBER: _ClassVar[int]
    ENCLAVE_ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    CHANGE_ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    open_body: bytes
    owner_signatures: _containers.RepeatedScalarFieldContainer[bytes]
    range_proof: bytes
    enclave_envelope: bytes
    change_envelope: bytes
    def __init__(self, request_id: _Optional[str] = ..., open_body: _Optional[bytes] = ..., owner_signatures: _Optional[_Iterable[bytes]] = ..., range_proof: _Optional[bytes] = ..., enclave_envelope: _Optional[bytes] = ..., change_envelope: _Optional[bytes] = ...) -> None: ...

class OpenResponse(_message.Message):
    __slots__ = ("entry", "session_tag")
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    SESSION_TAG_FIELD_NUMBER: _ClassVar[int]
    entry: _common_pb2.EntryRef
    session_tag: bytes
    def __init__(self, entry: _Optional[_Union[_common_pb2.EntryRef, _Mapping]] = ..., session_tag: _Optional[bytes] = ...) -> None: ...

class AttachRequest(_message.Message):
    __slots__ = ("request_id", "session_id", "attach_envelope")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ATTACH_ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    session_id: bytes
    attach_envelope: bytes
    def __init__(self, request_id: _Optional[str] = ..., session_id: _Optional[bytes] = ..., attach_envelope: _Optional[bytes] = ...) -> None: ...

class AttachResponse(_message.Message):
    __slots__ = ("ack",)
    ACK_FIELD_NUMBER: _ClassVar[int]
    ack: SignedAck
    def __init__(self, ack: _Optional[_Union[SignedAck, _Mapping]] = ...) -> None: ...

class ReadingEnvelope(_message.Message):
    __slots__ = ("session_id", "sequence", "envelope")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    sequence: int
    envelope: bytes
    def __init__(self, session_id: _Optional[bytes] = ..., sequence: _Optional[int] = ..., envelope: _Optional[bytes] = ...) -> None: ...

class SignedAck(_message.Message):
    __slots__ = ("ack_body", "enclave_signature")
    ACK_BODY_FIELD_NUMBER: _ClassVar[int]
    ENCLAVE_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    ack_body: bytes
    enclave_signature: bytes
    def __init__(self, ack_body: _Optional[bytes] = ..., enclave_signature: _Optional[bytes] = ...) -> None: ...

class StopRequest(_message.Message):
    __slots__ = ("request_id", "stop_body", "signature")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STOP_BODY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    stop_body: bytes
    signature: bytes
    def __init__(self, request_id: _Optional[str] = ..., stop_body: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class StopResponse(_message.Message):
    __slots__ = ("state", "receipt_envelope")
    STATE_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    state: SessionState
    receipt_envelope: bytes
    def __init__(self, state: _Optional[_Union[SessionState, str]] = ..., receipt_envelope: _Optional[bytes] = ...) -> None: ...

class GetSessionRequest(_message.Message):
    __slots__ = ("session_id", "request_body", "signature")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_BODY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    request_body: bytes
    signature: bytes
    def __init__(self, session_id: _Optional[bytes] = ..., request_body: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class GetSessionResponse(_message.Message):
    __slots__ = ("state", "receipt_envelope", "last_ack", "progress_envelope")
    STATE_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    LAST_ACK_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    state: SessionState
    receipt_envelope: bytes
    last_ack: SignedAck
    progress_envelope: bytes
    def __init__(self, state: _Optional[_Union[SessionState, str]] = ..., receipt_envelope: _Optional[bytes] = ..., last_ack: _Optional[_Union[SignedAck, _Mapping]] = ..., progress_envelope: _Optional[bytes] = ...) -> None: ...
