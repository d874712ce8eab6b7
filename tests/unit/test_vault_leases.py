"""SecretBroker and the in-memory LeaseTracker, with an in-memory Vault (no network): a lease
lives no longer than its credential, dies with its task, and a revocation that fails is retried
with backoff and reported (log, counter, audit), never dropped silently."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pytest

from broker.adapters.audit.sinks import MemorySink
from broker.adapters.store.memory import MemoryStore
from broker.app.audit import Auditor
from broker.app.leases import InMemoryLeaseTracker, LeaseRecord, LeaseSelector
from broker.app.secrets import DynamicLease, SecretBroker
from broker.core.clock import FakeClock
from broker.core.errors import Reason, Unauthenticated, VaultUnavailable
from broker.core.ids import new_jti, new_task_id
from broker.core.model import RevocationEvent, TaskRecord, TaskState
from broker.core.secret import SecretData, SecretKind, SecretSource
from broker.core.tokens.claims import AuthorizationDetail, TokenClaims

T0 = 1_800_000_000.0
AGENT = "spiffe://dev.local/agent/demo"
SERVER = "spiffe://dev.local/mcp/secrets"
BROKER = "spiffe://dev.local/broker"
DB = SecretSource(SecretKind.DYNAMIC, "database", role="readonly")
KV = SecretSource(SecretKind.KV, "secret", path="app/search", fields=("api_key",))


@dataclass
class FakeVault:
    """An in-memory SecretBackend: leases it issued, and switches to make it fail."""

    ttl: float = 300.0
    live: set[str] = field(default_factory=set)
    down: bool = False
    refuse_revoke: int = 0  # how many revocations fail before they work
    issued: int = 0

    async def read_kv(self, source: SecretSource) -> SecretData:
        if self.down:
            raise VaultUnavailable(f"{source.describe}: Vault at x is unreachable")
        return SecretData({"api_key": "kv-value-123"})

    async def issue_dynamic(self, source: SecretSource) -> DynamicLease:
        if self.down:
            raise VaultUnavailable(f"{source.describe}: Vault at x is unreachable")
        self.issued += 1
        lease_id = f"database/creds/readonly/lease{self.issued}"
        self.live.add(lease_id)
        return DynamicLease(
            SecretData({"username": "u", "password": "pw-secret"}), lease_id, self.ttl
        )

    async def revoke_lease(self, lease_id: str) -> None:
        if self.down or self.refuse_revoke > 0:
            self.refuse_revoke -= 1
            raise VaultUnavailable(f"revoke lease {lease_id}: permission denied by Vault")
        self.live.discard(lease_id)


@dataclass
class World:
    vault: FakeVault
    secrets: SecretBroker
    store: MemoryStore
    clock: FakeClock
    sink: MemorySink

    def events(self, name: str) -> list[dict[str, object]]:
        return [r.body for r in self.sink.records if r.body.get("event") == name]

    async def task(self, agent: str = AGENT) -> str:
        task_id = new_task_id()
        now = self.clock.now()
        record = TaskRecord(task_id, agent, "intent", "", now, now + 900)
        await self.store.create_task(record, retain_until=now + 2000)
        return task_id


def claims_for(
    task: str, now: float, ttl: int = 60, agent: str = AGENT, tier: int = 2
) -> TokenClaims:
    return TokenClaims(
        iss=BROKER,
        sub=agent,
        aud=SERVER,
        iat=int(now),
        nbf=int(now),
        exp=int(now) + ttl,
        jti=new_jti(task),
        task=task,
        authorization_details=(
            AuthorizationDetail(
                server=SERVER, tool="query_db", action="secret", args_sha256="0" * 64
            ),
        ),
        cnf_x5t_s256="A" * 43,
        tier=tier,
        taint="clean",
    )


@pytest.fixture
def world() -> World:
    clock, sink, store, vault = FakeClock(T0), MemorySink(), MemoryStore(), FakeVault()
    secrets = SecretBroker(
        vault,
        InMemoryLeaseTracker(),
        store=store,
        auditor=Auditor("test", [sink]),
        clock=clock,
        actor=BROKER,
        retry_initial=1.0,
        retry_max=8.0,
    )
    return World(vault, secrets, store, clock, sink)


async def test_a_lease_lives_no_longer_than_its_credential(world: World) -> None:
    task = await world.task()
    issued = await world.secrets.issue(DB, claims_for(task, T0, ttl=60), T0)
    assert issued.expires_at == T0 + 60  # the role's TTL is 300 s: revoked at the credential's exp
    assert issued.lease_id in world.vault.live
    assert issued.source == "database/creds/readonly"
    assert await world.secrets.reap(T0 + 59) == 0
    assert await world.secrets.reap(T0 + 60) == 1
    assert world.vault.live == set()
    [record] = world.events("secret.revoke")
    assert record["outcome"] == "revoked" and record["reason"] == "credential expired"


async def test_a_shorter_vault_lease_sets_the_expiry(world: World) -> None:
    world.vault.ttl = 20
    task = await world.task()
    issued = await world.secrets.issue(DB, claims_for(task, T0, ttl=60), T0)
    assert issued.expires_at == T0 + 20


async def test_no_secret_for_a_credential_accepted_within_the_leeway(world: World) -> None:
    task = await world.task()
    with pytest.raises(Unauthenticated) as exc:
        await world.secrets.issue(DB, claims_for(task, T0 - 61), T0)
    assert exc.value.reason is Reason.TOKEN_EXPIRED and world.vault.issued == 0


async def test_kv_secrets_have_no_lease(world: World) -> None:
    task = await world.task()
    issued = await world.secrets.issue(KV, claims_for(task, T0, ttl=30), T0)
    assert (issued.lease_id, issued.expires_at) == ("", T0 + 30)
    assert issued.data.reveal() == {"api_key": "kv-value-123"}
    assert await world.secrets.leases.count() == 0
    [record] = world.events("secret.issue")
    assert record["extra"] == {"fields": "api_key", "source": "kv:secret/app/search"}


async def test_ending_a_task_revokes_its_leases_only(world: World) -> None:
    a, b = await world.task(), await world.task()
    la = await world.secrets.issue(DB, claims_for(a, T0), T0)
    lb = await world.secrets.issue(DB, claims_for(b, T0), T0)
    assert await world.secrets.revoke_tasks([a], "ended by agent") == 1
    assert world.vault.live == {lb.lease_id}
    assert la.lease_id not in world.vault.live
    assert await world.secrets.revoke_tasks([a], "again") == 0  # idempotent


async def test_a_failed_revocation_is_retried_with_backoff_and_reported(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    task = await world.task()
    issued = await world.secrets.issue(DB, claims_for(task, T0), T0)
    world.vault.refuse_revoke = 2
    assert await world.secrets.revoke_tasks([task], "ended by agent") == 0
    assert world.secrets.stats.revoke_failures == 1
    assert "failed to revoke (attempt 1" in caplog.text and "retrying in 1s" in caplog.text
    assert await world.secrets.leases.count() == 1  # kept, not lost

    assert await world.secrets.reap(T0 + 0.5) == 0  # not due yet
    assert await world.secrets.reap(T0 + 1) == 0  # second failure: backoff doubles
    assert "retrying in 2s" in caplog.text
    assert await world.secrets.reap(T0 + 2.5) == 0
    assert await world.secrets.reap(T0 + 3) == 1
    assert issued.lease_id not in world.vault.live
    outcomes = [r["outcome"] for r in world.events("secret.revoke")]
    assert outcomes == ["failed", "failed", "revoked"]
    assert world.events("secret.revoke")[1]["extra"]["attempts"] == 2


async def test_backoff_is_capped(world: World) -> None:
    task = await world.task()
    world.vault.ttl = 10_000
    await world.secrets.issue(DB, claims_for(task, T0), T0)
    world.vault.refuse_revoke = 100
    await world.secrets.revoke_tasks([task], "ended")
    now = T0
    for _ in range(6):
        [lease] = [lease async for lease in _peek(world)]
        now = lease.due_at
        await world.secrets.reap(now)
    [lease] = [lease async for lease in _peek(world)]
    assert lease.due_at - now == 8.0  # retry_max


async def _peek(world: World):  # type: ignore[no-untyped-def]
    leases = await world.secrets.leases.take_all()
    for lease in leases:
        await world.secrets.leases.add(lease)
        yield lease


async def test_retries_stop_once_vaults_own_ttl_has_passed(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.vault.ttl = 5
    task = await world.task()
    await world.secrets.issue(DB, claims_for(task, T0), T0)
    world.vault.down = True
    world.clock.set(T0 + 6)
    await world.secrets.revoke_tasks([task], "ended")
    assert world.secrets.stats.abandoned == 1
    assert await world.secrets.leases.count() == 0
    assert "Vault ends it itself" in caplog.text
    assert world.events("secret.revoke")[-1]["outcome"] == "abandoned"


async def test_vault_down_at_issue_fails_closed_and_is_audited(world: World) -> None:
    world.vault.down = True
    task = await world.task()
    with pytest.raises(VaultUnavailable) as exc:
        await world.secrets.issue(DB, claims_for(task, T0), T0)
    assert exc.value.reason is Reason.SECRET_UNAVAILABLE
    assert world.secrets.stats.issue_failures == 1
    [record] = world.events("secret.issue")
    assert record["outcome"] == "failed" and "unreachable" in str(record["reason"])


async def test_a_task_ended_while_its_secret_was_issued_gets_nothing(world: World) -> None:
    task = await world.task()
    await world.store.end_task(task, state=TaskState.ENDED, now=T0, reason="ended")
    with pytest.raises(Unauthenticated) as exc:
        await world.secrets.issue(DB, claims_for(task, T0), T0)
    assert exc.value.reason is Reason.REVOKED
    assert world.vault.issued == 1 and world.vault.live == set()
    assert await world.secrets.leases.count() == 0


@pytest.mark.parametrize(
    ("kind", "subject", "revoked"),
    [
        ("task", "TASK_A", {"a"}),
        ("agent", "spiffe://dev.local/agent/other", {"b"}),
        ("server", SERVER, {"a", "b"}),
        ("tier", "2", {"a"}),
        ("tier", "1", {"b"}),
        ("issued_before", "", {"a", "b"}),
        ("credential", "x", set()),
    ],
)
async def test_revocation_events_revoke_what_they_cover(
    world: World, kind: str, subject: str, revoked: set[str]
) -> None:
    a = await world.task()
    b = await world.task("spiffe://dev.local/agent/other")
    la = await world.secrets.issue(DB, claims_for(a, T0), T0)
    lb = await world.secrets.issue(
        DB, claims_for(b, T0, agent="spiffe://dev.local/agent/other", tier=1), T0
    )
    subject = a if subject == "TASK_A" else subject
    event = RevocationEvent("1", kind, subject, T0 + 1, "operator")
    await world.secrets.on_revocation(event)
    names = {"a": la.lease_id, "b": lb.lease_id}
    assert world.vault.live == {names[x] for x in "ab" if x not in revoked}


async def test_leases_issued_after_an_agent_revocation_are_not_covered(world: World) -> None:
    task = await world.task()
    await world.secrets.issue(DB, claims_for(task, T0 + 10), T0 + 10)
    await world.secrets.on_revocation(RevocationEvent("1", "agent", AGENT, T0, "operator"))
    assert len(world.vault.live) == 1


async def test_the_store_feed_is_followed(world: World) -> None:
    import asyncio

    task = await world.task()
    await world.secrets.issue(DB, claims_for(task, T0), T0)
    follower = asyncio.create_task(world.secrets.follow(world.store))
    try:
        await asyncio.sleep(0)
        await world.store.end_task(task, state=TaskState.REVOKED, now=T0, reason="operator")
        for _ in range(100):
            if not world.vault.live:
                break
            await asyncio.sleep(0.01)
        assert world.vault.live == set()
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)


async def test_secret_values_never_reach_logs_or_audit(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    task = await world.task()
    issued = await world.secrets.issue(DB, claims_for(task, T0), T0)
    world.vault.refuse_revoke = 1
    await world.secrets.revoke_tasks([task], "ended")
    await world.secrets.reap(T0 + 5)
    assert repr(issued.data) == str(issued.data) == f"{issued.data}" == "[secure]"
    assert "pw-secret" not in repr(issued) and "pw-secret" not in caplog.text
    assert all(b"pw-secret" not in r.to_json() for r in world.sink.records)


async def test_in_memory_tracker_take_semantics() -> None:
    tracker = InMemoryLeaseTracker()
    base = LeaseRecord("l1", "t1", AGENT, SERVER, "tool", 2, "db", T0, T0 + 60, T0 + 300)
    await tracker.add(base)
    await tracker.add(
        LeaseRecord("l2", "t2", AGENT, SERVER, "tool", 1, "db", T0, T0 + 30, T0 + 300)
    )
    assert [x.lease_id for x in await tracker.take_due(T0 + 30)] == ["l2"]
    assert await tracker.take_lease("nope") is None
    assert [x.lease_id for x in await tracker.take_matching(LeaseSelector(tier=2))] == ["l1"]
    assert await tracker.count() == 0
    await tracker.add(base.retry_at(T0 + 100))
    assert await tracker.take_due(T0 + 60) == []  # its due time moved to the retry
    assert [x.attempts for x in await tracker.take_due(T0 + 100)] == [1]
    assert await tracker.take_due(T0 + 10_000) == []  # stale heap entries are skipped
