"""Domain records shared by the core and the store port. Pure data, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import IntEnum, StrEnum


class Taint(IntEnum):
    """How far a task's context is contaminated. Ordered: taint only ever goes up."""

    CLEAN = 1
    UNTRUSTED = 2
    SUSPECT = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def from_label(cls, label: str) -> Taint:
        return cls[label.upper()]


class TaskState(IntEnum):
    ACTIVE = 1
    ENDED = 2  # ended by its agent
    REVOKED = 3  # revoked by an operator, or with its parent
    EXPIRED = 4  # derived: an ACTIVE task past its expiry


@dataclass(frozen=True)
class PlanStep:
    server: str  # SPIFFE ID
    tool: str  # "" means any tool of the server

    def covers(self, server: str, tool: str) -> bool:
        return self.server == server and (self.tool == "" or self.tool == tool)


@dataclass(frozen=True)
class TaskRecord:
    task_id: str
    agent: str
    intent: str
    on_behalf_of: str
    created_at: float
    expires_at: float
    parent_task_id: str = ""
    plan: tuple[PlanStep, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    depth: int = 0  # delegation depth: 0 for a top-level task
    act: tuple[str, ...] = ()  # delegation chain of agents above this one, nearest first
    taint: Taint = Taint.CLEAN
    delegates: tuple[str, ...] = ()  # agents that may begin sub-tasks of it (besides its own)
    state: TaskState = TaskState.ACTIVE
    ended_at: float = 0.0
    end_reason: str = ""

    def state_at(self, now: float) -> TaskState:
        if self.state is TaskState.ACTIVE and now >= self.expires_at:
            return TaskState.EXPIRED
        return self.state

    def is_live(self, now: float) -> bool:
        return self.state_at(now) is TaskState.ACTIVE

    def may_delegate_to(self, agent: str) -> bool:
        """Whether ``agent`` may begin a sub-task of this task: the parent's consent."""
        return agent == self.agent or agent in self.delegates

    def with_changes(self, **changes: object) -> TaskRecord:
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class CredentialRecord:
    jti: str
    task_id: str
    agent: str
    server: str
    tool: str
    args_sha256: str
    tier: int
    issued_at: float
    expires_at: float
    consumed: bool = False


class ConsumeResult(IntEnum):
    OK = 1
    REPLAYED = 2  # consumed before
    REVOKED = 3  # its task has ended or was revoked
    UNKNOWN = 4  # never recorded (or long gone): not ours to accept


class RevocationKind(StrEnum):
    """What a revocation event covers. The values are what the store keeps, what the audit
    event names end with (``revoke.<kind>``) and what the wire's RevocationKind maps to."""

    TASK = "task"  # one task (and its sub-tasks, each an event of its own)
    AGENT = "agent"  # every token of an agent, as subject or delegator, issued up to then
    SERVER = "server"  # every token for a server issued up to then
    TIER = "tier"  # every token of a tier issued up to then (subject: the tier's digit)
    ISSUED_BEFORE = "issued_before"  # every token issued before then (subject: "*")
    CREDENTIAL = "credential"  # one token (subject: its jti)


@dataclass(frozen=True)
class RevocationEvent:
    """One entry of the revocation feed that replicas and offline verifiers follow.

    ``kind`` is a ``RevocationKind`` value; it stays a ``str`` because a verifier may receive a
    kind newer than its code (it then fails closed, as ``issued_before``)."""

    cursor: str
    kind: str
    subject: str
    revoked_at: float
    reason: str = ""
    # agent/server/tier: the subject stays blocked (every token refused, nothing new minted)
    # until ``until``, or until a later event of the same subject lifts it when ``until`` is 0
    blocked: bool = False
    until: float = 0.0
