"""Issue 15: one trace follows a tool call from the assistant to the MCP server. The W3C
traceparent in a tools/call's MCP ``_meta`` reaches the broker through `broker guard`: the
spans of the broker calls the guard makes for that call (VerifyCredential online,
ReportOutcome) are children of the caller's span."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from broker.app import feed
from broker.client.sdk.client import BrokerClient
from tests.integration.conftest import Running, start_broker
from tests.integration.guard_harness import agent, filesystem_command, guard

pytestmark = pytest.mark.integration

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"
READ = {"path": "notes.txt"}


@pytest.fixture
async def running(pki: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Running]:
    monkeypatch.setattr(feed, "HEARTBEAT_SECONDS", 0.1)
    r = await start_broker(pki)
    try:
        yield r
    finally:
        await r.close()


@pytest.fixture
async def demo(running: Running) -> AsyncIterator[BrokerClient]:
    async with agent(running) as a:
        yield a


async def _call(url: str, token: str, meta: dict[str, str]) -> dict[str, object]:
    body = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": "read_text_file", "arguments": READ, "_meta": meta},
    }
    async with httpx2.AsyncClient(timeout=30.0) as http:
        resp = await http.post(url, json=body, headers={"authorization": f"Bearer {token}"})
    assert resp.status_code == 200, resp.text
    reply: dict[str, object] = resp.json()
    return reply


@pytest.mark.parametrize("online", [False, True], ids=["offline", "online"])
async def test_the_callers_trace_reaches_the_broker_through_the_guard(
    running: Running,
    demo: BrokerClient,
    tmp_path: Path,
    spans: InMemorySpanExporter,
    online: bool,
) -> None:
    root = tmp_path / "files"
    root.mkdir()
    (root / "notes.txt").write_text("retry with backoff\n")
    cmd = filesystem_command(root)
    async with (
        guard(running, "files", upstream_command=cmd, online=online) as files,
        demo.task("trace a call") as task,
    ):
        cred = await task.credential("files", "read_text_file", READ)
        spans.clear()
        reply = await _call(files.url, cred.token, {"traceparent": f"00-{TRACE_ID}-{PARENT}-01"})
        assert "result" in reply, reply
        await files.app.enforcer.flush()  # trusted and clean: reported after the answer
        names = {s.name: s for s in spans.get_finished_spans()}
        expected = {"VerifierService/ReportOutcome"}
        if online:
            expected.add("VerifierService/VerifyCredential")
        assert expected <= names.keys(), sorted(names)
        for name in expected:
            span = names[name]
            assert format(span.context.trace_id, "032x") == TRACE_ID, name
            assert span.parent is not None and format(span.parent.span_id, "016x") == PARENT

        # A call without trace context starts no trace of the caller's: the broker's own.
        cred = await task.credential("files", "read_text_file", READ)
        spans.clear()
        await _call(files.url, cred.token, {})
        await files.app.enforcer.flush()
        (report,) = [s for s in spans.get_finished_spans() if s.name.endswith("/ReportOutcome")]
        assert report.parent is None
