"""Issue 15: Prometheus metrics, scraped over HTTP and parsed with prometheus-client's own text
parser. The counters of API.md move with each mint, denial, pending approval, verification and
revocation; with `broker serve --workers 2` one scrape of the supervisor's listener includes
every worker's counts."""

from __future__ import annotations

import asyncio
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker._proto.broker.v1 import admin_pb2, admin_pb2_grpc
from broker.adapters.audit.sinks import read_json_lines
from broker.rpc.metrics import sample_live_tasks
from broker.rpc.metrics_http import MetricsListener, start_listener
from tests.integration.conftest import DEV, Running, channel, start_broker
from tests.integration.helpers import Agent, Server, reason_of
from tests.support.serve import serve_env, serving

pytestmark = pytest.mark.integration

ARGS = {"query": "metrics"}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback http
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@pytest.fixture
async def served(pki: Path) -> AsyncIterator[tuple[Running, MetricsListener]]:
    running = await start_broker(pki)
    listener = start_listener("127.0.0.1:0")
    assert listener is not None
    try:
        yield running, listener
    finally:
        listener.close()
        await running.close()


async def test_counters_move_with_each_outcome(served: tuple[Running, MetricsListener]) -> None:
    running, listener = served
    agent, docs = Agent(running.channel("agent-demo")), Server(running.channel("mcp-docs"))
    before = scrape(listener.url)

    task = await agent.begin(plan=[("docs", "search_docs")])
    token = await agent.token(task, "docs", "search_docs", ARGS)  # granted
    await docs.verify(token, "search_docs", ARGS)  # accepted
    with pytest.raises(grpc.aio.AioRpcError) as exc:  # rejected: used up
        await docs.verify(token, "search_docs", ARGS)
    assert reason_of(exc.value) == "REPLAYED"
    with pytest.raises(grpc.aio.AioRpcError):  # denied: outside the task's plan
        await agent.credential(task, "docs", "fetch_page", {"url": "x"})
    pending = await agent.credential(await agent.begin(), "deploy", "deploy", {"env": "prod"})
    assert pending.WhichOneof("result") == "pending_approval"
    admin = admin_pb2_grpc.AdminServiceStub(running.channel("operator-admin"))  # type: ignore[no-untyped-call]
    await admin.RevokeTask(admin_pb2.RevokeTaskRequest(task_id=task, dry_run=True))  # not counted
    await admin.RevokeTask(admin_pb2.RevokeTaskRequest(task_id=task, reason="metrics test"))
    with pytest.raises(grpc.aio.AioRpcError):  # refused at the door: a server is no agent
        await Agent(running.channel("mcp-docs")).begin()

    # A refusal's status reaches the client inside context.abort(), a moment before the
    # server-side wrapper that counts it resumes: wait for the last one to be counted.
    begin = "AgentService/BeginTask"
    for _ in range(100):
        after = scrape(listener.url)
        if moved(before, after, "broker_rpcs_total", method=begin, code="PERMISSION_DENIED"):
            break
        await asyncio.sleep(0.02)
    cred = "broker_credentials_total"
    assert moved(before, after, cred, outcome="granted", reason="") == 1
    assert moved(before, after, cred, outcome="denied", reason="OUTSIDE_PLAN") == 1
    assert moved(before, after, cred, outcome="pending", reason="APPROVAL_REQUIRED") == 1
    ver = "broker_verifications_total"
    assert moved(before, after, ver, outcome="accepted", reason="") == 1
    assert moved(before, after, ver, outcome="rejected", reason="REPLAYED") == 1
    assert moved(before, after, "broker_revocations_total", kind="task") == 1
    method = "AgentService/RequestCredential"
    assert moved(before, after, "broker_rpc_duration_seconds_count", method=method) == 3
    assert moved(before, after, "broker_rpcs_total", method=method, code="PERMISSION_DENIED") == 1
    assert moved(before, after, "broker_rpcs_total", method=begin, code="OK") == 2
    assert moved(before, after, "broker_rpcs_total", method=begin, code="PERMISSION_DENIED") == 1
    assert ("broker_store_errors_total", ()) in after
    # live tasks: the one waiting for an approval (the other was revoked); sampled from the
    # store every 15 s by the housekeeping loop, here at once
    assert await sample_live_tasks(running.store, running.clock.now()) == 1
    assert value(scrape(listener.url), "broker_live_tasks") == 1


async def test_a_taken_port_leaves_the_broker_without_metrics_not_down() -> None:
    first = start_listener("127.0.0.1:0")
    assert first is not None
    try:
        assert start_listener(f"127.0.0.1:{first.port}") is None
    finally:
        first.close()
    assert start_listener("") is None


def _minters(audit: Path) -> set[str]:
    return {r["chain"] for r in read_json_lines(audit) if r.get("event") == "credential.mint"}


@pytest.mark.slow
async def test_every_workers_counts_are_in_one_scrape(
    pki: Path, redis_server: str, tmp_path: Path
) -> None:
    audit = tmp_path / "audit.jsonl"
    config = tmp_path / "broker.yaml"
    config.write_text(
        orjson.dumps(
            {
                "trust_domain": "dev.local",
                "registry": str(DEV / "registry.yaml"),
                "policies": str(DEV / "policies"),
                "tls": {"cert": "x", "key": "x", "bundle": "x"},  # from the environment
                "audit": {"sinks": [f"jsonl:{audit}"]},
            }
        ).decode()
    )
    env = serve_env(
        pki,
        BROKER_STORE=f"{redis_server}?namespace=m{uuid.uuid4().hex[:8]}",
        BROKER_METRICS_LISTEN="127.0.0.1:0",
    )
    with serving(config, env, "--workers", "2") as served:
        (port,) = served.metrics_ports()
        url = f"http://127.0.0.1:{port}/metrics"
        before = scrape(url)
        minted = 0
        while minted < 60 and (minted < 10 or len(_minters(audit)) < 2):
            async with channel(served.port, pki, "agent-demo") as ch:  # a new connection: the
                agent = Agent(ch)  # kernel may hand it to either worker
                await agent.token(await agent.begin(), "docs", "search_docs", ARGS)
            minted += 1
        assert len(_minters(audit)) == 2, "only one worker ever minted"
        await asyncio.sleep(0)
        after = scrape(url)
    granted = moved(before, after, "broker_credentials_total", outcome="granted", reason="")
    assert granted == minted  # both workers' counts, summed
