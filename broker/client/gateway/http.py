"""The streamable HTTP transport (MCP 2025-11-25 "Streamable HTTP", and 2026-07-28 stateless).

    POST   /mcp  a JSON-RPC message; the answer is application/json (202 for notifications)
    GET    /mcp  the session's server-to-client stream (text/event-stream): tools/list_changed
    DELETE /mcp  ends the session (and its task)

A task per session. ``initialize`` opens a session whose id (``Mcp-Session-Id``) is 256 random
bits. A 2026-07-28 client has no protocol session: its first request gets a gateway-issued
handle in a cookie (HttpOnly, SameSite=Strict), and requests presenting it share a session and
a task. Neither is something the model sees, copies or can guess. A session idle for
``idle_timeout`` seconds, or deleted, ends its task; so does stopping the gateway (SIGINT,
SIGTERM: EndTask for every session first, then the listener closes).

The listener mints credentials for whoever reaches it, so it binds loopback unless the config
names a bearer secret (``http_token_file``) that every request must carry, and it validates
``Host`` and ``Origin`` against DNS rebinding (MCP transport security): 421 / 403.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import secrets
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from broker.client.gateway import wire
from broker.client.gateway.dispatch import Dispatcher
from broker.client.gateway.hub import Hub
from broker.client.gateway.session import Session
from broker.core.errors import ConfigError

log = logging.getLogger("broker.gateway")

COOKIE = "broker_gateway_handle"
MAX_BODY = 16 * 1024 * 1024
MAX_SESSIONS = 1000
END_TIMEOUT = 0.25


@dataclass
class _Entry:
    session: Session
    dispatcher: Dispatcher
    queue: asyncio.Queue[dict[str, Any] | None] = field(default_factory=asyncio.Queue)


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError("listen", f"expected HOST:PORT, got {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class GatewayHttp:
    def __init__(self, hub: Hub, host: str, port: int, token: str = "") -> None:
        self.hub = hub
        self.host = host
        self.port = port
        self._token = token
        self.sessions: dict[str, _Entry] = {}
        self.stopping = False

    # -- checks -------------------------------------------------------------------------------

    def _hosts(self) -> set[str]:
        names = {self.host, "127.0.0.1", "localhost", "[::1]"}
        return {f"{h}:{self.port}" for h in names} | names

    def _check(self, request: Request) -> Response | None:
        if request.headers.get("host", "") not in self._hosts():
            return Response("Invalid Host header", status_code=421)
        origin = request.headers.get("origin")
        if origin is not None and not self._origin_ok(origin):
            return Response("Invalid Origin header", status_code=403)
        if self._token:
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), self._token.encode()):
                return Response(
                    "the gateway needs its bearer secret",
                    status_code=401,
                    headers={"WWW-Authenticate": 'Bearer realm="broker-gateway"'},
                )
        return None

    def _origin_ok(self, origin: str) -> bool:
        if origin in self.hub.cfg.allowed_origins:
            return True
        for scheme in ("http://", "https://"):
            if origin.startswith(scheme):
                rest = origin[len(scheme) :]
                host = (
                    rest.rsplit(":", 1)[0] if not rest.startswith("[") else rest.split("]")[0] + "]"
                )
                return host in ("127.0.0.1", "localhost", "[::1]")
        return False

    # -- sessions -----------------------------------------------------------------------------

    def _new(self) -> tuple[str, _Entry]:
        if len(self.sessions) >= MAX_SESSIONS:
            raise _Full
        sid = secrets.token_urlsafe(32)
        session = Session(self.hub)
        entry = _Entry(session, Dispatcher(session))

        async def notify(msg: dict[str, Any]) -> None:
            entry.queue.put_nowait(msg)

        entry.session.notify = notify
        self.sessions[sid] = entry
        return sid, entry

    async def end(self, sid: str, outcome: str, deadline: float | None = None) -> None:
        entry = self.sessions.pop(sid, None)
        if entry is not None:
            entry.queue.put_nowait(None)
            await entry.session.end(outcome, deadline=deadline)

    async def end_all(self, outcome: str) -> None:
        await asyncio.gather(
            *(self.end(sid, outcome, deadline=END_TIMEOUT) for sid in list(self.sessions))
        )

    async def reap(self) -> None:
        idle = self.hub.cfg.idle_timeout
        while True:
            await asyncio.sleep(min(5.0, max(0.05, idle / 4)))
            now = time.monotonic()
            for sid, entry in list(self.sessions.items()):
                if now - entry.session.last_used > idle:
                    log.info("session idle for over %g s: ending it", idle)
                    await self.end(sid, f"session idle for over {idle:g} s")

    # -- endpoints ----------------------------------------------------------------------------

    async def mcp(self, request: Request) -> Response:
        refused = self._check(request)
        if refused is not None:
            return refused
        if request.method == "POST":
            return await self._post(request)
        sid = request.headers.get("mcp-session-id", "")
        entry = self.sessions.get(sid) if sid else None
        if request.method == "DELETE":
            if entry is None:
                return Response("no such session", status_code=404)
            await self.end(sid, "client closed the session")
            return Response(status_code=200)
        if entry is None:  # GET without a session: no standalone stream
            return Response("GET needs an Mcp-Session-Id", status_code=405 if not sid else 404)
        return StreamingResponse(self._stream(entry), media_type="text/event-stream")

    async def _stream(self, entry: _Entry) -> AsyncIterator[bytes]:
        while True:
            msg = await entry.queue.get()
            if msg is None:
                return
            yield f"event: message\ndata: {json.dumps(msg)}\n\n".encode()

    async def _post(self, request: Request) -> Response:
        if not request.headers.get("content-type", "").lower().startswith("application/json"):
            return Response("Content-Type must be application/json", status_code=415)
        body = await request.body()
        if len(body) > MAX_BODY:
            return Response("request too large", status_code=413)
        try:
            msg = json.loads(body)
        except ValueError:
            return JSONResponse(wire.error(None, wire.PARSE_ERROR, "not JSON"), status_code=400)
        if not isinstance(msg, dict):
            return JSONResponse(
                wire.error(None, wire.INVALID_REQUEST, "batches are not supported"), status_code=400
            )
        sid = request.headers.get("mcp-session-id", "")
        handle = request.cookies.get(COOKIE, "")
        new_handle = ""
        try:
            if msg.get("method") == "initialize":
                sid, entry = self._new()
            elif sid:
                found = self.sessions.get(sid)
                if found is None:
                    return JSONResponse(
                        wire.error(msg.get("id"), -32001, "Session not found"), status_code=404
                    )
                entry = found
            elif (
                wire.request_version(msg.get("params")) is not None
                or msg.get("method") == "server/discover"
            ):
                found = self.sessions.get(f"h:{handle}") if handle else None
                if found is None:
                    new_handle = secrets.token_urlsafe(32)
                    key, entry = self._new()
                    self.sessions[f"h:{new_handle}"] = self.sessions.pop(key)
                else:
                    entry = found
            else:
                return JSONResponse(
                    wire.error(
                        msg.get("id"), -32000, "Bad Request: no Mcp-Session-Id (initialize first)"
                    ),
                    status_code=400,
                )
        except _Full:
            return JSONResponse(
                wire.error(msg.get("id"), -32000, "too many sessions"), status_code=503
            )
        entry.session.last_used = time.monotonic()
        answer = await entry.dispatcher.handle(msg)
        headers = {"mcp-session-id": sid} if msg.get("method") == "initialize" else {}
        resp: Response
        if answer is None:
            resp = Response(status_code=202, headers=headers)
        else:
            resp = JSONResponse(answer, headers=headers)
        if new_handle:
            resp.set_cookie(
                COOKIE, new_handle, httponly=True, samesite="strict", path="/mcp", secure=False
            )
        return resp


class _Full(Exception):
    pass


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the gateway ends its tasks first."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def build_app(gw: GatewayHttp) -> Starlette:
    return Starlette(routes=[Route("/mcp", gw.mcp, methods=["GET", "POST", "DELETE"])])


async def serve_http(hub: Hub, listen: str) -> None:
    host, port = parse_listen(listen)
    token = hub.cfg.http_token()
    if not token and not is_loopback(host):
        raise ConfigError(
            "listen",
            f"{host} is not a loopback address: the gateway mints credentials for whoever "
            "reaches it; bind 127.0.0.1, or set http_token_file in the config",
        )
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError("listen", f"cannot listen on {listen}: {exc.strerror}") from None
    port = sock.getsockname()[1]
    gw = GatewayHttp(hub, host, port, token)
    config = uvicorn.Config(
        build_app(gw), log_level="warning", lifespan="off", access_log=False, timeout_keep_alive=30
    )
    server = _Server(config)
    loop = asyncio.get_running_loop()
    reaper = loop.create_task(gw.reap())
    background: set[asyncio.Task[None]] = set()

    def stop(sig: signal.Signals) -> None:
        if gw.stopping:
            server.force_exit = True
            return
        gw.stopping = True

        async def finish() -> None:
            await gw.end_all(f"gateway stopped ({sig.name})")
            server.should_exit = True

        background.add(loop.create_task(finish()))

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop, sig)
    shown = f"[{host}]" if ":" in host else host
    log.info("listening on http://%s:%d/mcp", shown, port)
    try:
        await server.serve(sockets=[sock])
    finally:
        reaper.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await gw.end_all("gateway stopped")
