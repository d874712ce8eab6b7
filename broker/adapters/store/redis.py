"""Redis store: the production implementation of the store port (redis.asyncio with hiredis).

Works on one redis-server, behind Sentinel, and on a Redis Cluster: every key of a task carries
the hash tag ``{task_id}``, so each task lives on ONE slot, and every change to a task is ONE Lua
script on that slot (``broker.adapters.store._redis_lua``, loaded once, run with EVALSHA). A script
either ran or did not: no caller ever sees half of a change. Key layout (``ns`` = the namespace,
"brk")::

    ns:{t_...}:task              hash   the task record; its state is the revocation tombstone
    ns:{t_...}:creds             hash   jti random half -> 53-byte packed credential
    ns:{t_...}:live              zset   unconsumed credentials -> expires_at ms (per-task quota)
    ns:{t_...}:tg                list   interned (server, tool) pairs of the task's credentials
    ns:{t_...}:kids              set    sub-task ids
    ns:{t_...}:ap                hash   the task's approvals (``_redis_approvals``)
    ns:{t_...}:apl               zset   its pending approvals -> expires_at ms (per-task cap)
    ns:{apx}:idx                 zset   every approval -> expires_at + retention (listing)
    ns:{agent:<id>}:quota        hash   expiry bucket (5 s) -> the agent's live credentials
    ns:{agent:<id>}:tasks[:ret]  zsets  the agent's tasks by created_at [by retain_until]
    ns:{idx}:tasks[:ret]         zsets  every task by created_at [by retain_until]
    ns:{agent:<id>|idx}:tasks:live  zset  live tasks -> expires_at (ListTasks(active))
    ns:{srv:<id>}:tasks          zset   tasks that held a credential for the server -> retain
    ns:{pins:<id>}:pinned        hash   tool -> "sha256|at": pinned definitions (``_redis_pins``)
    ns:{pins:<id>}:observed      hash   tool -> "sha256|at": what a guard last observed
    ns:revocations               stream the revocation feed (XADD MAXLEN ~ 100000)
    ns:{keys}:pub, :until        hash, zset  public signing keys of every replica (``_redis_keys``)

All task keys expire at the task's ``retain_until`` (extended when a credential outlives it), so
the tombstone outlives the task's longest credential. Expiry is bookkeeping only: verification
checks ``exp`` itself.

Steps that span slots (each slot written by its own script) are ordered so that a crash between
two of them fails closed:

- Mint reserves the per-agent quota first, then records the credential on the task's slot, and
  releases the reservation if the task refuses. A crash in between leaves a reservation that
  counts against the agent until the credential's ``exp`` (fails closed), never a credential that
  was handed out without being recorded. The quota counts per 5-second expiry bucket, not per
  credential (its memory does not grow with the credentials); each credential is released at
  most once (by its consume, by its task's end, or by the refusal of its mint), and a release
  never takes a bucket below zero. The per-server index entry is written before the
  credential (the first time this process sees the task/server pair), so a recorded credential is
  always found by a revoke-by-server.
- Consume releases the agent reservation lazily: on this process's next mint for the same agent
  (in the same round trip), else at the end of its expiry bucket. Until then it still counts.
- create_task writes the task indexes first (an index entry without a record is skipped when
  read), then the record, then adopts the sub-task under its parent; if the parent refuses, the
  new record is deleted again (a crash right there leaves an unreachable orphan nobody holds an
  id for, which expires).
- end_task flips each task with one script (returning its live count and sub-tasks), recursing
  over sub-tasks from Python, and publishes one "task" event per ended task. The flip is what
  verification checks; the event is retried, and the task keeps a ``pend`` mark until the event
  is out, so a failed publish is repeated by the next end_task call (at least once). A repeated
  end_task also walks the sub-tasks again, which repairs a walk cut short by a crash. Agent
  quota entries of killed credentials are released afterwards, best effort (else at expiry).

Fail closed: clients are built with short connect and read timeouts and no retries (a retried
script could run twice), and every round trip is bounded by ``deadline``: with Redis down or
hung, each call raises ``StoreUnavailable`` within ``deadline`` seconds, and the next call after
Redis returns succeeds with the same client (the pool reconnects; scripts are reloaded on
NOSCRIPT).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from broker.adapters.store import _redis_lua as lua
from broker.adapters.store._redis_approvals import RedisApprovals
from broker.adapters.store._redis_codec import (
    TASK_FIELDS,
    fnum,
    jti_field,
    ms,
    pack_credential,
    pack_target,
    pack_task,
    packed_expiry,
    quota_bucket,
    task_id_ok,
    unpack_credential,
    unpack_target,
    unpack_task,
)
from broker.adapters.store._redis_feed import RevocationFeed
from broker.adapters.store._redis_io import Guard
from broker.adapters.store._redis_keys import RedisPublishedKeys
from broker.adapters.store._redis_pins import RedisToolPins
from broker.app.ports import Quotas, TaintRose
from broker.core.approvals import ApprovalRecord
from broker.core.blocks import Block, covering, refusal
from broker.core.errors import (
    FailedPrecondition,
    InvalidRequest,
    NotFound,
    QuotaExceeded,
    Reason,
    StoreUnavailable,
)
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

log = logging.getLogger(__name__)

SENTINEL_B = lua.SENTINEL.encode()

Client = Redis | RedisCluster

_PENDING_PER_AGENT = 1024  # consumed credentials awaiting a lazy quota release, per agent
_PENDING_AGENTS = 10_000
_INDEXED_PAIRS = 65_536  # (task, server) pairs known to be in the per-server index
_BATCH = 500


def _s(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisStore:
    """The store port on Redis. ``where`` (host:port, socket path or node list, never a
    password) names the server in errors; ``deadline`` bounds every round trip, and every
    mint or task creation as a whole."""

    def __init__(
        self,
        client: Client,
        *,
        where: str,
        namespace: str = "brk",
        deadline: float = 0.9,
        block: float = 0.25,
    ) -> None:
        if "{" in namespace or "}" in namespace or not namespace:
            raise ValueError(f"namespace {namespace!r}: must be non-empty, without braces")
        self._r = client
        self._ns = namespace
        self._guard = Guard(where, deadline)
        self._mint = client.register_script(lua.MINT)
        self._consume = client.register_script(lua.CONSUME)
        self._block_put = client.register_script(lua.BLOCK_PUT)
        self._cap = client.register_script(lua.CAP_RESERVE)
        self._reserve = client.register_script(lua.RESERVE)
        self._release_script = client.register_script(lua.RELEASE)
        self._create = client.register_script(lua.CREATE)
        self._adopt = client.register_script(lua.ADOPT)
        self._end = client.register_script(lua.END)
        self._taint = client.register_script(lua.TAINT)
        self._get_cred = client.register_script(lua.GET_CRED)
        self._list_creds = client.register_script(lua.LIST_CREDS)
        self._index_task = client.register_script(lua.INDEX_TASK)
        self._index_server = client.register_script(lua.INDEX_SERVER)
        self._indexed: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._pending: OrderedDict[str, list[str]] = OrderedDict()
        self._feed = RevocationFeed(client, f"{namespace}:revocations", self._guard, block)
        self._pins = RedisToolPins(client, namespace, self._guard)
        self._approvals = RedisApprovals(
            client, namespace, self._guard, self._run, self._reserve_cap, self._release_cap
        )
        self._published = RedisPublishedKeys(client, namespace, self._run)

    # -- keys ----------------------------------------------------------------------------------

    def _task_keys(self, task_id: str) -> list[str]:
        p = f"{self._ns}:{{{task_id}}}:"
        return [p + "task", p + "creds", p + "live", p + "tg", p + "kids"]

    def _agent_quota(self, agent: str) -> str:
        return f"{self._ns}:{{agent:{agent}}}:quota"

    def _index(self, agent: str) -> list[str]:
        tag = f"agent:{agent}" if agent else "idx"
        return [f"{self._ns}:{{{tag}}}:tasks", f"{self._ns}:{{{tag}}}:tasks:ret"]

    def _live_index(self, agent: str) -> str:
        """Live tasks -> expires_at (``{agent:<id>}:live`` is the live-task cap, another zset)."""
        tag = f"agent:{agent}" if agent else "idx"
        return f"{self._ns}:{{{tag}}}:tasks:live"

    def _server_index(self, server: str) -> str:
        return f"{self._ns}:{{srv:{server}}}:tasks"

    # -- I/O -----------------------------------------------------------------------------------

    async def _run(
        self, script: Any, keys: Sequence[str], args: Iterable[object], *, read: bool = False
    ) -> Any:
        """One script, repeated only where that is safe (``Guard.call``)."""
        argv = list(args)
        return await self._guard.call(lambda: script(keys=keys, args=argv), idempotent=read)

    async def _pipelined(self, build: Callable[[Any], None]) -> list[Any]:
        """One pipeline of reads (repeated once on a broken connection)."""

        async def op() -> list[Any]:
            async with self._r.pipeline(transaction=False) as pipe:
                build(pipe)
                return list(await pipe.execute())

        return await self._guard.read(op)

    # -- tasks ---------------------------------------------------------------------------------

    async def create_task(
        self, task: TaskRecord, *, retain_until: float, max_live_per_agent: int = 0
    ) -> None:
        with self._guard.budget():
            if max_live_per_agent:
                await self._reserve_cap(
                    self._agent_live_tasks(task.agent),
                    task.task_id,
                    task.expires_at,
                    task.created_at,
                    max_live_per_agent,
                    f"agent {task.agent} has {{n}} live tasks (limit {max_live_per_agent}); "
                    "end some first",
                )
            try:
                await self._create_task(task, retain_until)
            except BaseException:
                if max_live_per_agent:
                    await self._release_cap(self._agent_live_tasks(task.agent), task.task_id)
                raise

    def _agent_live_tasks(self, agent: str) -> str:
        return f"{self._ns}:{{agent:{agent}}}:live"

    async def _reserve_cap(
        self, key: str, member: str, expires: float, now: float, limit: int, message: str
    ) -> None:
        ok, n = await self._run(self._cap, [key], [member, ms(expires), fnum(now * 1000), limit])
        if not int(ok):
            raise QuotaExceeded(message.format(n=int(n)))

    async def _release_cap(self, key: str, member: str) -> None:
        """Best effort: a member not released here still ends at its expiry (fails closed)."""
        try:
            async with self._guard.io():
                await self._r.zrem(key, member)
        except StoreUnavailable:
            log.warning("a per-agent cap entry was not released (frees up at expiry)")

    async def _create_task(self, task: TaskRecord, retain_until: float) -> None:
        tid, parent = task.task_id, task.parent_task_id
        if not task_id_ok(tid):
            raise InvalidRequest("task_id", "expected t_ followed by 22 base64url characters")
        if parent and not task_id_ok(parent):
            raise NotFound(f"parent task {parent} not found", Reason.TASK_NOT_FOUND)
        now = task.created_at
        # Indexes first: an entry whose record is missing is skipped when listing, while a
        # record missing from the index would escape list_tasks (and a revoke-by-agent).
        *indexes, record = self.create_steps(task, retain_until)
        outcomes = await asyncio.gather(
            *(self._run(*step) for step in indexes), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        keys = self._task_keys(tid)
        created = await self._run(*record)
        if not created:
            raise InvalidRequest("task_id", f"task {tid} already exists")
        if not parent:
            return
        pkeys = self._task_keys(parent)
        res = await self._run(self._adopt, [pkeys[0], pkeys[4]], [tid, fnum(now)])
        if _s(res[0]) == "OK":
            return
        try:  # the parent refused: undo the record (nobody has been given its id)
            await self._guard.call(lambda: self._r.delete(*keys, *self._approvals.set_keys(tid)))
        except StoreUnavailable:
            log.warning("sub-task %s left orphaned (expires with its retention)", tid)
        if _s(res[0]) == "NOTFOUND":
            raise NotFound(f"parent task {parent} not found", Reason.TASK_NOT_FOUND)
        raise FailedPrecondition(f"parent task {parent} has ended", Reason.TASK_ENDED)

    def create_steps(
        self, task: TaskRecord, retain_until: float
    ) -> list[tuple[Any, list[str], list[object]]]:
        """The scripts that record a new task, as (script, keys, args): its indexes (run
        first, in any order), then its record (returns 1 if created, 0 if it existed)."""
        tid, now = task.task_id, task.created_at
        index_args: list[object] = [tid, fnum(now), fnum(retain_until), fnum(now)]
        steps: list[tuple[Any, list[str], list[object]]] = [
            (self._index_task, self._index(""), index_args),
            (self._index_task, self._index(task.agent), index_args),
        ]
        if task.is_live(now):  # the live-task index: what ListTasks(active) reads
            live_args: list[object] = [tid, fnum(task.expires_at), fnum(now)]
            steps.append((self._index_server, [self._live_index("")], live_args))
            steps.append((self._index_server, [self._live_index(task.agent)], live_args))
        keys = self._task_keys(tid)
        ttl_ms = max(1000, int((retain_until - now) * 1000) + 1)
        record: list[object] = [
            pack_task(task),
            int(task.state),
            int(task.taint),
            fnum(task.expires_at),
            fnum(retain_until),
            task.agent,
            fnum(task.ended_at) if task.ended_at else "",
            task.end_reason,
            ttl_ms,
            "\n".join(task.act),
            fnum(task.created_at),
        ]
        steps.append((self._create, keys[:1], record))
        return steps

    async def get_task(self, task_id: str) -> TaskRecord | None:
        if not task_id_ok(task_id):
            return None
        key = self._task_keys(task_id)[0]
        fields: Any = await self._guard.read(lambda: self._r.hmget(key, list(TASK_FIELDS)))
        return unpack_task(task_id, fields)

    async def list_tasks(
        self,
        *,
        agent: str = "",
        state: TaskState | None = None,
        since: float = 0.0,
        now: float,
        limit: int = 1000,
    ) -> Sequence[TaskRecord]:
        if state is TaskState.ACTIVE:
            return await self._list_live(agent, since, now, limit)
        by_created = self._index(agent)[0]
        out: list[TaskRecord] = []
        offset = 0
        while len(out) < limit:
            ids: Any = await self._guard.read(
                functools.partial(
                    self._r.zrangebyscore, by_created, fnum(since), "+inf", offset, _BATCH
                )
            )
            if not ids:
                break
            offset += len(ids)
            tids = [_s(i) for i in ids if task_id_ok(_s(i))]
            for task in await self._read_tasks(tids, agent, now):
                if state is None or task.state_at(now) is state:
                    out.append(task)
            if len(ids) < _BATCH:
                break
        return out[:limit]

    async def _list_live(
        self, agent: str, since: float, now: float, limit: int
    ) -> Sequence[TaskRecord]:
        """Reads the live-task index (ended tasks leave it at end_task, expired ones by their
        expiry score): costs what the live set costs, whatever is retained."""
        key = self._live_index(agent)
        ids: Any = await self._guard.read(
            lambda: self._r.zrangebyscore(key, f"({fnum(now)}", "+inf")
        )
        tids = [t for t in (_s(i) for i in ids) if task_id_ok(t)]
        out = []
        for i in range(0, len(tids), _BATCH):
            for task in await self._read_tasks(tids[i : i + _BATCH], agent, now):
                if task.created_at >= since and task.state_at(now) is TaskState.ACTIVE:
                    out.append(task)
        out.sort(key=lambda t: t.created_at)
        return out[:limit]

    async def _read_tasks(self, tids: Sequence[str], agent: str, now: float) -> list[TaskRecord]:
        """The retained records of ``tids`` (of ``agent``, if given), in order."""

        def build(pipe: Any) -> None:
            for tid in tids:
                pipe.hmget(self._task_keys(tid)[0], [*TASK_FIELDS, "ret"])

        rows = await self._pipelined(build) if tids else []
        out = []
        for tid, row in zip(tids, rows, strict=True):
            task = unpack_task(tid, row[:-1])
            if task is None or float(row[-1]) < now:
                continue
            if not agent or task.agent == agent:
                out.append(task)
        return out

    async def raise_taint(self, task_id: str, taint: Taint) -> Taint:
        if task_id_ok(task_id):
            res = await self._run(self._taint, self._task_keys(task_id)[:1], [int(taint)])
            if int(res) > 0:
                return Taint(int(res))
        raise NotFound(f"task {task_id} not found", Reason.TASK_NOT_FOUND)

    async def end_task(
        self, task_id: str, *, state: TaskState, now: float, reason: str
    ) -> tuple[int, Sequence[str]]:
        if not task_id_ok(task_id):
            raise NotFound(f"task {task_id} not found", Reason.TASK_NOT_FOUND)
        killed = 0
        ended: list[str] = []
        released: dict[str, list[str]] = {}
        ended_by_agent: dict[str, list[str]] = {}
        seen: set[str] = set()
        pending = [task_id]
        while pending:
            tid = pending.pop()
            if tid in seen or not task_id_ok(tid):
                continue
            seen.add(tid)
            end_state = state if tid == task_id else TaskState.REVOKED
            keys = self._task_keys(tid)
            res = await self._run(
                self._end,
                [keys[0], keys[2], keys[4]],
                [int(end_state), fnum(now), reason, fnum(now * 1000)],
            )
            code = int(res[0])
            if code < 0:
                if tid == task_id:
                    raise NotFound(f"task {task_id} not found", Reason.TASK_NOT_FOUND)
                continue
            if code == 1:
                ended.append(tid)
                ended_by_agent.setdefault(_s(res[1]), []).append(tid)
                await self._release_cap(self._agent_live_tasks(_s(res[1])), tid)
                now_ms = now * 1000
                scores = [int(float(x)) for x in res[3][1::2]]
                killed += sum(1 for score in scores if score > now_ms)
                released.setdefault(_s(res[1]), []).extend(
                    b for b in map(quota_bucket, scores) if int(b) > now
                )
                await self._publish_task_event(tid, now, reason)
            elif int(res[4]):  # ended earlier, but its event was never confirmed published
                await self._publish_task_event(tid, float(res[5]), _s(res[6]))
            # Always walk the sub-tasks: repairs a walk that a crash cut short.
            pending.extend(sorted((_s(k) for k in res[2]), reverse=True))
        for agent, buckets in released.items():
            await self._release(agent, buckets)
        await self._unlist_live(ended_by_agent)
        return killed, ended

    async def _unlist_live(self, ended_by_agent: dict[str, list[str]]) -> None:
        """Best effort: an ended task missed here is skipped by readers and leaves the live
        index at its expiry."""
        try:
            for agent, tids in ended_by_agent.items():
                for key in (self._live_index(""), self._live_index(agent)):
                    for i in range(0, len(tids), _BATCH):
                        chunk = tids[i : i + _BATCH]
                        await self._guard.call(functools.partial(self._r.zrem, key, *chunk))
        except StoreUnavailable:
            log.warning("live-task index not updated (ended tasks leave it at expiry)")

    async def _publish_task_event(self, task_id: str, at: float, reason: str) -> None:
        """Publish the "task" event, retrying within one deadline; then clear the task's mark.

        If it still fails the state flip holds (verification checks state) and the mark makes
        the next end_task call publish it again."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._guard.deadline
        while True:
            try:
                await self.publish_revocation(RevocationKind.TASK, task_id, at, reason)
                break
            except StoreUnavailable:
                if loop.time() + 0.05 >= give_up:
                    raise
                await asyncio.sleep(0.05)
        key = self._task_keys(task_id)[0]
        try:
            await self._guard.call(lambda: self._r.hdel(key, "pend"))
        except StoreUnavailable:  # the event may be published twice: events are idempotent
            log.warning("could not clear the publish mark of task %s", task_id)

    async def tasks_with_server(self, server: str, now: float) -> Sequence[str]:
        key = self._server_index(server)
        ids: Any = await self._guard.read(lambda: self._r.zrangebyscore(key, fnum(now), "+inf"))
        tids = sorted(t for t in (_s(i) for i in ids) if task_id_ok(t))
        if not tids:
            return []

        def build(pipe: Any) -> None:
            for tid in tids:
                keys = self._task_keys(tid)
                pipe.hmget(keys[0], ["st", "exp"])
                pipe.lrange(keys[3], 0, -1)

        rows = await self._pipelined(build)
        out = []
        for i, tid in enumerate(tids):
            (st, exp), targets = rows[2 * i], rows[2 * i + 1]
            if st is None or int(st) != TaskState.ACTIVE or now >= float(exp):
                continue
            if any(unpack_target(t)[0] == server for t in targets if t != SENTINEL_B):
                out.append(tid)
        return out

    async def list_sub_tasks(self, task_id: str) -> Sequence[str]:
        if not task_id_ok(task_id):
            return []
        key = self._task_keys(task_id)[4]
        ids: Any = await self._guard.read(lambda: self._r.smembers(key))
        return sorted(t for t in (_s(i) for i in ids) if task_id_ok(t))

    async def count_live_credentials(self, task_id: str, now: float) -> int:
        if not task_id_ok(task_id):
            return 0
        keys = self._task_keys(task_id)

        def build(pipe: Any) -> None:
            pipe.hget(keys[0], "st")
            pipe.zcount(keys[2], "(" + fnum(now * 1000), "(+inf")  # not the sentinel

        st, count = await self._pipelined(build)
        return int(count) if st is not None and int(st) == TaskState.ACTIVE else 0

    # -- approvals (broker.adapters.store._redis_approvals) ----------------------------------------

    async def create_approval(
        self,
        approval: ApprovalRecord,
        *,
        now: float,
        max_pending: int,
        max_pending_per_agent: int = 0,
    ) -> ApprovalRecord:
        with self._guard.budget():
            return await self._approvals.create(
                approval,
                now=now,
                max_pending=max_pending,
                max_pending_per_agent=max_pending_per_agent,
            )

    async def get_approval(self, approval_id: str) -> ApprovalRecord | None:
        return await self._approvals.get(approval_id)

    async def list_approvals(
        self, *, task_id: str = "", now: float, limit: int = 1000
    ) -> Sequence[ApprovalRecord]:
        return await self._approvals.listed(task_id=task_id, now=now, limit=limit)

    async def decide_approval(
        self, approval_id: str, *, approve: bool, decided_by: str, reason: str, now: float
    ) -> tuple[bool, ApprovalRecord | None]:
        return await self._approvals.decide(
            approval_id, approve=approve, decided_by=decided_by, reason=reason, now=now
        )

    async def consume_approval(
        self, approval_id: str, *, binding: str, now: float
    ) -> tuple[bool, ApprovalRecord | None]:
        return await self._approvals.consume(approval_id, binding=binding, now=now)

    # -- credentials ---------------------------------------------------------------------------

    async def record_credential(
        self, cred: CredentialRecord, *, quotas: Quotas, now: float, taint: Taint | None = None
    ) -> None:
        with self._guard.budget():
            await self._record_credential(cred, quotas, now, taint)

    async def _record_credential(
        self, cred: CredentialRecord, quotas: Quotas, now: float, taint: Taint | None
    ) -> None:
        tid = cred.task_id
        if not task_id_ok(tid):
            raise NotFound(f"task {tid} not found", Reason.TASK_NOT_FOUND)
        field = jti_field(tid, cred.jti)
        if field is None:
            raise InvalidRequest("jti", f"expected {tid}. followed by 22 base64url characters")
        exp, exp_ms = fnum(cred.expires_at), ms(cred.expires_at)
        bucket = quota_bucket(exp_ms)
        # 1. Reserve the per-agent quota (the agent's slot), releasing lazily consumed ones.
        releasing = self._pending.pop(cred.agent, [])
        ok, live = await self._run(
            self._reserve,
            [self._agent_quota(cred.agent)],
            [fnum(now), quotas.per_agent, bucket, *releasing],
        )
        if not ok:
            raise QuotaExceeded(
                f"agent {cred.agent} holds {live} live credentials (limit {quotas.per_agent})"
            )
        # 2. Index the task under the server before recording (first time for this pair).
        pair = (tid, cred.server)
        first = pair not in self._indexed
        if first:
            await self._run(
                self._index_server, [self._server_index(cred.server)], [tid, exp, fnum(now)]
            )
        # 3. Record on the task's slot. If Redis fails here the outcome is unknown: the
        #    reservation stays (counted until exp) and the caller hands out nothing.
        res = await self._run(
            self._mint,
            self._task_keys(tid),
            [
                field,
                pack_credential(cred),
                exp,
                fnum(now),
                quotas.per_task,
                pack_target(cred.server, cred.tool),
                exp_ms,
                fnum(now * 1000),
                "" if taint is None else int(taint),
            ],
        )
        status = _s(res[0])
        if status != "OK":
            await self._release(cred.agent, [bucket])
            if status == "TAINT":
                raise TaintRose(Taint(int(res[1])))
            raise _mint_refusal(status, res, cred, quotas)
        # Kill switches: read after the record, so a block written before this read refuses the
        # credential, and one written after it finds the credential recorded (and covers it:
        # floors only rise). Refused here, the credential is recorded but never handed out.
        block = covering(
            await self.list_blocks(now),
            agents=(cred.agent, *_chain(res[2])),
            server=cred.server,
            tier=cred.tier,
            issued_at=cred.issued_at,
            task_created_at=float(res[3]),
            now=now,
        )
        if block is not None:
            raise refusal(block, now, tid)
        if first:  # keep the server index entry as long as the task is retained
            try:
                await self._run(
                    self._index_server,
                    [self._server_index(cred.server)],
                    [tid, _s(res[1]), fnum(now)],
                )
                self._indexed[pair] = None
                if len(self._indexed) > _INDEXED_PAIRS:
                    self._indexed.popitem(last=False)
            except StoreUnavailable:  # the entry covers the credential's life; retried next mint
                log.warning("could not extend the server index entry of task %s", tid)

    async def consume_credential(self, task_id: str, jti: str, now: float) -> ConsumeResult:
        with self._guard.budget():  # two round trips (consume, blocks), one deadline
            return await self._consume_credential(task_id, jti, now)

    async def _consume_credential(self, task_id: str, jti: str, now: float) -> ConsumeResult:
        field = jti_field(task_id, jti) if task_id_ok(task_id) else None
        if field is None:
            return ConsumeResult.UNKNOWN
        keys = self._task_keys(task_id)
        res = await self._run(self._consume, keys[:4], [field])
        result = ConsumeResult(int(res[0]))
        if result is not ConsumeResult.OK:
            return result
        agent = _s(res[1])
        self._defer_release(agent, quota_bucket(ms(packed_expiry(res[2]))))
        # Kill switches, read after the consume: a block written before this read refuses it;
        # one written after found the credential already used (floors only rise), so the
        # outcome is as if the block had been checked inside the consume.
        blocks = await self.list_blocks(now)
        if blocks:
            cred = unpack_credential(task_id, agent, field.encode(), res[2], res[3] or b'["",""]')
            if covering(
                blocks,
                agents=(agent, *_chain(res[4])),
                server=cred.server,
                tier=cred.tier,
                issued_at=cred.issued_at,
                now=now,
            ):
                return ConsumeResult.REVOKED
        return result

    async def get_credential(self, task_id: str, jti: str) -> CredentialRecord | None:
        field = jti_field(task_id, jti) if task_id_ok(task_id) else None
        if field is None:
            return None
        keys = self._task_keys(task_id)
        res = await self._run(self._get_cred, [keys[0], keys[1], keys[3]], [field], read=True)
        if res is None:
            return None
        value, target, agent = res
        return unpack_credential(task_id, _s(agent), field.encode(), value, target)

    async def list_credentials(self, task_id: str) -> Sequence[CredentialRecord]:
        if not task_id_ok(task_id):
            return []
        keys = self._task_keys(task_id)
        flat, targets, agent = await self._run(
            self._list_creds, [keys[0], keys[1], keys[3]], [], read=True
        )
        creds = []
        for i in range(0, len(flat), 2):
            if flat[i] == SENTINEL_B:
                continue
            value = flat[i + 1]
            idx = int.from_bytes(value[1:3], "little")
            creds.append(unpack_credential(task_id, _s(agent), flat[i], value, targets[idx]))
        return sorted(creds, key=lambda c: c.issued_at)

    # -- the per-agent quota -------------------------------------------------------------------

    def _defer_release(self, agent: str, bucket: str) -> None:
        waiting = self._pending.setdefault(agent, [])
        waiting.append(bucket)
        if len(waiting) > _PENDING_PER_AGENT:  # the oldest expire soon anyway
            del waiting[0]
        if len(self._pending) > _PENDING_AGENTS:
            self._pending.popitem(last=False)

    async def _release(self, agent: str, buckets: Sequence[str]) -> None:
        """Best effort: a count not released here still ends with its bucket."""
        try:
            for i in range(0, len(buckets), _BATCH):
                await self._run(
                    self._release_script, [self._agent_quota(agent)], buckets[i : i + _BATCH]
                )
        except StoreUnavailable:
            log.warning("agent quota of %s not released (frees up at expiry)", agent)

    # -- revocation feed -----------------------------------------------------------------------

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
        return await self._feed.publish(
            kind, subject, revoked_at, reason, blocked=blocked, until=until
        )

    async def revocations_since(self, cursor: str, limit: int = 1000) -> Sequence[RevocationEvent]:
        return await self._feed.since(cursor, limit)

    def watch_revocations(self, cursor: str) -> AsyncIterator[RevocationEvent]:
        """See ``RevocationFeed.watch``: survives Redis outages, ends only when closed."""
        return self._feed.watch(cursor)

    async def last_revocation_cursor(self) -> str:
        return await self._feed.last_cursor()

    @property
    def feed_window(self) -> float:
        """Seconds of revocation events kept (``REVOCATION_WINDOW``; tests shorten it)."""
        return self._feed.window

    @feed_window.setter
    def feed_window(self, seconds: float) -> None:
        self._feed.window = seconds

    # -- kill switches (broker.core.blocks) --------------------------------------------------------

    def _blocks_key(self) -> str:
        return f"{self._ns}:blocks"

    async def put_block(self, block: Block, *, now: float) -> Block:
        value = orjson.dumps([block.blocked, block.until, block.reason, block.by, block.created_at])
        floor, keep = await self._run(
            self._block_put,
            [self._blocks_key()],
            [
                f"{block.kind}\n{block.subject}",
                value,
                fnum(block.floor),
                fnum(block.keep_until) if block.keep_until else "0",
                fnum(now),
            ],
        )
        return replace(block, floor=float(floor), keep_until=float(keep))

    async def list_blocks(self, now: float) -> Sequence[Block]:
        async with self._guard.io():
            raw: Any = await self._r.hgetall(self._blocks_key())
        if not raw:
            return []
        fields = {_s(k): v for k, v in raw.items()}
        out = []
        for name, value in fields.items():
            if name.startswith(("F:", "K:")) or "\n" not in name:
                continue
            kind, subject = name.split("\n", 1)
            blocked, until, reason, by, created_at = orjson.loads(value)
            block = Block(
                kind=kind,
                subject=subject,
                floor=float(fields.get("F:" + name, b"0")),
                blocked=bool(blocked),
                until=float(until),
                reason=str(reason),
                by=str(by),
                created_at=float(created_at),
                keep_until=float(fields.get("K:" + name, b"0")),
            )
            if block.retained(now):
                out.append(block)
        return out

    # -- housekeeping --------------------------------------------------------------------------

    # -- tool definition pins (broker.adapters.store._redis_pins) ----------------------------------

    async def tool_pins(self, server: str) -> Mapping[str, ToolPin]:
        return await self._pins.tool_pins(server)

    async def observe_tools(
        self, server: str, observed: Mapping[str, str], now: float
    ) -> tuple[Mapping[str, ToolPin], frozenset[str]]:
        return await self._pins.observe_tools(server, observed, now)

    async def set_tool_pin(self, server: str, tool: str, sha256: str, now: float) -> None:
        await self._pins.set_tool_pin(server, tool, sha256, now)

    # -- signing keys shared by replicas (``_redis_keys``) -------------------------------------

    async def publish_keys(self, keys: Sequence[PublishedKey], *, now: float) -> None:
        await self._published.publish(keys, now)

    async def published_keys(self, now: float) -> Sequence[PublishedKey]:
        return await self._published.read(now)

    async def ping(self) -> None:
        await self._guard.read(self._r.ping)

    async def close(self) -> None:
        self._feed.close()
        await self._r.aclose()


def _chain(raw: object) -> tuple[str, ...]:
    """A task's delegation chain as stored ('ac': agents joined by newlines)."""
    text = _s(raw) if raw else ""
    return tuple(text.split("\n")) if text else ()


def _mint_refusal(
    status: str, res: Sequence[Any], cred: CredentialRecord, quotas: Quotas
) -> Exception:
    tid = cred.task_id
    if status == "NOTFOUND":
        return NotFound(f"task {tid} not found", Reason.TASK_NOT_FOUND)
    if status == "ENDED":
        name = TaskState(int(res[1])).name.lower()
        return FailedPrecondition(f"task {tid} is {name}", Reason.TASK_ENDED)
    if status == "QUOTA":
        return QuotaExceeded(
            f"task {tid} holds {int(res[1])} live credentials (limit {quotas.per_task}); "
            "use or let some expire first"
        )
    if status == "DUP":
        return InvalidRequest("jti", f"credential {cred.jti} is already recorded")
    return QuotaExceeded(f"task {tid} has used too many distinct (server, tool) pairs")
