"""Tool calls over MCP: direct, through a plain MCP proxy, through broker gateway (+ guard).

Same upstream (the npm server-everything's ``echo``), same client (a lean streamable-HTTP
JSON-RPC client with one MCP session, ``broker.client.gateway.upstream.Upstream``), 1 and 8
calls in flight:

- ``mcp_direct``: client -> server-everything (streamable HTTP).
- ``mcp_proxy``: client -> mcp-proxy (PyPI, unauthenticated, streamable HTTP in front of a
  stdio server) -> server-everything (stdio). mcp-proxy pins mcp<2, so it lives in its own
  virtualenv (``make proxy-venv``: .venv-proxy); without it the row is skipped.
- ``mcp_gateway``: client -> broker gateway (--listen) -> [broker guard (HTTPS, mTLS) ->]
  server-everything: BeginTask once, RequestCredential per call, the guard's offline verify
  and outcome report. Without ``broker guard`` (``guard=False``) the gateway calls
  server-everything unguarded and reports the result itself (RaiseTaint).

The overhead of a path is its p50 minus the direct p50 (targets in bench/report.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import yaml

from bench.load import closed_loop
from broker.client.gateway.config import UpstreamConfig
from broker.client.gateway.upstream import Upstream

ROOT = Path(__file__).resolve().parents[1]
PROXY = ROOT / ".venv-proxy" / "bin" / "mcp-proxy"
INFLIGHT = (1, 8)
ARGS = {"message": "benchmark"}

Log = Callable[[str], None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited: {_read(log)[-2000:]}")
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port}")


async def _wait_line(path: Path, pattern: str, proc: subprocess.Popen[bytes], what: str) -> str:
    regex = re.compile(pattern)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        m = regex.search(_read(path))
        if m:
            return m.group(1)
        if proc.poll() is not None:
            break
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{what} did not start: {_read(path)[-2000:]}")


def _read(path: Path) -> str:
    return path.read_text(errors="replace")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _spawn(argv: list[str], log: Path, env: dict[str, str] | None) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )


@contextlib.asynccontextmanager
async def _process(
    argv: list[str], log: Path, env: dict[str, str] | None = None
) -> AsyncIterator[subprocess.Popen[bytes]]:
    proc = _spawn(argv, log, env)
    try:
        yield proc
    finally:
        _stop(proc)


async def measure_path(url: str, tool: str, settings: Any) -> list[dict[str, float]]:
    """Runs of ``tool`` over one MCP session at ``url``, for each of INFLIGHT."""
    up = Upstream(UpstreamConfig(name="bench", url=url, guarded=False), None)

    async def call(_: int) -> None:
        result = await up.call_tool(tool, ARGS, None)
        if result.get("isError"):
            raise RuntimeError(str(result.get("content"))[:300])

    try:
        await closed_loop(call, 1, settings.warmup)
        out = []
        for n in INFLIGHT:
            for _ in range(settings.runs):
                sample = await closed_loop(call, n, settings.duration)
                out.append({"inflight": n, **sample.summary()})
        return out
    finally:
        await up.aclose()


async def run(
    broker_target: str,
    pki: Path,
    directory: Path,
    settings: Any,
    log: Log,
) -> dict[str, list[dict[str, float]]]:
    """Every path; returns {path: runs}. The broker at ``broker_target`` must know the
    ``everything`` server (tests/support/gateway.py writes such a registry)."""
    sys.path.insert(0, str(ROOT))
    from tests.support.node import everything_server_command, start_everything_http

    os.makedirs(directory, exist_ok=True)
    results: dict[str, list[dict[str, float]]] = {}
    everything = start_everything_http()
    try:
        log(f"MCP direct: server-everything at {everything.url}")
        results["mcp_direct"] = await measure_path(everything.url, "echo", settings)
        if PROXY.exists():
            port = _free_port()
            argv = [str(PROXY), "--host", "127.0.0.1", "--port", str(port)]
            argv += ["--", *everything_server_command()]
            async with _process(argv, directory / "mcp-proxy.log") as proc:
                await _wait_port(port, proc, "mcp-proxy", directory / "mcp-proxy.log")
                log(f"MCP through mcp-proxy on {port}")
                url = f"http://127.0.0.1:{port}/mcp"
                results["mcp_proxy"] = await measure_path(url, "echo", settings)
        else:
            log(f"no {PROXY}: run `make proxy-venv` for the plain-proxy row; skipped")
        async with _gateway_path(broker_target, pki, everything.url, directory, log) as url:
            results["mcp_gateway"] = await measure_path(url, "everything__echo", settings)
    finally:
        everything.stop()
    return results


@contextlib.asynccontextmanager
async def _gateway_path(
    broker_target: str, pki: Path, everything_url: str, directory: Path, log: Log
) -> AsyncIterator[str]:
    from tests.support.gateway import ensure_identity
    from tests.support.node import everything_server_command

    broker_bin = str(Path(sys.executable).parent / "broker")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    conn = ["--addr", broker_target, "--ca", str(pki / "ca.crt")]
    async with contextlib.AsyncExitStack() as stack:
        guard_url = ""
        if _has_guard():
            ensure_identity(pki, "mcp-everything")
            glog = directory / "guard.log"
            gport = _free_port()
            argv = [
                broker_bin,
                *conn,
                "--cert",
                str(pki / "mcp-everything.crt"),
                "--key",
                str(pki / "mcp-everything.key"),
                "guard",
                "--listen",
                f"127.0.0.1:{gport}",
                "--tls",
                "--",
                *everything_server_command(),
            ]
            proc = await stack.enter_async_context(_process(argv, glog, env))
            await _wait_port(gport, proc, "broker guard", glog)
            guard_url = f"https://127.0.0.1:{gport}/mcp"
        server = {"url": guard_url} if guard_url else {"url": everything_url, "guarded": False}
        config = directory / "gateway.yaml"
        config.write_text(
            yaml.safe_dump({"intent": "benchmark", "servers": {"everything": server}})
        )
        glog = directory / "gateway.log"
        argv = [
            broker_bin,
            *conn,
            "--cert",
            str(pki / "agent-demo.crt"),
            "--key",
            str(pki / "agent-demo.key"),
            "gateway",
            "--config",
            str(config),
            "--listen",
            "127.0.0.1:0",
            *(["-v"] if os.environ.get("BENCH_GATEWAY_DEBUG") else []),
        ]
        proc = await stack.enter_async_context(_process(argv, glog, env))
        url = await _wait_line(glog, r"listening on (http://\S+/mcp)", proc, "broker gateway")
        what = "broker gateway + broker guard" if guard_url else "broker gateway (unguarded)"
        log(f"MCP through {what}")
        yield url
        if os.environ.get("BENCH_GATEWAY_DEBUG"):
            shutil.copy(glog, os.environ["BENCH_GATEWAY_DEBUG"])


def _has_guard() -> bool:
    try:
        import broker.cli.guard  # noqa: F401
    except ImportError:
        return False
    return shutil.which("node") is not None
