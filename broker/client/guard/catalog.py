"""What the guard lets clients see and call: the upstream's tools, filtered by the broker's
registry and by the pins of their definitions (``broker.core.tooldefs``).

The guard reads the upstream's ``tools/list``, digests every definition and reports the digests
to the broker (``PinAuthority.sync_tools``: VerifierService.SyncToolDefinitions). The broker
answers per tool: ``match`` (the definition is the pinned one), ``pinned`` (first sight of a
registry tool: pinned now and audited ``tool.pinned``), ``changed`` (differs from its pin:
audited ``tool.changed``, a rug pull until an operator re-pins) or ``unknown`` (not in the
registry for this server). Only ``match`` and ``pinned`` tools are listed, and only they can be
called: listing matches calling.

Refreshed when the guard starts, when a client lists tools, when the upstream says its list
changed or restarted, and every ``resync_every`` seconds (so an operator's re-pin takes effect
without restarting the guard). Until the broker has answered once, nothing is listed or
callable (fail closed).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any, Protocol

from broker.client.guard.upstream import Upstream
from broker.core.errors import BrokerError
from broker.core.sanitizer import sanitize
from broker.core.tooldefs import CALLABLE, PinStatus, ServerPolicy, SyncResult, tool_digest

log = logging.getLogger("broker.guard")

MAX_PAGES = 100


class PinAuthority(Protocol):
    """The broker's side of tool pinning (VerifierService.SyncToolDefinitions)."""

    async def sync_tools(self, observed: Mapping[str, str]) -> SyncResult: ...


class ToolRefused(Exception):
    """A tool that is not listed cannot be called; ``reason`` is a broker reason code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


_TEXTS = frozenset({"description", "title"})


def _clean_texts(value: Any, tool: str) -> Any:
    """A tool definition as listed: its descriptions and titles (at any depth, the input
    schema's too) sanitized, as a model reads them; names, types and enums left exact. The pin
    digest is taken of the definition as the upstream sent it."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key in _TEXTS and isinstance(item, str):
                cleaned = sanitize(item)
                if cleaned.findings:
                    kinds = ", ".join(sorted({f.kind for f in cleaned.findings}))
                    log.warning("tool %r: its %s was sanitized (%s)", tool, key, kinds)
                out[key] = cleaned.text
            else:
                out[key] = _clean_texts(item, tool)
        return out
    if isinstance(value, list):
        return [_clean_texts(v, tool) for v in value]
    return value


class Catalog:
    def __init__(
        self,
        upstream: Upstream,
        authority: PinAuthority,
        *,
        resync_every: float = 30.0,
        list_timeout: float = 30.0,
    ) -> None:
        self.upstream = upstream
        self.authority = authority
        self.resync_every = resync_every
        self.list_timeout = list_timeout
        self.policy: ServerPolicy | None = None
        self._definitions: dict[str, dict[str, Any]] = {}
        self._digests: dict[str, str] = {}
        self._status: dict[str, PinStatus] = {}
        self._synced: dict[str, str] | None = None
        self._synced_at = 0.0
        self._lock = asyncio.Lock()
        self._generation = 0

    async def refresh(self, *, force_sync: bool = False) -> None:
        """Re-read the upstream's tools; ask the broker when a digest changed (or it is time).
        Concurrent callers share one refresh."""
        generation = self._generation
        async with self._lock:
            if self._generation != generation and not force_sync:
                return  # another caller refreshed while we waited
            definitions = await self._list_upstream()
            digests: dict[str, str] = {}
            for name, definition in definitions.items():
                try:
                    digests[name] = tool_digest(definition)
                except ValueError as exc:
                    log.warning("tool %r: definition not digestible, not listed: %s", name, exc)
            due = time.monotonic() - self._synced_at >= self.resync_every
            # while a tool is held back as changed, ask every time: a re-pin takes effect at once
            held = any(s is PinStatus.CHANGED for s in self._status.values())
            if force_sync or due or held or digests != self._synced:
                try:
                    result = await self.authority.sync_tools(digests)
                except BrokerError as exc:
                    self._unconfirmed(digests, exc)
                    return
                self.policy = result.server
                self._status = dict(result.tools)
                self._synced = digests
                self._synced_at = time.monotonic()
                for name, status in self._status.items():
                    if status is PinStatus.CHANGED:
                        log.warning(
                            "tool %r: definition differs from its pin: not listed, not callable "
                            "(review with `broker servers pins %s`)",
                            name,
                            result.server.name,
                        )
            self._definitions = {
                n: _clean_texts(d, n) for n, d in definitions.items() if n in digests
            }
            self._digests = digests
            self._generation += 1

    def _unconfirmed(self, digests: dict[str, str], exc: BrokerError) -> None:
        """The broker could not be asked: tools whose definition is the one it last confirmed
        stay as they were; a new or changed definition is held back until it can be asked."""
        synced = self._synced or {}
        for name in list(self._status):
            if digests.get(name) != synced.get(name):
                self._status[name] = PinStatus.UNKNOWN
        for name in digests:
            self._status.setdefault(name, PinStatus.UNKNOWN)
        self._definitions = {n: d for n, d in self._definitions.items() if n in digests}
        self._digests = digests
        log.warning("tool pins not synced with the broker (%s): changes held back", exc)

    async def _list_upstream(self) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        cursor: str | None = None
        for _ in range(MAX_PAGES):
            params: dict[str, Any] = {"cursor": cursor} if cursor else {}
            page = await self.upstream.request("tools/list", params, seconds=self.list_timeout)
            tools = page.get("tools") if isinstance(page, dict) else None
            for tool in tools if isinstance(tools, list) else []:
                if isinstance(tool, dict) and isinstance(tool.get("name"), str):
                    found[tool["name"]] = tool
            cursor = page.get("nextCursor") if isinstance(page, dict) else None
            if not isinstance(cursor, str) or not cursor:
                break
        return found

    def listing(self) -> list[dict[str, Any]]:
        """The definitions a client may see (and call), in the upstream's order."""
        return [d for n, d in self._definitions.items() if self._status.get(n) in CALLABLE]

    def status(self, tool: str) -> PinStatus | None:
        return self._status.get(tool) if tool in self._digests else None

    def check(self, tool: str) -> None:
        """Raise ``ToolRefused`` unless ``tool`` is listed (see the module doc)."""
        if self.policy is None:
            raise ToolRefused(
                "STALE", "the guard has not yet learned this server's tools from the broker"
            )
        status = self.status(tool)
        if status in CALLABLE:
            return
        if status is PinStatus.CHANGED:
            raise ToolRefused(
                "TOOL_CHANGED",
                f"tool {tool!r} changed since it was pinned; an operator must review it "
                f"(`broker servers pins {self.policy.name}`)",
            )
        if status is None and tool not in self._status:
            raise ToolRefused("UNKNOWN_TOOL", f"tool {tool!r} is not offered by this server")
        raise ToolRefused(
            "UNKNOWN_TOOL", f"tool {tool!r} is not in the broker's registry for this server"
        )
