"""The store contract: every implementation (memory, Redis, Redis Cluster) must pass all of it."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from broker.app.ports import Quotas, Store
from broker.core.errors import FailedPrecondition, InvalidRequest, NotFound, QuotaExceeded, Reason
from broker.core.ids import new_jti, new_task_id
from broker.core.model import (
    ConsumeResult,
    CredentialRecord,
    PlanStep,
    RevocationKind,
    Taint,
    TaskRecord,
    TaskState,
)

NOW = 1_800_000_000.0
AGENT = "spiffe://dev.local/agent/demo"
DOCS = "spiffe://dev.local/mcp/docs"
REPO = "spiffe://dev.local/mcp/repo"


def task(parent: str = "", agent: str = AGENT, ttl: float = 600) -> TaskRecord:
    return TaskRecord(
        task_id=new_task_id(),
        agent=agent,
        intent="fix the flaky test",
        on_behalf_of="alice@example.com",
        created_at=NOW,
        expires_at=NOW + ttl,
        parent_task_id=parent,
        plan=(PlanStep(DOCS, ""), PlanStep(REPO, "read_file")),
        labels={"ticket": "ENG-1"},
    )


def cred(t: TaskRecord, server: str = DOCS, ttl: float = 60) -> CredentialRecord:
    return CredentialRecord(
        jti=new_jti(t.task_id),
        task_id=t.task_id,
        agent=t.agent,
        server=server,
        tool="search_docs",
        args_sha256="a" * 64,
        tier=0,
        issued_at=NOW,
        expires_at=NOW + ttl,
    )


async def started(store: Store, **kw: object) -> TaskRecord:
    t = task(**kw)  # type: ignore[arg-type]
    await store.create_task(t, retain_until=t.expires_at + 300)
    return t


async def test_task_round_trip(store: Store) -> None:
    t = await started(store)
    got = await store.get_task(t.task_id)
    assert got == t
    assert await store.get_task(new_task_id()) is None


async def test_consume_is_single_use(store: Store) -> None:
    t = await started(store)
    c = cred(t)
    await store.record_credential(c, quotas=Quotas(), now=NOW)
    assert await store.consume_credential(t.task_id, c.jti, NOW + 1) is ConsumeResult.OK
    assert await store.consume_credential(t.task_id, c.jti, NOW + 2) is ConsumeResult.REPLAYED
    stored = await store.get_credential(t.task_id, c.jti)
    assert stored is not None and stored.consumed


async def test_concurrent_consumes_let_exactly_one_through(store: Store) -> None:
    t = await started(store)
    c = cred(t)
    await store.record_credential(c, quotas=Quotas(), now=NOW)
    results = await asyncio.gather(
        *(store.consume_credential(t.task_id, c.jti, NOW + 1) for _ in range(20))
    )
    assert results.count(ConsumeResult.OK) == 1
    assert results.count(ConsumeResult.REPLAYED) == 19


async def test_unknown_credential_is_not_accepted(store: Store) -> None:
    t = await started(store)
    assert (
        await store.consume_credential(t.task_id, new_jti(t.task_id), NOW) is ConsumeResult.UNKNOWN
    )
    other = new_task_id()
    assert await store.consume_credential(other, new_jti(other), NOW) is ConsumeResult.UNKNOWN


async def test_end_task_revokes_every_credential_and_is_idempotent(store: Store) -> None:
    t = await started(store)
    creds = [cred(t) for _ in range(5)]
    for c in creds:
        await store.record_credential(c, quotas=Quotas(), now=NOW)
    assert await store.consume_credential(t.task_id, creds[0].jti, NOW) is ConsumeResult.OK
    killed, ended = await store.end_task(t.task_id, state=TaskState.ENDED, now=NOW + 1, reason="ok")
    assert (killed, list(ended)) == (4, [t.task_id])
    for c in creds[1:]:
        assert await store.consume_credential(t.task_id, c.jti, NOW + 2) is ConsumeResult.REVOKED
    got = await store.get_task(t.task_id)
    assert got is not None and got.state is TaskState.ENDED and got.ended_at == NOW + 1
    assert await store.end_task(t.task_id, state=TaskState.ENDED, now=NOW + 3, reason="x") == (
        0,
        [],
    )


async def test_end_unknown_task(store: Store) -> None:
    with pytest.raises(NotFound) as exc:
        await store.end_task(new_task_id(), state=TaskState.ENDED, now=NOW, reason="")
    assert exc.value.reason is Reason.TASK_NOT_FOUND


async def test_no_credential_for_an_ended_or_expired_task(store: Store) -> None:
    t = await started(store)
    await store.end_task(t.task_id, state=TaskState.REVOKED, now=NOW, reason="operator")
    with pytest.raises(FailedPrecondition) as exc:
        await store.record_credential(cred(t), quotas=Quotas(), now=NOW + 1)
    assert exc.value.reason is Reason.TASK_ENDED
    t2 = await started(store, ttl=10)
    with pytest.raises(FailedPrecondition):
        await store.record_credential(cred(t2), quotas=Quotas(), now=NOW + 11)
    with pytest.raises(NotFound):
        await store.record_credential(cred(task()), quotas=Quotas(), now=NOW)


async def test_sub_task_dies_with_its_parent(store: Store) -> None:
    parent = await started(store)
    child = await started(store, parent=parent.task_id)
    grandchild = await started(store, parent=child.task_id)
    c = cred(grandchild)
    await store.record_credential(c, quotas=Quotas(), now=NOW)
    killed, ended = await store.end_task(
        parent.task_id, state=TaskState.ENDED, now=NOW + 1, reason="done"
    )
    assert killed == 1
    assert set(ended) == {parent.task_id, child.task_id, grandchild.task_id}
    assert await store.consume_credential(grandchild.task_id, c.jti, NOW + 2) is (
        ConsumeResult.REVOKED
    )
    got = await store.get_task(child.task_id)
    assert got is not None and got.state is TaskState.REVOKED


async def test_sub_task_needs_a_live_parent(store: Store) -> None:
    parent = await started(store)
    await store.end_task(parent.task_id, state=TaskState.ENDED, now=NOW, reason="")
    with pytest.raises(FailedPrecondition):
        await started(store, parent=parent.task_id)
    with pytest.raises(NotFound):
        await started(store, parent=new_task_id())


async def test_quota_per_task(store: Store) -> None:
    t = await started(store)
    q = Quotas(per_task=3, per_agent=100)
    creds = [cred(t) for _ in range(3)]
    for c in creds:
        await store.record_credential(c, quotas=q, now=NOW)
    with pytest.raises(QuotaExceeded):
        await store.record_credential(cred(t), quotas=q, now=NOW)
    # a consumed credential is no longer live: room for one more
    await store.consume_credential(t.task_id, creds[0].jti, NOW)
    await store.record_credential(cred(t), quotas=q, now=NOW)
    # expired ones do not count either
    await store.record_credential(cred(t), quotas=q, now=NOW + 61)


async def test_quota_per_agent_spans_tasks(store: Store) -> None:
    q = Quotas(per_task=10, per_agent=4)
    t1, t2 = await started(store), await started(store)
    for _ in range(2):
        await store.record_credential(cred(t1), quotas=q, now=NOW)
        await store.record_credential(cred(t2), quotas=q, now=NOW)
    with pytest.raises(QuotaExceeded):
        await store.record_credential(cred(t1), quotas=q, now=NOW)
    other = await started(store, agent="spiffe://dev.local/agent/other")
    await store.record_credential(cred(other), quotas=q, now=NOW)  # another agent is not affected
    await store.end_task(t1.task_id, state=TaskState.ENDED, now=NOW, reason="")
    await store.record_credential(cred(t2), quotas=q, now=NOW)  # the ended task's freed up


async def test_taint_only_goes_up(store: Store) -> None:
    t = await started(store)
    assert await store.raise_taint(t.task_id, Taint.UNTRUSTED) is Taint.UNTRUSTED
    assert await store.raise_taint(t.task_id, Taint.CLEAN) is Taint.UNTRUSTED
    assert await store.raise_taint(t.task_id, Taint.SUSPECT) is Taint.SUSPECT
    assert await store.raise_taint(t.task_id, Taint.UNTRUSTED) is Taint.SUSPECT
    got = await store.get_task(t.task_id)
    assert got is not None and got.taint is Taint.SUSPECT


async def test_list_tasks_filters(store: Store) -> None:
    a, b = await started(store), await started(store, agent="spiffe://dev.local/agent/b")
    await store.end_task(b.task_id, state=TaskState.ENDED, now=NOW, reason="")
    ids = {t.task_id for t in await store.list_tasks(now=NOW + 1)}
    assert {a.task_id, b.task_id} <= ids
    active = {t.task_id for t in await store.list_tasks(state=TaskState.ACTIVE, now=NOW + 1)}
    assert a.task_id in active and b.task_id not in active
    mine = await store.list_tasks(agent="spiffe://dev.local/agent/b", now=NOW + 1)
    assert [t.task_id for t in mine] == [b.task_id]


async def test_tasks_with_server(store: Store) -> None:
    t1, t2 = await started(store), await started(store)
    await store.record_credential(cred(t1, server=REPO), quotas=Quotas(), now=NOW)
    await store.record_credential(cred(t2, server=DOCS), quotas=Quotas(), now=NOW)
    assert list(await store.tasks_with_server(REPO, NOW)) == [t1.task_id]


async def test_revocation_feed_resumes_from_a_cursor(store: Store) -> None:
    start = await store.last_revocation_cursor()
    t1, t2 = await started(store), await started(store)
    await store.end_task(t1.task_id, state=TaskState.ENDED, now=NOW, reason="done")
    events = await store.revocations_since(start)
    assert [(e.kind, e.subject) for e in events] == [("task", t1.task_id)]
    await store.publish_revocation("agent", AGENT, NOW, "compromised")
    await store.end_task(t2.task_id, state=TaskState.REVOKED, now=NOW, reason="op")
    later = await store.revocations_since(events[0].cursor)
    assert [(e.kind, e.subject) for e in later] == [("agent", AGENT), ("task", t2.task_id)]
    assert later[0].reason == "compromised"


async def test_watch_revocations_delivers_new_events(store: Store) -> None:
    t = await started(store)
    cursor = await store.last_revocation_cursor()
    stream = store.watch_revocations(cursor)
    nxt = asyncio.ensure_future(stream.__anext__())
    await asyncio.sleep(0.05)
    assert not nxt.done()
    await store.end_task(t.task_id, state=TaskState.ENDED, now=NOW, reason="done")
    event = await asyncio.wait_for(nxt, 2)
    assert (event.kind, event.subject) == ("task", t.task_id)
    await stream.aclose()  # type: ignore[attr-defined]


async def test_end_task_publishes_one_event_per_ended_task(store: Store) -> None:
    start = await store.last_revocation_cursor()
    parent = await started(store)
    child = await started(store, parent=parent.task_id)
    await store.end_task(parent.task_id, state=TaskState.ENDED, now=NOW, reason="done")
    events = await store.revocations_since(start)
    assert sorted((e.kind, e.subject, e.reason) for e in events) == sorted(
        [("task", parent.task_id, "done"), ("task", child.task_id, "done")]
    )
    await store.end_task(parent.task_id, state=TaskState.ENDED, now=NOW + 1, reason="again")
    assert len(await store.revocations_since(start)) == 2  # idempotent: nothing new


async def test_quota_per_agent_frees_consumed_and_expired_credentials(store: Store) -> None:
    q = Quotas(per_task=10, per_agent=2)
    t = await started(store)
    first = cred(t)
    await store.record_credential(first, quotas=q, now=NOW)
    await store.record_credential(cred(t), quotas=q, now=NOW)
    with pytest.raises(QuotaExceeded):
        await store.record_credential(cred(t), quotas=q, now=NOW)
    assert await store.consume_credential(t.task_id, first.jti, NOW) is ConsumeResult.OK
    await store.record_credential(cred(t), quotas=q, now=NOW)  # the consumed one freed a place
    with pytest.raises(QuotaExceeded):
        await store.record_credential(cred(t), quotas=q, now=NOW)
    # Expired ones stop counting (a store may count one a few seconds past exp: Quotas doc).
    later = replace(cred(t), issued_at=NOW + 70, expires_at=NOW + 130)
    await store.record_credential(later, quotas=q, now=NOW + 70)


async def test_tasks_with_server_lists_only_live_tasks(store: Store) -> None:
    t = await started(store)
    await store.record_credential(cred(t, server=REPO), quotas=Quotas(), now=NOW)
    assert list(await store.tasks_with_server(REPO, NOW)) == [t.task_id]
    await store.end_task(t.task_id, state=TaskState.REVOKED, now=NOW, reason="op")
    assert list(await store.tasks_with_server(REPO, NOW)) == []


async def test_duplicates_are_refused(store: Store) -> None:
    """A replayed create or record must never resurrect an ended task or re-arm a credential."""
    t = await started(store)
    with pytest.raises(InvalidRequest):
        await store.create_task(t, retain_until=t.expires_at + 300)
    c = cred(t)
    await store.record_credential(c, quotas=Quotas(), now=NOW)
    assert await store.consume_credential(t.task_id, c.jti, NOW) is ConsumeResult.OK
    with pytest.raises(InvalidRequest):
        await store.record_credential(c, quotas=Quotas(), now=NOW)
    assert await store.consume_credential(t.task_id, c.jti, NOW) is ConsumeResult.REPLAYED


async def test_record_refuses_a_credential_decided_below_the_tasks_taint(store: Store) -> None:
    """Issue 13 item 1: the decision's taint is part of the atomic record."""
    from broker.app.ports import TaintRose

    t = await started(store)
    await store.raise_taint(t.task_id, Taint.UNTRUSTED)
    c = cred(t)
    with pytest.raises(TaintRose) as caught:
        await store.record_credential(c, quotas=Quotas(), now=NOW, taint=Taint.CLEAN)
    assert caught.value.taint is Taint.UNTRUSTED
    assert await store.get_credential(t.task_id, c.jti) is None
    # at (or above) the task's taint it is recorded; no taint given: no check
    await store.record_credential(c, quotas=Quotas(), now=NOW, taint=Taint.UNTRUSTED)
    await store.record_credential(cred(t), quotas=Quotas(), now=NOW)
    assert len(await store.list_credentials(t.task_id)) == 2


async def test_blocks_are_checked_by_mint_and_consume(store: Store) -> None:
    """Issue 13 item 3: a kill switch is one record, checked inside mint and consume."""
    from broker.core.blocks import BlockKind, new_block
    from broker.core.errors import PermissionDenied

    old = await started(store)
    c = cred(old)
    await store.record_credential(c, quotas=Quotas(), now=NOW)
    block = new_block(
        BlockKind.AGENT, AGENT, now=NOW + 1, by="op", reason="injected", retention=100
    )
    stored = await store.put_block(block, now=NOW + 1)
    assert stored.floor == NOW + 1 and stored.blocks(NOW + 2)
    assert [b.key for b in await store.list_blocks(NOW + 2)] == [("agent", AGENT)]
    # the credential issued before the floor: refused at consume
    assert await store.consume_credential(old.task_id, c.jti, NOW + 2) is ConsumeResult.REVOKED
    # a mint while blocked: refused, nothing handed out
    with pytest.raises(PermissionDenied) as denied:
        await store.record_credential(
            replace(cred(old), issued_at=NOW + 2), quotas=Quotas(), now=NOW + 2
        )
    assert denied.value.reason is Reason.REVOKED
    # lifted: the floor rises to the lift, the old task stays revoked, a new one works
    await store.put_block(stored.lifted(NOW + 5, by="op", reason="ok", retention=100), now=NOW + 5)
    [lifted] = await store.list_blocks(NOW + 6)
    assert not lifted.blocked and lifted.floor == NOW + 5
    with pytest.raises(FailedPrecondition):
        await store.record_credential(
            replace(cred(old), issued_at=NOW + 6), quotas=Quotas(), now=NOW + 6
        )
    fresh = task()
    fresh = replace(fresh, created_at=NOW + 6)
    await store.create_task(fresh, retain_until=fresh.expires_at + 300)
    new = replace(cred(fresh), issued_at=NOW + 6)
    await store.record_credential(new, quotas=Quotas(), now=NOW + 6)
    assert await store.consume_credential(fresh.task_id, new.jti, NOW + 7) is ConsumeResult.OK
    # a server block covers only that server's credentials; a floor never goes down
    srv = new_block(BlockKind.SERVER, DOCS, now=NOW + 8, by="op", reason="", retention=100)
    await store.put_block(srv, now=NOW + 8)
    await store.put_block(replace(srv, floor=NOW), now=NOW + 8)
    assert {b.key: b.floor for b in await store.list_blocks(NOW + 8)}[("server", DOCS)] == NOW + 8
    repo = replace(cred(fresh, server=REPO), issued_at=NOW + 8)
    await store.record_credential(repo, quotas=Quotas(), now=NOW + 8)
    # a lifted block is forgotten once its floor no longer matters; one until lifted is kept
    assert [b.key for b in await store.list_blocks(NOW + 10_000)] == [("server", DOCS)]


async def test_blocks_reach_delegated_tasks(store: Store) -> None:
    from broker.core.blocks import BlockKind, new_block

    parent = await started(store)
    child = replace(task(parent=parent.task_id, agent=REPO), act=(AGENT,))
    await store.create_task(child, retain_until=child.expires_at + 300)
    c = replace(cred(child), agent=child.agent)
    await store.record_credential(c, quotas=Quotas(), now=NOW)
    await store.put_block(
        new_block(BlockKind.AGENT, AGENT, now=NOW + 1, by="op", reason="", retention=100),
        now=NOW + 1,
    )
    assert await store.consume_credential(child.task_id, c.jti, NOW + 2) is ConsumeResult.REVOKED


async def test_task_delegates_round_trip(store: Store) -> None:
    t = replace(task(), delegates=("spiffe://dev.local/agent/helper",))
    await store.create_task(t, retain_until=t.expires_at + 300)
    assert await store.get_task(t.task_id) == t


async def test_a_cursor_older_than_the_retained_feed_is_refused(store: Store) -> None:
    """Issue 13: a trimmed feed answers an old cursor as a reset, never clamps it silently."""
    from broker.app.feed import start_cursor

    first = await store.publish_revocation(RevocationKind.TASK, "t1", NOW, "r")
    for i in range(4):
        await store.publish_revocation(RevocationKind.TASK, f"t{i + 2}", NOW, "r")
    assert await start_cursor(store, first.cursor) == first.cursor  # still retained: fine
    await _trim(store, keep=2)
    with pytest.raises(InvalidRequest) as err:
        await start_cursor(store, first.cursor)
    assert err.value.field == "since"
    last = await store.last_revocation_cursor()
    assert await start_cursor(store, last) == last


async def _trim(store: Store, keep: int) -> None:
    """Trim the feed to its last ``keep`` events, as its retention would."""
    from broker.adapters.store.memory import MemoryStore
    from broker.adapters.store.redis import RedisStore

    if isinstance(store, MemoryStore):
        drop = len(store._events) - keep
        del store._events[:drop]
        store._first_seq += drop
    else:
        assert isinstance(store, RedisStore)
        await store._r.xtrim(f"{store._ns}:revocations", maxlen=keep, approximate=False)


async def test_live_tasks_are_capped_per_agent(store: Store) -> None:
    """Issue 13 item 7: an agent cannot grow the store without bound with live tasks."""
    held = []
    for _ in range(3):
        t = task()
        await store.create_task(t, retain_until=t.expires_at + 300, max_live_per_agent=3)
        held.append(t)
    extra = task()
    with pytest.raises(QuotaExceeded):
        await store.create_task(extra, retain_until=extra.expires_at + 300, max_live_per_agent=3)
    assert await store.get_task(extra.task_id) is None
    other = task(agent=REPO)  # another agent: its own cap
    await store.create_task(other, retain_until=other.expires_at + 300, max_live_per_agent=3)
    await store.end_task(held[0].task_id, state=TaskState.ENDED, now=NOW, reason="done")
    await store.create_task(extra, retain_until=extra.expires_at + 300, max_live_per_agent=3)
