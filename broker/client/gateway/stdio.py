"""The stdio transport (MCP: newline-delimited JSON-RPC on stdin/stdout; logs on stderr).

One process is one session, so one task. It ends on stdin EOF (the client went away), SIGINT,
SIGTERM or SIGHUP. Assistants stop a stdio server with SIGINT, then SIGTERM about 0.1 s later and
SIGKILL about 0.5 s later: EndTask goes out at the first signal with a 0.25 s deadline; after a
SIGKILL the task's TTL is the backstop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import signal
import sys
from typing import Any

from broker.client.gateway import wire
from broker.client.gateway.dispatch import Dispatcher
from broker.client.gateway.hub import Hub
from broker.client.gateway.session import Session

log = logging.getLogger("broker.gateway")

END_TIMEOUT = 0.25
MAX_LINE = 64 * 1024 * 1024


class _Out:
    def __init__(self) -> None:
        self.broken = False

    def write(self, msg: dict[str, Any]) -> None:
        if self.broken:
            return
        data = json.dumps(msg, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        try:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        except (BrokenPipeError, ValueError, OSError):
            self.broken = True


async def serve_stdio(hub: Hub) -> str:
    """Serve one session on stdin/stdout until EOF or a signal. Returns the task's outcome."""
    loop = asyncio.get_running_loop()
    out = _Out()

    async def notify(msg: dict[str, Any]) -> None:
        out.write(msg)

    session = Session(hub, notify=notify)
    dispatcher = Dispatcher(session)
    stopped: list[str] = []
    stop = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        if not stopped:
            stopped.append(f"gateway stopped ({sig.name})")
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, on_signal, sig)
    reader = asyncio.StreamReader(limit=MAX_LINE)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    running: dict[Any, asyncio.Task[None]] = {}
    background: set[asyncio.Task[None]] = set()

    async def one(msg: Any) -> None:
        response = await dispatcher.handle(msg)
        if response is not None:
            out.write(response)

    async def read_loop() -> None:
        while True:
            try:
                line = await reader.readline()
            except ValueError:  # a line over the limit
                out.write(wire.error(None, wire.PARSE_ERROR, "message too large"))
                continue
            if not line:
                return
            if not line.strip():
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                out.write(wire.error(None, wire.PARSE_ERROR, "not JSON"))
                continue
            if isinstance(msg, dict) and msg.get("method") == "notifications/cancelled":
                params = msg.get("params") or {}
                task = running.get(params.get("requestId")) if isinstance(params, dict) else None
                if task is not None:
                    task.cancel()
                continue
            task = loop.create_task(one(msg))
            background.add(task)
            task.add_done_callback(background.discard)
            if isinstance(msg, dict) and "id" in msg and "method" in msg:
                key = msg["id"]
                running[key] = task
                task.add_done_callback(functools.partial(_forget, running, key))

    reading = loop.create_task(read_loop())
    stopping = loop.create_task(stop.wait())
    await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not stop.is_set() and running:  # stdin closed with calls in flight: let them answer
        in_flight = loop.create_task(_all(list(running.values())))
        await asyncio.wait({in_flight, stopping}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        in_flight.cancel()
    stopping.cancel()
    outcome = stopped[0] if stopped else "client disconnected (stdin closed)"
    # End the task first: nothing minted in it may outlive the session.
    await session.end(outcome, deadline=END_TIMEOUT)
    for task in (reading, *background):
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await asyncio.wait_for(asyncio.gather(reading, *background, return_exceptions=True), 0.2)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.remove_signal_handler(sig)
    return outcome


async def _all(tasks: list[asyncio.Task[None]]) -> None:
    await asyncio.gather(*tasks, return_exceptions=True)


def _forget(running: dict[Any, asyncio.Task[None]], key: Any, _task: object) -> None:
    running.pop(key, None)
