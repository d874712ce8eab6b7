"""The typed request and decision of the policy engine (no Cedar types cross this line)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from broker.core.registry import ServerEntry, ToolEntry

TAINTS: Final = ("clean", "untrusted", "suspect")
"""The task taint labels policy sees, lowest first: "untrusted" once the task read content from an
untrusted server, "suspect" once a sanitizer flagged what it read. Any other label is denied."""


class Effect(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    APPROVAL_REQUIRED = "approval_required"


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyRequest:
    """One credential request as policy sees it. ``server`` and ``tool`` come from the registry;
    ``now`` comes from the injected clock (seconds since the epoch)."""

    agent: str
    server: ServerEntry
    tool: ToolEntry
    now: float
    intent: str = ""
    taint: str = "clean"  # one of TAINTS
    in_plan: bool = True
    has_plan: bool = False
    approved: bool = False
    delegation_depth: int = 0
    on_behalf_of: str = ""


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one request.

    ``policy_ids`` are the ``@id`` annotations of the determining policies: the permits for ALLOW,
    the forbids for DENY and APPROVAL_REQUIRED (empty when nothing permitted the call). ``ttl_cap``
    is the tightest ``@ttl`` of the determining permits, or None; the broker also applies the tier
    cap. ``policy_digest`` identifies the policy set that decided (for the audit record).
    """

    effect: Effect
    policy_ids: tuple[str, ...] = ()
    ttl_cap: int | None = None
    reasons: tuple[str, ...] = ()
    policy_digest: str = ""

    @property
    def allowed(self) -> bool:
        return self.effect is Effect.ALLOW
