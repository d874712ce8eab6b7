"""What every session of one gateway process shares: the config, the broker link, the
upstreams and their tool lists, and the decision log on stderr.

Decision lines are for the person at the terminal, one per tool call:

    ALLOWED files__read_text_file
    DENIED files__write_file: suspect-read-only
    PENDING deploy__deploy: approval apr_... (broker approvals approve apr_...)
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from broker.client.gateway.broker_link import BrokerLink
from broker.client.gateway.config import GatewayConfig
from broker.client.gateway.tls import TlsFiles
from broker.client.gateway.upstream import Upstream, UpstreamError

log = logging.getLogger("broker.gateway")
decisions = logging.getLogger("broker.gateway.decisions")

TOOLS_TTL = 30.0  # seconds an upstream's tool list is reused across sessions and listings


class Hub:
    def __init__(self, cfg: GatewayConfig, link: BrokerLink, tls: TlsFiles | None) -> None:
        self.cfg = cfg
        self.link = link
        self.upstreams: dict[str, Upstream] = {}
        for up in cfg.servers:
            self.upstreams[up.name] = Upstream(up, tls, expected_id=self.expected_id(up.ref))
        self._tools: dict[str, tuple[float, list[dict[str, Any]]]] = {}
        self._locks = {name: asyncio.Lock() for name in self.upstreams}
        self.preview_supported = True

    def expected_id(self, ref: str) -> str:
        if ref.startswith("spiffe://"):
            return ref
        return f"spiffe://{self.link.trust_domain}/mcp/{ref}"

    def warn_unguarded(self) -> None:
        for up in self.cfg.servers:
            if not up.guarded:
                log.warning(
                    "server %r (%s) is not guarded: it does not verify broker credentials, so "
                    "anyone who reaches it can call it without the broker; the gateway still "
                    "asks the broker before each call, sanitizes what it returns and reports "
                    "it for the task's taint",
                    up.name,
                    up.url,
                )

    async def tools_of(self, name: str, *, fresh: bool = False) -> list[dict[str, Any]]:
        """The upstream's tools (cached for TOOLS_TTL). Raises UpstreamError."""
        async with self._locks[name]:
            cached = self._tools.get(name)
            if cached is not None and not fresh and time.monotonic() - cached[0] < TOOLS_TTL:
                return cached[1]
            tools = await self.upstreams[name].list_tools()
            self._tools[name] = (time.monotonic(), tools)
            return tools

    async def all_tools(self) -> dict[str, list[dict[str, Any]]]:
        """Every upstream's tools; an upstream that fails is logged and contributes none."""
        names = list(self.upstreams)
        results = await asyncio.gather(*(self.tools_of(n) for n in names), return_exceptions=True)
        out: dict[str, list[dict[str, Any]]] = {}
        for name, result in zip(names, results, strict=True):
            if isinstance(result, UpstreamError):
                log.warning("cannot list the tools of %s: %s", name, result.message)
                out[name] = []
            elif isinstance(result, BaseException):
                log.warning("cannot list the tools of %s: %s", name, type(result).__name__)
                out[name] = []
            else:
                out[name] = result
        return out

    async def aclose(self) -> None:
        for up in self.upstreams.values():
            await up.aclose()
        await self.link.aclose()
