from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Format(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FORMAT_UNSPECIFIED: _ClassVar[Format]
    FORMAT_JSON: _ClassVar[Format]
    FORMAT_YAML: _ClassVar[Format]
    FORMAT_ENV: _ClassVar[Format]
    FORMAT_RAW: _ClassVar[Format]

class EventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_KIND_UNSPECIFIED: _ClassVar[EventKind]
    EVENT_KIND_SNAPSHOT: _ClassVar[EventKind]
    EVENT_KIND_CONTENT_CHANGED: _ClassVar[EventKind]
    EVENT_KIND_RECRYPTED: _ClassVar[EventKind]
    EVENT_KIND_DELETED: _ClassVar[EventKind]
    EVENT_KIND_ERROR: _ClassVar[EventKind]
FORMAT_UNSPECIFIED: Format
FORMAT_JSON: Format
FORMAT_YAML: Format
FORMAT_ENV: Format
FORMAT_RAW: Format
EVENT_KIND_UNSPECIFIED: EventKind
EVENT_KIND_SNAPSHOT: EventKind
EVENT_KIND_CONTENT_CHANGED: EventKind
EVENT_KIND_RECRYPTED: EventKind
EVENT_KIND_DELETED: EventKind
EVENT_KIND_ERROR: EventKind

class SecretRef(_message.Message):
    __slots__ = ("namespace", "name", "data_key", "fields")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_KEY_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    data_key: str
    fields: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ..., data_key: _Optional[str] = ..., fields: _Optional[_Iterable[str]] = ...) -> None: ...

class Secret(_message.Message):
    __slots__ = ("ref", "revision", "key_version", "values", "raw", "format")
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REF_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    ref: SecretRef
    revision: str
    key_version: int
    values: _containers.ScalarMap[str, str]
    raw: bytes
    format: Format
    def __init__(self, ref: _Optional[_Union[SecretRef, _Mapping]] = ..., revision: _Optional[str] = ..., key_version: _Optional[int] = ..., values: _Optional[_Mapping[str, str]] = ..., raw: _Optional[bytes] = ..., format: _Optional[_Union[Format, str]] = ...) -> None: ...

class GetSecretsRequest(_message.Message):
    __slots__ = ("refs",)
    REFS_FIELD_NUMBER: _ClassVar[int]
    refs: _containers.RepeatedCompositeFieldContainer[SecretRef]
    def __init__(self, refs: _Optional[_Iterable[_Union[SecretRef, _Mapping]]] = ...) -> None: ...

class GetSecretsResponse(_message.Message):
    __slots__ = ("secrets",)
    SECRETS_FIELD_NUMBER: _ClassVar[int]
    secrets: _containers.RepeatedCompositeFieldContainer[Secret]
    def __init__(self, secrets: _Optional[_Iterable[_Union[Secret, _Mapping]]] = ...) -> None: ...

class WatchSecretsRequest(_message.Message):
    __slots__ = ("secrets",)
    SECRETS_FIELD_NUMBER: _ClassVar[int]
    secrets: _containers.RepeatedCompositeFieldContainer[WatchedSecret]
    def __init__(self, secrets: _Optional[_Iterable[_Union[WatchedSecret, _Mapping]]] = ...) -> None: ...

class WatchedSecret(_message.Message):
    __slots__ = ("ref", "known_revision")
    REF_FIELD_NUMBER: _ClassVar[int]
    KNOWN_REVISION_FIELD_NUMBER: _ClassVar[int]
    ref: SecretRef
    known_revision: str
    def __init__(self, ref: _Optional[_Union[SecretRef, _Mapping]] = ..., known_revision: _Optional[str] = ...) -> None: ...

class SecretEvent(_message.Message):
    __slots__ = ("kind", "index", "secret", "error")
    KIND_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    kind: EventKind
    index: int
    secret: Secret
    error: EventError
    def __init__(self, kind: _Optional[_Union[EventKind, str]] = ..., index: _Optional[int] = ..., secret: _Optional[_Union[Secret, _Mapping]] = ..., error: _Optional[_Union[EventError, _Mapping]] = ...) -> None: ...

class EventError(_message.Message):
    __slots__ = ("code", "message", "revision")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    revision: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., revision: _Optional[str] = ...) -> None: ...
