import datetime

from broker._proto.broker.v1 import common_pb2 as _common_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ContentTrust(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONTENT_TRUST_UNSPECIFIED: _ClassVar[ContentTrust]
    TRUSTED: _ClassVar[ContentTrust]
    UNTRUSTED: _ClassVar[ContentTrust]

class OutcomeStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_STATUS_UNSPECIFIED: _ClassVar[OutcomeStatus]
    SUCCEEDED: _ClassVar[OutcomeStatus]
    FAILED: _ClassVar[OutcomeStatus]

class RevocationKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REVOCATION_KIND_UNSPECIFIED: _ClassVar[RevocationKind]
    REVOCATION_KIND_HEARTBEAT: _ClassVar[RevocationKind]
    REVOCATION_KIND_TASK: _ClassVar[RevocationKind]
    REVOCATION_KIND_AGENT: _ClassVar[RevocationKind]
    REVOCATION_KIND_SERVER: _ClassVar[RevocationKind]
    REVOCATION_KIND_TIER: _ClassVar[RevocationKind]
    REVOCATION_KIND_ISSUED_BEFORE: _ClassVar[RevocationKind]
    REVOCATION_KIND_CREDENTIAL: _ClassVar[RevocationKind]

class PinStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PIN_STATUS_UNSPECIFIED: _ClassVar[PinStatus]
    PIN_STATUS_MATCH: _ClassVar[PinStatus]
    PIN_STATUS_PINNED: _ClassVar[PinStatus]
    PIN_STATUS_CHANGED: _ClassVar[PinStatus]
    PIN_STATUS_UNKNOWN: _ClassVar[PinStatus]
CONTENT_TRUST_UNSPECIFIED: ContentTrust
TRUSTED: ContentTrust
UNTRUSTED: ContentTrust
OUTCOME_STATUS_UNSPECIFIED: OutcomeStatus
SUCCEEDED: OutcomeStatus
FAILED: OutcomeStatus
REVOCATION_KIND_UNSPECIFIED: RevocationKind
REVOCATION_KIND_HEARTBEAT: RevocationKind
REVOCATION_KIND_TASK: RevocationKind
REVOCATION_KIND_AGENT: RevocationKind
REVOCATION_KIND_SERVER: RevocationKind
REVOCATION_KIND_TIER: RevocationKind
REVOCATION_KIND_ISSUED_BEFORE: RevocationKind
REVOCATION_KIND_CREDENTIAL: RevocationKind
PIN_STATUS_UNSPECIFIED: PinStatus
PIN_STATUS_MATCH: PinStatus
PIN_STATUS_PINNED: PinStatus
PIN_STATUS_CHANGED: PinStatus
PIN_STATUS_UNKNOWN: PinStatus

class VerifyCredentialRequest(_message.Message):
    __slots__ = ("token", "tool", "arguments", "args_sha256", "presenter_cert_sha256", "check_only")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
    ARGS_SHA256_FIELD_NUMBER: _ClassVar[int]
    PRESENTER_CERT_SHA256_FIELD_NUMBER: _ClassVar[int]
    CHECK_ONLY_FIELD_NUMBER: _ClassVar[int]
    token: str
    tool: str
    arguments: _struct_pb2.Struct
    args_sha256: str
    presenter_cert_sha256: str
    check_only: bool
    def __init__(self, token: _Optional[str] = ..., tool: _Optional[str] = ..., arguments: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., args_sha256: _Optional[str] = ..., presenter_cert_sha256: _Optional[str] = ..., check_only: _Optional[bool] = ...) -> None: ...

class VerifyCredentialResponse(_message.Message):
    __slots__ = ("task_id", "agent", "tool", "tier", "taint", "jti", "expires_at", "secret")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    TAINT_FIELD_NUMBER: _ClassVar[int]
    JTI_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    agent: str
    tool: str
    tier: int
    taint: _common_pb2.Taint
    jti: str
    expires_at: _timestamp_pb2.Timestamp
    secret: DownstreamSecret
    def __init__(self, task_id: _Optional[str] = ..., agent: _Optional[str] = ..., tool: _Optional[str] = ..., tier: _Optional[int] = ..., taint: _Optional[_Union[_common_pb2.Taint, str]] = ..., jti: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., secret: _Optional[_Union[DownstreamSecret, _Mapping]] = ...) -> None: ...

class DownstreamSecret(_message.Message):
    __slots__ = ("data", "lease_id", "expires_at", "source")
    class DataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DATA_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    data: _containers.ScalarMap[str, str]
    lease_id: str
    expires_at: _timestamp_pb2.Timestamp
    source: str
    def __init__(self, data: _Optional[_Mapping[str, str]] = ..., lease_id: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., source: _Optional[str] = ...) -> None: ...

class ReportOutcomeRequest(_message.Message):
    __slots__ = ("jti", "status", "result_sha256", "content_trust", "findings")
    JTI_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RESULT_SHA256_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TRUST_FIELD_NUMBER: _ClassVar[int]
    FINDINGS_FIELD_NUMBER: _ClassVar[int]
    jti: str
    status: OutcomeStatus
    result_sha256: str
    content_trust: ContentTrust
    findings: _containers.RepeatedCompositeFieldContainer[_common_pb2.Finding]
    def __init__(self, jti: _Optional[str] = ..., status: _Optional[_Union[OutcomeStatus, str]] = ..., result_sha256: _Optional[str] = ..., content_trust: _Optional[_Union[ContentTrust, str]] = ..., findings: _Optional[_Iterable[_Union[_common_pb2.Finding, _Mapping]]] = ...) -> None: ...

class ReportOutcomeResponse(_message.Message):
    __slots__ = ("taint",)
    TAINT_FIELD_NUMBER: _ClassVar[int]
    taint: _common_pb2.Taint
    def __init__(self, taint: _Optional[_Union[_common_pb2.Taint, str]] = ...) -> None: ...

class GetSigningKeysRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetSigningKeysResponse(_message.Message):
    __slots__ = ("jwks_json",)
    JWKS_JSON_FIELD_NUMBER: _ClassVar[int]
    jwks_json: str
    def __init__(self, jwks_json: _Optional[str] = ...) -> None: ...

class WatchRevocationsRequest(_message.Message):
    __slots__ = ("since",)
    SINCE_FIELD_NUMBER: _ClassVar[int]
    since: str
    def __init__(self, since: _Optional[str] = ...) -> None: ...

class RevocationEvent(_message.Message):
    __slots__ = ("cursor", "kind", "subject", "revoked_at", "reason", "blocked", "blocked_until")
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_UNTIL_FIELD_NUMBER: _ClassVar[int]
    cursor: str
    kind: RevocationKind
    subject: str
    revoked_at: _timestamp_pb2.Timestamp
    reason: str
    blocked: bool
    blocked_until: _timestamp_pb2.Timestamp
    def __init__(self, cursor: _Optional[str] = ..., kind: _Optional[_Union[RevocationKind, str]] = ..., subject: _Optional[str] = ..., revoked_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ..., blocked: _Optional[bool] = ..., blocked_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Refusal(_message.Message):
    __slots__ = ("reason", "jti", "task_id", "tool", "agent", "refused_at", "mode")
    REASON_FIELD_NUMBER: _ClassVar[int]
    JTI_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    REFUSED_AT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    reason: str
    jti: str
    task_id: str
    tool: str
    agent: str
    refused_at: _timestamp_pb2.Timestamp
    mode: str
    def __init__(self, reason: _Optional[str] = ..., jti: _Optional[str] = ..., task_id: _Optional[str] = ..., tool: _Optional[str] = ..., agent: _Optional[str] = ..., refused_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., mode: _Optional[str] = ...) -> None: ...

class ReportRefusalsRequest(_message.Message):
    __slots__ = ("refusals", "dropped")
    REFUSALS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    refusals: _containers.RepeatedCompositeFieldContainer[Refusal]
    dropped: int
    def __init__(self, refusals: _Optional[_Iterable[_Union[Refusal, _Mapping]]] = ..., dropped: _Optional[int] = ...) -> None: ...

class ReportRefusalsResponse(_message.Message):
    __slots__ = ("recorded",)
    RECORDED_FIELD_NUMBER: _ClassVar[int]
    recorded: int
    def __init__(self, recorded: _Optional[int] = ...) -> None: ...

class ObservedTool(_message.Message):
    __slots__ = ("name", "sha256")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    name: str
    sha256: str
    def __init__(self, name: _Optional[str] = ..., sha256: _Optional[str] = ...) -> None: ...

class SyncToolDefinitionsRequest(_message.Message):
    __slots__ = ("tools",)
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    tools: _containers.RepeatedCompositeFieldContainer[ObservedTool]
    def __init__(self, tools: _Optional[_Iterable[_Union[ObservedTool, _Mapping]]] = ...) -> None: ...

class ToolVerdict(_message.Message):
    __slots__ = ("name", "status")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    name: str
    status: PinStatus
    def __init__(self, name: _Optional[str] = ..., status: _Optional[_Union[PinStatus, str]] = ...) -> None: ...

class SyncToolDefinitionsResponse(_message.Message):
    __slots__ = ("tools", "server", "content_trust", "allow_resources", "allow_prompts")
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TRUST_FIELD_NUMBER: _ClassVar[int]
    ALLOW_RESOURCES_FIELD_NUMBER: _ClassVar[int]
    ALLOW_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    tools: _containers.RepeatedCompositeFieldContainer[ToolVerdict]
    server: str
    content_trust: ContentTrust
    allow_resources: bool
    allow_prompts: bool
    def __init__(self, tools: _Optional[_Iterable[_Union[ToolVerdict, _Mapping]]] = ..., server: _Optional[str] = ..., content_trust: _Optional[_Union[ContentTrust, str]] = ..., allow_resources: _Optional[bool] = ..., allow_prompts: _Optional[bool] = ...) -> None: ...
