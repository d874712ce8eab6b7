"""Issue 6: signing keys, policy reload and the audit tail, over mTLS with the `broker` CLI."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from broker._proto.broker.v1 import admin_pb2
from broker.core.audit.record import ChainedRecord
from tests.integration.conftest import DEV, Running, start_broker
from tests.integration.helpers import Agent, Server
from tests.integration.operator import admin, broker_cli

pytestmark = pytest.mark.integration

ARGS = {"query": "retry"}


async def test_keys_list_and_rotate(running: Running) -> None:
    agent, docs = Agent(running.channel("agent-demo")), Server(running.channel("mcp-docs"))
    task = await agent.begin()
    before = await agent.token(task, "docs", "search_docs", ARGS)
    [first] = (await broker_cli(running, "keys", "list", "--json")).json()
    assert first["active"] is True and first["alg"] == "ES256"

    rotated = await broker_cli(running, "keys", "rotate")
    assert rotated.code == 0 and "signs from now on" in rotated.out
    found = (await broker_cli(running, "keys", "list", "--json")).json()
    assert [k["active"] for k in found] == [True, False]
    assert found[1]["kid"] == first["kid"] and found[1]["publish_until"]
    table = await broker_cli(running, "keys", "list")
    assert "retired" in table.out and first["kid"] in table.out
    # a token signed before the rotation still verifies; new ones carry the new kid
    await docs.verify(before, "search_docs", ARGS)
    after = await agent.token(task, "docs", "search_docs", ARGS)
    header = json.loads(__import__("base64").urlsafe_b64decode(after.split(".")[0] + "=="))
    assert header["kid"] == found[0]["kid"] != first["kid"]
    [audited] = [r.body for r in running.sink.records if r.body["event"] == "key.rotate"]
    assert audited["extra"] == {"kid": found[0]["kid"], "previous_kid": first["kid"]}


async def test_policy_reload_keeps_the_old_set_when_the_new_one_is_invalid(
    pki: Path, tmp_path: Path
) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(DEV / "policies", policies)
    r = await start_broker(pki, policies=str(policies))
    try:
        agent = Agent(r.channel("agent-demo"))
        task = await agent.begin()
        ok = await broker_cli(r, "policy", "reload", "--json")
        assert ok.code == 0 and ok.json()["policies"] == r.broker.policy.policy_count
        digest = r.broker.policy.digest

        (policies / "zz-broken.cedar").write_text('@id("broken")\npermit (principal, action')
        bad = await broker_cli(r, "policy", "reload")
        assert bad.code == 6, bad.err
        assert "CONFIG_INVALID" in bad.err and "zz-broken.cedar" in bad.err
        assert r.broker.policy.digest == digest  # the running set stays in force
        resp = await agent.credential(task, "deploy", "deploy", {})
        assert resp.WhichOneof("result") == "pending_approval"

        (policies / "zz-broken.cedar").unlink()
        tiers = policies / "tiers.cedar"
        tiers.write_text(tiers.read_text().replace("context.tier >= 3", "context.tier >= 4"))
        good = await broker_cli(r, "policy", "reload")
        assert good.code == 0 and "reloaded" in good.out
        assert r.broker.policy.digest != digest
        resp = await agent.credential(task, "deploy", "deploy", {})
        assert resp.WhichOneof("result") == "credential"  # tier 3 no longer needs approval
        outcomes = [
            r.body.get("outcome") for r in r.sink.records if r.body["event"] == "policy.reload"
        ]
        assert outcomes == ["loaded", "failed", "loaded"]
    finally:
        await r.close()


async def test_tail_audit_last_and_follow(running: Running) -> None:
    agent = Agent(running.channel("agent-demo"))
    for _ in range(3):
        await agent.begin()
    stub = admin(running)
    got = [m async for m in stub.TailAudit(admin_pb2.TailAuditRequest(last=2), timeout=5)]
    assert [m.seq for m in got] == [1, 2]
    for m in got:  # json is exactly what was hashed
        record = ChainedRecord.from_dict({**json.loads(m.json), "sha256": m.sha256})
        assert record.compute_sha256() == m.sha256

    stream = stub.TailAudit(admin_pb2.TailAuditRequest(last=1, follow=True))
    seen = [await asyncio.wait_for(stream.read(), 5)]
    task = await agent.begin()
    seen.append(await asyncio.wait_for(stream.read(), 5))
    stream.cancel()
    assert [m.seq for m in seen] == [2, 3]
    assert json.loads(seen[1].json)["task"] == task

    lines = await broker_cli(running, "audit", "tail", "--last", "3", "--json")
    assert lines.code == 0, lines.err
    records = [ChainedRecord.from_dict(json.loads(x)) for x in lines.out.splitlines()]
    assert [r.seq for r in records] == [1, 2, 3]
    assert all(r.compute_sha256() == r.sha256 for r in records)
    human = await broker_cli(running, "audit", "tail", "--last", "1")
    assert "task.begin" in human.out and task in human.out
