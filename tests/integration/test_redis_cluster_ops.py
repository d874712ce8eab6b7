"""The Redis store on a real 6-node Redis Cluster (3 masters, 3 replicas) while an operator
works on it: a slot held migrating, a `redis-cli --cluster reshard` under load, SIGKILL of a
master under load, and pooled connections that break under a read.

The cluster is private to this module (tests here kill and move things), started once, with a
2-second node timeout so that a replica takes over quickly. Marked slow: the module takes
about half a minute, most of it the failover.
"""

from __future__ import annotations

import asyncio
import gc
import random
import shutil
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import pytest
from redis.crc import key_slot

from broker.adapters.store.factory import open_store
from broker.app.ports import Quotas, Store
from broker.core.approvals import ApprovalRecord, new_approval_id
from broker.core.errors import StoreUnavailable
from broker.core.ids import new_jti, new_task_id
from broker.core.model import ConsumeResult, CredentialRecord, TaskRecord, TaskState
from tests.redis_procs import RedisClusterProcs, RedisProc, command, start_cluster

# redis-py drops a dead (or moved) node's connections from its cache without closing them; they
# are collected later, each with a ResourceWarning. Collected here, at each test's end, and not
# turned into errors: the broker never needs them again.
pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:unclosed:ResourceWarning"),
    pytest.mark.filterwarnings("ignore:loop is closed:ResourceWarning"),
]

NOW = time.time()
AGENT = "spiffe://dev.local/agent/ops"
SERVER = "spiffe://dev.local/mcp/docs"
LOTS = Quotas(per_task=1_000_000, per_agent=1_000_000)
T = TypeVar("T")
RECOVERY_BOUND = 15.0  # seconds from a master's SIGKILL to minting again on its slots


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcs]:
    procs = start_cluster(
        tmp_path_factory.mktemp("redis-cluster-ops"), replicas=1, node_timeout_ms=2000
    )
    try:
        yield procs
    finally:
        procs.stop()


@pytest.fixture
async def store(cluster: RedisClusterProcs) -> AsyncIterator[Store]:
    s = open_store(f"{cluster.url}?namespace=ops{uuid.uuid4().hex[:8]}", timeout=1.0)
    try:
        yield s
    finally:
        await s.close()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()


def a_task(task_id: str | None = None, parent: str = "") -> TaskRecord:
    return TaskRecord(
        task_id=task_id or new_task_id(),
        agent=AGENT,
        intent="reshard me",
        on_behalf_of="alice@example.com",
        created_at=NOW,
        expires_at=NOW + 600,
        parent_task_id=parent,
    )


def task_id_in_slot(slot: int) -> str:
    while True:
        tid = new_task_id()
        if key_slot(tid.encode()) == slot:
            return tid


def a_cred(t: TaskRecord) -> CredentialRecord:
    return CredentialRecord(
        jti=new_jti(t.task_id),
        task_id=t.task_id,
        agent=t.agent,
        server=SERVER,
        tool="search_docs",
        args_sha256=uuid.uuid4().hex * 2,
        tier=1,
        issued_at=NOW,
        expires_at=NOW + 120,
    )


async def created(store: Store, task: TaskRecord) -> TaskRecord:
    await store.create_task(task, retain_until=task.expires_at + 300)
    return task


def migrate(src: RedisProc, dst: RedisProc, keys: list[str]) -> None:
    reply = command(src.port, "MIGRATE", "127.0.0.1", str(dst.port), "", "0", "5000", "KEYS", *keys)
    assert reply.startswith(b"+OK"), reply


def keys_in_slot(node: RedisProc, slot: int) -> list[str]:
    reply = command(node.port, "CLUSTER", "GETKEYSINSLOT", str(slot), "1000").decode()
    return [line for line in reply.split("\r\n")[1:] if line and line[0] not in "*$"]


async def every_task_call(store: Store, t: TaskRecord) -> None:
    """One of each call that touches a task's slot; each must succeed."""
    creds = [a_cred(t) for _ in range(3)]
    for c in creds:
        await store.record_credential(c, quotas=Quotas(), now=NOW)
    assert await store.consume_credential(t.task_id, creds[0].jti, NOW) is ConsumeResult.OK
    assert await store.consume_credential(t.task_id, creds[0].jti, NOW) is (ConsumeResult.REPLAYED)
    assert await store.get_credential(t.task_id, creds[1].jti) == creds[1]
    assert {c.jti for c in await store.list_credentials(t.task_id)} >= {c.jti for c in creds}
    assert await store.count_live_credentials(t.task_id, NOW) >= 2
    assert await store.get_task(t.task_id) is not None
    sub = await created(store, a_task(parent=t.task_id))
    assert sub.task_id in await store.list_sub_tasks(t.task_id)
    approval = ApprovalRecord(
        approval_id=new_approval_id(t.task_id),
        task_id=t.task_id,
        agent=t.agent,
        server=SERVER,
        tool="delete_repo",
        args_sha256=uuid.uuid4().hex * 2,
        created_at=NOW,
        expires_at=NOW + 300,
    )
    assert await store.create_approval(approval, now=NOW, max_pending=32) == approval
    ok, _ = await store.decide_approval(
        approval.approval_id, approve=True, decided_by="op", reason="fine", now=NOW
    )
    assert ok


async def test_every_call_succeeds_while_a_slot_is_held_migrating(
    cluster: RedisClusterProcs, store: Store
) -> None:
    """Keys on the source, then on the destination (ASK), then split between both for a
    moment (TRYAGAIN, retried within the deadline), then the slot handed over: 0 failures."""
    before = await created(store, a_task())
    await every_task_call(store, before)
    slot = key_slot(before.task_id.encode())
    src = cluster.owner(slot)
    dst = next(m for m in cluster.masters() if m is not src)
    split = await created(store, a_task(task_id_in_slot(slot)))
    command(dst.port, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", cluster.node_id(src))
    command(src.port, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", cluster.node_id(dst))
    try:
        # 1. keys on the source; a task created now is created on the destination
        await every_task_call(store, before)
        during = await created(store, a_task(task_id_in_slot(slot)))
        await every_task_call(store, during)
        # 2. the slot's keys move, except most of one task's: that one's calls wait
        on_source = keys_in_slot(src, slot)
        held = [k for k in on_source if split.task_id in k and not k.endswith(":task")]
        migrate(src, dst, [k for k in on_source if k not in held])
        waiting = asyncio.create_task(
            store.record_credential(a_cred(split), quotas=Quotas(), now=NOW)
        )
        await asyncio.sleep(0.3)
        assert not waiting.done()
        migrate(src, dst, held)
        await waiting
        # 3. every key on the destination (ASK)
        assert keys_in_slot(src, slot) == []
        for t in (before, during, split):
            await every_task_call(store, t)
    finally:  # 4. hand the slot over
        for node in cluster.masters():
            command(node.port, "CLUSTER", "SETSLOT", str(slot), "NODE", cluster.node_id(dst))
    for t in (before, during, split):
        await every_task_call(store, t)
    c = a_cred(before)
    await store.record_credential(c, quotas=Quotas(), now=NOW)
    await store.end_task(before.task_id, state=TaskState.REVOKED, now=NOW, reason="op")
    assert await store.consume_credential(before.task_id, c.jti, NOW) is ConsumeResult.REVOKED


async def settled(call: Callable[[], Awaitable[T]]) -> T:
    for _ in range(4):
        try:
            return await call()
        except StoreUnavailable:
            await asyncio.sleep(0.2)
    return await call()


@dataclass
class Load:
    """Mint-then-consume from several workers over tasks spread on every master; one worker
    also ends tasks. Records what was acknowledged, and anything but success or
    StoreUnavailable (a wrong answer)."""

    store: Store
    tasks: list[TaskRecord]
    minted: list[CredentialRecord] = field(default_factory=list)
    consumed: list[CredentialRecord] = field(default_factory=list)
    ended: list[tuple[TaskRecord, CredentialRecord]] = field(default_factory=list)
    unavailable: int = 0
    wrong: list[str] = field(default_factory=list)
    ok_at: dict[str, list[float]] = field(default_factory=dict)  # task id -> loop times
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def worker(self, n: int) -> None:
        rng = random.Random(n)
        while not self.stop.is_set():
            t = rng.choice(self.tasks)
            c = a_cred(t)
            try:
                await self.store.record_credential(c, quotas=LOTS, now=NOW)
            except StoreUnavailable:
                self.unavailable += 1
                await asyncio.sleep(0.02)
                continue
            except Exception as exc:  # noqa: BLE001 - what the test reports
                self.wrong.append(f"mint: {exc!r}")
                continue
            self.minted.append(c)
            try:
                result = await self.store.consume_credential(t.task_id, c.jti, NOW)
            except StoreUnavailable:
                self.unavailable += 1
                continue
            except Exception as exc:  # noqa: BLE001
                self.wrong.append(f"consume: {exc!r}")
                continue
            if result is not ConsumeResult.OK:
                self.wrong.append(f"consume of a fresh credential: {result.name}")
                continue
            self.consumed.append(c)
            self.ok_at.setdefault(t.task_id, []).append(asyncio.get_running_loop().time())

    def first_ok_after(self, task_id: str, when: float) -> float | None:
        return next((at for at in self.ok_at.get(task_id, []) if at > when), None)

    async def ender(self) -> None:
        while not self.stop.is_set():
            await asyncio.sleep(0.2)
            try:
                t = await created(self.store, a_task())
                c = a_cred(t)
                await self.store.record_credential(c, quotas=LOTS, now=NOW)
                await self.store.end_task(t.task_id, state=TaskState.REVOKED, now=NOW, reason="x")
            except StoreUnavailable:
                self.unavailable += 1
                continue
            except Exception as exc:  # noqa: BLE001
                self.wrong.append(f"end: {exc!r}")
                continue
            self.ended.append((t, c))

    async def check_nothing_acknowledged_was_lost(self) -> None:
        """Reads back every acknowledged write (a call that times out on the busy machine is
        asked again: this checks the data, the load checked availability)."""
        consumed = {c.jti for c in self.consumed}
        for c in self.minted:
            found = await settled(lambda c=c: self.store.get_credential(c.task_id, c.jti))
            assert found is not None, f"acknowledged mint lost: {c.jti}"
            if c.jti in consumed:
                again = await settled(
                    lambda c=c: self.store.consume_credential(c.task_id, c.jti, NOW)
                )
                assert again is ConsumeResult.REPLAYED, f"acknowledged consume lost: {again}"
        for t, c in self.ended:
            task = await settled(lambda t=t: self.store.get_task(t.task_id))
            assert task is not None and task.state is TaskState.REVOKED
            result = await settled(
                lambda t=t, c=c: self.store.consume_credential(t.task_id, c.jti, NOW)
            )
            assert result is ConsumeResult.REVOKED


async def load_on(store: Store, tasks: int = 24) -> tuple[Load, list[asyncio.Task[None]]]:
    load = Load(store, [await created(store, a_task()) for _ in range(tasks)])
    runners = [asyncio.create_task(load.worker(n)) for n in range(4)]
    runners.append(asyncio.create_task(load.ender()))
    return load, runners


async def test_reshard_under_load_gives_no_wrong_answer(
    cluster: RedisClusterProcs, store: Store
) -> None:
    load, runners = await load_on(store)
    src, dst = cluster.masters()[:2]
    await asyncio.sleep(0.5)
    cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
    reshard = await asyncio.create_subprocess_exec(
        cli, "--cluster", "reshard", f"127.0.0.1:{src.port}",
        "--cluster-from", cluster.node_id(src), "--cluster-to", cluster.node_id(dst),
        "--cluster-slots", "1000", "--cluster-yes",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await reshard.communicate()
    await asyncio.sleep(0.5)
    load.stop.set()
    await asyncio.gather(*runners)
    assert reshard.returncode == 0, out.decode()[-2000:]
    assert load.wrong == []
    assert len(load.consumed) > 100
    assert load.unavailable <= len(load.minted) // 50  # retried, not failed: < 2%
    await load.check_nothing_acknowledged_was_lost()
    print(
        f"\nreshard of 1000 slots under load: {len(load.minted)} mints, "
        f"{len(load.consumed)} consumes, {len(load.ended)} ends, "
        f"{load.unavailable} UNAVAILABLE, 0 wrong"
    )


async def test_reads_are_repeated_once_on_a_broken_connection_writes_are_not(
    cluster: RedisClusterProcs, store: Store
) -> None:
    """Every connection the store holds is closed by the server (as a master that died and a
    pooled connection to it): a read still answers; a write reports UNAVAILABLE (it may have
    run: never repeated blindly), and the next one works."""
    t = await created(store, a_task())
    c1, c2 = a_cred(t), a_cred(t)
    await store.record_credential(c1, quotas=Quotas(), now=NOW)
    await store.record_credential(c2, quotas=Quotas(), now=NOW)
    owner = cluster.owner(key_slot(t.task_id.encode()))

    async def kill_clients() -> None:
        for _ in range(2):  # the pool holds a connection to the owner, settled
            await store.get_task(t.task_id)
        command(owner.port, "CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")

    await kill_clients()
    assert await store.get_credential(t.task_id, c1.jti) == c1
    await kill_clients()
    assert await store.get_task(t.task_id) is not None
    await kill_clients()
    with pytest.raises(StoreUnavailable):
        await store.consume_credential(t.task_id, c1.jti, NOW)
    assert await store.consume_credential(t.task_id, c1.jti, NOW) in (
        ConsumeResult.OK,
        ConsumeResult.REPLAYED,
    )


async def test_sigkill_of_a_master_under_load_fails_closed_and_recovers(
    cluster: RedisClusterProcs, store: Store
) -> None:
    load, runners = await load_on(store, tasks=30)
    await asyncio.sleep(1.0)
    victim = cluster.owner(key_slot(load.tasks[0].task_id.encode()))
    victims_tasks = [
        t.task_id for t in load.tasks if cluster.owner(key_slot(t.task_id.encode())) is victim
    ]
    loop = asyncio.get_running_loop()
    victim.kill()
    killed_at = loop.time()
    try:
        while loop.time() - killed_at < RECOVERY_BOUND + 5:
            await asyncio.sleep(0.1)
            if all(load.first_ok_after(t, killed_at) for t in victims_tasks):
                break
        firsts = [load.first_ok_after(t, killed_at) for t in victims_tasks]
        await asyncio.sleep(1.0)
    finally:
        load.stop.set()
        await asyncio.gather(*runners)
    assert load.wrong == []
    recovered = [round(at - killed_at, 1) if at else None for at in firsts]
    assert None not in firsts, f"tasks of the dead master never minted again: {recovered}"
    recovered_in = max(at for at in firsts if at is not None) - killed_at
    assert recovered_in <= RECOVERY_BOUND, recovered
    await load.check_nothing_acknowledged_was_lost()
    print(
        f"\nSIGKILL of a master under load: recovered in {recovered_in:.1f} s; "
        f"{len(load.minted)} mints, {len(load.consumed)} consumes, {len(load.ended)} ends, "
        f"{load.unavailable} UNAVAILABLE, 0 wrong, nothing acknowledged lost"
    )
    victim.start()  # back as a replica of the master that replaced it
