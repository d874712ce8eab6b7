"""A streamable HTTP upstream (MCP 2025-11-25 transport) for the guard: see
``broker.client.guard.upstream`` for what every upstream does."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from typing import Any

import httpx2
import orjson

from broker.client.guard.jsonrpc import LATEST_HANDSHAKE
from broker.client.guard.upstream import (
    Upstream,
    UpstreamError,
    UpstreamUnavailable,
    answer_upstream_request,
    initialize_params,
)

log = logging.getLogger("broker.guard.upstream")


class HttpUpstream(Upstream):
    """A server reached over streamable HTTP (MCP 2025-11-25 transport): one session that the
    guard opens (``initialize``) and reopens when the server forgets it (HTTP 404). Answers come
    as JSON or as an SSE stream; the guard reads the stream to the response to its request.

    A request that could not be sent (connection refused) fails with ``ran=False`` and marks the
    upstream down; the next request tries to reconnect.
    """

    def __init__(
        self,
        url: str,
        *,
        http: Any = None,
        init_timeout: float = 30.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.url = url
        self.description = f"HTTP upstream {url}"
        self.init_timeout = init_timeout
        self._own_http = http is None
        self._http: httpx2.AsyncClient = http or httpx2.AsyncClient(
            timeout=httpx2.Timeout(60.0, connect=5.0), headers=headers or {}
        )
        self._session: str | None = None
        self._version = LATEST_HANDSHAKE
        self._ids = itertools.count(1)
        self._ready = False
        self._connect_lock = asyncio.Lock()

    @property
    def ready(self) -> bool:
        return self._ready

    async def start(self) -> None:
        with contextlib.suppress(UpstreamUnavailable, UpstreamError):
            await self._connect()

    async def reconnect(self) -> None:
        await self.start()

    async def wait_ready(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._ready:
            with contextlib.suppress(UpstreamUnavailable):
                await self._connect()
            if self._ready:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the {self.description} did not answer initialize")
            await asyncio.sleep(0.1)

    async def _connect(self) -> None:
        async with self._connect_lock:
            if self._ready:
                return
            self._session = None
            result, session = await self._post(
                {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": initialize_params()},
                seconds=self.init_timeout,
            )
            if not isinstance(result, dict):
                raise UpstreamUnavailable(f"the {self.description} refused initialize", ran=False)
            self.init_result = result
            self._session = session
            version = result.get("protocolVersion")
            self._version = version if isinstance(version, str) else LATEST_HANDSHAKE
            await self._post({"jsonrpc": "2.0", "method": "notifications/initialized"})
            self._ready = True
            log.info("%s: connected (session %s)", self.description, "yes" if session else "no")

    def _headers(self) -> dict[str, str]:
        headers = {
            "accept": "application/json, text/event-stream",
            "content-type": "application/json",
            "mcp-protocol-version": self._version,
        }
        if self._session:
            headers["mcp-session-id"] = self._session
        return headers

    async def _post(self, message: dict[str, Any], seconds: float = 60.0) -> tuple[Any, str | None]:
        """POST one message; the result of a request (or None for a notification) and the
        session id the server named. Raises UpstreamError / UpstreamUnavailable."""
        try:
            async with self._http.stream(
                "POST",
                self.url,
                content=orjson.dumps(message),
                headers=self._headers(),
                timeout=seconds,
            ) as response:
                session = response.headers.get("mcp-session-id")
                if response.status_code == 404 and self._session:
                    self._ready = False
                    raise _SessionLost
                if "id" not in message:
                    return None, session
                kind = response.headers.get("content-type", "")
                if kind.startswith("text/event-stream"):
                    reply = await _reply_from_sse(response, message["id"], self)
                else:
                    body = await response.aread()
                    try:
                        reply = orjson.loads(body)
                    except orjson.JSONDecodeError:
                        raise UpstreamUnavailable(
                            f"the {self.description} answered HTTP {response.status_code} "
                            "without a JSON-RPC message",
                            ran=response.status_code < 400,
                        ) from None
        except httpx2.ConnectError as exc:
            self._ready = False
            raise UpstreamUnavailable(
                f"the {self.description} cannot be reached: {exc}", ran=False
            ) from None
        except httpx2.TimeoutException:
            raise UpstreamUnavailable(
                f"the {self.description} did not answer within {seconds:g} s", ran=True
            ) from None
        except httpx2.HTTPError as exc:
            self._ready = False
            raise UpstreamUnavailable(f"the {self.description} failed: {exc}", ran=True) from None
        if not isinstance(reply, dict):
            raise UpstreamUnavailable(f"the {self.description} sent no answer", ran=True)
        if "error" in reply:
            err = reply["error"]
            raise UpstreamError(err if isinstance(err, dict) else {})
        return reply.get("result"), session

    async def request(self, method: str, params: dict[str, Any], seconds: float = 60.0) -> Any:
        if not self._ready:
            try:
                await self._connect()
            except UpstreamError as exc:
                raise UpstreamUnavailable(
                    f"the {self.description} refused initialize: {exc}", ran=False
                ) from None
        message = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
        for attempt in range(2):
            try:
                result, _ = await self._post(message, seconds)
                return result
            except _SessionLost:
                if attempt:
                    break
                await self._connect()  # the server forgot the session: the request never ran
        raise UpstreamUnavailable(f"the {self.description} keeps losing its session", ran=False)

    async def handle_server_message(self, message: dict[str, Any]) -> None:
        if "method" in message and "id" in message:
            with contextlib.suppress(UpstreamUnavailable, UpstreamError, _SessionLost):
                await self._post(answer_upstream_request(message))
        elif "method" in message:
            self._notify(message)

    async def aclose(self) -> None:
        if self._session:
            with contextlib.suppress(Exception):
                await self._http.delete(self.url, headers=self._headers(), timeout=2.0)
        if self._own_http:
            await self._http.aclose()


class _SessionLost(Exception):
    pass


async def _reply_from_sse(response: Any, request_id: Any, upstream: HttpUpstream) -> Any:
    """Read SSE events (``data:`` lines) until the response to ``request_id``; notifications
    and the server's own requests on the way are handled, not returned."""
    data: list[str] = []
    async for line in response.aiter_lines():
        if line.startswith("data:"):
            data.append(line[5:].lstrip(" "))
            continue
        if line or not data:
            continue
        text, data = "\n".join(data), []
        try:
            message = orjson.loads(text)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(message, dict):
            continue
        if "method" in message:
            await upstream.handle_server_message(message)
        elif message.get("id") == request_id:
            return message
    raise UpstreamUnavailable(
        f"the {upstream.description} closed the stream before answering", ran=True
    )
