"""Approvals in the Redis store: each lives on its task's slot (``{task_id}``), changed only by
the scripts of ``broker.adapters.store._redis_lua`` (create, decide, consume: one atomic step each).

A global index (``ns:{apx}:idx``, approval id -> expires_at + retention) lists every task's
approvals for operators. It is written before the record (an entry without a record is skipped
when read, as for tasks) and pruned of entries past their retention on each write.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from broker.adapters.store import _redis_lua as lua
from broker.adapters.store._redis_codec import fnum, ms, task_id_ok
from broker.adapters.store._redis_io import Guard
from broker.core.approvals import RETENTION, ApprovalRecord, ApprovalState, task_of_approval
from broker.core.errors import FailedPrecondition, InvalidRequest, NotFound, QuotaExceeded, Reason
from broker.core.model import TaskState

Run = Callable[[Any, Sequence[str], Iterable[object]], Awaitable[Any]]
_BATCH = 500


def _s(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _parts(approval_id: str) -> tuple[str, str] | None:
    """(task id, random suffix) of an approval id, or None when it is not one."""
    task_id = task_of_approval(approval_id)
    if task_id is None or not task_id_ok(task_id):
        return None
    return task_id, approval_id[len("ap_") + len(task_id) + 1 :]


def _fields(sfx: str) -> list[str]:
    return [sfx, f"{sfx}:s", f"{sfx}:d", f"{sfx}:u"]


def _record(approval_id: str, row: Sequence[Any]) -> ApprovalRecord | None:
    """From (static record, state, decision, used_at) as the scripts and HMGET return them."""
    if not row or row[0] is None or row[1] is None:
        return None
    rec = ApprovalRecord.from_static_json(approval_id, row[0])
    state = ApprovalState(int(row[1]))
    by, why, at = orjson.loads(row[2]) if row[2] else ("", "", 0.0)
    used = float(row[3]) if row[3] else 0.0
    return replace(
        rec, state=state, decided_by=by, decision_reason=why, decided_at=float(at), used_at=used
    )


class RedisApprovals:
    def __init__(
        self,
        client: Redis | RedisCluster,
        namespace: str,
        guard: Guard,
        run: Run,
        reserve: Callable[[str, str, float, float, int, str], Awaitable[None]],
        release: Callable[[str, str], Awaitable[None]],
    ) -> None:
        self._reserve = reserve
        self._release = release
        self._r = client
        self._ns = namespace
        self._guard = guard
        self._run = run
        self._create = client.register_script(lua.APPROVAL_CREATE)
        self._decide = client.register_script(lua.APPROVAL_DECIDE)
        self._consume = client.register_script(lua.APPROVAL_CONSUME)
        self._index = client.register_script(lua.INDEX_SERVER)  # zset: add (GT), prune by score

    def _keys(self, task_id: str) -> tuple[str, str, str]:
        p = f"{self._ns}:{{{task_id}}}:"
        return p + "task", p + "ap", p + "apl"

    def set_keys(self, task_id: str) -> tuple[str, str]:
        """The task's approval keys that CREATE makes with a sentinel (see _redis_lua)."""
        return self._keys(task_id)[1:]

    @property
    def _index_key(self) -> str:
        return f"{self._ns}:{{apx}}:idx"

    def _agent_pending(self, agent: str) -> str:
        return f"{self._ns}:{{agent:{agent}}}:apl"

    async def create(
        self,
        approval: ApprovalRecord,
        *,
        now: float,
        max_pending: int,
        max_pending_per_agent: int = 0,
    ) -> ApprovalRecord:
        if not max_pending_per_agent:
            return await self._create_one(approval, now=now, max_pending=max_pending)
        agent_key = self._agent_pending(approval.agent)
        await self._reserve(
            agent_key,
            approval.approval_id,
            approval.expires_at,
            now,
            max_pending_per_agent,
            f"agent {approval.agent} has {{n}} pending approvals (limit {max_pending_per_agent});"
            " wait for an operator's decision",
        )
        try:
            got = await self._create_one(approval, now=now, max_pending=max_pending)
        except BaseException:
            await self._release(agent_key, approval.approval_id)
            raise
        if got.approval_id != approval.approval_id:  # an existing pending one was returned
            await self._release(agent_key, approval.approval_id)
        return got

    async def _create_one(
        self, approval: ApprovalRecord, *, now: float, max_pending: int
    ) -> ApprovalRecord:
        tid = approval.task_id
        parts = _parts(approval.approval_id)
        if parts is None or parts[0] != tid:
            raise InvalidRequest("approval_id", f"is not an approval id of task {tid}")
        sfx = parts[1]
        await self._run(
            self._index,
            [self._index_key],
            [approval.approval_id, fnum(approval.expires_at + RETENTION), fnum(now)],
        )
        task, ap, apl = self._keys(tid)
        res = await self._run(
            self._create,
            [task, ap, apl],
            [
                sfx,
                approval.static_json(),
                approval.binding,
                fnum(approval.expires_at),
                fnum(now),
                max_pending,
                ms(approval.expires_at),
                fnum(now * 1000),
            ],
        )
        status = _s(res[0])
        if status == "OK":
            return approval
        if status == "EXISTS":
            existing = _record(f"ap_{tid}.{_s(res[1])}", res[2:])
            if existing is not None:
                return existing
        if status == "NOTFOUND":
            raise NotFound(f"task {tid} not found", Reason.TASK_NOT_FOUND)
        if status == "ENDED":
            name = TaskState(int(res[1])).name.lower()
            raise FailedPrecondition(f"task {tid} is {name}", Reason.TASK_ENDED)
        if status == "QUOTA":
            raise QuotaExceeded(
                f"task {tid} has {int(res[1])} pending approvals (limit {max_pending}); "
                "wait for an operator's decision"
            )
        raise InvalidRequest("approval_id", f"approval {approval.approval_id} already exists")

    async def get(self, approval_id: str) -> ApprovalRecord | None:
        parts = _parts(approval_id)
        if parts is None:
            return None
        _, ap, _ = self._keys(parts[0])
        fields = _fields(parts[1])
        row: Any = await self._guard.read(lambda: self._r.hmget(ap, fields))
        return _record(approval_id, row)

    async def listed(self, *, task_id: str, now: float, limit: int) -> Sequence[ApprovalRecord]:
        if task_id:
            return (await self._of_task(task_id))[:limit]
        key = self._index_key
        ids: Any = await self._guard.read(lambda: self._r.zrangebyscore(key, fnum(now), "+inf"))
        found = [(_s(i), _parts(_s(i))) for i in ids]
        aids = [(aid, parts) for aid, parts in found if parts is not None]
        out: list[ApprovalRecord] = []
        for i in range(0, len(aids), _BATCH):
            chunk = aids[i : i + _BATCH]
            rows = await self._guard.read(functools.partial(self._hmgets, chunk))
            for (aid, _), row in zip(chunk, rows, strict=True):
                rec = _record(aid, row)
                if rec is not None:
                    out.append(rec)
        out.sort(key=lambda a: a.created_at)
        return out[:limit]

    async def _hmgets(self, chunk: Sequence[tuple[str, tuple[str, str]]]) -> list[Any]:
        async with self._r.pipeline(transaction=False) as pipe:
            for _aid, (tid, sfx) in chunk:
                pipe.hmget(self._keys(tid)[1], _fields(sfx))
            return list(await pipe.execute())

    async def _of_task(self, task_id: str) -> list[ApprovalRecord]:
        if not task_id_ok(task_id):
            return []
        _, ap, _ = self._keys(task_id)
        flat: Any = await self._guard.read(lambda: self._r.hgetall(ap))
        fields = {_s(k): v for k, v in flat.items()}
        out = []
        for name in fields:
            if ":" in name or name == lua.SENTINEL:
                continue
            row = [fields.get(name), *(fields.get(f"{name}:{f}") for f in "sdu")]
            rec = _record(f"ap_{task_id}.{name}", row)
            if rec is not None:
                out.append(rec)
        out.sort(key=lambda a: a.created_at)
        return out

    async def decide(
        self, approval_id: str, *, approve: bool, decided_by: str, reason: str, now: float
    ) -> tuple[bool, ApprovalRecord | None]:
        parts = _parts(approval_id)
        if parts is None:
            return False, None
        _, ap, apl = self._keys(parts[0])
        sfx = parts[1]
        state = ApprovalState.APPROVED if approve else ApprovalState.DENIED
        decision = orjson.dumps([decided_by, reason, now])
        res = await self._run(self._decide, [ap, apl], [sfx, int(state), decision, fnum(now)])
        record = _record(approval_id, res[1:])
        if int(res[0]) and record is not None:  # no longer pending: frees the agent's cap
            await self._release(self._agent_pending(record.agent), approval_id)
        return bool(int(res[0])), record

    async def consume(
        self, approval_id: str, *, binding: str, now: float
    ) -> tuple[bool, ApprovalRecord | None]:
        parts = _parts(approval_id)
        if parts is None:
            return False, None
        _, ap, _ = self._keys(parts[0])
        sfx = parts[1]
        res = await self._run(self._consume, [ap], [sfx, binding, fnum(now)])
        return bool(int(res[0])), _record(approval_id, res[1:])
