"""Broker credentials for servers built on the MCP Python SDK (``mcp`` 2.x, ``MCPServer``).

Two layers, because the SDK's bearer check is per HTTP request and server-wide while a broker
credential is for one call of one tool with one set of arguments:

1. ``BrokerTokenVerifier``: the SDK's ``TokenVerifier``. Every HTTP request to the MCP endpoint
   must carry ``Authorization: Bearer <credential>``, checked by ``Verifier.authenticate``
   (signature, issuer, time, revocation, staleness, and the audience: this server's SPIFFE ID).
   Missing or refused: HTTP 401 with ``WWW-Authenticate: Bearer ..., resource_metadata="..."``
   (RFC 9728, served by the SDK from ``AuthSettings.resource_server_url``). It does not consume
   the credential: one tool call is several HTTP requests (discovery, the call, a listing).
2. ``ToolGuard.tool()``: inside the tool call, the credential of THIS request
   (``get_access_token()``) must be for THIS tool and THESE arguments (the raw JSON arguments
   of the request, before any coercion), and is consumed (single use). Refused: a JSON-RPC
   error ``CREDENTIAL_REJECTED`` whose data carries the reason. Then the tool runs, its text
   output goes through ``broker.core.sanitizer.sanitize``, and the outcome is reported to the broker
   (content trust from the registry unless given, suspect findings), which raises the task's
   taint. If the outcome cannot be reported, the result is withheld (unless the guard was told
   the content is trusted and the sanitizer found nothing suspect): the taint must rise before
   the model reads it.

    guard = ToolGuard(verifier, url="http://127.0.0.1:8101/mcp")
    mcp = guard.server("docs")

    @guard.tool()
    async def search_docs(query: str) -> str: ...
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import typing
from collections.abc import Callable, Collection
from typing import Any, TypeVar

import anyio.to_thread
import orjson
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from starlette.applications import Starlette
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from broker.client.mcp.enforce import Enforcer, Withheld
from broker.client.mcp.resource import (
    challenge,
    metadata_document,
    metadata_path,
    unauthorized_body,
)
from broker.client.mcp.wire import CREDENTIAL_REJECTED, DOMAIN
from broker.client.verifier import VerifiedCall, Verifier
from broker.core.errors import Reason, Unauthenticated

log = logging.getLogger("broker.client.mcp")

F = TypeVar("F", bound=Callable[..., Any])

_CTX_PARAM = "broker_ctx"


# The refusal of the current HTTP request's credential, for RefusalReasons (set by the token
# verifier, which the SDK awaits in the request's own context).
_REFUSAL: contextvars.ContextVar[Unauthenticated | None] = contextvars.ContextVar(
    "broker_mcp_refusal", default=None
)


class BrokerTokenVerifier:
    """``mcp.server.auth.provider.TokenVerifier`` backed by a broker ``Verifier``."""

    def __init__(self, verifier: Verifier) -> None:
        self.verifier = verifier

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            claims = await self.verifier.authenticate(token)
        except Unauthenticated as exc:
            log.info("bearer credential refused: %s", exc.reason.value)
            _REFUSAL.set(exc)
            return None
        return AccessToken(
            token=token,
            client_id=claims.sub,
            scopes=[],
            expires_at=claims.exp,
            resource=claims.aud,
            subject=claims.sub,
            claims={"iss": claims.iss, "task": claims.task, "jti": claims.jti},
        )


class RefusalReasons:
    """ASGI middleware in front of the SDK's auth (``broker.client.mcp.resource``):

    - serves this server's RFC 9728 metadata itself, listing no authorization server (the SDK
      would advertise ``issuer_url``, and the broker is not an OAuth authorization server);
    - a 401 names the reason: in the RFC 6750 ``error_description`` of ``WWW-Authenticate``
      (``"REVOKED: task ... has ended"``, ``"NO_CREDENTIAL: ..."``) and in a JSON-RPC error
      body (``CREDENTIAL_REJECTED`` with ``data.reason``) instead of the SDK's generic text.
    """

    def __init__(self, app: ASGIApp, resource_url: str, name: str) -> None:
        self.app = app
        self.resource_url = resource_url
        self.name = name
        self.metadata_path = metadata_path(resource_url)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == self.metadata_path and scope["method"] == "GET":
            body = orjson.dumps(metadata_document(self.resource_url, self.name))
            await _send_json(send, 200, body, [])
            return
        reset = _REFUSAL.set(None)
        held: list[Message] = []

        async def send_reason(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 401:
                held.append(message)  # replaced, with its body, when the body comes
                return
            if held and message["type"] == "http.response.body":
                if message.get("more_body"):
                    return
                refusal = _REFUSAL.get()
                if refusal is None:
                    refusal = Unauthenticated(
                        "no credential: send `Authorization: Bearer <credential>`",
                        Reason.NO_CREDENTIAL,
                    )
                text = str(refusal)
                headers = [
                    (k, v)
                    for k, v in held[0].get("headers", [])
                    if k.lower() not in (b"www-authenticate", b"content-length", b"content-type")
                ]
                headers.append(
                    (
                        b"www-authenticate",
                        challenge(
                            self.resource_url,
                            text,
                            invalid=refusal.reason is not Reason.NO_CREDENTIAL,
                        ),
                    )
                )
                body = orjson.dumps(
                    unauthorized_body(
                        None, refusal.reason.value, refusal.message, self.resource_url
                    )
                )
                await _send_json(send, 401, body, headers)
                return
            await send(message)

        try:
            await self.app(scope, receive, send_reason)
        finally:
            _REFUSAL.reset(reset)


async def _send_json(send: Send, status: int, body: bytes, headers: list[Any]) -> None:
    headers = [
        *headers,
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def rejection(exc: Unauthenticated) -> MCPError:
    return MCPError(
        CREDENTIAL_REJECTED,
        str(exc),
        {"domain": DOMAIN, "reason": exc.reason.value},
    )


class ToolGuard:
    """Protects the tools of one MCP server with broker credentials (see the module doc).

    ``url``: this server's MCP endpoint as clients reach it (the RFC 9728 resource; the token's
    audience is checked against the server's SPIFFE ID instead, since it is not a URL).
    ``issuer_url``: kept for compatibility, no longer advertised (the metadata lists no
    authorization server: see ``broker.client.mcp.resource``).
    ``trusted``: the content trust reported for every tool (None: the broker's registry says).
    ``allowed_hosts``: hosts links and images in the output may point at.
    """

    def __init__(
        self,
        verifier: Verifier,
        *,
        url: str,
        issuer_url: str | None = None,
        trusted: bool | None = None,
        allowed_hosts: Collection[str] = (),
    ) -> None:
        self.verifier = verifier
        self.url = url
        self.issuer_url = issuer_url or "https://broker.invalid"
        self.trusted = trusted
        self.allowed_hosts = tuple(allowed_hosts)
        self.token_verifier = BrokerTokenVerifier(verifier)
        self.enforcer = Enforcer(verifier, allowed_hosts=self.allowed_hosts)
        self.mcp: MCPServer[Any] | None = None

    def auth_settings(self) -> AuthSettings:
        """The SDK's auth settings: bearer required, RFC 9728 metadata for ``url``. The SDK's
        resource check stays off: broker tokens name a SPIFFE ID, which the verifier checks."""
        return AuthSettings(
            issuer_url=self.issuer_url,  # type: ignore[arg-type]  # pydantic parses the str
            resource_server_url=self.url,  # type: ignore[arg-type]
            validate_token_resource=False,
        )

    def streamable_http_app(self, mcp: MCPServer[Any] | None = None, **kwargs: Any) -> Starlette:
        """``mcp.streamable_http_app(**kwargs)`` with ``RefusalReasons`` added."""
        server = mcp or self.mcp
        if server is None:
            raise TypeError("pass the MCPServer, or create it with guard.server(...)")
        app = server.streamable_http_app(**kwargs)
        app.add_middleware(RefusalReasons, resource_url=self.url, name=f"MCP server {server.name}")
        return app

    def server(self, name: str, **kwargs: Any) -> MCPServer[Any]:
        """An ``MCPServer`` wired to this guard (``token_verifier`` and ``auth``)."""
        self.mcp = MCPServer(
            name, token_verifier=self.token_verifier, auth=self.auth_settings(), **kwargs
        )
        return self.mcp

    # -- the per-tool guard --------------------------------------------------------------------

    def tool(
        self,
        mcp: MCPServer[Any] | None = None,
        *,
        name: str | None = None,
        trusted: bool | None = None,
        **tool_kwargs: Any,
    ) -> Callable[[F], F]:
        """Register the decorated function as a tool of ``mcp`` (default: ``server()``'s),
        guarded: credential for this call checked and consumed first, output sanitized and
        reported after. Takes ``mcp.tool()``'s keyword arguments too."""
        server = mcp or self.mcp
        if server is None:
            raise TypeError("pass the MCPServer, or create it with guard.server(...)")

        def decorate(fn: F) -> F:
            tool_name = name or fn.__name__
            server.add_tool(
                self.guarded(fn, tool_name, trusted=trusted), name=tool_name, **tool_kwargs
            )
            return fn

        return decorate

    def guarded(
        self, fn: Callable[..., Any], tool: str, *, trusted: bool | None = None
    ) -> Callable[..., Any]:
        """``fn`` wrapped by the guard, with ``fn``'s signature (plus a Context parameter the
        SDK fills in, unless ``fn`` already has one) so the SDK derives the same schema."""
        sig = inspect.signature(fn, eval_str=True)
        hints = typing.get_type_hints(fn, include_extras=True)
        own_ctx = next((p for p, h in hints.items() if _is_context(h)), None)
        ctx_name = own_ctx or _CTX_PARAM
        params = list(sig.parameters.values())
        if own_ctx is None:
            extra = inspect.Parameter(ctx_name, inspect.Parameter.KEYWORD_ONLY, annotation=Context)
            at = next(
                (i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_KEYWORD),
                len(params),
            )
            params.insert(at, extra)
        is_async = inspect.iscoroutinefunction(fn)
        trust = self.trusted if trusted is None else trusted

        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            ctx: Context[Any, Any] = kwargs[ctx_name] if own_ctx else kwargs.pop(ctx_name)
            call = await self.admit(ctx, tool)
            try:
                if is_async:
                    result = await fn(*args, **kwargs)
                else:
                    result = await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))
            except Exception:
                await self._report_failure(call, trust)
                raise
            return await self.release(call, result, trusted=trust)

        wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {**hints, ctx_name: Context}
        for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
            setattr(wrapper, attr, getattr(fn, attr, None))
        return wrapper

    async def admit(self, ctx: Context[Any, Any], tool: str) -> VerifiedCall:
        """Check and consume the credential of the current request for ``tool`` with the
        request's raw arguments (``broker.client.mcp.enforce``). Raises
        ``MCPError(CREDENTIAL_REJECTED)``."""
        access = get_access_token()
        params = ctx.request_context.params or {}
        try:
            return await self.enforcer.admit(
                access.token if access is not None else None,
                tool=tool,
                arguments=params.get("arguments") or {},
            )
        except Unauthenticated as exc:
            raise rejection(exc) from None

    async def release(self, call: VerifiedCall, result: Any, *, trusted: bool | None) -> Any:
        """Sanitize ``result``'s text, report the outcome, return the cleaned result."""
        try:
            return await self.enforcer.release(call, result, trusted=trusted)
        except Withheld as exc:
            raise ToolError(str(exc)) from None

    async def _report_failure(self, call: VerifiedCall, trusted: bool | None) -> None:
        await self.enforcer.report_failure(call, trusted)


def _is_context(hint: Any) -> bool:
    if inspect.isclass(hint) and issubclass(hint, Context):
        return True
    return any(inspect.isclass(a) and issubclass(a, Context) for a in typing.get_args(hint))
