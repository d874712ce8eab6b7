"""The story `make demo` tells (examples/agent_demo.py), run in-process against a real broker
and the dev MCP servers: it keeps working, and each step ends the way the narration says."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.app import feed
from broker.client.verifier import VerifierSettings
from examples.agent_demo import run_story
from examples.mcp_servers import run_servers
from tests.integration.conftest import start_broker

pytestmark = pytest.mark.integration


async def test_the_demo_story(pki: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feed, "HEARTBEAT_SECONDS", 0.1)
    running = await start_broker(pki)
    address = f"127.0.0.1:{running.port}"
    lines: list[str] = []
    try:
        settings = VerifierSettings(stale_after=1.0)
        async with run_servers(address, pki, port=0, settings=settings) as servers:
            urls = {name: url for name, (url, _) in servers.items()}
            outcomes = await run_story(address, pki, urls, say=lines.append)
    finally:
        await running.close()
    got = dict(outcomes)
    assert got["repo/read_file"] == "allowed"
    assert outcomes[:2] == [("repo/read_file", "allowed"), ("secrets/read_secret", "allowed")]
    assert outcomes[2][1] == "APPROVAL_REQUIRED"  # deploy, while clean
    assert ("docs/fetch_page", "allowed") in outcomes
    after_poison = outcomes[outcomes.index(("docs/fetch_page", "allowed")) + 1 :]
    assert after_poison[:4] == [
        ("secrets/read_secret", "POLICY_DENIED"),
        ("deploy/deploy", "POLICY_DENIED"),
        ("repo/write_file", "POLICY_DENIED"),
        ("repo/run_tests", "POLICY_DENIED"),
    ]
    assert after_poison[4] == ("repo/read_file", "allowed")
    assert after_poison[5] == ("deploy/rollback", "OUTSIDE_PLAN")
    assert got["docs/search_docs after EndTask"] == "REVOKED"
    text = "\n".join(lines)
    for reason in ("ARGS_MISMATCH", "TOOL_MISMATCH", "REPLAYED", "REVOKED"):
        assert reason in text
    assert "ignore all previous instructions" not in text  # the model never saw it
