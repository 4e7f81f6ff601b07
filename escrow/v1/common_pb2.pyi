from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class LedgerEntry(_message.Message):
    __slots__ = ("header", "payload", "enclave_signature")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    ENCLAVE_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    header: bytes
    payload: bytes
    enclave_signature: bytes
    def __init__(self, header: _Optional[bytes] = ..., payload: _Optional[bytes] = ..., enclave_signature: _Optional[bytes] = ...) -> None: ...

class EntryRef(_message.Message):
    __slots__ = ("height", "entry_hash")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    ENTRY_HASH_FIELD_NUMBER: _ClassVar[int]
    height: int
    entry_hash: bytes
    def __init__(self, height: _Optional[int] = ..., entry_hash: _Optional[bytes] = ...) -> None: ...
