"""Tool definition pins (``broker.core.tooldefs``): what a guard may list and call.

A guard reports the digests of the tool definitions its upstream lists (``sync``). For each
tool the registry knows for the calling server: first sight pins the observed digest (audit
``tool.pinned``: trust on first use, bounded by the registry, where an operator already named
the tool and its risk); a digest that differs from the pin is a change (audit ``tool.changed``,
once per new observed digest) and the tool is neither listed nor callable until an operator
re-pins it (``repin``, audit ``tool.repinned``). Tools the registry does not know are reported
``unknown`` and never pinned (their count is bounded by the registry, not by the upstream).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from broker.app.credentials import Broker
from broker.core.audit.record import AuditEvent, AuditEventName
from broker.core.errors import InvalidRequest, NotFound, Reason
from broker.core.registry import ContentTrust, ServerEntry
from broker.core.spiffe import PeerIdentity
from broker.core.tooldefs import PinStatus, ServerPolicy, SyncResult, ToolPin

MAX_TOOLS = 1000
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class PinView:
    server: str
    pin: ToolPin


def _check_digests(observed: Mapping[str, str]) -> None:
    if len(observed) > MAX_TOOLS:
        raise InvalidRequest("tools", f"at most {MAX_TOOLS} tools per sync")
    for name, sha in observed.items():
        if not name or len(name) > 128:
            raise InvalidRequest("tools.name", "1-128 characters")
        if len(sha) != 64 or not set(sha) <= _HEX:
            raise InvalidRequest("tools.sha256", f"tool {name[:128]!r}: 64 lowercase hex digits")


class ToolPins:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def _audit(
        self, event: AuditEventName, peer: PeerIdentity, server: str, tool: str, **extra: str
    ) -> None:
        self.broker.audit.record(
            AuditEvent(
                event=event,
                time=self.broker.clock.now(),
                actor=str(peer.spiffe_id),
                server=server,
                tool=tool,
                extra=extra,
            )
        )

    async def sync(self, peer: PeerIdentity, observed: Mapping[str, str]) -> SyncResult:
        """The calling guard's server (its own SPIFFE ID) observed these tool digests."""
        _check_digests(observed)
        server = self.broker.registry.server(str(peer.spiffe_id))
        known = {t: d for t, d in observed.items() if t in server.tools}
        before = await self.broker.store.tool_pins(server.spiffe_id)
        pins, newly = await self.broker.store.observe_tools(
            server.spiffe_id, known, self.broker.clock.now()
        )
        verdicts: dict[str, PinStatus] = {}
        for tool in observed:
            pin = pins.get(tool)
            if tool not in known or pin is None:
                verdicts[tool] = PinStatus.UNKNOWN
            elif tool in newly:
                verdicts[tool] = PinStatus.PINNED
                self._audit(
                    AuditEventName.TOOL_PINNED,
                    peer,
                    server.spiffe_id,
                    tool,
                    sha256=pin.pinned_sha256,
                )
            elif pin.changed:
                verdicts[tool] = PinStatus.CHANGED
                seen = before.get(tool)
                if seen is None or seen.observed_sha256 != pin.observed_sha256:
                    self._audit(
                        AuditEventName.TOOL_CHANGED,
                        peer,
                        server.spiffe_id,
                        tool,
                        pinned_sha256=pin.pinned_sha256,
                        observed_sha256=pin.observed_sha256,
                    )
            else:
                verdicts[tool] = PinStatus.MATCH
        return SyncResult(policy_of(server), verdicts)

    async def list(self, server_ref: str) -> tuple[ServerEntry, Sequence[ToolPin]]:
        server = self.broker.registry.server(server_ref)
        pins = await self.broker.store.tool_pins(server.spiffe_id)
        return server, [pins[t] for t in sorted(pins)]

    async def repin(
        self, peer: PeerIdentity, server_ref: str, tool: str, *, dry_run: bool
    ) -> tuple[ServerEntry, Sequence[ToolPin]]:
        """Pin ``tool`` (or every changed tool) of the server to its observed definition.
        Returns the pins as they are (or would be) afterwards."""
        server = self.broker.registry.server(server_ref)
        pins = await self.broker.store.tool_pins(server.spiffe_id)
        if tool and tool not in pins:
            raise NotFound(
                f"no pin for tool {tool[:128]!r} of {server.name}: a guard has not reported it",
                Reason.UNKNOWN_TOOL,
            )
        chosen = [pins[tool]] if tool else [p for p in pins.values() if p.changed]
        now = self.broker.clock.now()
        out: list[ToolPin] = []
        for pin in sorted(chosen, key=lambda p: p.tool):
            after = ToolPin(
                pin.tool, pin.observed_sha256, now, pin.observed_sha256, pin.observed_at
            )
            if not dry_run and pin.changed:
                await self.broker.store.set_tool_pin(
                    server.spiffe_id, pin.tool, pin.observed_sha256, now
                )
            self._audit(
                AuditEventName.TOOL_REPINNED,
                peer,
                server.spiffe_id,
                pin.tool,
                previous_sha256=pin.pinned_sha256,
                sha256=pin.observed_sha256,
                dry_run=str(dry_run).lower(),
            )
            out.append(after if pin.changed else pin)
        return server, out


def check_server_ref(ref: str) -> str:
    if not ref or len(ref) > 512:
        raise InvalidRequest("server", "a server's SPIFFE ID or registry name (1-512 characters)")
    return ref


def policy_of(server: ServerEntry) -> ServerPolicy:
    return ServerPolicy(
        name=server.name,
        trusted=server.content_trust is ContentTrust.TRUSTED,
        allow_resources="resources" in server.allow,
        allow_prompts="prompts" in server.allow,
    )
