from escrow.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterPoleRequest(_message.Message):
    __slots__ = ("request_id", "pole_body", "operator_signature", "meter_pop_record")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    POLE_BODY_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    METER_POP_RECORD_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    pole_body: bytes
    operator_signature: bytes
    meter_pop_record: bytes
    def __init__(self, request_id: _Optional[str] = ..., pole_body: _Optional[bytes] = ..., operator_signature: _Optional[bytes] = ..., meter_pop_record: _Optional[bytes] = ...) -> None: ...

class RegisterPoleResponse(_message.Message):
    __slots__ = ("entry",)
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    entry: _common_pb2.EntryRef
    def __init__(self, entry: _Optional[_Union[_common_pb2.EntryRef, _Mapping]] = ...) -> None: ...

class PublishTariffRequest(_message.Message):
    __slots__ = ("request_id", "tariff_body", "operator_signature")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TARIFF_BODY_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    tariff_body: bytes
    operator_signature: bytes
    def __init__(self, request_id: _Optional[str] = ..., tariff_body: _Optional[bytes] = ..., operator_signature: _Optional[bytes] = ...) -> None: ...

class PublishTariffResponse(_message.Message):
    __slots__ = ("tariff_hash",)
    TARIFF_HASH_FIELD_NUMBER: _ClassVar[int]
    tariff_hash: bytes
    def __init__(self, tariff_hash: _Optional[bytes] = ...) -> None: ...

class ListPolesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class Pole(_message.Message):
    __slots__ = ("pole_body", "operator_signature", "entry", "tariff_body", "tariff_signature")
    POLE_BODY_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    TARIFF_BODY_FIELD_NUMBER: _ClassVar[int]
    TARIFF_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    pole_body: bytes
    operator_signature: bytes
    entry: _common_pb2.EntryRef
    tariff_body: bytes
    tariff_signature: bytes
    def __init__(self, pole_body: _Optional[bytes] = ..., operator_signature: _Optional[bytes] = ..., entry: _Optional[_Union[_common_pb2.EntryRef, _Mapping]] = ..., tariff_body: _Optional[bytes] = ..., tariff_signature: _Optional[bytes] = ...) -> None: ...

class ListPolesResponse(_message.Message):
    __slots__ = ("poles", "next_page_token")
    POLES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    poles: _containers.RepeatedCompositeFieldContainer[Pole]
    next_page_token: str
    def __init__(self, poles: _Optional[_Iterable[_Union[Pole, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
