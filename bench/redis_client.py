"""`python -m bench redis-client`: what one Redis round trip costs the client, by client.

The profile of a mint puts the Redis store first (three round trips per mint). This measures
the client CPU time (user + system, this process) of one EVALSHA round trip of a small script,
the kind the store runs, against a redis-server started here:

- redis-py asyncio ``Script.__call__`` (what the store does today) and ``execute_command``;
- a minimal asyncio protocol with the hiredis parser (no pool, no retries, no timeouts): what a
  lean client for the hot scripts could cost;
- a blocking socket (the floor: two syscalls and the kernel's loopback path).
"""

from __future__ import annotations

import asyncio
import resource
import socket
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import hiredis

from bench.procs import start_redis

SCRIPT = "return redis.call('HMGET', KEYS[1], 'st', 'exp', 'ret')"
ARGS = ("1700000000.0", "64", "1700000300.0", "1700000000000")


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class _Protocol(asyncio.Protocol):
    """Requests answered in order (RESP): one future per request, resolved as replies come."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiting: list[asyncio.Future[object]] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            self.waiting.pop(0).set_result(reply)

    async def call(self, *args: str | int) -> object:
        assert self.transport is not None
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        self.transport.write(hiredis.pack_command(args))  # type: ignore[arg-type]
        return await future


async def _measure(call: Callable[[], Awaitable[object]], n: int, repeats: int) -> float:
    for _ in range(200):
        await call()
    out = []
    for _ in range(repeats):
        c0 = _cpu()
        for _ in range(n):
            await call()
        out.append((_cpu() - c0) / n * 1e6)
    return statistics.median(out)


async def _run(port: int, n: int, repeats: int) -> dict[str, float]:
    from redis.asyncio import Redis

    client = Redis(host="127.0.0.1", port=port)
    script = client.register_script(SCRIPT)
    await script(keys=["brk:{t}:task"], args=list(ARGS))
    sha = script.sha
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_connection(_Protocol, "127.0.0.1", port)
    try:
        results = {
            "redis-py Script.__call__ (the store today)": await _measure(
                lambda: script(keys=["brk:{t}:task"], args=list(ARGS)), n, repeats
            ),
            "redis-py execute_command('EVALSHA', ...)": await _measure(
                lambda: client.execute_command(  # type: ignore[no-untyped-call]
                    "EVALSHA", sha, 1, "brk:{t}:task", *ARGS
                ),
                n,
                repeats,
            ),
            "minimal asyncio protocol + hiredis": await _measure(
                lambda: proto.call("EVALSHA", sha, 1, "brk:{t}:task", *ARGS), n, repeats
            ),
        }
    finally:
        transport.close()
        await client.aclose()
    packed = hiredis.pack_command(("EVALSHA", sha, 1, "brk:{t}:task", *ARGS))  # type: ignore[arg-type]
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        out = []
        for _ in range(repeats):
            c0 = _cpu()
            for _ in range(n):
                sock.sendall(packed)
                sock.recv(65536)
            out.append((_cpu() - c0) / n * 1e6)
        results["blocking socket (the floor)"] = statistics.median(out)
    return results


def main(n: int = 3000, repeats: int = 5) -> int:
    with tempfile.TemporaryDirectory(prefix="broker-redis-client-") as tmp:
        redis = start_redis(Path(tmp))
        try:
            started = time.monotonic()
            results = asyncio.run(_run(redis.port, n, repeats))
        finally:
            redis.stop()
    print("| client, one EVALSHA round trip | client CPU (user + system) |")
    print("|---|---|")
    for name, us in results.items():
        print(f"| {name} | {us:.0f} us |")
    print(f"\n(median of {repeats} x {n} calls, {time.monotonic() - started:.0f} s)")
    return 0
