"""Credential verification for MCP servers: offline (local, revocations pushed by the broker)
or online (the broker verifies and consumes), behind one interface.

    async with OfflineVerifier("127.0.0.1:7443", ca=..., cert="mcp-docs.crt", key=...) as v:
        call = await v.verify(token, tool="search_docs", arguments={"query": "retry"})
        ...
        await v.report_outcome(call, findings=[("instruction", "ignore previous ...")])

Both raise ``broker.core.errors.Unauthenticated`` with the broker's reason codes, plus ``STALE``
when revocations cannot be known to be current (offline: the feed has been silent longer than its
bound; online: the broker cannot be reached). See docs/mcp.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from broker.client.verifier.base import BaseVerifier, VerifiedCall, VerifierSettings
from broker.client.verifier.offline import OfflineVerifier
from broker.client.verifier.online import OnlineVerifier
from broker.core.model import Taint
from broker.core.tokens.claims import TokenClaims

__all__ = [
    "BaseVerifier",
    "OfflineVerifier",
    "OnlineVerifier",
    "VerifiedCall",
    "Verifier",
    "VerifierSettings",
]


class Verifier(Protocol):
    """What the MCP integration needs from a verifier (both modes implement it)."""

    identity: str  # this server's SPIFFE ID: the audience
    mode: str

    async def authenticate(self, token: str) -> TokenClaims:
        """Every check but the call binding and single use (the HTTP layer)."""
        ...

    async def verify(
        self,
        token: str,
        *,
        tool: str,
        arguments: Mapping[str, Any] | None = None,
        args_sha256: str | None = None,
        presenter_cert_sha256: str | None = None,
    ) -> VerifiedCall:
        """Every check, for this tool call; consumes the credential."""
        ...

    async def report_outcome(
        self,
        call: VerifiedCall | str,
        *,
        succeeded: bool = True,
        result_sha256: str = "",
        trusted: bool | None = None,
        findings: Iterable[tuple[str, str]] = (),
    ) -> Taint: ...
