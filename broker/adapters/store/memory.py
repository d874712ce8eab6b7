"""In-process store: the embedded default (``memory://``) and the unit-test double.

Passes the same contract suite as the Redis store. All state lives in this process: a restart
loses it, and two processes do not share it (use ``redis://`` for that).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace

from broker.app.ports import REVOCATION_WINDOW, Quotas, TaintRose
from broker.core.approvals import RETENTION, ApprovalRecord, ApprovalState, task_of_approval
from broker.core.blocks import Block, covering, merged, refusal
from broker.core.errors import FailedPrecondition, InvalidRequest, NotFound, QuotaExceeded, Reason
from broker.core.model import (
    ConsumeResult,
    CredentialRecord,
    RevocationEvent,
    RevocationKind,
    Taint,
    TaskRecord,
    TaskState,
)
from broker.core.tokens.keys import PublishedKey
from broker.core.tooldefs import ToolPin

MAX_EVENTS = 100_000  # revocation feed retention by count, and by age: REVOCATION_WINDOW


class MemoryStore:
    def __init__(self) -> None:
        self._tasks: dict[str, TaskRecord] = {}
        self._retain: dict[str, float] = {}
        # active tasks, oldest first: what list_tasks(ACTIVE) reads
        self._live: dict[str, None] = {}
        self._children: dict[str, set[str]] = {}
        self._creds: dict[str, dict[str, CredentialRecord]] = {}
        self._agent_live: dict[str, dict[str, float]] = {}  # agent -> jti -> expires_at
        self._task_servers: dict[str, set[str]] = {}
        self._approvals: dict[str, ApprovalRecord] = {}  # insertion order: oldest first
        self._blocks: dict[tuple[str, str], Block] = {}
        self._agent_tasks: dict[str, set[str]] = {}  # agent -> its retained task ids
        # agent -> the ids of its tasks that were live when last looked at (a superset of the
        # live ones: ended and expired ones leave when the cap is near, see _live_tasks_of)
        self._agent_live_tasks: dict[str, set[str]] = {}
        self._pruned_at = float("-inf")
        self._events: list[RevocationEvent] = []
        self._first_seq = 1  # sequence number of self._events[0]
        # Cursors are "EPOCH-SEQ": a restarted broker (a new store) has another epoch, so a
        # verifier's cursor from before is refused as a reset, however many events follow.
        self._epoch = secrets.randbelow(2**53) + 1
        self._changed = asyncio.Condition()
        self.feed_window = REVOCATION_WINDOW  # seconds of revocation events kept
        self._published: dict[str, PublishedKey] = {}  # signing keys of the replicas, by kid
        self._lock = asyncio.Lock()
        self._pins: dict[str, dict[str, ToolPin]] = {}  # server -> tool -> pin

    # -- tasks -------------------------------------------------------------------------------

    async def create_task(
        self, task: TaskRecord, *, retain_until: float, max_live_per_agent: int = 0
    ) -> None:
        async with self._lock:
            self._prune_now_and_then(task.created_at)  # memory does not grow with dead tasks
            if task.task_id in self._tasks:  # never resurrect an ended task
                raise InvalidRequest("task_id", f"task {task.task_id} already exists")
            mine = self._agent_tasks.setdefault(task.agent, set())
            if max_live_per_agent:
                live = self._live_tasks_of(task.agent, task.created_at, max_live_per_agent)
                if live >= max_live_per_agent:
                    raise QuotaExceeded(
                        f"agent {task.agent} has {live} live tasks "
                        f"(limit {max_live_per_agent}); end some first"
                    )
            if task.parent_task_id:
                parent = self._tasks.get(task.parent_task_id)
                if parent is None:
                    raise NotFound(
                        f"parent task {task.parent_task_id} not found", Reason.TASK_NOT_FOUND
                    )
                if not parent.is_live(task.created_at):
                    raise FailedPrecondition(
                        f"parent task {task.parent_task_id} has ended", Reason.TASK_ENDED
                    )
                self._children.setdefault(task.parent_task_id, set()).add(task.task_id)
            self._tasks[task.task_id] = task
            mine.add(task.task_id)
            if task.state is TaskState.ACTIVE:
                self._agent_live_tasks.setdefault(task.agent, set()).add(task.task_id)
            self._retain[task.task_id] = retain_until
            if task.state is TaskState.ACTIVE:
                self._live[task.task_id] = None
            self._creds[task.task_id] = {}

    def _live_tasks_of(self, agent: str, now: float, cap: int) -> int:
        """How many of ``agent``'s tasks are live, counted against ``cap`` at the cost of the
        live set, not of the retained one: the dead are swept out only when the set reaches the
        cap, so each task is looked at once after it died (amortized O(1) per BeginTask)."""
        live = self._agent_live_tasks.get(agent)
        if live is None:
            return 0
        if len(live) >= cap:
            dead = [tid for tid in live if not ((t := self._tasks.get(tid)) and t.is_live(now))]
            live.difference_update(dead)
        return len(live)

    async def get_task(self, task_id: str) -> TaskRecord | None:
        return self._tasks.get(task_id)

    async def list_tasks(
        self,
        *,
        agent: str = "",
        state: TaskState | None = None,
        since: float = 0.0,
        now: float,
        limit: int = 1000,
    ) -> Sequence[TaskRecord]:
        self._prune(now)
        if state is TaskState.ACTIVE:  # costs what the live set costs, not the retained set
            candidates = [self._tasks[tid] for tid in self._live]
            for task in candidates:
                if task.state_at(now) is not TaskState.ACTIVE:
                    self._live.pop(task.task_id, None)
        else:
            candidates = list(self._tasks.values())
        out = [
            t
            for t in candidates
            if (not agent or t.agent == agent)
            and (state is None or t.state_at(now) is state)
            and t.created_at >= since
        ]
        out.sort(key=lambda t: t.created_at)
        return out[:limit]

    async def raise_taint(self, task_id: str, taint: Taint) -> Taint:
        async with self._lock:
            task = self._tasks.get(task_id)
            if task is None:
                raise NotFound(f"task {task_id} not found", Reason.TASK_NOT_FOUND)
            if taint > task.taint:
                task = replace(task, taint=taint)
                self._tasks[task_id] = task
            return task.taint

    async def end_task(
        self, task_id: str, *, state: TaskState, now: float, reason: str
    ) -> tuple[int, Sequence[str]]:
        async with self._lock:
            if task_id not in self._tasks:
                raise NotFound(f"task {task_id} not found", Reason.TASK_NOT_FOUND)
            killed = 0
            ended: list[str] = []
            pending = [task_id]
            while pending:
                tid = pending.pop()
                task = self._tasks.get(tid)
                if task is None or task.state is not TaskState.ACTIVE:
                    continue
                end_state = state if tid == task_id else TaskState.REVOKED
                self._tasks[tid] = replace(task, state=end_state, ended_at=now, end_reason=reason)
                self._live.pop(tid, None)
                ended.append(tid)
                for cred in self._creds.get(tid, {}).values():
                    if not cred.consumed and cred.expires_at > now:
                        killed += 1
                    self._agent_live.get(cred.agent, {}).pop(cred.jti, None)
                pending.extend(sorted(self._children.get(tid, ())))
        for tid in ended:
            await self.publish_revocation(RevocationKind.TASK, tid, now, reason)
        return killed, ended

    async def tasks_with_server(self, server: str, now: float) -> Sequence[str]:
        return sorted(
            tid
            for tid, servers in self._task_servers.items()
            if server in servers and self._tasks[tid].is_live(now)
        )

    async def list_sub_tasks(self, task_id: str) -> Sequence[str]:
        return sorted(self._children.get(task_id, ()))

    async def count_live_credentials(self, task_id: str, now: float) -> int:
        task = self._tasks.get(task_id)
        if task is None or task.state is not TaskState.ACTIVE:
            return 0
        return sum(
            1
            for c in self._creds.get(task_id, {}).values()
            if not c.consumed and c.expires_at > now
        )

    # -- approvals ---------------------------------------------------------------------------

    async def create_approval(
        self,
        approval: ApprovalRecord,
        *,
        now: float,
        max_pending: int,
        max_pending_per_agent: int = 0,
    ) -> ApprovalRecord:
        async with self._lock:
            self._live_task(approval.task_id, now)
            pending = [
                a
                for a in self._approvals.values()
                if a.task_id == approval.task_id and a.state_at(now) is ApprovalState.PENDING
            ]
            for existing in pending:
                if existing.binding == approval.binding:
                    return existing
            if len(pending) >= max_pending:
                raise QuotaExceeded(
                    f"task {approval.task_id} has {len(pending)} pending approvals "
                    f"(limit {max_pending}); wait for an operator's decision"
                )
            if max_pending_per_agent:
                of_agent = sum(
                    1
                    for a in self._approvals.values()
                    if a.agent == approval.agent and a.state_at(now) is ApprovalState.PENDING
                )
                if of_agent >= max_pending_per_agent:
                    raise QuotaExceeded(
                        f"agent {approval.agent} has {of_agent} pending approvals "
                        f"(limit {max_pending_per_agent}); wait for an operator's decision"
                    )
            self._approvals[approval.approval_id] = approval
            return approval

    async def get_approval(self, approval_id: str) -> ApprovalRecord | None:
        return self._approvals.get(approval_id)

    async def list_approvals(
        self, *, task_id: str = "", now: float, limit: int = 1000
    ) -> Sequence[ApprovalRecord]:
        self._prune(now)
        out = [
            a
            for a in self._approvals.values()
            if (task_id and a.task_id == task_id)
            or (not task_id and a.expires_at + RETENTION >= now)
        ]
        out.sort(key=lambda a: a.created_at)
        return out[:limit]

    async def decide_approval(
        self, approval_id: str, *, approve: bool, decided_by: str, reason: str, now: float
    ) -> tuple[bool, ApprovalRecord | None]:
        async with self._lock:
            record = self._approvals.get(approval_id)
            if record is None or record.state_at(now) is not ApprovalState.PENDING:
                return False, record
            record = record.decided(approve=approve, by=decided_by, reason=reason, now=now)
            self._approvals[approval_id] = record
            return True, record

    async def consume_approval(
        self, approval_id: str, *, binding: str, now: float
    ) -> tuple[bool, ApprovalRecord | None]:
        async with self._lock:
            record = self._approvals.get(approval_id)
            if (
                record is None
                or record.state_at(now) is not ApprovalState.APPROVED
                or record.binding != binding
            ):
                return False, record
            record = record.used(now)
            self._approvals[approval_id] = record
            return True, record

    # -- credentials -------------------------------------------------------------------------

    async def record_credential(
        self, cred: CredentialRecord, *, quotas: Quotas, now: float, taint: Taint | None = None
    ) -> None:
        async with self._lock:
            self._prune_now_and_then(now)
            task = self._live_task(cred.task_id, now)
            if taint is not None and task.taint > taint:
                raise TaintRose(task.taint)
            block = covering(
                self._live_blocks(now),
                agents=(task.agent, *task.act),
                server=cred.server,
                tier=cred.tier,
                issued_at=cred.issued_at,
                task_created_at=task.created_at,
                now=now,
            )
            if block is not None:
                raise refusal(block, now, task.task_id)
            creds = self._creds[cred.task_id]
            if cred.jti in creds:  # never re-arm a consumed credential
                raise InvalidRequest("jti", f"credential {cred.jti} is already recorded")
            live_in_task = sum(1 for c in creds.values() if not c.consumed and c.expires_at > now)
            if live_in_task >= quotas.per_task:
                raise QuotaExceeded(
                    f"task {cred.task_id} holds {live_in_task} live credentials "
                    f"(limit {quotas.per_task}); use or let some expire first"
                )
            agent_live = self._agent_live.setdefault(cred.agent, {})
            if len(agent_live) >= quotas.per_agent:  # expired ones matter only near the cap
                for jti in [j for j, exp in agent_live.items() if exp <= now]:
                    del agent_live[jti]
            if len(agent_live) >= quotas.per_agent:
                raise QuotaExceeded(
                    f"agent {cred.agent} holds {len(agent_live)} live credentials "
                    f"(limit {quotas.per_agent})"
                )
            creds[cred.jti] = cred
            agent_live[cred.jti] = cred.expires_at
            self._task_servers.setdefault(cred.task_id, set()).add(cred.server)
            self._retain[cred.task_id] = max(self._retain[cred.task_id], cred.expires_at)

    async def consume_credential(self, task_id: str, jti: str, now: float) -> ConsumeResult:
        async with self._lock:
            task = self._tasks.get(task_id)
            cred = self._creds.get(task_id, {}).get(jti)
            if task is None or cred is None:
                return ConsumeResult.UNKNOWN
            if task.state is not TaskState.ACTIVE:
                return ConsumeResult.REVOKED
            if cred.consumed:
                return ConsumeResult.REPLAYED
            block = covering(
                self._live_blocks(now),
                agents=(task.agent, *task.act),
                server=cred.server,
                tier=cred.tier,
                issued_at=cred.issued_at,
                now=now,
            )
            if block is not None:
                return ConsumeResult.REVOKED
            self._creds[task_id][jti] = replace(cred, consumed=True)
            self._agent_live.get(cred.agent, {}).pop(jti, None)
            return ConsumeResult.OK

    async def get_credential(self, task_id: str, jti: str) -> CredentialRecord | None:
        return self._creds.get(task_id, {}).get(jti)

    async def list_credentials(self, task_id: str) -> Sequence[CredentialRecord]:
        return sorted(self._creds.get(task_id, {}).values(), key=lambda c: c.issued_at)

    # -- revocation feed ---------------------------------------------------------------------

    async def publish_revocation(
        self,
        kind: RevocationKind,
        subject: str,
        revoked_at: float,
        reason: str,
        *,
        blocked: bool = False,
        until: float = 0.0,
    ) -> RevocationEvent:
        async with self._changed:
            seq = self._first_seq + len(self._events)
            event = RevocationEvent(
                f"{self._epoch}-{seq}", kind, subject, revoked_at, reason, blocked, until
            )
            self._events.append(event)
            self._drop_events(revoked_at)
            self._changed.notify_all()
            return event

    def _drop_events(self, now: float) -> None:
        """Forget events beyond MAX_EVENTS, and those older than the window."""
        drop = max(0, len(self._events) - MAX_EVENTS)
        oldest = now - self.feed_window
        while drop < len(self._events) and self._events[drop].revoked_at < oldest:
            drop += 1
        if drop:
            del self._events[:drop]
            self._first_seq += drop

    def _index_after(self, cursor: str) -> int:
        if cursor in ("", "0"):
            return 0
        if cursor == "$":
            return len(self._events)
        epoch, _, seq_text = cursor.partition("-")
        try:
            seq = int(seq_text)
        except ValueError:
            raise NotFound(f"unknown revocation cursor {cursor[:40]!r}") from None
        if epoch != str(self._epoch):
            raise NotFound(f"revocation cursor {cursor[:40]!r} is of another feed (a restart)")
        if seq < self._first_seq - 1:  # events after it were trimmed: never clamp silently
            raise NotFound(f"revocation cursor {cursor[:40]!r} is older than the feed keeps")
        return seq - self._first_seq + 1

    async def revocations_since(self, cursor: str, limit: int = 1000) -> Sequence[RevocationEvent]:
        start = self._index_after(cursor)
        return self._events[start : start + limit]

    async def watch_revocations(self, cursor: str) -> AsyncIterator[RevocationEvent]:
        last = await self.last_revocation_cursor() if cursor == "$" else cursor
        while True:
            batch = await self.revocations_since(last)
            for event in batch:
                last = event.cursor
                yield event
            if not batch:
                async with self._changed:
                    if not await self.revocations_since(last, 1):
                        await self._changed.wait()

    async def last_revocation_cursor(self) -> str:
        if self._events:
            return self._events[-1].cursor
        return f"{self._epoch}-{self._first_seq - 1}"

    # -- kill switches -------------------------------------------------------------------------

    async def put_block(self, block: Block, *, now: float) -> Block:
        async with self._lock:
            stored = merged(self._blocks.get(block.key), block)
            self._blocks[block.key] = stored
            self._live_blocks(now)
            return stored

    async def list_blocks(self, now: float) -> Sequence[Block]:
        return list(self._live_blocks(now))

    def _live_blocks(self, now: float) -> Sequence[Block]:
        for key in [k for k, b in self._blocks.items() if not b.retained(now)]:
            del self._blocks[key]
        return list(self._blocks.values())

    def _live_task(self, task_id: str, now: float) -> TaskRecord:
        task = self._tasks.get(task_id)
        if task is None:
            raise NotFound(f"task {task_id} not found", Reason.TASK_NOT_FOUND)
        if not task.is_live(now):
            raise FailedPrecondition(
                f"task {task_id} is {task.state_at(now).name.lower()}", Reason.TASK_ENDED
            )
        return task

    # -- housekeeping ------------------------------------------------------------------------

    def _prune_now_and_then(self, now: float) -> None:
        if now - self._pruned_at >= 1.0:
            self._pruned_at = now
            self._prune(now)

    def _prune(self, now: float) -> None:
        """Forget tasks whose last credential expired long ago (bookkeeping, like Redis TTLs),
        and revocation events older than the feed's window."""
        self._drop_events(now)
        for tid in [t for t, until in self._retain.items() if until < now]:
            gone = self._tasks.pop(tid, None)
            if gone is not None and gone.agent in self._agent_tasks:
                self._agent_tasks[gone.agent].discard(tid)
                if not self._agent_tasks[gone.agent]:
                    del self._agent_tasks[gone.agent]
            if gone is not None and gone.agent in self._agent_live_tasks:
                self._agent_live_tasks[gone.agent].discard(tid)
                if not self._agent_live_tasks[gone.agent]:
                    del self._agent_live_tasks[gone.agent]
            self._retain.pop(tid, None)
            self._live.pop(tid, None)
            self._creds.pop(tid, None)
            self._task_servers.pop(tid, None)
            self._children.pop(tid, None)
        for agent, live in list(self._agent_live.items()):  # credentials past their expiry
            for jti in [j for j, exp in live.items() if exp <= now]:
                del live[jti]
            if not live:
                del self._agent_live[agent]
        for aid in [a for a in self._approvals if task_of_approval(a) not in self._tasks]:
            del self._approvals[aid]

    # -- tool definition pins ------------------------------------------------------------------

    async def tool_pins(self, server: str) -> Mapping[str, ToolPin]:
        return dict(self._pins.get(server, {}))

    async def observe_tools(
        self, server: str, observed: Mapping[str, str], now: float
    ) -> tuple[Mapping[str, ToolPin], frozenset[str]]:
        pins = self._pins.setdefault(server, {})
        newly = set()
        for tool, sha in observed.items():
            pin = pins.get(tool)
            if pin is None:
                pins[tool] = ToolPin(tool, sha, now, sha, now)
                newly.add(tool)
            else:
                pins[tool] = replace(pin, observed_sha256=sha, observed_at=now)
        return dict(pins), frozenset(newly)

    async def set_tool_pin(self, server: str, tool: str, sha256: str, now: float) -> None:
        pins = self._pins.setdefault(server, {})
        pin = pins.get(tool)
        observed = (pin.observed_sha256, pin.observed_at) if pin else (sha256, now)
        pins[tool] = ToolPin(tool, sha256, now, *observed)

    # -- signing keys shared by replicas -----------------------------------------------------

    async def publish_keys(self, keys: Sequence[PublishedKey], *, now: float) -> None:
        for key in keys:
            known = self._published.get(key.kid)
            if known is None or key.until > known.until:
                self._published[key.kid] = key
        for kid in [k for k, v in self._published.items() if v.until <= now]:
            del self._published[kid]

    async def published_keys(self, now: float) -> Sequence[PublishedKey]:
        return [key for key in self._published.values() if key.until > now]

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
