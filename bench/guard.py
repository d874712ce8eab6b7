"""`broker guard` under load: the same tool call made directly to an npm MCP server and through
a guard in front of it, at 1 and 8 in flight (docs/guard.md, "Measured").

Two pairs, each on the same upstream process:

- server-everything over streamable HTTP, tool ``echo`` (untrusted content: the outcome report
  precedes the answer): direct = POST to the server's /mcp in its session; guard = POST to the
  guard's /mcp, the guard's offline verifier, the upstream call over HTTP, sanitizing, report.
- server-filesystem over stdio, tool ``read_text_file`` (trusted): direct = one JSON-RPC line on
  the server's stdin, the answer from its stdout; guard = HTTP to the guard, stdio behind it.

Each guarded call presents its own credential, minted beforehand (RequestCredential is the
broker's cost, measured by the mint rows). The guard runs as `broker guard` in its own process.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx2
import orjson

from bench.load import Exhausted, Sample, closed_loop, cpu_seconds
from bench.procs import ROOT
from bench.scenarios import PER_TASK, Context, TaskPool, _channels, _repeat, _struct
from broker._proto.broker.v1 import agent_pb2, agent_pb2_grpc

ECHO = {"message": "retry with backoff"}
READ = {"path": "notes.txt"}
INFLIGHT = (1, 8)
PAIRS = ("guard_echo_http", "guard_read_stdio")
RATE = 1000  # guarded calls per second to mint credentials for (more than measured, 2 cores)
HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


def _node(*args: str) -> list[str]:
    sys.path.insert(0, str(ROOT))
    from tests.support.node import everything_http_command, filesystem_server_command

    if args[0] == "everything-http":
        return everything_http_command()
    return filesystem_server_command(args[1])


def _call_body(tool: str, arguments: dict[str, Any], id_: int = 1) -> bytes:
    return orjson.dumps(
        {
            "jsonrpc": "2.0",
            "id": id_,
            "method": "tools/call",
            "params": {"name": tool, "arguments": arguments},
        }
    )


def _result_of(resp: httpx2.Response) -> dict[str, Any]:
    text = resp.text
    if resp.headers.get("content-type", "").startswith("text/event-stream"):
        text = next(
            line[5:] for line in text.splitlines() if line.startswith("data:") and line[5:].strip()
        )
    message = orjson.loads(text)
    if "result" not in message or message["result"].get("isError"):
        raise RuntimeError(f"tool call failed: {text[:300]}")
    return dict(message["result"])


async def _mint(ctx: Context, server: str, tool: str, args: dict[str, Any], n: int) -> list[str]:
    """``n`` credentials for ``server``/``tool``/``args`` (agent-demo), minted at 16 in flight."""
    channels = await _channels(ctx, "agent-demo", 16)
    stubs = [agent_pb2_grpc.AgentServiceStub(ch) for ch in channels]  # type: ignore[no-untyped-call]
    pool = TaskPool(stubs[0])
    await pool.fill(n // PER_TASK + 17)
    arguments = _struct(args)
    out: list[str] = []
    left = [n]

    async def worker(i: int) -> None:
        while left[0] > 0:
            left[0] -= 1
            task = await pool.task_for(i)
            resp = await stubs[i % len(stubs)].RequestCredential(
                agent_pb2.RequestCredentialRequest(
                    task_id=task, server=server, tool=tool, arguments=arguments
                ),
                timeout=10,
            )
            out.append(resp.credential.token)

    try:
        await asyncio.gather(*(worker(i) for i in range(16)))
    finally:
        for ch in channels:
            await ch.close()
    return out


class Process:
    """A child process (a guard, an npm server) whose stderr is read for a line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    @classmethod
    async def start(cls, argv: list[str], **kwargs: Any) -> Process:
        proc = await asyncio.create_subprocess_exec(
            *argv, stderr=asyncio.subprocess.PIPE, cwd=ROOT, **kwargs
        )
        return cls(proc)

    async def wait_for(self, pattern: str, seconds: float = 60.0) -> re.Match[str]:
        assert self.proc.stderr is not None
        async with asyncio.timeout(seconds):
            while True:
                line = (await self.proc.stderr.readline()).decode(errors="replace")
                if not line:
                    raise RuntimeError("process exited: " + "".join(self.lines[-20:]))
                self.lines.append(line)
                if m := re.search(pattern, line):
                    asyncio.get_running_loop().create_task(self._drain())
                    return m

    async def _drain(self) -> None:
        assert self.proc.stderr is not None
        while await self.proc.stderr.readline():
            pass

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def _guard(ctx: Context, name: str, upstream: list[str]) -> tuple[Process, str]:
    pki = ctx.pki
    broker = str(Path(sys.executable).with_name("broker"))
    argv = [
        broker,
        "--addr",
        ctx.broker.target,
        "--ca",
        str(pki / "ca.crt"),
        "--cert",
        str(pki / f"mcp-{name}.crt"),
        "--key",
        str(pki / f"mcp-{name}.key"),
        "guard",
        "--listen",
        "127.0.0.1:0",
        "--log-level",
        "warning",
        *upstream,
    ]
    proc = await Process.start(argv, stdout=asyncio.subprocess.DEVNULL)
    match = await proc.wait_for(r"listening on (\S+)")
    return proc, match.group(1)


async def _http_session(http: httpx2.AsyncClient, url: str, token: str | None) -> dict[str, str]:
    """Open an MCP session (initialize + initialized) at ``url``; the headers to use after."""
    auth = {"authorization": f"Bearer {token}"} if token else {}
    init = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "bench", "version": "1"},
        },
    }
    resp = await http.post(url, content=orjson.dumps(init), headers={**HEADERS, **auth})
    resp.raise_for_status()
    headers = {**HEADERS, "mcp-protocol-version": "2025-11-25"}
    if sid := resp.headers.get("mcp-session-id"):
        headers["mcp-session-id"] = sid
    note = orjson.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"})
    await http.post(url, content=note, headers={**headers, **auth})
    return headers


def _http_caller(
    http: httpx2.AsyncClient,
    url: str,
    headers: dict[str, str],
    tool: str,
    args: dict[str, Any],
    tokens: list[str] | None,
) -> Callable[[int], Awaitable[None]]:
    body = _call_body(tool, args)

    async def call(i: int) -> None:
        extra = headers
        if tokens is not None:
            if not tokens:
                raise Exhausted
            extra = {**headers, "authorization": f"Bearer {tokens.pop()}"}
        _result_of(await http.post(url, content=body, headers=extra))

    return call


class StdioClient:
    """A minimal MCP client on a server's stdin/stdout (the direct stdio baseline)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            message = orjson.loads(line)
            future = self.pending.pop(message.get("id"), None)
            if future is not None and not future.done():
                future.set_result(message)

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        id_ = next(self.ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[id_] = future
        line = {"jsonrpc": "2.0", "id": id_, "method": method, "params": params}
        self.proc.stdin.write(orjson.dumps(line) + b"\n")
        message = await future
        if "result" not in message or message["result"].get("isError"):
            raise RuntimeError(f"stdio call failed: {message}")
        return dict(message["result"])

    async def start(self) -> None:
        await self.request(
            "initialize",
            {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "bench", "version": "1"},
            },
        )
        assert self.proc.stdin is not None
        self.proc.stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')


async def _pair(
    ctx: Context,
    figures: dict[str, list[dict[str, float]]],
    label: str,
    direct: Callable[[int], Awaitable[None]],
    guarded: Callable[[int], Awaitable[None]],
    guard_pid: int,
) -> None:
    """Direct and guarded runs in turn; guarded runs also carry the guard process's CPU time
    per call (``guard_cpu_us``): on a shared box latency says more about the neighbours, the
    CPU a call costs the guard does not."""

    async def measured(n: int, duration: float) -> Sample:
        before = cpu_seconds(guard_pid)
        sample = await closed_loop(guarded, n, duration)
        if sample.count:
            spent[n].append((cpu_seconds(guard_pid) - before) * 1e6 / sample.count)
        return sample

    spent: dict[int, list[float]] = {n: [] for n in INFLIGHT}
    for n in INFLIGHT:
        ctx.log(f"{label}: direct and through the guard @{n}")
        figures[f"{label}_direct_{n}"] = await _repeat(
            ctx, f"{label} direct@{n}", lambda d, n=n: closed_loop(direct, n, d), cpu=False
        )
        runs = await _repeat(ctx, f"{label} guard@{n}", lambda d, n=n: measured(n, d), cpu=False)
        for run, cpu in zip(runs, spent[n][-len(runs) :], strict=True):
            run["guard_cpu_us"] = round(cpu)
        figures[f"{label}_guard_{n}"] = runs


def _supply(ctx: Context) -> int:
    """Credentials one guarded series may use (generous: a guarded call takes >= ~1 ms)."""
    s = ctx.settings
    per_run = RATE * (s.duration + 0.2)
    return int((s.warmup + s.runs * (s.duration + 0.2)) * RATE + per_run) * len(INFLIGHT)


async def guard_vs_direct(ctx: Context) -> dict[str, list[dict[str, float]]]:
    figures: dict[str, list[dict[str, float]]] = {}
    supply = _supply(ctx)
    ctx.log(f"  minting {2 * supply:,} credentials for the guarded calls")
    echo_tokens = await _mint(ctx, "everything", "echo", ECHO, supply)
    read_tokens = await _mint(ctx, "files", "read_text_file", READ, supply)

    everything = await Process.start(
        _node("everything-http"),
        stdout=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PORT": "0"},  # a free port (default 3001 may be taken)
    )
    work = Path(tempfile.mkdtemp(prefix="broker-bench-guard-"))
    (work / "notes.txt").write_text("retry with backoff\n" * 20)
    fs_direct_proc = await asyncio.create_subprocess_exec(
        *_node("filesystem", str(work)),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    guards: list[Process] = []
    try:
        port = (await everything.wait_for(r"LISTENING 127\.0\.0\.1:(\d+)")).group(1)
        upstream = f"http://127.0.0.1:{port}/mcp"
        echo_guard, echo_url = await _guard(ctx, "everything", ["--upstream", upstream])
        fs_guard, fs_url = await _guard(ctx, "files", ["--", *_node("filesystem", str(work))])
        guards = [echo_guard, fs_guard]
        limits = httpx2.Limits(max_connections=16, max_keepalive_connections=16)
        async with httpx2.AsyncClient(timeout=30.0, limits=limits) as http:
            direct_headers = await _http_session(http, upstream, None)
            guard_headers = await _http_session(http, echo_url, echo_tokens.pop())
            await _pair(
                ctx,
                figures,
                "guard_echo_http",
                _http_caller(http, upstream, direct_headers, "echo", ECHO, None),
                _http_caller(http, echo_url, guard_headers, "echo", ECHO, echo_tokens),
                echo_guard.proc.pid,
            )
            stdio = StdioClient(fs_direct_proc)
            await stdio.start()

            async def direct_read(i: int) -> None:
                await stdio.request("tools/call", {"name": "read_text_file", "arguments": READ})

            fs_headers = await _http_session(http, fs_url, read_tokens.pop())
            await _pair(
                ctx,
                figures,
                "guard_read_stdio",
                direct_read,
                _http_caller(http, fs_url, fs_headers, "read_text_file", READ, read_tokens),
                fs_guard.proc.pid,
            )
            stdio.reader.cancel()
    finally:
        for g in guards:
            await g.stop()
        await everything.stop()
        if fs_direct_proc.returncode is None:
            fs_direct_proc.terminate()
            await fs_direct_proc.wait()
    return figures


__all__ = ["PAIRS", "Sample", "guard_vs_direct"]
