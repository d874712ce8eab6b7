"""The act `make demo` ends with (examples/gateway_demo.py): an unmodified MCP client through
`broker gateway` and two `broker guard`s, against a real broker. It keeps working, and each
step ends the way the narration says."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.app import feed
from examples.gateway_demo import run_act
from tests.integration.conftest import start_broker

pytestmark = pytest.mark.integration


async def test_the_gateway_act(pki: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feed, "HEARTBEAT_SECONDS", 0.1)
    running = await start_broker(pki)
    lines: list[str] = []
    try:
        seen = await run_act(f"127.0.0.1:{running.port}", pki, say=lines.append)
    finally:
        await running.close()
    assert "files__read_text_file" in seen["listed"] and "everything__echo" in seen["listed"]
    assert seen["read"].startswith("TODO: fix test_retry_backoff")
    assert "ignore all previous" not in seen["echo"]
    is_error, refusal = seen["write"]
    assert is_error and "POLICY_DENIED" in refusal and "What to do:" in refusal
    assert seen["notes_after"].startswith("TODO: fix test_retry_backoff")  # unchanged
    assert "files__write_file" not in seen["listed_after"]
    text = "\n".join(lines)
    assert "DENIED files__write_file" in text
    assert "ended (client disconnected" in text
