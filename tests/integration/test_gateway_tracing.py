"""Issue 15: one trace follows a tool call from the assistant through `broker gateway`. The
unmodified MCP Python SDK client, instrumented with OpenTelemetry, puts its span's W3C
traceparent in the tools/call's MCP ``_meta``; it reaches the broker: the spans of the broker
calls the gateway makes for that call (RequestCredential; RaiseTaint for an unguarded upstream)
are in the assistant's trace, children of the client's span."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.integration.conftest import Running, start_broker
from tests.integration.test_gateway_stdio import gateway_client
from tests.support.gateway import write_config, write_registry
from tests.support.node import NodeServer, start_everything_http

pytestmark = pytest.mark.integration


@pytest.fixture
def everything() -> Iterator[NodeServer]:
    server = start_everything_http()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def running(pki: Path, tmp_path: Path) -> AsyncIterator[Running]:
    r = await start_broker(pki, registry=str(write_registry(tmp_path)))
    try:
        yield r
    finally:
        await r.close()


async def test_the_assistants_trace_reaches_the_broker_through_the_gateway(
    running: Running, everything: NodeServer, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    config = write_config(tmp_path, {"everything": {"url": everything.url, "guarded": False}})
    async with gateway_client(running, config) as (client, _errlog):
        await client.list_tools()
        spans.clear()
        with trace.get_tracer("assistant").start_as_current_span("turn") as turn:
            result = await client.call_tool("everything__echo", {"message": "hello"})
        assert not result.is_error, result
        finished = spans.get_finished_spans()
        ours = {s.context.span_id for s in finished if s.context.trace_id == turn.context.trace_id}
        names = {s.name: s for s in finished}
        for name in ("AgentService/RequestCredential", "AgentService/RaiseTaint"):
            assert name in names, sorted(names)
            span = names[name]
            assert span.context.trace_id == turn.context.trace_id, name  # the assistant's trace
            assert span.parent is not None and span.parent.span_id in ours  # the client's span

        spans.clear()  # the next call, outside the turn: the gateway kept no trace of the last
        await client.call_tool("everything__echo", {"message": "again"})
        (mint,) = [s for s in spans.get_finished_spans() if s.name.endswith("/RequestCredential")]
        assert mint.context.trace_id != turn.context.trace_id
