"""The approval side of RequestCredential: ask an operator, check a presented approval, use it.

Policy says when a call needs a person (``Effect.APPROVAL_REQUIRED``); this records a pending
approval bound to exactly that call (agent, task, server, tool, args digest), and on the agent's
retry checks that the approval is for this call and uses it up atomically (single use). The
pure rules (ids, binding, refusals) are in ``broker.core.approvals``.
"""

from __future__ import annotations

from collections.abc import Callable

from broker.app.ports import Store
from broker.core import approvals
from broker.core.approvals import ApprovalRecord, ApprovalState
from broker.core.audit.record import AuditEventName
from broker.core.errors import FailedPrecondition, NotFound
from broker.core.model import TaskRecord
from broker.core.registry import ServerEntry
from broker.core.requests import CredentialRequest, Pending
from broker.core.spiffe import PeerIdentity


class ApprovalFlow:
    def __init__(
        self,
        store: Store,
        audit: Callable[..., None],
        *,
        ttl: float = approvals.DEFAULT_TTL,
        max_pending: int = approvals.MAX_PENDING_PER_TASK,
        max_pending_per_agent: int = 0,
    ) -> None:
        self._store = store
        self._audit = audit
        self._ttl = ttl
        self._max_pending = max_pending
        self._max_pending_per_agent = max_pending_per_agent

    async def ask(
        self,
        peer: PeerIdentity,
        task: TaskRecord,
        server: ServerEntry,
        req: CredentialRequest,
        reasons: tuple[str, ...],
        policy_ids: tuple[str, ...],
        now: float,
    ) -> Pending:
        """Record a pending approval for exactly this call (or find the one already pending)."""
        wanted = ApprovalRecord(
            approval_id=approvals.new_approval_id(task.task_id),
            task_id=task.task_id,
            agent=task.agent,
            server=server.spiffe_id,
            tool=req.tool,
            args_sha256=req.args_sha256,
            created_at=now,
            expires_at=min(now + self._ttl, task.expires_at),
            reason="; ".join(reasons) or f"policy {', '.join(policy_ids)} asks for an approval",
            policy_ids=policy_ids,
            justification=req.justification,
            prompt_sha256=req.prompt_sha256,
        )
        got = await self._store.create_approval(
            wanted,
            now=now,
            max_pending=self._max_pending,
            max_pending_per_agent=self._max_pending_per_agent,
        )
        if got.approval_id == wanted.approval_id:
            self._audit(
                AuditEventName.APPROVAL_REQUEST,
                peer,
                **req.audit_fields(task.task_id, server.spiffe_id),
                policy_ids=policy_ids,
                reason=got.reason,
                extra={"approval_id": got.approval_id, "expires_at": got.expires_at},
            )
        return Pending(got.approval_id, got.expires_at, got.reason)

    async def presented(
        self,
        peer: PeerIdentity,
        task: TaskRecord,
        server: ServerEntry,
        req: CredentialRequest,
        now: float,
    ) -> ApprovalRecord:
        """The approval named by a retry, if it is for this exact call and still pending or
        approved; otherwise raise (APPROVAL_REQUIRED saying why, or NOT_FOUND)."""
        record = await self._store.get_approval(req.approval_id)
        if record is None or record.agent != task.agent:
            raise NotFound(f"approval {req.approval_id} not found")
        expected = approvals.binding(
            task.agent, task.task_id, server.spiffe_id, req.tool, req.args_sha256
        )
        state = record.state_at(now)
        problem: FailedPrecondition | None = None
        if record.binding != expected:
            problem = approvals.mismatch(record)
        elif state not in (ApprovalState.PENDING, ApprovalState.APPROVED):
            problem = approvals.refusal(record, state)
        if problem is not None:
            self._audit(
                AuditEventName.APPROVAL_REJECT,
                peer,
                **req.audit_fields(task.task_id, server.spiffe_id),
                reason=problem.message,
                extra={"approval_id": record.approval_id, "state": state.label},
            )
            raise problem
        return record

    async def use(self, peer: PeerIdentity, record: ApprovalRecord, now: float) -> None:
        """Consume an approved approval (atomically: exactly once, for its call only)."""
        used, current = await self._store.consume_approval(
            record.approval_id, binding=record.binding, now=now
        )
        if not used:  # a concurrent retry used it first, or it expired in between
            state = current.state_at(now) if current else ApprovalState.EXPIRED
            raise approvals.refusal(current or record, state)
        self._audit(
            AuditEventName.APPROVAL_CONSUME,
            peer,
            task=record.task_id,
            server=record.server,
            tool=record.tool,
            args_sha256=record.args_sha256,
            extra={"approval_id": record.approval_id, "approved_by": record.decided_by},
        )
