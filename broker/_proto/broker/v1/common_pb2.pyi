from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Taint(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TAINT_UNSPECIFIED: _ClassVar[Taint]
    TAINT_CLEAN: _ClassVar[Taint]
    TAINT_UNTRUSTED: _ClassVar[Taint]
    TAINT_SUSPECT: _ClassVar[Taint]
TAINT_UNSPECIFIED: Taint
TAINT_CLEAN: Taint
TAINT_UNTRUSTED: Taint
TAINT_SUSPECT: Taint

class PlannedStep(_message.Message):
    __slots__ = ("server", "tool")
    SERVER_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    server: str
    tool: str
    def __init__(self, server: _Optional[str] = ..., tool: _Optional[str] = ...) -> None: ...

class Finding(_message.Message):
    __slots__ = ("kind", "detail")
    KIND_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    kind: str
    detail: str
    def __init__(self, kind: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...
