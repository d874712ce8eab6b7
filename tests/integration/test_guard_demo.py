"""Part two of `make demo` (examples/guard_demo.py), run in-process against a real broker and
guards in front of the real npm servers: each step ends the way the narration says."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.app import feed
from examples.guard_demo import run_guard_story
from tests.integration.conftest import start_broker
from tests.integration.guard_harness import guard
from tests.support.node import everything_server_command, filesystem_server_command

pytestmark = pytest.mark.integration


async def test_the_guard_demo_story(
    pki: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(feed, "HEARTBEAT_SECONDS", 0.1)
    (tmp_path / "notes.md").write_text("# Notes\n- retry with exponential backoff\n")
    running = await start_broker(pki)
    address = f"127.0.0.1:{running.port}"
    lines: list[str] = []
    try:
        async with (
            guard(running, "files", upstream_command=filesystem_server_command(tmp_path)) as fs,
            guard(running, "everything", upstream_command=everything_server_command()) as ev,
        ):
            urls = {"files": fs.url, "everything": ev.url}
            outcomes = await run_guard_story(address, pki, urls, say=lines.append)
    finally:
        await running.close()
    assert outcomes == [
        ("files/read_text_file", "allowed"),
        ("files/write_file with a read credential", "TOOL_MISMATCH"),
        ("files/read_text_file without credential", "NO_CREDENTIAL"),
        ("everything/echo", "allowed"),
        ("files/write_file", "POLICY_DENIED"),
        ("files/read_text_file", "allowed"),
        ("files/list_directory after EndTask", "REVOKED"),
    ]
    assert (tmp_path / "notes.md").read_text().startswith("# Notes")
    assert "tainted-no-file-writes" in "\n".join(lines)
