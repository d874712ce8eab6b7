"""Per-call approvals (pure: no I/O). See docs/cli.md ("Approvals") and DESIGN.md.

When policy answers APPROVAL_REQUIRED, the broker records a pending ``ApprovalRecord`` bound to
the exact request (agent, task, server, tool, args digest: the ``binding``) and answers the agent
with its id. An operator approves or denies it, with a reason. The agent retries the same call
with the id; the store consumes the approval atomically (checking state, expiry and binding in
the same step), so it yields exactly one credential, for that call only.

Life of an approval::

    PENDING --approve--> APPROVED --retry of the same call--> USED
       |                    |
       +--deny--> DENIED    +-- (expires_at passes) --> EXPIRED   (derived, never stored)

An approval id names its task (``ap_<task id>.<128 random bits>``), so that the Redis store finds
it on the task's slot without a global index, as with a jti.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass, replace
from enum import IntEnum

import orjson

from broker.core.errors import FailedPrecondition, InvalidRequest, NotFound, Reason

DEFAULT_TTL = 600.0
"""How long an operator has to decide, and the agent to use an approval (config
``approvals.ttl_seconds``). Never longer than the task's remaining life."""

RETENTION = 600.0
"""How long decided or expired approvals stay listable after their expiry (bookkeeping)."""

MAX_PENDING_PER_TASK = 32
"""Pending approvals one task may have at once: an agent cannot flood the operators' queue."""

_B64 = r"[A-Za-z0-9_-]{22}"
APPROVAL_ID_RE = re.compile(rf"^ap_(t_{_B64})\.({_B64})$")


class ApprovalState(IntEnum):
    """Numbers match ``broker.v1.ApprovalState``."""

    PENDING = 1
    APPROVED = 2
    DENIED = 3
    USED = 4
    EXPIRED = 5  # derived: PENDING or APPROVED past expires_at

    @property
    def label(self) -> str:
        return self.name.lower()


def new_approval_id(task_id: str) -> str:
    rand = base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode()
    return f"ap_{task_id}.{rand}"


def task_of_approval(approval_id: str) -> str | None:
    """The task id inside an approval id, or None when it is not one of ours."""
    m = APPROVAL_ID_RE.fullmatch(approval_id)
    return m.group(1) if m else None


def check_approval_id(approval_id: str, name: str = "approval_id") -> str:
    if not approval_id:
        raise InvalidRequest(name, "is required")
    if task_of_approval(approval_id) is None:
        raise InvalidRequest(name, "is not an approval id (ap_<task id>.<22 base64url chars>)")
    return approval_id


def binding(agent: str, task_id: str, server: str, tool: str, args_sha256: str) -> str:
    """SHA-256 (hex) of what an approval is for: the exact call, by this agent, in this task."""
    return hashlib.sha256(orjson.dumps([agent, task_id, server, tool, args_sha256])).hexdigest()


@dataclass(frozen=True)
class ApprovalRecord:
    approval_id: str
    task_id: str
    agent: str
    server: str  # SPIFFE ID
    tool: str
    args_sha256: str
    created_at: float
    expires_at: float
    reason: str = ""  # why policy asked for an approval
    policy_ids: tuple[str, ...] = ()
    justification: str = ""  # the agent's, shown to the approver
    prompt_sha256: str = ""
    state: ApprovalState = ApprovalState.PENDING
    decided_by: str = ""  # the operator's SPIFFE ID
    decision_reason: str = ""
    decided_at: float = 0.0
    used_at: float = 0.0

    @property
    def binding(self) -> str:
        return binding(self.agent, self.task_id, self.server, self.tool, self.args_sha256)

    def state_at(self, now: float) -> ApprovalState:
        live = self.state in (ApprovalState.PENDING, ApprovalState.APPROVED)
        if live and now >= self.expires_at:
            return ApprovalState.EXPIRED
        return self.state

    def decided(self, *, approve: bool, by: str, reason: str, now: float) -> ApprovalRecord:
        state = ApprovalState.APPROVED if approve else ApprovalState.DENIED
        return replace(self, state=state, decided_by=by, decision_reason=reason, decided_at=now)

    def used(self, now: float) -> ApprovalRecord:
        return replace(self, state=ApprovalState.USED, used_at=now)

    def static_json(self) -> bytes:
        """The fields fixed at creation (the store keeps state and decision beside them)."""
        return orjson.dumps(
            [
                1,
                self.agent,
                self.server,
                self.tool,
                self.args_sha256,
                self.created_at,
                self.expires_at,
                self.reason,
                list(self.policy_ids),
                self.justification,
                self.prompt_sha256,
            ]
        )

    @classmethod
    def from_static_json(cls, approval_id: str, raw: bytes | str) -> ApprovalRecord:
        task_id = task_of_approval(approval_id)
        if task_id is None:
            raise ValueError(f"not an approval id: {approval_id!r}")
        (
            _version,
            agent,
            server,
            tool,
            args,
            created_at,
            expires_at,
            reason,
            policy_ids,
            justification,
            prompt,
        ) = orjson.loads(raw)
        return cls(
            approval_id=approval_id,
            task_id=task_id,
            agent=agent,
            server=server,
            tool=tool,
            args_sha256=args,
            created_at=created_at,
            expires_at=expires_at,
            reason=reason,
            policy_ids=tuple(policy_ids),
            justification=justification,
            prompt_sha256=prompt,
        )


def check_decidable(record: ApprovalRecord | None, approval_id: str, now: float) -> ApprovalRecord:
    """Raise unless ``record`` can be approved or denied now (it is PENDING and unexpired)."""
    if record is None:
        raise NotFound(f"approval {approval_id} not found")
    state = record.state_at(now)
    if state is not ApprovalState.PENDING:
        raise FailedPrecondition(
            f"approval {approval_id} is {_describe(record, state)}: only a pending approval can "
            "be decided",
            Reason.APPROVAL_NOT_PENDING,
        )
    return record


def refusal(record: ApprovalRecord, state: ApprovalState) -> FailedPrecondition:
    """Why ``record`` (not pending, not approved) gives no credential: APPROVAL_REQUIRED, saying
    what to do next."""
    return FailedPrecondition(
        f"approval {record.approval_id} is {_describe(record, state)}: it gives no credential; "
        "request the call again without approval_id to ask for a new approval",
        Reason.APPROVAL_REQUIRED,
    )


def mismatch(record: ApprovalRecord) -> FailedPrecondition:
    return FailedPrecondition(
        f"approval {record.approval_id} was given for another call ({record.server} "
        f"{record.tool}, args_sha256 {record.args_sha256[:12]}...): an approval is good for "
        "that exact call only",
        Reason.APPROVAL_REQUIRED,
    )


def _describe(record: ApprovalRecord, state: ApprovalState) -> str:
    if state is ApprovalState.DENIED:
        return f"denied by {record.decided_by} ({record.decision_reason})"
    if state is ApprovalState.USED:
        return "already used"
    if state is ApprovalState.EXPIRED:
        return "expired"
    if state is ApprovalState.APPROVED:
        return f"approved by {record.decided_by}"
    return "pending"
