"""The MCP server behind the guard: a stdio command the guard starts and supervises (here),
or a streamable HTTP URL (``upstream_http``). Either way ONE upstream connection serves every
client of the guard: the guard initializes it once itself (protocol 2025-11-25, the revision
unmodified servers speak), numbers its own requests (clients' JSON-RPC ids never reach the
upstream) and answers the upstream's own requests (roots, sampling, elicitation) with
METHOD_NOT_FOUND: the guard offers no client capabilities, so a well-behaved server sends none.

    upstream = StdioUpstream(["node", ".../server-filesystem/dist/index.js", "/srv"])
    await upstream.start()           # spawn, initialize; restarts with back-off when it dies
    tools = await upstream.request("tools/list", {})
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from broker.client.guard.jsonrpc import LATEST_HANDSHAKE, METHOD_NOT_FOUND

log = logging.getLogger("broker.guard.upstream")

CLIENT_INFO = {"name": "broker-guard", "version": "1"}
LINE_LIMIT = 64 * 1024 * 1024  # one JSON-RPC message per line; file contents can be large
DRAIN_ABOVE = 256 * 1024  # bytes buffered for the child's stdin before a writer waits


class UpstreamError(Exception):
    """The upstream answered with a JSON-RPC error: passed on to the client as it is."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(str(error.get("message", "")))
        self.error = error


class UpstreamUnavailable(Exception):
    """The upstream cannot take the request. ``ran`` False: the request never reached it
    (so no credential need be spent on it); True: it may have run."""

    def __init__(self, message: str, *, ran: bool) -> None:
        super().__init__(message)
        self.ran = ran


NotificationHandler = Callable[[str, dict[str, Any]], None]


class Upstream:
    """What the guard needs from an upstream (both kinds)."""

    init_result: dict[str, Any] | None = None
    on_notification: NotificationHandler | None = None
    description = "upstream"

    @property
    def ready(self) -> bool:
        raise NotImplementedError

    async def start(self) -> None:
        raise NotImplementedError

    async def wait_ready(self, seconds: float) -> None:
        raise NotImplementedError

    async def request(self, method: str, params: dict[str, Any], seconds: float = 60.0) -> Any:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    async def reconnect(self) -> None:
        """Try to bring a down upstream back (the guard calls it while ``ready`` is False);
        a stdio upstream's supervisor does that by itself."""

    def _notify(self, message: dict[str, Any]) -> None:
        method = message.get("method")
        params = message.get("params")
        if self.on_notification is not None and isinstance(method, str):
            self.on_notification(method, params if isinstance(params, dict) else {})


def answer_upstream_request(message: dict[str, Any]) -> dict[str, Any]:
    """The guard's answer to a request from the upstream: ``ping`` is answered, everything
    else (roots, sampling, elicitation: capabilities the guard does not offer) is refused."""
    if message.get("method") == "ping":
        return {"jsonrpc": "2.0", "id": message.get("id"), "result": {}}
    return {
        "jsonrpc": "2.0",
        "id": message.get("id"),
        "error": {"code": METHOD_NOT_FOUND, "message": "not offered by the broker guard"},
    }


def initialize_params() -> dict[str, Any]:
    return {"protocolVersion": LATEST_HANDSHAKE, "capabilities": {}, "clientInfo": CLIENT_INFO}


class StdioUpstream(Upstream):
    """A server the guard runs as a child process (stdio transport, newline-delimited JSON).

    The child's stderr goes to this module's log. When it exits, requests in flight fail with
    ``UpstreamUnavailable(ran=True)``, new ones with ``ran=False`` until it is back: it is
    restarted after ``backoff_initial`` seconds, doubling up to ``backoff_max`` while it keeps
    dying (reset once it ran ``healthy_after`` seconds). ``aclose`` stops it: SIGTERM, then
    SIGKILL after ``stop_timeout``.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        backoff_initial: float = 0.2,
        backoff_max: float = 10.0,
        healthy_after: float = 30.0,
        stop_timeout: float = 3.0,
        init_timeout: float = 30.0,
    ) -> None:
        if not command:
            raise ValueError("the upstream command is empty")
        self.command = list(command)
        self.env = env
        self.cwd = cwd
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.healthy_after = healthy_after
        self.stop_timeout = stop_timeout
        self.init_timeout = init_timeout
        self.description = f"stdio upstream `{os.path.basename(self.command[0])}`"
        self.restarts = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ready = asyncio.Event()
        self._closing = False
        self._supervisor: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> None:
        if self._supervisor is None:
            self._supervisor = asyncio.get_running_loop().create_task(self._supervise())

    async def wait_ready(self, seconds: float) -> None:
        await asyncio.wait_for(self._ready.wait(), seconds)

    async def _supervise(self) -> None:
        backoff = self.backoff_initial
        while not self._closing:
            started = time.monotonic()
            try:
                await self._run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure to start means: retry later
                log.warning("%s failed: %s", self.description, exc)
            if self._closing:
                return
            if time.monotonic() - started >= self.healthy_after:
                backoff = self.backoff_initial
            log.warning("%s: restarting in %.1f s", self.description, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.backoff_max)
            self.restarts += 1

    async def _run_once(self) -> None:
        proc = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
            cwd=self.cwd,
            limit=LINE_LIMIT,
            start_new_session=True,  # a Ctrl-C to the guard reaches the child through the guard
        )
        self._proc = proc
        log.info("%s: started (pid %d)", self.description, proc.pid)
        reader = asyncio.create_task(self._read(proc))
        errors = asyncio.create_task(self._drain_stderr(proc))
        try:
            result = await asyncio.wait_for(
                self._send_request("initialize", initialize_params()), self.init_timeout
            )
            if not isinstance(result, dict):
                raise UpstreamError({"message": "initialize returned no object"})
            self.init_result = result
            await self._write({"jsonrpc": "2.0", "method": "notifications/initialized"})
            self._ready.set()
            code = await proc.wait()
            if not self._closing:
                log.warning("%s exited with code %s", self.description, code)
        finally:
            self._ready.clear()
            await self._fail_pending(f"the {self.description} exited while the request ran")
            if proc.returncode is None:
                await self._stop(proc)
            await asyncio.gather(reader, errors, return_exceptions=True)

    async def _fail_pending(self, message: str) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(UpstreamUnavailable(message, ran=True))

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            try:
                message = orjson.loads(line)
            except orjson.JSONDecodeError:
                log.warning("%s wrote a line that is not JSON; ignored", self.description)
                continue
            if isinstance(message, dict):
                await self._dispatch(message)

    async def _dispatch(self, message: dict[str, Any]) -> None:
        if "method" in message:
            if "id" in message:  # the upstream asks us something: we offer nothing but ping
                await self._write(answer_upstream_request(message))
            else:
                self._notify(message)
            return
        future = self._pending.pop(message.get("id"), None)  # type: ignore[arg-type]
        if future is None or future.done():
            return
        if "error" in message:
            err = message["error"]
            future.set_exception(UpstreamError(err if isinstance(err, dict) else {}))
        else:
            future.set_result(message.get("result"))

    async def _drain_stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            log.info("%s: %s", self.description, line.decode(errors="replace").rstrip())

    async def _write(self, message: dict[str, Any]) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.returncode is not None:
            raise UpstreamUnavailable(f"the {self.description} is not running", ran=False)
        try:
            # one line per write: the transport never interleaves two writes
            proc.stdin.write(orjson.dumps(message) + b"\n")
            if proc.stdin.transport.get_write_buffer_size() > DRAIN_ABOVE:
                async with self._write_lock:  # back-pressure: one waiter at a time
                    await proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            raise UpstreamUnavailable(f"the {self.description} is not running", ran=False) from None

    async def _send_request(self, method: str, params: dict[str, Any]) -> Any:
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await self._write(
                {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
            )
            return await future
        finally:
            self._pending.pop(request_id, None)

    async def request(self, method: str, params: dict[str, Any], seconds: float = 60.0) -> Any:
        if not self.ready:
            raise UpstreamUnavailable(
                f"the {self.description} is not running (restarting); try again shortly",
                ran=False,
            )
        try:
            async with asyncio.timeout(seconds):  # no extra task per request (wait_for makes one)
                return await self._send_request(method, params)
        except TimeoutError:
            raise UpstreamUnavailable(
                f"the {self.description} did not answer {method} within {seconds:g} s", ran=True
            ) from None

    async def _stop(self, proc: asyncio.subprocess.Process) -> None:
        if proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), self.stop_timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()

    async def aclose(self) -> None:
        self._closing = True
        if self._proc is not None:
            if self._proc.stdin is not None:
                self._proc.stdin.close()
            await self._stop(self._proc)
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
