from escrow.v1 import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StreamEntriesRequest(_message.Message):
    __slots__ = ("from_height", "max_entries")
    FROM_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    MAX_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    from_height: int
    max_entries: int
    def __init__(self, from_height: _Optional[int] = ..., max_entries: _Optional[int] = ...) -> None: ...

class GetHeadRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetHeadResponse(_message.Message):
    __slots__ = ("chain_id", "head")
    CHAIN_ID_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    chain_id: bytes
    head: _common_pb2.EntryRef
    def __init__(self, chain_id: _Optional[bytes] = ..., head: _Optional[_Union[_common_pb2.EntryRef, _Mapping]] = ...) -> None: ...
