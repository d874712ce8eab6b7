"""The operator core behind ``AdminService``: tasks, kill switches, approvals, keys, policy, audit.

No gRPC here (``broker.rpc.admin_servicer`` converts); it works on the same injected ports as
``broker.app.credentials.Broker``, whose store, registry, keys, policy, audit trail and clock it
uses.

Revocation (DESIGN.md): an operator revokes by task, agent, server, tier or "issued before T".

- A task: the task and its live sub-tasks are ended (their state is the tombstone every
  credential of theirs is checked against); one revocation event per ended task.
- An agent, a server or a tier: a kill switch that persists (``broker.core.blocks``). ONE block
  record in the store and ONE feed event, O(1) store calls whatever the subject holds: every task
  of the subject created and token issued up to now is revoked, and nothing new is started or
  minted for it (BeginTask, RequestCredential, verification online and offline) until the block
  ends (``duration``) or an operator lifts it (``lift_block``). "Issued before T" is a floor
  only. The store checks the records inside mint and consume; offline verifiers get them on the
  feed (and as a snapshot when they subscribe from now).

A dry run computes the tasks the revoke reaches (the live tasks in scope and every sub-task
below them whose state is still active) and their live credentials, and changes nothing. Every
revoke, dry or not, and every lift is audited.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from broker.app.credentials import Broker
from broker.core import approvals
from broker.core.approvals import ApprovalRecord, ApprovalState
from broker.core.audit.recent import AuditSource
from broker.core.audit.record import AuditEvent, AuditEventName, ChainedRecord
from broker.core.blocks import ALL_SUBJECTS, Block, BlockKind, new_block, task_revoked
from broker.core.errors import BrokerError, ConfigError, InvalidRequest, NotFound, Reason
from broker.core.model import CredentialRecord, RevocationKind, TaskRecord, TaskState
from broker.core.registry import TIER_MAX_TTL, TIERS
from broker.core.requests import MAX_TEXT, check_task_id, check_text
from broker.core.spiffe import PeerIdentity
from broker.core.tokens.keys import KeyInfo

log = logging.getLogger("broker.app.admin")

MAX_LIST = 1000
MAX_BLOCK_SECONDS = 366 * 86400
ALL_TASKS = 1_000_000  # list_tasks limit when collecting a revoke's scope
AUDIT_SCAN = 5000  # recent audit records searched for a task's records (GetTask)


@dataclass(frozen=True)
class TaskView:
    task: TaskRecord
    state: TaskState  # at the time of the call (EXPIRED derived)
    live_credentials: int
    servers: tuple[str, ...]  # servers it has been granted credentials for


@dataclass(frozen=True)
class TaskDetail:
    view: TaskView
    credentials: Sequence[CredentialRecord]
    approvals: Sequence[ApprovalRecord]
    audit: Sequence[ChainedRecord]  # recent records of the task (this tail's reach)


@dataclass(frozen=True)
class RevokeResult:
    dry_run: bool
    task_ids: tuple[str, ...]  # ended (or that would be), sorted
    live_credentials: int  # live credentials among them
    block: Block | None = None  # the kill switch now in force (agent, server, tier, time)


@dataclass(frozen=True)
class PolicyLoaded:
    policies: int
    digest: str


class Admin:
    def __init__(self, broker: Broker, audit_source: AuditSource) -> None:
        self._b = broker
        self._source = audit_source

    def now(self) -> float:
        return self._b.clock.now()

    # -- tasks -------------------------------------------------------------------------------

    async def list_tasks(
        self,
        *,
        agent: str = "",
        server: str = "",
        state: TaskState | None = None,
        since: float = 0.0,
        limit: int = 100,
    ) -> list[TaskView]:
        now = self._b.clock.now()
        server_id = self._b.registry.server(server).spiffe_id if server else ""
        limit = min(limit or 100, MAX_LIST)
        tasks = await self._b.store.list_tasks(
            agent=self._agent_id(agent) if agent else "",
            state=state,
            since=since,
            now=now,
            limit=ALL_TASKS if server_id else limit,
        )
        blocks = await self._b.store.list_blocks(now)
        out: list[TaskView] = []
        for task in tasks:
            creds = await self._b.store.list_credentials(task.task_id)
            view = self._view(task, creds, now, blocks)
            if not server_id or server_id in view.servers:
                out.append(view)
                if len(out) >= limit:
                    break
        return out

    async def get_task(self, task_id: str) -> TaskDetail:
        now = self._b.clock.now()
        task = await self._existing_task(task_id)
        creds = await self._b.store.list_credentials(task_id)
        found = await self._b.store.list_approvals(task_id=task_id, now=now)
        records = [r async for r in self._source.tail(AUDIT_SCAN, False)]
        mine = [r for r in records if r.body.get("task") == task_id]
        blocks = await self._b.store.list_blocks(now)
        return TaskDetail(self._view(task, creds, now, blocks), creds, found, mine)

    @staticmethod
    def _view(
        task: TaskRecord, creds: Sequence[CredentialRecord], now: float, blocks: Sequence[Block]
    ) -> TaskView:
        state = task.state_at(now)
        if state is TaskState.ACTIVE and task_revoked(
            blocks, (task.agent, *task.act), task.created_at
        ):
            state = TaskState.REVOKED  # by a kill switch's floor (its record says ACTIVE)
        live = 0
        if state is TaskState.ACTIVE:
            live = sum(1 for c in creds if not c.consumed and c.expires_at > now)
        servers = tuple(dict.fromkeys(c.server for c in creds))
        return TaskView(task, state, live, servers)

    async def _existing_task(self, task_id: str) -> TaskRecord:
        check_task_id(task_id)
        task = await self._b.store.get_task(task_id)
        if task is None:
            raise NotFound(f"task {task_id} not found", Reason.TASK_NOT_FOUND)
        return task

    def _agent_id(self, ref: str) -> str:
        """An agent's SPIFFE ID from itself, its registry name, or NAME (-> .../agent/NAME)."""
        if ref.startswith("spiffe://"):
            return ref
        for entry in self._b.registry.agents:
            if entry.name == ref:
                return entry.spiffe_id
        return f"spiffe://{self._b.registry.trust_domain}/agent/{ref}"

    # -- revocation --------------------------------------------------------------------------

    async def revoke_task(
        self, peer: PeerIdentity, task_id: str, *, reason: str, dry_run: bool
    ) -> RevokeResult:
        task = await self._existing_task(task_id)
        roots = [task.task_id] if task.state is TaskState.ACTIVE else []
        return await self._revoke(
            peer, RevocationKind.TASK, task_id, roots, reason=reason, dry_run=dry_run
        )

    async def revoke_agent(
        self, peer: PeerIdentity, agent: str, *, reason: str, dry_run: bool, duration: float = 0
    ) -> RevokeResult:
        if not agent:
            raise InvalidRequest("agent", "is required (a SPIFFE ID or an agent name)")
        agent_id = self._agent_id(agent)
        if not dry_run:
            return await self._block(peer, BlockKind.AGENT, agent_id, reason, duration=duration)
        now = self._b.clock.now()
        tasks = await self._b.store.list_tasks(
            agent=agent_id, state=TaskState.ACTIVE, now=now, limit=ALL_TASKS
        )
        roots = [t.task_id for t in tasks]
        return await self._revoke(
            peer, RevocationKind.AGENT, agent_id, roots, reason=reason, dry_run=True
        )

    async def revoke_server(
        self, peer: PeerIdentity, server: str, *, reason: str, dry_run: bool, duration: float = 0
    ) -> RevokeResult:
        if not server:
            raise InvalidRequest("server", "is required (a SPIFFE ID or a registry name)")
        server_id = self._b.registry.server(server).spiffe_id
        if not dry_run:
            return await self._block(peer, BlockKind.SERVER, server_id, reason, duration=duration)
        roots = await self._b.store.tasks_with_server(server_id, self._b.clock.now())
        return await self._revoke(
            peer, RevocationKind.SERVER, server_id, roots, reason=reason, dry_run=True
        )

    async def revoke_tier(
        self, peer: PeerIdentity, tier: int, *, reason: str, dry_run: bool, duration: float = 0
    ) -> RevokeResult:
        if tier not in TIERS:
            raise InvalidRequest("tier", f"must be one of {', '.join(map(str, TIERS))}")
        if not dry_run:
            return await self._block(peer, BlockKind.TIER, str(tier), reason, duration=duration)
        now = self._b.clock.now()
        roots: dict[str, None] = {}
        for entry in self._b.registry.servers:
            if entry.tier == tier:
                roots.update(
                    dict.fromkeys(await self._b.store.tasks_with_server(entry.spiffe_id, now))
                )
        return await self._revoke(
            peer, RevocationKind.TIER, str(tier), list(roots), reason=reason, dry_run=True
        )

    async def revoke_issued_before(
        self, peer: PeerIdentity, before: float, *, reason: str, dry_run: bool
    ) -> RevokeResult:
        now = self._b.clock.now()
        if before <= 0:
            raise InvalidRequest("issued_before", "is required (a time)")
        if before > now:
            raise InvalidRequest("issued_before", "is in the future: that would revoke every task")
        if not dry_run:
            return await self._block(
                peer, BlockKind.ISSUED_BEFORE, ALL_SUBJECTS, reason, floor=before
            )
        tasks = await self._b.store.list_tasks(state=TaskState.ACTIVE, now=now, limit=ALL_TASKS)
        roots = [t.task_id for t in tasks if t.created_at <= before]
        return await self._revoke(
            peer,
            RevocationKind.ISSUED_BEFORE,
            "*",
            roots,
            reason=reason,
            dry_run=True,
            floor=before,
        )

    # -- kill switches (broker.core.blocks) ----------------------------------------------------

    def _retention(self) -> float:
        """How long a floor matters: the longest task, plus its longest token, plus leeway."""
        limits = self._b.limits
        return limits.task_max_ttl + max(TIER_MAX_TTL.values()) + 2 * limits.leeway

    async def _block(
        self,
        peer: PeerIdentity,
        kind: BlockKind,
        subject: str,
        reason: str,
        *,
        duration: float = 0,
        floor: float | None = None,
    ) -> RevokeResult:
        """O(1) store calls whatever the subject holds: one block record, one feed event."""
        check_text(reason, "reason", MAX_TEXT)
        if not 0 <= duration <= MAX_BLOCK_SECONDS:
            raise InvalidRequest("duration", f"must be 0 (until lifted) to {MAX_BLOCK_SECONDS} s")
        reason = reason.strip() or f"revoked by {peer.spiffe_id}"
        now = self._b.clock.now()
        block = new_block(
            kind,
            subject,
            now=now,
            floor=floor,
            duration=duration,
            by=str(peer.spiffe_id),
            reason=reason,
            retention=self._retention(),
        )
        stored = await self._b.store.put_block(block, now=now)  # enforced from here on
        revocation = RevocationKind(kind.value)
        await self._b.store.publish_revocation(  # offline verifiers
            revocation,
            subject,
            stored.floor,
            reason,
            blocked=stored.blocked,
            until=stored.until,
        )
        result = RevokeResult(False, (), 0, stored)
        self._audit_revoke(peer, revocation, subject, result, reason, floor)
        return result

    async def list_blocks(self) -> list[Block]:
        now = self._b.clock.now()
        found = await self._b.store.list_blocks(now)
        return sorted(found, key=lambda b: (b.created_at, b.kind, b.subject))

    async def lift_block(self, peer: PeerIdentity, kind: str, subject: str, reason: str) -> Block:
        """End a block now; its floor moves up to now (what it revoked stays revoked)."""
        check_text(reason, "reason", MAX_TEXT, required=True)
        try:
            block_kind = BlockKind(kind)
        except ValueError:
            raise InvalidRequest(
                "kind", f"must be one of {', '.join(k.value for k in BlockKind)}"
            ) from None
        if block_kind is BlockKind.AGENT:
            subject = self._agent_id(subject)
        elif block_kind is BlockKind.SERVER and not subject.startswith("spiffe://"):
            subject = self._b.registry.server(subject).spiffe_id
        now = self._b.clock.now()
        current = next(
            (b for b in await self._b.store.list_blocks(now) if b.key == (kind, subject)), None
        )
        if current is None or not current.blocks(now):
            raise NotFound(f"no block in force for {kind} {subject}")
        lifted = current.lifted(
            now, by=str(peer.spiffe_id), reason=reason, retention=self._retention()
        )
        stored = await self._b.store.put_block(lifted, now=now)
        await self._b.store.publish_revocation(
            RevocationKind(block_kind.value), subject, stored.floor, reason
        )
        self._audit(
            AuditEventName.BLOCK_LIFT,
            peer,
            server=subject if kind == BlockKind.SERVER else None,
            reason=reason,
            outcome="lifted",
            extra={"kind": kind, "subject": subject, "floor": stored.floor},
        )
        return stored

    async def _revoke(
        self,
        peer: PeerIdentity,
        kind: RevocationKind,
        subject: str,
        roots: Sequence[str],
        *,
        reason: str,
        dry_run: bool,
        floor: float | None = None,
    ) -> RevokeResult:
        check_text(reason, "reason", MAX_TEXT)
        reason = reason.strip() or f"revoked by {peer.spiffe_id}"
        now = self._b.clock.now()
        store = self._b.store
        if dry_run:
            ids = await self._scope(roots)
            live = sum([await store.count_live_credentials(t, now) for t in ids])
            result = RevokeResult(True, tuple(ids), live)
            self._audit_revoke(peer, kind, subject, result, reason, floor)
            return result
        ended: set[str] = set()
        killed = 0
        try:
            for tid in roots:
                k, done = await store.end_task(tid, state=TaskState.REVOKED, now=now, reason=reason)
                killed += k
                ended.update(done)
                for t in done:  # each as it happens: a revoke cut short stays on the record
                    self._audit(
                        AuditEventName.REVOKE_TASK,
                        peer,
                        task=t,
                        reason=reason,
                        outcome="revoked",
                        extra={"scope": kind, "subject": subject},
                    )
        except BrokerError:
            partial = RevokeResult(False, tuple(sorted(ended)), killed)
            self._audit_revoke(peer, kind, subject, partial, reason, floor, outcome="partial")
            raise
        result = RevokeResult(False, tuple(sorted(ended)), killed)
        self._audit_revoke(peer, kind, subject, result, reason, floor)
        return result

    async def _scope(self, roots: Sequence[str]) -> list[str]:
        """What ending ``roots`` ends: the roots and each sub-task below them still active."""
        seen: set[str] = set()
        pending = list(roots)
        while pending:
            tid = pending.pop()
            if tid in seen:
                continue
            task = await self._b.store.get_task(tid)
            if task is None or task.state is not TaskState.ACTIVE:
                continue
            seen.add(tid)
            pending.extend(await self._b.store.list_sub_tasks(tid))
        return sorted(seen)

    def _audit_revoke(
        self,
        peer: PeerIdentity,
        kind: RevocationKind,
        subject: str,
        result: RevokeResult,
        reason: str,
        floor: float | None,
        outcome: str = "",
    ) -> None:
        if kind is RevocationKind.TASK and not result.dry_run and not outcome:
            return  # one revoke.task record per ended task says it all
        extra: dict[str, str | int | float | bool] = {
            "subject": subject,
            "tasks": len(result.task_ids),
            "live_credentials": result.live_credentials,
            "dry_run": result.dry_run,
        }
        if floor is not None:
            extra["issued_before"] = floor
        if result.block is not None:
            extra["floor"] = result.block.floor
            extra["blocked"] = result.block.blocked
            if result.block.until:
                extra["blocked_until"] = result.block.until
        self._audit(
            AuditEventName.revoke(kind),
            peer,
            task=subject if kind is RevocationKind.TASK else None,
            server=subject if kind is RevocationKind.SERVER else None,
            reason=reason,
            outcome=outcome or ("dry-run" if result.dry_run else "revoked"),
            extra=extra,
        )

    # -- approvals ---------------------------------------------------------------------------

    async def list_approvals(
        self, *, state: ApprovalState | None = None, every: bool = False, task_id: str = ""
    ) -> list[ApprovalRecord]:
        """Pending ones by default; ``state`` for another, ``every`` for all retained ones."""
        now = self._b.clock.now()
        if task_id:
            check_task_id(task_id)
        found = await self._b.store.list_approvals(task_id=task_id, now=now, limit=MAX_LIST)
        wanted = state or ApprovalState.PENDING
        return [a for a in found if every or a.state_at(now) is wanted]

    async def decide_approval(
        self, peer: PeerIdentity, approval_id: str, *, approve: bool, reason: str
    ) -> ApprovalRecord:
        approvals.check_approval_id(approval_id)
        check_text(reason, "reason", MAX_TEXT, required=True)
        now = self._b.clock.now()
        changed, record = await self._b.store.decide_approval(
            approval_id, approve=approve, decided_by=str(peer.spiffe_id), reason=reason, now=now
        )
        if not changed or record is None:
            approvals.check_decidable(record, approval_id, now)  # raises, saying why
            raise NotFound(f"approval {approval_id} not found")  # pragma: no cover
        self._audit(
            AuditEventName.APPROVAL_DECIDE,
            peer,
            task=record.task_id,
            server=record.server,
            tool=record.tool,
            args_sha256=record.args_sha256,
            decision="approved" if approve else "denied",
            policy_ids=record.policy_ids,
            reason=reason,
            extra={"approval_id": approval_id, "agent": record.agent},
        )
        return record

    # -- keys, policy, audit -----------------------------------------------------------------

    async def list_keys(self) -> list[KeyInfo]:
        """This replica's keys (the active one first), then those other replicas published."""
        return await self._b.keyring.current_keys()

    async def rotate_key(self, peer: PeerIdentity) -> KeyInfo:
        keyring = self._b.keyring
        previous = keyring.provider.active_kid()
        now, longest = self._b.clock.now(), max(TIER_MAX_TTL.values())
        kid = await keyring.rotate(now, max_token_ttl=longest)  # published to the other replicas
        self._audit(AuditEventName.KEY_ROTATE, peer, extra={"kid": kid, "previous_kid": previous})
        for info in keyring.list_keys():
            if info.kid == kid:
                return info
        return KeyInfo(kid=kid, alg=keyring.provider.alg, created_at=now, active=True)

    def reload_policy(self, peer: PeerIdentity) -> PolicyLoaded:
        """Re-read the policy files; on any problem keep the running set and raise ConfigError
        (FAILED_PRECONDITION, CONFIG_INVALID) naming the file."""
        engine = self._b.policy
        before = engine.digest
        try:
            engine.reload()
        except ConfigError as exc:
            self._audit(AuditEventName.POLICY_RELOAD, peer, outcome="failed", reason=exc.message)
            raise
        self._audit(
            AuditEventName.POLICY_RELOAD,
            peer,
            outcome="loaded",
            extra={"policies": engine.policy_count, "digest": engine.digest, "previous": before},
        )
        return PolicyLoaded(engine.policy_count, engine.digest)

    def tail_audit(self, last: int, follow: bool) -> AsyncIterator[ChainedRecord]:
        return self._source.tail(min(last, AUDIT_SCAN * 2), follow)

    def _audit(self, event: AuditEventName, peer: PeerIdentity, **fields: object) -> None:
        self._b.audit.record(
            AuditEvent(event=event, time=self._b.clock.now(), actor=str(peer.spiffe_id), **fields)  # type: ignore[arg-type]
        )
