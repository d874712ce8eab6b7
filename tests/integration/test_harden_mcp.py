"""Issue 13 item 8: the HTTP layer of the MCP integration accepted a credential that was already
used (both modes) and, online, one whose task had ended: tools/list and the session kept working
after the call, after EndTask or a kill switch. Now every request of a session is refused.
Failed before the fix (tools/list got past the bearer check)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest

from broker.app import feed
from tests.integration.test_mcp_flow import QUERY, Stack, open_stack, text

pytestmark = pytest.mark.integration

LIST = {"jsonrpc": "2.0", "id": 7, "method": "tools/list"}
HEADERS = {"accept": "application/json, text/event-stream"}


@pytest.fixture(params=["offline", "online"])
async def stack(
    request: pytest.FixtureRequest, pki: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Stack]:
    monkeypatch.setattr(feed, "HEARTBEAT_SECONDS", 0.1)
    async for s in open_stack(pki, mode=request.param):
        yield s


async def list_status(url: str, token: str) -> tuple[int, str]:
    async with httpx2.AsyncClient() as http:
        resp = await http.post(
            url, json=LIST, headers={**HEADERS, "authorization": f"Bearer {token}"}
        )
    return resp.status_code, resp.headers.get("www-authenticate", "")


async def test_used_or_ended_credential_is_refused_for_session_requests(stack: Stack) -> None:
    url = stack.url("docs")
    async with stack.agent.task("read the docs") as task, stack.tools(task, "docs") as docs:
        used = await task.credential("docs", "search_docs", QUERY)
        # unused: past the bearer check (then 400: this probe has no MCP session)
        assert (await list_status(url, used.token))[0] != 401
        assert "retries" in text(await docs.call_with(used.token, "search_docs", QUERY))
        status, challenge = await list_status(url, used.token)
        assert status == 401 and "REPLAYED" in challenge
        unused = await task.credential("docs", "search_docs", QUERY)
    # the task has ended (the context manager ended it)
    if stack.servers["docs"][1].mode == "offline":
        await stack.verifier("docs").wait_fresh(2)
        await asyncio.sleep(0.3)  # the feed's task event
    status, challenge = await list_status(url, unused.token)
    assert status == 401 and "REVOKED" in challenge
