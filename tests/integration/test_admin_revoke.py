"""Issue 6: kill switches with blast radius, over mTLS, driven by the real `broker` CLI.

Revoking an agent kills all its tasks (their credentials fail at the verifier with REVOKED); the
dry run listed the same tasks and changed nothing. Likewise by server, tier and issue time.
Since issue 13 a revoke of an agent, server or tier is one block record (O(1)), not a walk over
the tasks: the tasks' own records stay as they were, and the task views show them revoked.
"""

from __future__ import annotations

import grpc
import pytest

from broker.adapters.pki import issue
from broker.app.admin import Admin
from broker.core.audit.recent import RecentRecords
from broker.core.model import TaskState
from tests.integration.conftest import Running
from tests.integration.helpers import Agent, Server, reason_of
from tests.integration.operator import broker_cli

pytestmark = pytest.mark.integration

ARGS = {"query": "retry"}
DEMO = "spiffe://dev.local/agent/demo"


@pytest.fixture
def agent(running: Running) -> Agent:
    return Agent(running.channel("agent-demo"))


@pytest.fixture
def other_agent(running: Running) -> Agent:
    """spiffe://dev.local/agent/other (not in the registry: it may begin tasks, get no
    credential), not in scope of a revoke of agent/demo."""
    issue(running.pki, "spiffe://dev.local/agent/other", running.pki / "agent-other")
    return Agent(running.channel("agent-other"))


async def docs_tokens(agent: Agent, task: str, n: int) -> list[str]:
    return [await agent.token(task, "docs", "search_docs", ARGS) for _ in range(n)]


async def verify_reason(server: Server, token: str, tool: str = "search_docs") -> str:
    try:
        await server.verify(token, tool, ARGS)
    except grpc.aio.AioRpcError as exc:
        return reason_of(exc)
    return "OK"


async def states(running: Running, ids: list[str]) -> set[TaskState]:
    """The states an operator sees (kill switches' floors included)."""
    views = await Admin(running.broker, RecentRecords()).list_tasks(limit=1000)
    return {v.state for v in views if v.task.task_id in ids}


async def test_revoking_an_agent_kills_all_its_tasks_and_the_dry_run_showed_them(
    running: Running, agent: Agent, other_agent: Agent
) -> None:
    docs = Server(running.channel("mcp-docs"))
    first = await agent.begin()
    second = await agent.begin()
    child = await agent.begin(parent_task_id=first)
    bystander = await other_agent.begin()
    tokens = {t: await docs_tokens(agent, t, 2) for t in (first, second, child)}

    dry = await broker_cli(running, "agents", "revoke", "demo", "--dry-run", "--json")
    assert dry.code == 0, dry.err
    assert dry.json()["dry_run"] is True
    assert sorted(dry.json()["task_ids"]) == sorted([first, second, child])
    assert dry.json()["live_credentials"] == 6
    human = await broker_cli(running, "agents", "revoke", DEMO, "--dry-run")
    assert "DRY RUN" in human.out and "3 tasks holding 6 live credentials" in human.out
    # the dry run changed nothing: the tasks are live, their credentials verify
    assert await states(running, [first, second, child]) == {TaskState.ACTIVE}
    for task in (first, second, child):
        assert await verify_reason(docs, tokens[task][0]) == "OK"
    assert not [e for e in await running.store.revocations_since("") if e.kind == "agent"]

    done = await broker_cli(
        running, "agents", "revoke", "demo", "--reason", "prompt injection", "--json"
    )
    assert done.code == 0, done.err
    assert done.json()["dry_run"] is False
    assert done.json()["block"]["subject"] == DEMO and done.json()["block"]["blocked"] is True
    for task in (first, second, child):
        assert await verify_reason(docs, tokens[task][1]) == "REVOKED"
    assert await states(running, [first, second, child]) == {TaskState.REVOKED}
    assert await states(running, [bystander]) == {TaskState.ACTIVE}  # another agent's: untouched
    # offline verifiers get ONE "agent" event: a floor, and a block until lifted
    events = await running.store.revocations_since("")
    assert [(e.kind, e.subject, e.reason, e.blocked) for e in events if e.kind == "agent"] == [
        ("agent", DEMO, "prompt injection", True)
    ]
    # the agent is blocked until an operator lifts it (issue 13: a revoke persists)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await agent.begin()
    assert reason_of(refused.value) == "REVOKED"
    lift = await broker_cli(running, "blocks", "lift", "agent", DEMO, "--reason", "cleaned up")
    assert lift.code == 0, lift.err
    running.clock.advance(1)
    assert await agent.token(await agent.begin(), "docs", "search_docs", ARGS)
    audited = [r.body for r in running.sink.records if r.body["event"].startswith("revoke.")]
    assert [r["outcome"] for r in audited if r["event"] == "revoke.agent"] == [
        "dry-run",
        "dry-run",
        "revoked",
    ]


async def test_revoke_by_server_and_tier(running: Running, agent: Agent) -> None:
    docs, repo = Server(running.channel("mcp-docs")), Server(running.channel("mcp-repo"))
    reader, writer = await agent.begin(), await agent.begin()
    read_token = (await docs_tokens(agent, reader, 1))[0]
    write_token = await agent.token(writer, "repo", "write_file", {"path": "x"})

    dry = await broker_cli(running, "servers", "revoke", "repo", "--dry-run", "--json")
    assert dry.json()["task_ids"] == [writer]
    tier = await broker_cli(running, "revoke", "--tier", "1", "--dry-run", "--json")
    assert tier.json()["task_ids"] == [writer]
    assert (await broker_cli(running, "revoke", "--tier", "0", "--dry-run", "--json")).json()[
        "task_ids"
    ] == [reader]

    done = await broker_cli(running, "revoke", "--tier", "1", "--reason", "CI compromised")
    assert done.code == 0 and "blocked until lifted" in done.out
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await repo.verify(write_token, "write_file", {"path": "x"})
    assert reason_of(exc.value) == "REVOKED"
    assert await verify_reason(docs, read_token) == "OK"
    events = await running.store.revocations_since("")
    assert ("tier", "1") in {(e.kind, e.subject) for e in events}

    second = (await docs_tokens(agent, reader, 1))[0]
    gone = await broker_cli(running, "servers", "revoke", "spiffe://dev.local/mcp/docs")
    assert gone.code == 0 and "docs" in gone.out
    assert await verify_reason(docs, second) == "REVOKED"
    unknown = await broker_cli(running, "servers", "revoke", "nope")
    assert unknown.code == 3 and "UNKNOWN_SERVER" in unknown.err


async def test_revoke_issued_before(running: Running, agent: Agent) -> None:
    docs = Server(running.channel("mcp-docs"))
    old = await agent.begin()
    old_token = (await docs_tokens(agent, old, 1))[0]
    running.clock.advance(60)
    cutoff = running.clock.now()
    running.clock.advance(1)
    new = await agent.begin()
    new_token = (await docs_tokens(agent, new, 1))[0]
    at = f"@{cutoff}"
    dry = await broker_cli(running, "revoke", "--issued-before", at, "--dry-run", "--json")
    assert dry.json()["task_ids"] == [old]
    done = await broker_cli(running, "revoke", "--issued-before", at, "--json")
    assert done.json()["block"]["kind"] == "issued_before"
    assert done.json()["block"]["blocked"] is False  # a floor only
    assert await states(running, [old]) == {TaskState.REVOKED}
    assert await states(running, [new]) == {TaskState.ACTIVE}
    assert await verify_reason(docs, old_token) == "REVOKED"
    assert await verify_reason(docs, new_token) == "OK"
    [floor] = [e for e in await running.store.revocations_since("") if e.kind == "issued_before"]
    assert floor.revoked_at == pytest.approx(cutoff)
    usage = await broker_cli(running, "revoke", "--dry-run")
    assert usage.code == 2 and "exactly one of" in usage.err


async def test_tasks_list_show_and_revoke(running: Running, agent: Agent) -> None:
    docs = Server(running.channel("mcp-docs"))
    task = await agent.begin(intent="triage the flaky test", labels={"ticket": "ENG-7"})
    token = (await docs_tokens(agent, task, 2))[0]
    listed = await broker_cli(running, "tasks", "list", "--json")
    [info] = [t for t in listed.json() if t["task_id"] == task]
    assert info["live_credentials"] == 2 and info["servers"] == ["spiffe://dev.local/mcp/docs"]
    assert info["state"] == "TASK_STATE_ACTIVE"
    table = await broker_cli(running, "tasks", "list", "--agent", "demo", "--server", "docs")
    assert task in table.out and "agent/demo" in table.out and "mcp/docs" in table.out
    none = await broker_cli(running, "tasks", "list", "--server", "repo")
    assert none.out.strip() == "no active tasks"

    shown = await broker_cli(running, "tasks", "show", task)
    assert shown.code == 0, shown.err
    assert "triage the flaky test" in shown.out and "ticket=ENG-7" in shown.out
    assert "credential.mint" in shown.out  # its recent audit records
    detail = (await broker_cli(running, "tasks", "show", task, "--json")).json()
    assert len(detail["credentials"]) == 2
    assert {r["seq"] for r in detail["audit"]} and all(r["sha256"] for r in detail["audit"])

    dry = await broker_cli(running, "tasks", "revoke", task, "--dry-run")
    assert "would end 1 task holding 2 live credentials" in dry.out
    done = await broker_cli(running, "tasks", "revoke", task, "--reason", "operator test")
    assert done.code == 0 and "ended 1 task, 2 live credentials stopped working" in done.out
    assert await verify_reason(docs, token) == "REVOKED"
    again = await broker_cli(running, "tasks", "revoke", task)
    assert again.code == 0 and "no live task was in scope" in again.out
    ended = await broker_cli(running, "tasks", "list", "--state", "revoked", "--json")
    assert [t["task_id"] for t in ended.json()] == [task]
    missing = await broker_cli(running, "tasks", "show", "t_" + "A" * 22)
    assert missing.code == 3 and "TASK_NOT_FOUND" in missing.err
    malformed = await broker_cli(running, "tasks", "show", "nope")
    assert malformed.code == 2 and "task_id" in malformed.err


async def test_only_operators_may_call_admin(running: Running) -> None:
    result = await broker_cli(running, "tasks", "list", identity="agent-demo")
    assert result.code == 4
    assert "ROLE_NOT_ALLOWED" in result.err and "operator certificate" in result.err
