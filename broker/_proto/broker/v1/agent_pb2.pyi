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

class PreviewDecision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PREVIEW_DECISION_UNSPECIFIED: _ClassVar[PreviewDecision]
    PREVIEW_DECISION_ALLOW: _ClassVar[PreviewDecision]
    PREVIEW_DECISION_APPROVAL: _ClassVar[PreviewDecision]
    PREVIEW_DECISION_DENY: _ClassVar[PreviewDecision]
PREVIEW_DECISION_UNSPECIFIED: PreviewDecision
PREVIEW_DECISION_ALLOW: PreviewDecision
PREVIEW_DECISION_APPROVAL: PreviewDecision
PREVIEW_DECISION_DENY: PreviewDecision

class BeginTaskRequest(_message.Message):
    __slots__ = ("intent", "on_behalf_of", "ttl_seconds", "plan", "labels", "parent_task_id", "delegates")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    INTENT_FIELD_NUMBER: _ClassVar[int]
    ON_BEHALF_OF_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PARENT_TASK_ID_FIELD_NUMBER: _ClassVar[int]
    DELEGATES_FIELD_NUMBER: _ClassVar[int]
    intent: str
    on_behalf_of: str
    ttl_seconds: int
    plan: _containers.RepeatedCompositeFieldContainer[_common_pb2.PlannedStep]
    labels: _containers.ScalarMap[str, str]
    parent_task_id: str
    delegates: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, intent: _Optional[str] = ..., on_behalf_of: _Optional[str] = ..., ttl_seconds: _Optional[int] = ..., plan: _Optional[_Iterable[_Union[_common_pb2.PlannedStep, _Mapping]]] = ..., labels: _Optional[_Mapping[str, str]] = ..., parent_task_id: _Optional[str] = ..., delegates: _Optional[_Iterable[str]] = ...) -> None: ...

class BeginTaskResponse(_message.Message):
    __slots__ = ("task_id", "expires_at")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, task_id: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RequestCredentialRequest(_message.Message):
    __slots__ = ("task_id", "server", "tool", "arguments", "args_sha256", "prompt_sha256", "justification", "ttl_seconds", "approval_id")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
    ARGS_SHA256_FIELD_NUMBER: _ClassVar[int]
    PROMPT_SHA256_FIELD_NUMBER: _ClassVar[int]
    JUSTIFICATION_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    server: str
    tool: str
    arguments: _struct_pb2.Struct
    args_sha256: str
    prompt_sha256: str
    justification: str
    ttl_seconds: int
    approval_id: str
    def __init__(self, task_id: _Optional[str] = ..., server: _Optional[str] = ..., tool: _Optional[str] = ..., arguments: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., args_sha256: _Optional[str] = ..., prompt_sha256: _Optional[str] = ..., justification: _Optional[str] = ..., ttl_seconds: _Optional[int] = ..., approval_id: _Optional[str] = ...) -> None: ...

class Credential(_message.Message):
    __slots__ = ("token", "jti", "expires_at")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    JTI_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    token: str
    jti: str
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, token: _Optional[str] = ..., jti: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class PendingApproval(_message.Message):
    __slots__ = ("approval_id", "expires_at", "reason")
    APPROVAL_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    approval_id: str
    expires_at: _timestamp_pb2.Timestamp
    reason: str
    def __init__(self, approval_id: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class RequestCredentialResponse(_message.Message):
    __slots__ = ("credential", "pending_approval")
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    PENDING_APPROVAL_FIELD_NUMBER: _ClassVar[int]
    credential: Credential
    pending_approval: PendingApproval
    def __init__(self, credential: _Optional[_Union[Credential, _Mapping]] = ..., pending_approval: _Optional[_Union[PendingApproval, _Mapping]] = ...) -> None: ...

class EndTaskRequest(_message.Message):
    __slots__ = ("task_id", "outcome")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    outcome: str
    def __init__(self, task_id: _Optional[str] = ..., outcome: _Optional[str] = ...) -> None: ...

class EndTaskResponse(_message.Message):
    __slots__ = ("revoked_credentials",)
    REVOKED_CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    revoked_credentials: int
    def __init__(self, revoked_credentials: _Optional[int] = ...) -> None: ...

class PreviewToolsRequest(_message.Message):
    __slots__ = ("task_id", "tools")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    tools: _containers.RepeatedCompositeFieldContainer[_common_pb2.PlannedStep]
    def __init__(self, task_id: _Optional[str] = ..., tools: _Optional[_Iterable[_Union[_common_pb2.PlannedStep, _Mapping]]] = ...) -> None: ...

class ToolPreview(_message.Message):
    __slots__ = ("server", "tool", "decision", "reason", "message", "policy_ids", "reasons")
    SERVER_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    POLICY_IDS_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    server: str
    tool: str
    decision: PreviewDecision
    reason: str
    message: str
    policy_ids: _containers.RepeatedScalarFieldContainer[str]
    reasons: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, server: _Optional[str] = ..., tool: _Optional[str] = ..., decision: _Optional[_Union[PreviewDecision, str]] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ..., policy_ids: _Optional[_Iterable[str]] = ..., reasons: _Optional[_Iterable[str]] = ...) -> None: ...

class PreviewToolsResponse(_message.Message):
    __slots__ = ("decisions", "taint")
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    TAINT_FIELD_NUMBER: _ClassVar[int]
    decisions: _containers.RepeatedCompositeFieldContainer[ToolPreview]
    taint: _common_pb2.Taint
    def __init__(self, decisions: _Optional[_Iterable[_Union[ToolPreview, _Mapping]]] = ..., taint: _Optional[_Union[_common_pb2.Taint, str]] = ...) -> None: ...

class RaiseTaintRequest(_message.Message):
    __slots__ = ("task_id", "server", "jti", "findings", "taint")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    JTI_FIELD_NUMBER: _ClassVar[int]
    FINDINGS_FIELD_NUMBER: _ClassVar[int]
    TAINT_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    server: str
    jti: str
    findings: _containers.RepeatedCompositeFieldContainer[_common_pb2.Finding]
    taint: _common_pb2.Taint
    def __init__(self, task_id: _Optional[str] = ..., server: _Optional[str] = ..., jti: _Optional[str] = ..., findings: _Optional[_Iterable[_Union[_common_pb2.Finding, _Mapping]]] = ..., taint: _Optional[_Union[_common_pb2.Taint, str]] = ...) -> None: ...

class RaiseTaintResponse(_message.Message):
    __slots__ = ("taint",)
    TAINT_FIELD_NUMBER: _ClassVar[int]
    taint: _common_pb2.Taint
    def __init__(self, taint: _Optional[_Union[_common_pb2.Taint, str]] = ...) -> None: ...
