"""MCP tool definitions as the broker sees them: the digest a definition is pinned by, and a
first guess of a tool's risk from its MCP annotations. Pure.

The pin digest is the lowercase hex SHA-256 of the RFC 8785 (JSON Canonicalization Scheme)
serialization of ``{"name", "description", "inputSchema", "annotations"}`` of the definition
(absent members left out): what a model reads to decide to call a tool, and what a server could
change under a name the operator already approved (a "rug pull"). ``title``, ``icons`` and
``_meta`` are presentation and are not pinned; ``outputSchema`` only shapes results.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import rfc8785

PINNED_MEMBERS = ("name", "description", "inputSchema", "annotations")


def pinned_part(definition: Mapping[str, Any]) -> dict[str, Any]:
    """The members of a tool definition its pin covers."""
    return {k: definition[k] for k in PINNED_MEMBERS if k in definition}


def tool_digest(definition: Mapping[str, Any]) -> str:
    """The pin digest of one tool definition (see the module doc). ValueError when the
    definition cannot be canonicalized (e.g. a float that is not finite)."""
    try:
        data = rfc8785.dumps(pinned_part(definition))
    except (rfc8785.CanonicalizationError, TypeError) as exc:
        raise ValueError(f"tool definition is not canonical JSON: {exc}") from None
    return hashlib.sha256(data).hexdigest()


def guess_risk(definition: Mapping[str, Any]) -> tuple[str, str]:
    """A first guess of the registry risk of a tool from its MCP annotations, and why.

    Annotations are hints from the server, not facts (the MCP spec says clients must not trust
    them from untrusted servers): the guess is for a person to review, never applied by itself.
    ``readOnlyHint`` true -> read; otherwise ``openWorldHint`` true -> exec (it reaches
    outside: fetches, runs, posts); otherwise write (``destructiveHint`` false only makes it
    additive); no annotations at all -> write (unknown: assume it changes something).
    """
    notes = definition.get("annotations")
    hints: Mapping[str, Any] = notes if isinstance(notes, Mapping) else {}
    if hints.get("readOnlyHint") is True:
        return "read", "readOnlyHint"
    if not hints:
        return "write", "no annotations: assumed to change something"
    if hints.get("openWorldHint") is True:
        return "exec", "not read-only and openWorldHint: reaches outside"
    if hints.get("destructiveHint") is False:
        return "write", "not read-only (destructiveHint false: additive)"
    return "write", "not read-only, destructive"


class PinStatus(StrEnum):
    """A tool definition the guard observed, judged against its pin (VerifierService)."""

    MATCH = "match"  # the pinned definition
    PINNED = "pinned"  # first sight of a registry tool: pinned now (audited tool.pinned)
    CHANGED = "changed"  # differs from its pin: a rug pull until re-pinned (tool.changed)
    UNKNOWN = "unknown"  # not in the registry for this server


CALLABLE = frozenset({PinStatus.MATCH, PinStatus.PINNED})


@dataclass(frozen=True)
class ServerPolicy:
    """What the registry says about a server, as its guard needs it."""

    name: str
    trusted: bool | None  # content trust; None: the broker decides per outcome report
    allow_resources: bool = False
    allow_prompts: bool = False


@dataclass(frozen=True)
class SyncResult:
    server: ServerPolicy
    tools: Mapping[str, PinStatus] = field(default_factory=dict)


@dataclass(frozen=True)
class ToolPin:
    """The broker's record of one tool of one server: the pinned digest, and the digest a
    guard last observed (they differ after a change, until an operator re-pins)."""

    tool: str
    pinned_sha256: str
    pinned_at: float
    observed_sha256: str
    observed_at: float

    @property
    def changed(self) -> bool:
        return self.pinned_sha256 != self.observed_sha256
