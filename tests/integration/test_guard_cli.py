"""Issue 11: `broker guard` and `broker registry suggest` as commands (API.md: the command line
is a contract), with --online verification, in front of the real npm server-filesystem."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from broker.app import feed
from broker.core.registry import Risk, parse_registry
from tests.integration.conftest import Running, start_broker
from tests.integration.guard_harness import agent, post_call
from tests.support.node import filesystem_server_command

pytestmark = pytest.mark.integration

BROKER = [str(Path(sys.executable).parent / "broker")]
READ = {"path": "notes.txt"}


@pytest.fixture
async def running(pki: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Running]:
    monkeypatch.setattr(feed, "HEARTBEAT_SECONDS", 0.1)
    r = await start_broker(pki)
    try:
        yield r
    finally:
        await r.close()


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.extend(int(c) for c in (task / "children").read_text().split())
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_the_guard_command_online_serves_and_stops_its_upstream(
    running: Running, tmp_path: Path
) -> None:
    (tmp_path / "notes.txt").write_text("retry with backoff\n")
    pki = running.pki
    argv = [
        *BROKER,
        "--addr",
        f"127.0.0.1:{running.port}",
        "--ca",
        str(pki / "ca.crt"),
        "--cert",
        str(pki / "mcp-files.crt"),
        "--key",
        str(pki / "mcp-files.key"),
        "guard",
        "--listen",
        "127.0.0.1:0",
        "--online",
        "--",
        *filesystem_server_command(tmp_path),
    ]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    seen: list[str] = []
    try:
        url = ""
        while not url:
            line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
            assert line, "the guard exited: " + "".join(seen)
            seen.append(line)
            if m := re.search(r"listening on (\S+)", line):
                url = m.group(1)
        async with agent(running) as demo, demo.task("read via the CLI guard") as task:
            cred = await task.credential("files", "read_text_file", READ)
            _, body = await post_call(url, cred.token, "read_text_file", READ)
            assert "retry with backoff" in body["result"]["content"][0]["text"]
            _, body = await post_call(url, cred.token, "read_text_file", READ)
            assert body["error"]["data"]["reason"] == "REPLAYED"  # at the broker: online
        events = [r.body.get("event") for r in running.sink.records]
        assert "credential.verify" in events  # VerifyCredential, not a local check
        upstream = children(proc.pid)
        assert upstream and all(alive(p) for p in upstream)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        log = "".join(seen) + (await proc.stderr.read()).decode()
        # the upstream's own stderr goes into the guard's log, attributed
        assert "broker.guard.upstream: stdio upstream `node`:" in log, log
        for pid in upstream:
            for _ in range(100):
                if not alive(pid):
                    break
                await asyncio.sleep(0.05)
            assert not alive(pid), "the upstream outlived its guard"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_guard_usage_errors_say_what_to_do(tmp_path: Path) -> None:
    env = {**os.environ, "BROKER_CERT": "", "BROKER_KEY": ""}
    both = subprocess.run(
        [*BROKER, "guard", "--listen", "127.0.0.1:0", "--upstream", "http://x/mcp", "--", "cat"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert both.returncode == 2 and "exactly one upstream" in both.stderr
    no_svid = subprocess.run(
        [*BROKER, "guard", "--listen", "127.0.0.1:0", "--", "cat"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert no_svid.returncode == 2 and "--cert and --key" in no_svid.stderr
    typo = subprocess.run(
        [*BROKER, "guard", "--listen", "127.0.0.1:0", "--", "nodee", "server.js"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert typo.returncode == 2 and "'nodee' was not found" in typo.stderr


def test_registry_suggest_prints_a_registry_entry_to_review(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            *BROKER,
            "registry",
            "suggest",
            "--name",
            "files",
            "--",
            *filesystem_server_command(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert out.startswith("# Suggested by `broker registry suggest`")
    registry = parse_registry(yaml.safe_load(out), "dev.local")
    files = registry.server("files")
    assert len(files.tools) == 14
    risks = {name: tool.risk for name, tool in files.tools.items()}
    assert risks["read_text_file"] is Risk.READ
    assert {n for n, r in risks.items() if r is Risk.WRITE} == {
        "write_file",
        "edit_file",
        "create_directory",
        "move_file",
    }
    assert "readOnlyHint" in out and "pin " in out  # why each guess, and the pin to compare
