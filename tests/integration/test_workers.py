"""`broker serve --workers 2` as a real subprocess on Redis: both workers serve one port, sign
with the same keys (a token minted by one verifies at the other), and SIGTERM stops them all."""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import orjson
import pytest

from broker.adapters.audit.sinks import read_json_lines
from tests.integration.conftest import DEV
from tests.integration.helpers import Agent, Server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ARGS = {"query": "workers"}
SERVING = re.compile(r"serving on 127\.0\.0\.1:(\d+)")
KEYS_DIR = re.compile(r"signing keys shared by the workers in (\S+)")


def broker_command() -> list[str]:
    script = Path(sys.executable).with_name("broker")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from broker.cli.main import main; main()"]


class Served:
    def __init__(self, proc: subprocess.Popen[str], port: int, stderr: list[str]) -> None:
        self.proc, self.port, self.stderr = proc, port, stderr

    def children(self) -> set[int]:
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return {int(p) for p in path.read_text().split()}


def _pump(stream: object, into: queue.Queue[str], keep: list[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        keep.append(line)
        into.put(line)


@pytest.fixture
def served(tmp_path: Path, pki: Path, redis_server: str) -> Iterator[Served]:
    config = tmp_path / "broker.yaml"
    config.write_text(
        orjson.dumps(
            {
                "listen": "127.0.0.1:0",
                "trust_domain": "dev.local",
                "store": f"{redis_server}?namespace=w{uuid.uuid4().hex[:8]}",
                "registry": str(DEV / "registry.yaml"),
                "policies": str(DEV / "policies"),
                "tls": {
                    "cert": str(pki / "broker.crt"),
                    "key": str(pki / "broker.key"),
                    "bundle": str(pki / "ca.crt"),
                },
                "audit": {"sinks": [f"jsonl:{tmp_path / 'audit.jsonl'}"]},
            }
        ).decode()  # JSON is YAML
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    proc = subprocess.Popen(
        [*broker_command(), "serve", "--config", str(config), "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    out: queue.Queue[str] = queue.Queue()
    stdout: list[str] = []
    stderr: list[str] = []
    pumps = [
        threading.Thread(target=_pump, args=(proc.stdout, out, stdout), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, queue.Queue(), stderr), daemon=True),
    ]
    for pump in pumps:
        pump.start()
    try:
        deadline = time.monotonic() + 90
        port = 0
        while not port:
            try:
                line = out.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"broker did not start: {''.join(stderr)[-2000:]}")
            if m := SERVING.search(line):
                port = int(m.group(1))
        yield Served(proc, port, stderr)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pump in pumps:
            pump.join(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def _channel(port: int, pki: Path, name: str) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(
        (pki / "ca.crt").read_bytes(),
        (pki / f"{name}.key").read_bytes(),
        (pki / f"{name}.crt").read_bytes(),
    )
    # A channel of its own (not the process-wide subchannel pool): a new TCP connection, which
    # the kernel may hand to either worker.
    return grpc.aio.secure_channel(
        f"127.0.0.1:{port}", creds, options=[("grpc.use_local_subchannel_pool", 1)]
    )


def _mode(path: str) -> int | None:
    """The permission bits of a directory, None if it is gone."""
    try:
        return os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        return None


def _chains(audit: Path) -> dict[tuple[str, str], str]:
    """(event, jti) -> the chain (``host-pid`` of the worker) that wrote it."""
    out = {}
    with contextlib.suppress(FileNotFoundError):
        for rec in read_json_lines(audit):
            if rec.get("jti"):
                out[(rec["event"], rec["jti"])] = rec["chain"]
    return out


async def test_two_workers_share_port_and_keys(served: Served, pki: Path, tmp_path: Path) -> None:
    workers = served.children()
    assert len(workers) >= 2  # two workers (plus multiprocessing's resource tracker)
    audit = tmp_path / "audit.jsonl"
    pids_seen: set[int] = set()
    crossed = False
    for _ in range(60):
        agent_ch = _channel(served.port, pki, "agent-demo")
        docs_ch = _channel(served.port, pki, "mcp-docs")
        try:
            agent = Agent(agent_ch)
            task = await agent.begin()
            resp = await agent.credential(task, "docs", "search_docs", ARGS)
            got = await Server(docs_ch).verify(resp.credential.token, "search_docs", ARGS)
            assert got.jti == resp.credential.jti
        finally:
            await agent_ch.close()
            await docs_ch.close()
        await asyncio.sleep(0.05)  # O_APPEND writes show at once; slack for the last one
        chains = _chains(audit)
        minted = chains[("credential.mint", resp.credential.jti)]
        consumed = chains[("credential.consume", resp.credential.jti)]
        pids_seen |= {int(minted.rsplit("-", 1)[1]), int(consumed.rsplit("-", 1)[1])}
        crossed = crossed or minted != consumed
        if crossed and len(pids_seen) == 2:
            break
    assert pids_seen <= workers, (pids_seen, workers)
    assert len(pids_seen) == 2, "only one worker ever served"
    assert crossed, "no token minted by one worker was verified by the other"

    keys_dir = next(m.group(1) for line in served.stderr if (m := KEYS_DIR.search(line)))
    assert _mode(keys_dir) == 0o700

    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(30) == 0
    for pid in pids_seen:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert _mode(keys_dir) is None, "the temporary keys directory was left behind"


def test_memory_store_refuses_two_workers(pki: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    result = subprocess.run(
        [
            *broker_command(),
            "serve",
            "--config",
            str(DEV / "broker.yaml"),
            "--store",
            "memory://",
            "--workers",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **env,
            "BROKER_TLS_CERT": str(pki / "broker.crt"),
            "BROKER_TLS_KEY": str(pki / "broker.key"),
            "BROKER_TLS_BUNDLE": str(pki / "ca.crt"),
        },
        check=False,
    )
    assert result.returncode != 0
    assert "workers:" in result.stderr and "memory://" in result.stderr
