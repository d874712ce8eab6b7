"""Assembling a guard: the verifier (offline by default), the upstream, the catalog, the ASGI
app and its HTTP(S) listener. ``broker guard`` (broker/cli/guard.py) runs one until a signal;
tests and the bench run one in their own event loop:

    async with Guard(GuardOptions(broker="127.0.0.1:7443", ca=..., cert="mcp-files.crt",
                                  key=..., upstream_command=["node", "server.js", "/srv"])) as g:
        print(g.url)                        # http://127.0.0.1:PORT/mcp
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import uvicorn

from broker.client.guard.app import GuardApp
from broker.client.guard.catalog import Catalog
from broker.client.guard.tls import PeerCertH11Protocol, server_ssl_options
from broker.client.guard.upstream import StdioUpstream, Upstream
from broker.client.guard.upstream_http import HttpUpstream
from broker.client.mcp.enforce import Enforcer
from broker.client.sdk.channel import WorkloadCredentials
from broker.client.verifier import BaseVerifier, OfflineVerifier, OnlineVerifier, VerifierSettings
from broker.core.tooldefs import SyncResult

log = logging.getLogger("broker.guard")


@dataclass(frozen=True)
class GuardOptions:
    broker: str  # HOST:PORT of the broker
    ca: Path
    cert: Path  # this server's X.509-SVID: spiffe://TD/mcp/NAME
    key: Path
    listen: str = "127.0.0.1:0"
    tls: bool = False
    public_url: str | None = None  # where clients reach /mcp (default: from --listen)
    online: bool = False
    upstream_url: str | None = None
    upstream_command: Sequence[str] = ()
    upstream_env: Mapping[str, str] | None = None
    upstream_cwd: str | None = None
    settings: VerifierSettings = field(default_factory=VerifierSettings)
    start_timeout: float = 30.0
    resync_every: float = 30.0
    allowed_hosts: Sequence[str] = ()
    backoff_initial: float = 0.2


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling: the guard's owner (the CLI, a test) decides."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class VerifierPins:
    """``PinAuthority`` over the verifier's connection (VerifierService.SyncToolDefinitions)."""

    def __init__(self, verifier: BaseVerifier) -> None:
        self.verifier = verifier

    async def sync_tools(self, observed: Mapping[str, str]) -> SyncResult:
        return await self.verifier.sync_tool_definitions(observed)


def split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--listen {listen!r}: give HOST:PORT (port 0: any free port)")
    return host.strip("[]") or "127.0.0.1", int(port)


class Guard:
    def __init__(self, options: GuardOptions) -> None:
        if (options.upstream_url is None) == (not options.upstream_command):
            raise ValueError("give exactly one upstream: --upstream URL or -- COMMAND [ARGS...]")
        self.options = options
        credentials = WorkloadCredentials.from_files(options.ca, options.cert, options.key)
        identity = credentials.identity()
        self.server_id = str(identity.spiffe_id)
        self.trust_domain = identity.spiffe_id.trust_domain
        kind = OnlineVerifier if options.online else OfflineVerifier
        self.verifier: BaseVerifier = kind(
            options.broker, credentials=credentials, settings=options.settings
        )
        self.upstream: Upstream
        if options.upstream_url is not None:
            self.upstream = HttpUpstream(options.upstream_url)
        else:
            self.upstream = StdioUpstream(
                options.upstream_command,
                env=dict(options.upstream_env) if options.upstream_env is not None else None,
                cwd=options.upstream_cwd,
                backoff_initial=options.backoff_initial,
            )
        self.catalog = Catalog(
            self.upstream, VerifierPins(self.verifier), resync_every=options.resync_every
        )
        self.upstream.on_notification = self._upstream_notification
        host, port = split_listen(options.listen)
        self._sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.host, self.port = host, self._sock.getsockname()[1]
        scheme = "https" if options.tls else "http"
        shown = f"[{host}]" if ":" in host else host
        self.url = options.public_url or f"{scheme}://{shown}:{self.port}/mcp"
        self.app = GuardApp(
            enforcer=Enforcer(
                self.verifier, allowed_hosts=options.allowed_hosts, report_trusted_later=True
            ),
            upstream=self.upstream,
            catalog=self.catalog,
            resource_url=self.url,
            trust_domain=self.trust_domain,
            server_id=self.server_id,
        )
        self._server: uvicorn.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._was_ready = False
        self._watcher: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return (
            f"Guard({self.server_id!r}, url={self.url!r}, upstream={self.upstream.description!r})"
        )

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _upstream_notification(self, method: str, params: dict[str, Any]) -> None:
        if method == "notifications/tools/list_changed":
            self._spawn(self._refresh_quietly(force=False))

    async def _refresh_quietly(self, *, force: bool) -> None:
        try:
            await self.catalog.refresh(force_sync=force)
        except Exception as exc:  # noqa: BLE001 - logged; the catalog stays as it was
            log.warning("tool catalog not refreshed: %s", exc)

    async def _watch(self) -> None:
        """Refresh the catalog when the upstream comes back and every ``resync_every``."""
        waited = 0.0
        while True:
            await asyncio.sleep(0.2)
            waited += 0.2
            if not self.upstream.ready and waited >= 1.0:
                waited = 0.0
                await self.upstream.reconnect()
            ready = self.upstream.ready
            if (ready and not self._was_ready) or (ready and waited >= self.options.resync_every):
                waited = 0.0
                await self._refresh_quietly(force=False)
            self._was_ready = ready

    async def start(self) -> None:
        await self.verifier.start()
        await self.upstream.start()
        try:
            await self.upstream.wait_ready(self.options.start_timeout)
            await self.catalog.refresh(force_sync=True)
            self._was_ready = True
        except Exception as exc:  # noqa: BLE001 - serve anyway: refusals say why meanwhile
            log.warning(
                "%s not ready at start (%s); serving, refusing calls until it is",
                self.upstream.description,
                exc,
            )
        ssl: dict[str, Any] = (
            server_ssl_options(self.options.cert, self.options.key, self.options.ca)
            if self.options.tls
            else {}
        )
        config = uvicorn.Config(
            self.app,
            http=PeerCertH11Protocol,
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
            **ssl,
        )
        self._server = _QuietServer(config)
        self._spawn(self._server.serve(sockets=[self._sock]))
        while not self._server.started:  # noqa: ASYNC110 - uvicorn offers a flag, no event
            await asyncio.sleep(0.01)
        self._watcher = asyncio.get_running_loop().create_task(self._watch())
        log.info(
            "guard for %s serving %s in front of %s (%s verification)",
            self.server_id,
            self.url,
            self.upstream.description,
            self.verifier.mode,
        )

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._watcher is not None:
            self._watcher.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
        for task in list(self._tasks):
            task.cancel()
        await self.upstream.aclose()
        await self.app.enforcer.flush()
        await self.verifier.aclose()
        with contextlib.suppress(OSError):
            self._sock.close()

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
