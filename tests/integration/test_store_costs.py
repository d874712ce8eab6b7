"""What store calls cost, counted (never timed): ListTasks(active) reads the live set, not the
retained one; a quiet Redis returns to its starting key count once TTLs and retention pass.

The Redis cases count the commands redis-server executed (INFO commandstats) on a private
server; the memory case counts the task records it examined.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace

import pytest
from redis.asyncio import Redis

from broker.adapters.store.factory import open_store
from broker.adapters.store.memory import MemoryStore
from broker.adapters.store.redis import RedisStore
from broker.app.ports import Quotas, Store
from broker.core.ids import new_jti, new_task_id
from broker.core.model import ConsumeResult, CredentialRecord, TaskRecord, TaskState
from tests.redis_procs import RedisProc, start_redis

pytestmark = pytest.mark.integration

NOW = time.time()
AGENTS = [f"spiffe://dev.local/agent/a{i}" for i in range(3)]
RETAINED = 10_000


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProc]:
    proc = start_redis(tmp_path_factory.mktemp("redis-costs"), unix_socket=False)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
async def raw(private_redis: RedisProc) -> AsyncIterator[Redis]:
    client = Redis(port=private_redis.port)
    try:
        yield client
    finally:
        await client.aclose()


def a_task(i: int, *, ended: bool = False, now: float = NOW, ttl: float = 600) -> TaskRecord:
    t = TaskRecord(
        task_id=new_task_id(),
        agent=AGENTS[i % len(AGENTS)],
        intent="count me",
        on_behalf_of="alice@example.com",
        created_at=now + i * 1e-4,
        expires_at=now + ttl,
    )
    if ended:
        t = replace(t, state=TaskState.REVOKED, ended_at=now, end_reason="done")
    return t


async def create_many(store: Store, tasks: list[TaskRecord], retain: float) -> None:
    for i in range(0, len(tasks), 20):
        await asyncio.gather(
            *(store.create_task(t, retain_until=retain) for t in tasks[i : i + 20])
        )


def resp(*args: object) -> bytes:
    """One command in the Redis protocol."""
    parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(x), x) for x in parts)


async def retain_ended(store: RedisStore, proc: RedisProc, count: int, retain: float) -> None:
    """``count`` ended tasks, recorded by exactly the scripts create_task runs, sent in one
    stream (redis-py would take seconds to encode them)."""
    payload = bytearray()
    loaded: set[str] = set()
    for n in range(count):
        for script, keys, args in store.create_steps(a_task(n, ended=True), retain):
            if script.sha not in loaded:
                payload += resp("SCRIPT", "LOAD", script.script)
                loaded.add(script.sha)
            payload += resp("EVALSHA", script.sha, len(keys), *keys, *args)
    payload += resp("PING")
    reader, writer = await asyncio.open_connection("127.0.0.1", proc.port)
    try:
        writer.write(payload)
        await writer.drain()
        replies = bytearray()
        while not replies.endswith(b"+PONG\r\n"):
            chunk = await reader.read(1 << 16)
            assert chunk, "redis closed the connection"
            replies += chunk
    finally:
        writer.close()
        await writer.wait_closed()
    assert not replies.startswith(b"-") and b"\r\n-" not in replies, bytes(replies[:300])


async def hmgets(raw: Redis) -> int:
    stats = await raw.info("commandstats")
    entry = stats.get("cmdstat_hmget", {"calls": 0})
    return int(entry["calls"])


async def test_list_active_on_redis_reads_the_live_set_not_the_retained_one(
    private_redis: RedisProc, raw: Redis
) -> None:
    store = open_store(f"{private_redis.url}?namespace=c{uuid.uuid4().hex[:8]}", timeout=3.0)
    assert isinstance(store, RedisStore)
    try:
        live = [a_task(i) for i in range(30)]
        await create_many(store, live, NOW + 1200)

        async def listed(agent: str = "") -> tuple[int, list[str]]:
            before = await hmgets(raw)
            tasks = await store.list_tasks(state=TaskState.ACTIVE, agent=agent, now=NOW + 1)
            return await hmgets(raw) - before, [t.task_id for t in tasks]

        calls_without, ids_without = await listed()
        agent_calls_without, agent_ids = await listed(AGENTS[0])
        assert ids_without == [t.task_id for t in live]
        assert agent_ids == [t.task_id for t in live if t.agent == AGENTS[0]]

        await retain_ended(store, private_redis, RETAINED, NOW + 1200)
        calls_with, ids_with = await listed()
        agent_calls_with, _ = await listed(AGENTS[0])
        assert ids_with == ids_without
        assert calls_without == 30  # one record read per live task
        assert calls_with <= calls_without + 2
        assert agent_calls_with <= agent_calls_without + 2
        # the retained ones are all there for whoever asks for them
        ended = await store.list_tasks(state=TaskState.REVOKED, now=NOW + 1, limit=50)
        assert len(ended) == 50

        # a task that ends leaves the live index
        await store.end_task(live[0].task_id, state=TaskState.ENDED, now=NOW + 1, reason="ok")
        calls_after_end, ids_after_end = await listed()
        assert ids_after_end == ids_without[1:]
        assert calls_after_end == calls_without - 1
    finally:
        await store.close()


async def test_list_active_in_memory_examines_the_live_set_not_the_retained_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = MemoryStore()
    examined = 0
    state_at = TaskRecord.state_at

    def counting(self: TaskRecord, now: float) -> TaskState:
        nonlocal examined
        examined += 1
        return state_at(self, now)

    monkeypatch.setattr(TaskRecord, "state_at", counting)

    async def listed() -> tuple[int, list[str]]:
        nonlocal examined
        examined = 0
        tasks = await store.list_tasks(state=TaskState.ACTIVE, now=NOW + 1)
        return examined, [t.task_id for t in tasks]

    live = [a_task(i) for i in range(30)]
    await create_many(store, live, NOW + 1200)
    cost_without, ids_without = await listed()
    ended = [a_task(i) for i in range(RETAINED)]
    await create_many(store, ended, NOW + 1200)
    for t in ended:
        await store.end_task(t.task_id, state=TaskState.ENDED, now=NOW, reason="done")
    cost_with, ids_with = await listed()
    assert ids_with == ids_without == [t.task_id for t in live]
    assert cost_with <= cost_without * 2 + 5  # not ~10,000
    assert len(await store.list_tasks(state=TaskState.ENDED, now=NOW + 1, limit=RETAINED)) == (
        RETAINED
    )


async def namespace_keys(raw: Redis, namespace: str) -> list[bytes]:
    return [k async for k in raw.scan_iter(match=f"{namespace}:*", count=1000)]


@pytest.mark.slow
async def test_a_quiet_redis_returns_to_its_starting_key_count(
    private_redis: RedisProc, raw: Redis
) -> None:
    """Real time and short lives: tasks of 1 s retained 1 s more, credentials of 1 s, a feed
    window of 2 s. A few seconds after the traffic stops, every key of the namespace is gone
    (task keys, the agent quota, the task, live and per-server indexes, the feed)."""
    namespace = f"q{uuid.uuid4().hex[:8]}"
    store = open_store(f"{private_redis.url}?namespace={namespace}", timeout=3.0)
    assert isinstance(store, RedisStore)
    store.feed_window = 2.0
    assert await namespace_keys(raw, namespace) == []
    try:
        now = time.time()
        tasks = [a_task(i, now=now, ttl=1.0) for i in range(12)]
        await create_many(store, tasks, now + 2.0)
        for i, t in enumerate(tasks):
            c = CredentialRecord(
                jti=new_jti(t.task_id),
                task_id=t.task_id,
                agent=t.agent,
                server=f"spiffe://dev.local/mcp/s{i % 2}",
                tool="read",
                args_sha256="0" * 64,
                tier=3,
                issued_at=now,
                expires_at=now + 1.0,
            )
            await store.record_credential(c, quotas=Quotas(), now=now)
            if i % 3 == 0:
                assert await store.consume_credential(t.task_id, c.jti, now) is ConsumeResult.OK
            if i % 4 == 0:
                await store.end_task(t.task_id, state=TaskState.REVOKED, now=now, reason="x")
        assert len(await namespace_keys(raw, namespace)) > 12 * 5
        for _ in range(40):  # quota buckets end up to 5 s past a credential's exp
            left = await namespace_keys(raw, namespace)
            if not left:
                break
            await asyncio.sleep(0.25)
        assert left == []
    finally:
        await store.close()
