"""The Redis store against real redis-server processes: restarts, outages, replicas, memory.

The contract suite (tests/contract) checks behaviour; this file checks what only a real server
shows: state outliving a store instance, failing closed within the time bound while Redis is
hung or dead and recovering without a restart, two broker replicas sharing one Redis, and the
memory one live credential costs.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from broker.adapters.store.factory import open_store
from broker.app.ports import Quotas, Store
from broker.core.errors import StoreUnavailable
from broker.core.ids import new_jti, new_task_id
from broker.core.model import ConsumeResult, CredentialRecord, TaskRecord, TaskState
from tests.redis_procs import RedisClusterProcs, RedisProc, start_redis

pytestmark = pytest.mark.integration

NOW = time.time()
AGENT = "spiffe://dev.local/agent/demo"
SERVERS = [f"spiffe://dev.local/mcp/{name}" for name in ("docs", "repo", "ci", "tickets")]
TOOLS = ["search_docs", "read_file", "run_tests", "create_ticket"]
BOUND = 1.0  # seconds: every call must fail within this when Redis is down or hung


def ns_url(url: str) -> str:
    return f"{url}?namespace=it{uuid.uuid4().hex[:12]}"


def a_task(ttl: float = 600) -> TaskRecord:
    return TaskRecord(
        task_id=new_task_id(),
        agent=AGENT,
        intent="fix the flaky test",
        on_behalf_of="alice@example.com",
        created_at=NOW,
        expires_at=NOW + ttl,
        labels={"ticket": "ENG-1"},
    )


def a_cred(t: TaskRecord, i: int = 0, ttl: float = 60) -> CredentialRecord:
    return CredentialRecord(
        jti=new_jti(t.task_id),
        task_id=t.task_id,
        agent=t.agent,
        server=SERVERS[i % len(SERVERS)],
        tool=TOOLS[i % len(TOOLS)],
        args_sha256=uuid.uuid4().hex * 2,
        tier=i % 4,
        issued_at=NOW + i * 0.001,
        expires_at=NOW + ttl,
    )


async def started(store: Store, ttl: float = 600) -> TaskRecord:
    t = a_task(ttl)
    await store.create_task(t, retain_until=t.expires_at + 300)
    return t


@pytest.fixture
async def pair(redis_server: str) -> AsyncIterator[tuple[Store, Store]]:
    """Two stores on one Redis and one namespace: two broker replicas."""
    url = ns_url(redis_server)
    a, b = open_store(url, timeout=2.0), open_store(url, timeout=2.0)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[RedisProc]:
    """A private redis-server with AOF (appendfsync always) that tests may stop and restart."""
    proc = start_redis(tmp_path / "redis", appendonly=True, unix_socket=False)
    try:
        yield proc
    finally:
        proc.stop()


# -- (a) a restarted broker sees everything ------------------------------------------------------


async def test_a_new_store_instance_sees_tasks_credentials_and_tombstones(
    redis_server: str,
) -> None:
    url = ns_url(redis_server)
    first = open_store(url, timeout=2.0)
    try:
        live_task, ended_task = await started(first), await started(first)
        creds = [a_cred(live_task, i) for i in range(3)]
        for c in creds:
            await first.record_credential(c, quotas=Quotas(), now=NOW)
        doomed = a_cred(ended_task)
        await first.record_credential(doomed, quotas=Quotas(), now=NOW)
        assert await first.consume_credential(live_task.task_id, creds[0].jti, NOW) is (
            ConsumeResult.OK
        )
        await first.end_task(ended_task.task_id, state=TaskState.REVOKED, now=NOW, reason="op")
    finally:
        await first.close()

    second = open_store(url, timeout=2.0)
    try:
        assert await second.get_task(live_task.task_id) == live_task
        tomb = await second.get_task(ended_task.task_id)
        assert tomb is not None
        assert (tomb.state, tomb.end_reason) == (TaskState.REVOKED, "op")
        assert list(await second.list_credentials(live_task.task_id)) == [
            CredentialRecord(**{**c.__dict__, "consumed": c is creds[0]}) for c in creds
        ]
        assert await second.consume_credential(live_task.task_id, creds[0].jti, NOW) is (
            ConsumeResult.REPLAYED
        )
        assert await second.consume_credential(live_task.task_id, creds[1].jti, NOW) is (
            ConsumeResult.OK
        )
        assert await second.consume_credential(ended_task.task_id, doomed.jti, NOW) is (
            ConsumeResult.REVOKED
        )
        events = await second.revocations_since("")
        assert [(e.kind, e.subject) for e in events] == [("task", ended_task.task_id)]
    finally:
        await second.close()


async def test_unix_socket_url(redis_proc: RedisProc) -> None:
    store = open_store(ns_url(redis_proc.unix_url))
    try:
        await store.ping()
        t = await started(store)
        assert await store.get_task(t.task_id) == t
    finally:
        await store.close()


# -- (b) fail closed, recover without a restart --------------------------------------------------


async def _outage_calls(
    store: Store, t: TaskRecord, issued: list[CredentialRecord], calls: int
) -> list[CredentialRecord]:
    """Mint and consume while Redis is down: every call must raise StoreUnavailable in time."""
    attempted: list[CredentialRecord] = []
    for i in range(calls):
        c = a_cred(t, i)
        attempted.append(c)
        for call in (
            store.record_credential(c, quotas=Quotas(), now=NOW),
            store.consume_credential(t.task_id, issued[i % len(issued)].jti, NOW),
        ):
            started_at = time.monotonic()
            with pytest.raises(StoreUnavailable) as exc:
                await call
            elapsed = time.monotonic() - started_at
            assert elapsed < BOUND, f"a call took {elapsed:.3f} s with Redis down"
            # what the client is told: that the store is down, in no more detail
            assert re.search(r"unreachable|did not answer within", str(exc.value)), exc.value
    return attempted


async def test_fails_closed_while_redis_hangs_and_recovers(durable_redis: RedisProc) -> None:
    """SIGSTOP: connections are accepted by the kernel but nothing answers (the worst case:
    a hang, not a refusal). Each call must give up within the bound."""
    store = open_store(ns_url(durable_redis.url))  # the production default timeout
    try:
        t = await started(store)
        issued = [a_cred(t, i) for i in range(2)]
        for c in issued:
            await store.record_credential(c, quotas=Quotas(), now=NOW)
        durable_redis.pause()
        try:
            attempted = await _outage_calls(store, t, issued, calls=2)
        finally:
            durable_redis.resume()
        # Back without a new store. A command sent during the pause may still run when Redis
        # resumes (it sat in the socket buffer): a consume then burns the token (the verifier
        # was told UNAVAILABLE: fails closed), a reservation counts until it expires. But no
        # credential was reported recorded, and no mint script was sent after a failed
        # reservation, so none of the attempted credentials exists.
        for c in attempted:
            assert await store.get_credential(t.task_id, c.jti) is None
        fresh = a_cred(t, 7)
        await store.record_credential(fresh, quotas=Quotas(), now=NOW)
        assert await store.consume_credential(t.task_id, fresh.jti, NOW) is ConsumeResult.OK
        for c in issued:
            assert await store.consume_credential(t.task_id, c.jti, NOW) in (
                ConsumeResult.OK,
                ConsumeResult.REPLAYED,
            )
    finally:
        await store.close()


async def test_fails_closed_while_redis_is_dead_and_recovers_after_restart(
    durable_redis: RedisProc,
) -> None:
    """SIGKILL while a client keeps minting, then a restart on the same port and directory.

    The server runs with AOF and appendfsync always, so everything it acknowledged comes back:
    the test can then check that every credential reported recorded really was. (Restarted
    empty, the store would recover too, but every task would be gone: TASK_NOT_FOUND, still
    failing closed; see docs/operations.md on persistence.)"""
    store = open_store(ns_url(durable_redis.url))
    try:
        t, revoked = await started(store), await started(store)
        doomed = a_cred(revoked)
        await store.record_credential(doomed, quotas=Quotas(per_agent=10_000), now=NOW)
        await store.end_task(revoked.task_id, state=TaskState.REVOKED, now=NOW, reason="op")
        held = a_cred(t)
        await store.record_credential(held, quotas=Quotas(), now=NOW)

        recorded: list[CredentialRecord] = []
        failures: list[float] = []
        stop = asyncio.Event()

        async def mint_forever() -> None:
            i = 0
            while not stop.is_set():
                c = a_cred(t, i)
                i += 1
                began = time.monotonic()
                try:
                    await store.record_credential(
                        c, quotas=Quotas(per_task=100_000, per_agent=100_000), now=NOW
                    )
                    recorded.append(c)
                except StoreUnavailable:
                    failures.append(time.monotonic() - began)
                await asyncio.sleep(0.005)

        minter = asyncio.create_task(mint_forever())
        await asyncio.sleep(0.2)
        durable_redis.kill()
        await asyncio.sleep(0.6)
        attempted = await _outage_calls(store, t, [held], calls=2)
        durable_redis.start()  # same port, same directory: the AOF is replayed
        await asyncio.sleep(0.3)
        stop.set()
        await minter

        assert failures, "the minting loop never saw the outage"
        assert max(failures) < BOUND, f"slowest failure {max(failures):.3f} s"
        assert recorded, "the minting loop never succeeded"
        for c in recorded:  # reported recorded => recorded, across a crash
            assert await store.get_credential(t.task_id, c.jti) == c
        for c in attempted:
            assert await store.get_credential(t.task_id, c.jti) is None
        # the tombstone survived: the revoked task's credential does not verify
        assert await store.consume_credential(revoked.task_id, doomed.jti, NOW) is (
            ConsumeResult.REVOKED
        )
        # and minting resumed with the same store instance
        again = a_cred(t, 99)
        await store.record_credential(again, quotas=Quotas(per_task=100_000), now=NOW)
        assert await store.consume_credential(t.task_id, again.jti, NOW) is ConsumeResult.OK
    finally:
        await store.close()


async def test_cluster_fails_closed_and_recovers(redis_cluster_procs: RedisClusterProcs) -> None:
    """One master of the shared cluster hangs for about a second (well under its node timeout,
    so the cluster never marks it failed): calls touching its slots fail in time; when it
    answers again, the same store works again."""
    cluster = redis_cluster_procs
    victim = cluster.nodes[0]
    ranges = cluster.slots(victim)
    store = open_store(ns_url(cluster.url))
    try:
        while True:  # a task whose slot the victim serves
            t = await started(store)
            if any(lo <= key_slot(t.task_id.encode()) <= hi for lo, hi in ranges):
                break
        held = a_cred(t)
        await store.record_credential(held, quotas=Quotas(), now=NOW)
        victim.pause()
        try:
            await _outage_calls(store, t, [held], calls=1)
        finally:
            victim.resume()
        for _ in range(30):
            try:
                await store.record_credential(a_cred(t, 5), quotas=Quotas(), now=NOW)
                break
            except StoreUnavailable:
                await asyncio.sleep(0.1)
        assert await store.consume_credential(t.task_id, held.jti, NOW) in (
            ConsumeResult.OK,
            ConsumeResult.REPLAYED,
        )
    finally:
        await store.close()


# -- (c) two replicas on one Redis ---------------------------------------------------------------


async def test_replicas_agree_on_consumption_and_revocation(pair: tuple[Store, Store]) -> None:
    a, b = pair
    t = await started(a)
    c1, c2 = a_cred(t, 0), a_cred(t, 1)
    await a.record_credential(c1, quotas=Quotas(), now=NOW)
    await a.record_credential(c2, quotas=Quotas(), now=NOW)
    assert await b.get_credential(t.task_id, c1.jti) == c1
    assert await a.consume_credential(t.task_id, c1.jti, NOW) is ConsumeResult.OK
    assert await b.consume_credential(t.task_id, c1.jti, NOW) is ConsumeResult.REPLAYED
    await b.end_task(t.task_id, state=TaskState.REVOKED, now=NOW, reason="operator")
    assert await a.consume_credential(t.task_id, c2.jti, NOW) is ConsumeResult.REVOKED


async def test_a_replica_follows_revocations_published_by_another(
    pair: tuple[Store, Store],
) -> None:
    a, b = pair
    t = await started(a)
    feed = b.watch_revocations(await b.last_revocation_cursor())
    try:
        nxt = asyncio.ensure_future(feed.__anext__())
        await asyncio.sleep(0.05)
        await a.end_task(t.task_id, state=TaskState.ENDED, now=NOW, reason="done")
        event = await asyncio.wait_for(nxt, 5)
        assert (event.kind, event.subject, event.reason) == ("task", t.task_id, "done")
    finally:
        await feed.aclose()  # type: ignore[attr-defined]


async def test_the_feed_resumes_after_a_redis_restart(durable_redis: RedisProc) -> None:
    """A watcher keeps going through a crash and restart of Redis, and resumes after the last
    event it delivered: nothing lost, nothing twice."""
    url = ns_url(durable_redis.url)
    publisher, follower = open_store(url), open_store(url)
    feed = follower.watch_revocations("$")
    try:
        first = asyncio.ensure_future(feed.__anext__())
        await asyncio.sleep(0.1)
        await publisher.publish_revocation("agent", AGENT, NOW, "before")
        assert (await asyncio.wait_for(first, 5)).reason == "before"
        nxt = asyncio.ensure_future(feed.__anext__())
        durable_redis.kill()
        await asyncio.sleep(0.5)  # the watcher sees the outage and backs off
        assert not nxt.done()
        durable_redis.start()
        for _ in range(50):  # the publisher's own first calls may still fail
            try:
                await publisher.publish_revocation("agent", AGENT, NOW, "after")
                break
            except StoreUnavailable:
                await asyncio.sleep(0.1)
        event = await asyncio.wait_for(nxt, 10)
        assert (event.kind, event.reason) == ("agent", "after")
    finally:
        await feed.aclose()  # type: ignore[attr-defined]
        await publisher.close()
        await follower.close()


# -- (d) memory per live credential --------------------------------------------------------------

LIVE = 64  # the default per-task quota: a task at its limit
BUDGET = 200  # bytes of Redis per live credential


async def _memory(raw: Redis, pattern: str) -> tuple[int, int]:
    keys = [k async for k in raw.scan_iter(match=pattern)]
    sizes = [await raw.memory_usage(k, samples=0) or 0 for k in keys]
    return len(keys), sum(sizes)


async def test_memory_per_live_credential(
    redis_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """MEMORY USAGE of every key of the namespace (task keys, agent quota, task and server
    indexes; no events) for one task at its credential quota, over 4 servers and tools."""
    url = ns_url(redis_server)
    ns = url.rsplit("namespace=", 1)[1]
    store = open_store(url, timeout=2.0)
    raw = Redis.from_url(redis_server)
    try:
        t = await started(store)
        _, empty = await _memory(raw, f"{ns}:*")
        for i in range(LIVE):
            await store.record_credential(a_cred(t, i), quotas=Quotas(), now=NOW)
        nkeys, total = await _memory(raw, f"{ns}:*")
        _, task_bytes = await _memory(raw, f"{ns}:{{{t.task_id}}}:*")
        _, agent_bytes = await _memory(raw, f"{ns}:{{agent:{AGENT}}}:quota")
        per_cred = total / LIVE
        with capsys.disabled():
            print(
                f"\nredis memory, one task with {LIVE} live credentials: {total} B in {nkeys} keys "
                f"= {per_cred:.0f} B per credential (task keys {task_bytes} B, agent quota "
                f"{agent_bytes} B, indexes {total - task_bytes - agent_bytes} B); "
                f"{(total - empty) / LIVE:.0f} B each on top of the task without credentials"
            )
        assert per_cred <= BUDGET, (
            f"{per_cred:.0f} bytes of Redis per live credential, budget {BUDGET}: "
            "check that the creds hash and live zset stay listpack-encoded"
        )
    finally:
        await raw.aclose()
        await store.close()
