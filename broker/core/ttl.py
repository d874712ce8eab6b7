"""How long a credential lives: the one TTL clamp (pure).

A granted TTL is the smallest of what may bound it (DESIGN.md, "tiers"):

- the tier's cap (``broker.core.registry.tier_ttl_cap``: 300, 120, 60, 30 s for tiers 0-3),
- the cap of the policy that permitted the call (``@ttl("...")``), if it has one,
- what the agent asked for, if it asked (0 or None: no ask),
- the task's remaining life, so that no credential outlives its task,

rounded down to whole seconds, as JWT ``exp`` and ``iat`` are. ``tests/unit/test_ttl.py``
checks these properties with hypothesis.
"""

from __future__ import annotations

import math

__all__ = ["granted_ttl"]


def granted_ttl(
    *,
    tier_cap: int,
    task_remaining: float,
    policy_cap: int | None = None,
    requested: int | None = None,
) -> int:
    """The credential lifetime in whole seconds: ``floor(min(caps))``, never negative.

    0 means nothing is left to grant (the task ends within a second): callers refuse the
    request rather than mint a token that is born expired.
    """
    caps = [float(tier_cap), task_remaining]
    if policy_cap is not None:
        caps.append(float(policy_cap))
    if requested:
        caps.append(float(requested))
    shortest = min(caps)
    return max(0, math.floor(shortest)) if math.isfinite(shortest) else 0
