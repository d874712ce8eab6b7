"""Regression tests of issue 13 (holes found by an independent review), at the core use cases.

Each test names the item it covers; each failed before its fix.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from broker.adapters.audit.sinks import MemorySink
from broker.adapters.files import load_registry, policy_engine
from broker.adapters.keys import LocalKeyProvider
from broker.adapters.store.memory import MemoryStore
from broker.app.audit import Auditor
from broker.app.credentials import Broker, Limits
from broker.app.ports import Quotas
from broker.core.clock import FakeClock
from broker.core.errors import BrokerError
from broker.core.model import CredentialRecord, Taint
from broker.core.requests import BeginTask, CredentialRequest, Granted, Pending
from broker.core.spiffe import PeerIdentity, parse_spiffe_id

DEV = Path(__file__).resolve().parents[2] / "examples" / "dev"
REGISTRY = load_registry(DEV / "registry.yaml", "dev.local")
POLICY = policy_engine(DEV / "policies", REGISTRY)
START = 1_800_000_000.0


def peer(ref: str) -> PeerIdentity:
    return PeerIdentity.of(parse_spiffe_id(ref), hashlib.sha256(ref.encode()).hexdigest())


AGENT = peer("spiffe://dev.local/agent/demo")


def make_broker(store: MemoryStore | None = None, **limits: object) -> tuple[Broker, MemorySink]:
    clock = FakeClock(START)
    sink = MemorySink()
    broker = Broker(
        issuer="spiffe://dev.local/broker",
        policy=POLICY,
        keys=LocalKeyProvider(now=clock.now()),
        store=store or MemoryStore(),
        audit=Auditor("test", [sink]),
        clock=clock,
        limits=Limits(**limits),  # type: ignore[arg-type]
    )
    return broker, sink


class TaintingStore(MemoryStore):
    """A real MemoryStore that lets a ReportOutcome's taint land between a credential's
    decision and its record: exactly the interleaving of the race (item 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.raise_to: Taint | None = None

    async def record_credential(
        self, cred: CredentialRecord, *, quotas: Quotas, now: float, taint: Taint | None = None
    ) -> None:
        if self.raise_to is not None:
            await self.raise_taint(cred.task_id, self.raise_to)
            self.raise_to = None
        await super().record_credential(cred, quotas=quotas, now=now, taint=taint)


def secret_call(task_id: str) -> CredentialRequest:
    return CredentialRequest(
        task_id=task_id, server="secrets", tool="read_secret", args_sha256="0" * 64
    )


async def test_item1_taint_raised_between_decision_and_record_is_decided_again() -> None:
    store = TaintingStore()
    broker, sink = make_broker(store)
    task = await broker.begin_task(AGENT, BeginTask(intent="read a secret"))
    store.raise_to = Taint.UNTRUSTED  # the task reads a poisoned page while the mint is signed
    result = await broker.request_credential(AGENT, secret_call(task.task_id))
    # Decided clean (allowed), but recorded after the taint rose: decided again, untrusted
    # tasks need an approval for tier 2.
    assert isinstance(result, Pending)
    assert not await store.list_credentials(task.task_id)
    decisions = [r for r in sink.records if r.body["event"] == "credential.decision"]
    assert [d.body["decision"] for d in decisions] == ["approval_required"]


async def test_item1_clean_mint_still_granted() -> None:
    broker, _ = make_broker()
    task = await broker.begin_task(AGENT, BeginTask(intent="read a secret"))
    assert isinstance(await broker.request_credential(AGENT, secret_call(task.task_id)), Granted)


class CountingStore(MemoryStore):
    """A real MemoryStore that counts the calls made to its port methods."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __getattribute__(self, name: str) -> object:
        attr = super().__getattribute__(name)
        if not name.startswith("_") and callable(attr) and name != "calls":
            super().__getattribute__("calls").append(name)
        return attr


async def test_item3_revoke_agent_is_o1_store_calls_whatever_it_holds() -> None:
    from broker.app.admin import Admin
    from broker.core.audit.recent import RecentRecords

    store = CountingStore()
    broker, _ = make_broker(store)
    admin = Admin(broker, RecentRecords())
    operator = peer("spiffe://dev.local/operator/admin")

    async def calls_for(tasks: int) -> list[str]:
        for _ in range(tasks):
            await broker.begin_task(AGENT, BeginTask(intent="busy"))
        store.calls.clear()
        await admin.revoke_agent(operator, "demo", reason="stop", dry_run=False)
        calls = list(store.calls)
        await admin.lift_block(operator, "agent", "demo", "next round")
        broker.clock.advance(1)  # type: ignore[attr-defined]
        return calls

    few = await calls_for(1)
    many = await calls_for(200)
    assert few == many == ["put_block", "publish_revocation"]


OTHER = peer("spiffe://dev.local/agent/other")


async def test_item2_delegation_needs_the_parents_consent() -> None:
    import pytest

    from broker.core.errors import NotFound, Reason

    broker, _ = make_broker()
    victim = await broker.begin_task(AGENT, BeginTask(intent="private work"))
    with pytest.raises(NotFound) as caught:  # another agent's task: as if it did not exist
        await broker.begin_task(
            OTHER, BeginTask(intent="impersonate", parent_task_id=victim.task_id)
        )
    assert caught.value.reason is Reason.TASK_NOT_FOUND
    unknown = await _refusal_for_unknown(broker, OTHER)
    assert (type(unknown), unknown.reason) == (NotFound, Reason.TASK_NOT_FOUND)
    assert caught.value.message == unknown.message.replace("t_unknown", victim.task_id)
    # the parent names its sub-agent: then it may, and its tokens carry the chain
    parent = await broker.begin_task(
        AGENT, BeginTask(intent="delegate", delegates=(str(OTHER.spiffe_id),))
    )
    child = await broker.begin_task(OTHER, BeginTask(intent="help", parent_task_id=parent.task_id))
    assert child.act == (str(AGENT.spiffe_id),) and child.agent == str(OTHER.spiffe_id)
    # and the agent itself may always split its own task
    assert await broker.begin_task(AGENT, BeginTask(intent="sub", parent_task_id=victim.task_id))


async def _refusal_for_unknown(broker: Broker, who: PeerIdentity) -> BrokerError:
    """The refusal for a parent that does not exist, its id written t_unknown."""
    from broker.core.ids import new_task_id

    unknown = new_task_id()
    try:
        await broker.begin_task(who, BeginTask(intent="x", parent_task_id=unknown))
    except BrokerError as exc:
        exc.message = exc.message.replace(unknown, "t_unknown")
        return exc
    raise AssertionError("an unknown parent was accepted")


DOCS = peer("spiffe://dev.local/mcp/docs")


async def test_item4_taint_crosses_delegation_both_ways() -> None:
    from broker.core.requests import Outcome

    broker, sink = make_broker()
    parent = await broker.begin_task(
        AGENT, BeginTask(intent="plan", delegates=(str(OTHER.spiffe_id),))
    )
    child = await broker.begin_task(AGENT, BeginTask(intent="read", parent_task_id=parent.task_id))
    sibling = await broker.begin_task(
        OTHER, BeginTask(intent="other sub-agent", parent_task_id=parent.task_id)
    )
    # the sub-agent reads an untrusted page
    granted = await broker.request_credential(
        AGENT,
        CredentialRequest(
            task_id=child.task_id, server="docs", tool="fetch_page", args_sha256="1" * 64
        ),
    )
    assert isinstance(granted, Granted)
    await broker.report_outcome(DOCS, Outcome(jti=granted.jti, succeeded=True))
    for tid in (parent.task_id, child.task_id, sibling.task_id):
        task = await broker.store.get_task(tid)
        assert task is not None and task.taint is Taint.UNTRUSTED, tid
    # so the parent can no longer read secrets without an approval
    assert isinstance(await broker.request_credential(AGENT, secret_call(parent.task_id)), Pending)
    [report] = [r.body for r in sink.records if r.body["event"] == "outcome.report"]
    assert report["extra"]["tainted_tasks"] == 3


async def test_registry_untrusted_is_a_floor_a_report_cannot_lower_it() -> None:
    from broker.core.requests import Outcome

    broker, _ = make_broker()
    task = await broker.begin_task(AGENT, BeginTask(intent="read"))
    granted = await broker.request_credential(
        AGENT,
        CredentialRequest(
            task_id=task.task_id, server="docs", tool="fetch_page", args_sha256="1" * 64
        ),
    )
    assert isinstance(granted, Granted)
    # docs is content_trust: untrusted in the registry; the server claims its content trusted
    taint = await broker.report_outcome(
        DOCS, Outcome(jti=granted.jti, succeeded=True, untrusted=False)
    )
    assert taint is Taint.UNTRUSTED


def deploy_call(task_id: str, n: int = 0) -> CredentialRequest:
    return CredentialRequest(
        task_id=task_id, server="deploy", tool="deploy", args_sha256=f"{n:064x}"
    )


async def test_item7_per_agent_caps_on_live_tasks_and_pending_approvals() -> None:
    import pytest

    from broker.core.errors import QuotaExceeded

    broker, _ = make_broker(max_live_tasks_per_agent=3, max_pending_per_agent=2)
    tasks = [await broker.begin_task(AGENT, BeginTask(intent=f"t{i}")) for i in range(3)]
    with pytest.raises(QuotaExceeded):
        await broker.begin_task(AGENT, BeginTask(intent="one too many"))
    await broker.end_task(AGENT, tasks[0].task_id, "done")
    tasks[0] = await broker.begin_task(AGENT, BeginTask(intent="room again"))
    # tier 3 asks an operator: two pending approvals for the agent, across its tasks
    assert isinstance(
        await broker.request_credential(AGENT, deploy_call(tasks[0].task_id)), Pending
    )
    assert isinstance(
        await broker.request_credential(AGENT, deploy_call(tasks[1].task_id)), Pending
    )
    with pytest.raises(QuotaExceeded):
        await broker.request_credential(AGENT, deploy_call(tasks[2].task_id))


async def test_item7_unregistered_agents_can_be_refused() -> None:
    import pytest

    from broker.core.errors import PermissionDenied

    strict, _ = make_broker(require_registered_agents=True)
    with pytest.raises(PermissionDenied) as refused:
        await strict.begin_task(OTHER, BeginTask(intent="who am I"))
    assert "not in the registry" in refused.value.message
    assert await strict.begin_task(AGENT, BeginTask(intent="registered"))
    assert await strict.store.list_tasks(now=START) != []


async def test_item7_memory_store_prunes_on_writes() -> None:
    store = MemoryStore()
    broker, _ = make_broker(store, task_max_ttl=60)
    for i in range(50):
        task = await broker.begin_task(AGENT, BeginTask(intent=f"short {i}", ttl_seconds=60))
        await broker.end_task(AGENT, task.task_id, "")
    broker.clock.advance(3600)  # type: ignore[attr-defined]
    await broker.begin_task(AGENT, BeginTask(intent="later"))  # a write: prunes the dead ones
    assert len(store._tasks) == 1


def test_docs_audit_lists_every_event() -> None:
    from broker.core.audit.record import AuditEventName

    text = (Path(__file__).resolve().parents[2] / "docs" / "audit.md").read_text()
    missing = [str(e) for e in AuditEventName if f"`{e}`" not in text]
    assert missing == []


def test_offline_refusal_reports_cannot_flood_the_trail() -> None:
    from broker.app import credentials
    from broker.core.requests import Refusal

    broker, sink = make_broker()
    batch = tuple(Refusal(reason="REPLAYED") for _ in range(100))
    written = sum(broker.report_refusals(DOCS, batch, 0) for _ in range(61))
    assert written == credentials.REFUSALS_PER_MINUTE == 6000
    dropped = [r.body for r in sink.records if r.body["event"] == "verifier.refusals_dropped"]
    assert dropped[-1]["extra"]["dropped"] == 100
    broker.clock.advance(60)  # type: ignore[attr-defined]
    assert broker.report_refusals(DOCS, batch[:1], 0) == 1
