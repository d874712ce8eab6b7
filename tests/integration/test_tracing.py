"""Issue 15: traces and JSON logs over real gRPC. With the OpenTelemetry SDK's in-memory
exporter: one RequestCredential is one server span with its children (policy, sign, store), the
caller's W3C traceparent from the gRPC metadata is its parent; BeginTask and VerifyCredential
have their spans. JSON log lines carry the call's method and trace ids, and stay redacted."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import orjson
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from broker._proto.broker.v1 import agent_pb2
from broker.adapters.logs import JsonFormatter
from broker.app.tracing import tracer as app_tracer
from broker.rpc.tracing import tracer as rpc_tracer
from tests.integration.conftest import Running
from tests.integration.helpers import Agent, Server, struct

pytestmark = pytest.mark.integration

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
ARGS = {"query": "traces"}

_EXPORTER = InMemorySpanExporter()


class _Gated(SimpleSpanProcessor):
    """Keeps spans only while a test of this module runs: OpenTelemetry allows one global
    provider per process, and later tests must not fill the exporter."""

    recording = False

    def on_end(self, span: ReadableSpan) -> None:
        if self.recording:
            super().on_end(span)


_PROCESSOR = _Gated(_EXPORTER)


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    """The SDK, installed once for the process."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(_PROCESSOR)
        trace.set_tracer_provider(provider)
    assert app_tracer is not None and rpc_tracer is not None  # proxies: they follow the provider
    return _EXPORTER


@pytest.fixture
def spans(exporter: InMemorySpanExporter) -> Iterator[InMemorySpanExporter]:
    exporter.clear()
    _PROCESSOR.recording = True
    try:
        yield exporter
    finally:
        _PROCESSOR.recording = False
        exporter.clear()


async def test_one_request_credential_is_one_trace_with_its_steps(
    running: Running, spans: InMemorySpanExporter
) -> None:
    agent = Agent(running.channel("agent-demo"))
    task = await agent.begin()
    spans.clear()
    traceparent = f"00-{TRACE_ID}-{PARENT}-01"
    resp = await agent.stub.RequestCredential(
        agent_pb2.RequestCredentialRequest(
            task_id=task, server="docs", tool="search_docs", arguments=struct(ARGS)
        ),
        metadata=(("traceparent", traceparent),),
        timeout=5,
    )
    assert resp.WhichOneof("result") == "credential"
    finished = spans.get_finished_spans()
    (root,) = [s for s in finished if s.name == "AgentService/RequestCredential"]
    assert format(root.context.trace_id, "032x") == TRACE_ID  # the caller's trace...
    assert root.parent is not None and format(root.parent.span_id, "016x") == PARENT  # ...parent
    assert root.kind is trace.SpanKind.SERVER
    assert root.attributes is not None and root.attributes["rpc.grpc.status_code"] == 0
    children = {
        s.name: s for s in finished if s.parent and s.parent.span_id == root.context.span_id
    }
    assert set(children) == {"policy", "sign", "store"}
    assert {s.context.trace_id for s in finished} == {root.context.trace_id}

    spans.clear()
    await Server(running.channel("mcp-docs")).verify(resp.credential.token, "search_docs", ARGS)
    (verify,) = spans.get_finished_spans()
    assert verify.name == "VerifierService/VerifyCredential"
    assert verify.parent is None  # no traceparent sent: a trace of its own


async def test_a_refusal_is_an_error_span_with_its_reason(
    running: Running, spans: InMemorySpanExporter
) -> None:
    agent = Agent(running.channel("agent-demo"))
    task = await agent.begin(plan=[("docs", "search_docs")])
    spans.clear()
    with pytest.raises(Exception):  # noqa: B017, PT011 - the status is checked on the span
        await agent.credential(task, "docs", "fetch_page", {"url": "x"})
    (root,) = spans.get_finished_spans()  # refused before policy: no child
    assert root.status.status_code is trace.StatusCode.ERROR
    assert root.status.description == "OUTSIDE_PLAN"


async def test_json_logs_carry_the_call_ids_and_stay_redacted(
    running: Running, spans: InMemorySpanExporter
) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root_logger = logging.getLogger()
    root_logger.addHandler(handler)
    watched = logging.getLogger("broker.rpc.calls")  # the access log, at debug level
    level = watched.level
    watched.setLevel(logging.DEBUG)
    token = ""
    try:
        agent = Agent(running.channel("agent-demo"))
        task = await agent.begin()
        token = await agent.token(task, "docs", "search_docs", ARGS)
        logging.getLogger("broker.test").warning("a token %s leaked into a message", token)
        with pytest.raises(Exception):  # noqa: B017, PT011 - any refusal logs under its call
            await Server(running.channel("mcp-docs")).verify(token + "x", "search_docs", ARGS)
    finally:
        root_logger.removeHandler(handler)
        watched.setLevel(level)
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert lines and all({"time", "level", "logger", "message", "pid"} <= set(x) for x in lines)
    assert token not in stream.getvalue()
    assert any("[secure]" in x["message"] for x in lines)
    in_calls = [x for x in lines if "method" in x]
    assert in_calls, "no line was written inside a call"
    for x in in_calls:
        assert len(x["trace_id"]) == 32 and len(x["span_id"]) == 16
