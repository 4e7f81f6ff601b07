from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class GetQuoteRequest(_message.Message):
    __slots__ = ("nonce",)
    NONCE_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    def __init__(self, nonce: _Optional[bytes] = ...) -> None: ...

class GetQuoteResponse(_message.Message):
    __slots__ = ("quote", "collateral_json", "root_ca_der", "key_bundle")
    QUOTE_FIELD_NUMBER: _ClassVar[int]
    COLLATERAL_JSON_FIELD_NUMBER: _ClassVar[int]
    ROOT_CA_DER_FIELD_NUMBER: _ClassVar[int]
    KEY_BUNDLE_FIELD_NUMBER: _ClassVar[int]
    quote: bytes
    collateral_json: str
    root_ca_der: bytes
    key_bundle: bytes
    def __init__(self, quote: _Optional[bytes] = ..., collateral_json: _Optional[str] = ..., root_ca_der: _Optional[bytes] = ..., key_bundle: _Optional[bytes] = ...) -> None: ...

class GetMeasurementRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetMeasurementResponse(_message.Message):
    __slots__ = ("mr_enclave", "mr_signer", "isv_prod_id", "isv_svn", "debug")
    MR_ENCLAVE_FIELD_NUMBER: _ClassVar[int]
    MR_SIGNER_FIELD_NUMBER: _ClassVar[int]
    ISV_PROD_ID_FIELD_NUMBER: _ClassVar[int]
    ISV_SVN_FIELD_NUMBER: _ClassVar[int]
    DEBUG_FIELD_NUMBER: _ClassVar[int]
    mr_enclave: bytes
    mr_signer: bytes
    isv_prod_id: int
    isv_svn: int
    debug: bool
    def __init__(self, mr_enclave: _Optional[bytes] = ..., mr_signer: _Optional[bytes] = ..., isv_prod_id: _Optional[int] = ..., isv_svn: _Optional[int] = ..., debug: _Optional[bool] = ...) -> None: ...
