from escrow.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MintRequest(_message.Message):
    __slots__ = ("request_id", "mint_body", "issuer_signature", "amount_proof", "envelope")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MINT_BODY_FIELD_NUMBER: _ClassVar[int]
    ISSUER_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_PROOF_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    mint_body: bytes
    issuer_signature: bytes
    amount_proof: bytes
    envelope: bytes
    def __init__(self, request_id: _Optional[str] = ..., mint_body: _Optional[bytes] = ..., issuer_signature: _Optional[bytes] = ..., amount_proof: _Optional[bytes] = ..., envelope: _Optional[bytes] = ...) -> None: ...

class MintResponse(_message.Message):
    __slots__ = ("entry", "note_id")
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    NOTE_ID_FIELD_NUMBER: _ClassVar[int]
    entry: _common_pb2.EntryRef
    note_id: bytes
    def __init__(self, entry: _Optional[_Union[_common_pb2.EntryRef, _Mapping]] = ..., note_id: _Optional[bytes] = ...) -> None: ...

class RedeemRequest(_message.Message):
    __slots__ = ("request_id", "redeem_body", "owner_signatures", "amount_proof")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REDEEM_BODY_FIELD_NUMBER: _ClassVar[int]
    OWNER_SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_PROOF_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    redeem_body: bytes
    owner_signatures: _containers.RepeatedScalarFieldContainer[bytes]
    amount_proof: bytes
    def __init__(self, request_id: _Optional[str] = ..., redeem_body: _Optional[bytes] = ..., owner_signatures: _Optional[_Iterable[bytes]] = ..., amount_proof: _Optional[bytes] = ...) -> None: ...

class RedeemResponse(_message.Message):
    __slots__ = ("entry",)
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    entry: _common_pb2.EntryRef
    def __init__(self, entry: _Optional[_Union[_common_pb2.EntryRef, _Mapping]] = ...) -> None: ...

class ListEnvelopesRequest(_message.Message):
    __slots__ = ("from_height", "max_notes")
    FROM_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    MAX_NOTES_FIELD_NUMBER: _ClassVar[int]
    from_height: int
    max_notes: int
    def __init__(self, from_height: _Optional[int] = ..., max_notes: _Optional[int] = ...) -> None: ...

class NoteEnvelope(_message.Message):
    __slots__ = ("note_id", "height", "commitment", "owner_key", "envelope")
    NOTE_ID_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    COMMITMENT_FIELD_NUMBER: _ClassVar[int]
    OWNER_KEY_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    note_id: bytes
    height: int
    commitment: bytes
    owner_key: bytes
    envelope: bytes
    def __init__(self, note_id: _Optional[bytes] = ..., height: _Optional[int] = ..., commitment: _Optional[bytes] = ..., owner_key: _Optional[bytes] = ..., envelope: _Optional[bytes] = ...) -> None: ...

class ListEnvelopesResponse(_message.Message):
    __slots__ = ("notes", "next_height")
    NOTES_FIELD_NUMBER: _ClassVar[int]
    NEXT_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    notes: _containers.RepeatedCompositeFieldContainer[NoteEnvelope]
    next_height: int
    def __init__(self, notes: _Optional[_Iterable[_Union[NoteEnvelope, _Mapping]]] = ..., next_height: _Optional[int] = ...) -> None: ...
