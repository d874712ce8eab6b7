import datetime

from broker._proto.broker.v1 import common_pb2 as _common_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_STATE_UNSPECIFIED: _ClassVar[TaskState]
    TASK_STATE_ACTIVE: _ClassVar[TaskState]
    TASK_STATE_ENDED: _ClassVar[TaskState]
    TASK_STATE_REVOKED: _ClassVar[TaskState]
    TASK_STATE_EXPIRED: _ClassVar[TaskState]

class ApprovalState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    APPROVAL_STATE_UNSPECIFIED: _ClassVar[ApprovalState]
    APPROVAL_STATE_PENDING: _ClassVar[ApprovalState]
    APPROVAL_STATE_APPROVED: _ClassVar[ApprovalState]
    APPROVAL_STATE_DENIED: _ClassVar[ApprovalState]
    APPROVAL_STATE_USED: _ClassVar[ApprovalState]
    APPROVAL_STATE_EXPIRED: _ClassVar[ApprovalState]
TASK_STATE_UNSPECIFIED: TaskState
TASK_STATE_ACTIVE: TaskState
TASK_STATE_ENDED: TaskState
TASK_STATE_REVOKED: TaskState
TASK_STATE_EXPIRED: TaskState
APPROVAL_STATE_UNSPECIFIED: ApprovalState
APPROVAL_STATE_PENDING: ApprovalState
APPROVAL_STATE_APPROVED: ApprovalState
APPROVAL_STATE_DENIED: ApprovalState
APPROVAL_STATE_USED: ApprovalState
APPROVAL_STATE_EXPIRED: ApprovalState

class TaskInfo(_message.Message):
    __slots__ = ("task_id", "agent", "intent", "on_behalf_of", "state", "taint", "created_at", "expires_at", "parent_task_id", "labels", "plan", "live_credentials", "servers")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    INTENT_FIELD_NUMBER: _ClassVar[int]
    ON_BEHALF_OF_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TAINT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    PARENT_TASK_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    LIVE_CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    SERVERS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    agent: str
    intent: str
    on_behalf_of: str
    state: TaskState
    taint: _common_pb2.Taint
    created_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    parent_task_id: str
    labels: _containers.ScalarMap[str, str]
    plan: _containers.RepeatedCompositeFieldContainer[_common_pb2.PlannedStep]
    live_credentials: int
    servers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, task_id: _Optional[str] = ..., agent: _Optional[str] = ..., intent: _Optional[str] = ..., on_behalf_of: _Optional[str] = ..., state: _Optional[_Union[TaskState, str]] = ..., taint: _Optional[_Union[_common_pb2.Taint, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., parent_task_id: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., plan: _Optional[_Iterable[_Union[_common_pb2.PlannedStep, _Mapping]]] = ..., live_credentials: _Optional[int] = ..., servers: _Optional[_Iterable[str]] = ...) -> None: ...

class ListTasksRequest(_message.Message):
    __slots__ = ("agent", "server", "state", "since", "limit")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    agent: str
    server: str
    state: TaskState
    since: _timestamp_pb2.Timestamp
    limit: int
    def __init__(self, agent: _Optional[str] = ..., server: _Optional[str] = ..., state: _Optional[_Union[TaskState, str]] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., limit: _Optional[int] = ...) -> None: ...

class ListTasksResponse(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[TaskInfo]
    def __init__(self, tasks: _Optional[_Iterable[_Union[TaskInfo, _Mapping]]] = ...) -> None: ...

class GetTaskRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class CredentialInfo(_message.Message):
    __slots__ = ("jti", "server", "tool", "args_sha256", "issued_at", "expires_at", "consumed")
    JTI_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    ARGS_SHA256_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    CONSUMED_FIELD_NUMBER: _ClassVar[int]
    jti: str
    server: str
    tool: str
    args_sha256: str
    issued_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    consumed: bool
    def __init__(self, jti: _Optional[str] = ..., server: _Optional[str] = ..., tool: _Optional[str] = ..., args_sha256: _Optional[str] = ..., issued_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., consumed: _Optional[bool] = ...) -> None: ...

class GetTaskResponse(_message.Message):
    __slots__ = ("task", "credentials", "approvals", "audit")
    TASK_FIELD_NUMBER: _ClassVar[int]
    CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    APPROVALS_FIELD_NUMBER: _ClassVar[int]
    AUDIT_FIELD_NUMBER: _ClassVar[int]
    task: TaskInfo
    credentials: _containers.RepeatedCompositeFieldContainer[CredentialInfo]
    approvals: _containers.RepeatedCompositeFieldContainer[Approval]
    audit: _containers.RepeatedCompositeFieldContainer[AuditRecord]
    def __init__(self, task: _Optional[_Union[TaskInfo, _Mapping]] = ..., credentials: _Optional[_Iterable[_Union[CredentialInfo, _Mapping]]] = ..., approvals: _Optional[_Iterable[_Union[Approval, _Mapping]]] = ..., audit: _Optional[_Iterable[_Union[AuditRecord, _Mapping]]] = ...) -> None: ...

class RevokeTaskRequest(_message.Message):
    __slots__ = ("task_id", "reason", "dry_run")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    reason: str
    dry_run: bool
    def __init__(self, task_id: _Optional[str] = ..., reason: _Optional[str] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class RevokeAgentRequest(_message.Message):
    __slots__ = ("agent", "reason", "dry_run", "duration_seconds")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    agent: str
    reason: str
    dry_run: bool
    duration_seconds: int
    def __init__(self, agent: _Optional[str] = ..., reason: _Optional[str] = ..., dry_run: _Optional[bool] = ..., duration_seconds: _Optional[int] = ...) -> None: ...

class RevokeServerRequest(_message.Message):
    __slots__ = ("server", "reason", "dry_run", "duration_seconds")
    SERVER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    server: str
    reason: str
    dry_run: bool
    duration_seconds: int
    def __init__(self, server: _Optional[str] = ..., reason: _Optional[str] = ..., dry_run: _Optional[bool] = ..., duration_seconds: _Optional[int] = ...) -> None: ...

class RevokeTierRequest(_message.Message):
    __slots__ = ("tier", "reason", "dry_run", "duration_seconds")
    TIER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    tier: int
    reason: str
    dry_run: bool
    duration_seconds: int
    def __init__(self, tier: _Optional[int] = ..., reason: _Optional[str] = ..., dry_run: _Optional[bool] = ..., duration_seconds: _Optional[int] = ...) -> None: ...

class RevokeIssuedBeforeRequest(_message.Message):
    __slots__ = ("issued_before", "reason", "dry_run")
    ISSUED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    issued_before: _timestamp_pb2.Timestamp
    reason: str
    dry_run: bool
    def __init__(self, issued_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class RevokeResponse(_message.Message):
    __slots__ = ("dry_run", "task_ids", "live_credentials", "block")
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    LIVE_CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_FIELD_NUMBER: _ClassVar[int]
    dry_run: bool
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    live_credentials: int
    block: Block
    def __init__(self, dry_run: _Optional[bool] = ..., task_ids: _Optional[_Iterable[str]] = ..., live_credentials: _Optional[int] = ..., block: _Optional[_Union[Block, _Mapping]] = ...) -> None: ...

class Block(_message.Message):
    __slots__ = ("kind", "subject", "floor", "blocked", "blocked_until", "reason", "by", "created_at")
    KIND_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    FLOOR_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_UNTIL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    BY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    kind: str
    subject: str
    floor: _timestamp_pb2.Timestamp
    blocked: bool
    blocked_until: _timestamp_pb2.Timestamp
    reason: str
    by: str
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, kind: _Optional[str] = ..., subject: _Optional[str] = ..., floor: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., blocked: _Optional[bool] = ..., blocked_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ..., by: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListBlocksRequest(_message.Message):
    __slots__ = ("all",)
    ALL_FIELD_NUMBER: _ClassVar[int]
    all: bool
    def __init__(self, all: _Optional[bool] = ...) -> None: ...

class ListBlocksResponse(_message.Message):
    __slots__ = ("blocks",)
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    blocks: _containers.RepeatedCompositeFieldContainer[Block]
    def __init__(self, blocks: _Optional[_Iterable[_Union[Block, _Mapping]]] = ...) -> None: ...

class LiftBlockRequest(_message.Message):
    __slots__ = ("kind", "subject", "reason")
    KIND_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    kind: str
    subject: str
    reason: str
    def __init__(self, kind: _Optional[str] = ..., subject: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class LiftBlockResponse(_message.Message):
    __slots__ = ("block",)
    BLOCK_FIELD_NUMBER: _ClassVar[int]
    block: Block
    def __init__(self, block: _Optional[_Union[Block, _Mapping]] = ...) -> None: ...

class Approval(_message.Message):
    __slots__ = ("approval_id", "task_id", "agent", "server", "tool", "args_sha256", "justification", "reason", "state", "decided_by", "decision_reason", "created_at", "expires_at")
    APPROVAL_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    ARGS_SHA256_FIELD_NUMBER: _ClassVar[int]
    JUSTIFICATION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DECIDED_BY_FIELD_NUMBER: _ClassVar[int]
    DECISION_REASON_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    approval_id: str
    task_id: str
    agent: str
    server: str
    tool: str
    args_sha256: str
    justification: str
    reason: str
    state: ApprovalState
    decided_by: str
    decision_reason: str
    created_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, approval_id: _Optional[str] = ..., task_id: _Optional[str] = ..., agent: _Optional[str] = ..., server: _Optional[str] = ..., tool: _Optional[str] = ..., args_sha256: _Optional[str] = ..., justification: _Optional[str] = ..., reason: _Optional[str] = ..., state: _Optional[_Union[ApprovalState, str]] = ..., decided_by: _Optional[str] = ..., decision_reason: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListApprovalsRequest(_message.Message):
    __slots__ = ("state", "all", "task_id")
    STATE_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    state: ApprovalState
    all: bool
    task_id: str
    def __init__(self, state: _Optional[_Union[ApprovalState, str]] = ..., all: _Optional[bool] = ..., task_id: _Optional[str] = ...) -> None: ...

class ListApprovalsResponse(_message.Message):
    __slots__ = ("approvals",)
    APPROVALS_FIELD_NUMBER: _ClassVar[int]
    approvals: _containers.RepeatedCompositeFieldContainer[Approval]
    def __init__(self, approvals: _Optional[_Iterable[_Union[Approval, _Mapping]]] = ...) -> None: ...

class DecideApprovalRequest(_message.Message):
    __slots__ = ("approval_id", "approve", "reason")
    APPROVAL_ID_FIELD_NUMBER: _ClassVar[int]
    APPROVE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    approval_id: str
    approve: bool
    reason: str
    def __init__(self, approval_id: _Optional[str] = ..., approve: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class DecideApprovalResponse(_message.Message):
    __slots__ = ("approval",)
    APPROVAL_FIELD_NUMBER: _ClassVar[int]
    approval: Approval
    def __init__(self, approval: _Optional[_Union[Approval, _Mapping]] = ...) -> None: ...

class SigningKey(_message.Message):
    __slots__ = ("kid", "alg", "active", "created_at", "retired_at", "publish_until", "transit_version", "replica")
    KID_FIELD_NUMBER: _ClassVar[int]
    ALG_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    RETIRED_AT_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_UNTIL_FIELD_NUMBER: _ClassVar[int]
    TRANSIT_VERSION_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    kid: str
    alg: str
    active: bool
    created_at: _timestamp_pb2.Timestamp
    retired_at: _timestamp_pb2.Timestamp
    publish_until: _timestamp_pb2.Timestamp
    transit_version: int
    replica: str
    def __init__(self, kid: _Optional[str] = ..., alg: _Optional[str] = ..., active: _Optional[bool] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., retired_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., publish_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., transit_version: _Optional[int] = ..., replica: _Optional[str] = ...) -> None: ...

class ListSigningKeysRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSigningKeysResponse(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[SigningKey]
    def __init__(self, keys: _Optional[_Iterable[_Union[SigningKey, _Mapping]]] = ...) -> None: ...

class RotateSigningKeyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RotateSigningKeyResponse(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: SigningKey
    def __init__(self, key: _Optional[_Union[SigningKey, _Mapping]] = ...) -> None: ...

class TailAuditRequest(_message.Message):
    __slots__ = ("follow", "last")
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    follow: bool
    last: int
    def __init__(self, follow: _Optional[bool] = ..., last: _Optional[int] = ...) -> None: ...

class AuditRecord(_message.Message):
    __slots__ = ("seq", "chain", "prev_sha256", "sha256", "json")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    PREV_SHA256_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    seq: int
    chain: str
    prev_sha256: str
    sha256: str
    json: str
    def __init__(self, seq: _Optional[int] = ..., chain: _Optional[str] = ..., prev_sha256: _Optional[str] = ..., sha256: _Optional[str] = ..., json: _Optional[str] = ...) -> None: ...

class ReloadPolicyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReloadPolicyResponse(_message.Message):
    __slots__ = ("policies", "digest")
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    policies: int
    digest: str
    def __init__(self, policies: _Optional[int] = ..., digest: _Optional[str] = ...) -> None: ...

class ToolPin(_message.Message):
    __slots__ = ("server", "tool", "pinned_sha256", "pinned_at", "observed_sha256", "observed_at", "changed")
    SERVER_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    PINNED_SHA256_FIELD_NUMBER: _ClassVar[int]
    PINNED_AT_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_SHA256_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_AT_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    server: str
    tool: str
    pinned_sha256: str
    pinned_at: _timestamp_pb2.Timestamp
    observed_sha256: str
    observed_at: _timestamp_pb2.Timestamp
    changed: bool
    def __init__(self, server: _Optional[str] = ..., tool: _Optional[str] = ..., pinned_sha256: _Optional[str] = ..., pinned_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., observed_sha256: _Optional[str] = ..., observed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., changed: _Optional[bool] = ...) -> None: ...

class ListToolPinsRequest(_message.Message):
    __slots__ = ("server",)
    SERVER_FIELD_NUMBER: _ClassVar[int]
    server: str
    def __init__(self, server: _Optional[str] = ...) -> None: ...

class ListToolPinsResponse(_message.Message):
    __slots__ = ("pins",)
    PINS_FIELD_NUMBER: _ClassVar[int]
    pins: _containers.RepeatedCompositeFieldContainer[ToolPin]
    def __init__(self, pins: _Optional[_Iterable[_Union[ToolPin, _Mapping]]] = ...) -> None: ...

class PinToolsRequest(_message.Message):
    __slots__ = ("server", "tool", "dry_run")
    SERVER_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    server: str
    tool: str
    dry_run: bool
    def __init__(self, server: _Optional[str] = ..., tool: _Optional[str] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class PinToolsResponse(_message.Message):
    __slots__ = ("pins", "dry_run")
    PINS_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    pins: _containers.RepeatedCompositeFieldContainer[ToolPin]
    dry_run: bool
    def __init__(self, pins: _Optional[_Iterable[_Union[ToolPin, _Mapping]]] = ..., dry_run: _Optional[bool] = ...) -> None: ...
