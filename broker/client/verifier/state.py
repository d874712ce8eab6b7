"""The offline verifier's local state: single use, revocations, feed freshness. Pure: no I/O,
every time passed in.

- ``ReplayCache``: the jtis this process has accepted, each kept until its ``exp`` plus the
  leeway (after that ``verify_token`` refuses the token as expired anyway), pruned as time
  passes, so its size is bounded by the credentials live at once.
- ``RevocationState``: what the feed said. Revoked tasks and credentials (a set) and floors: an
  ``agent``, ``server`` or ``tier`` event, or ``issued_before``, revokes every token of that
  subject with ``iat <= revoked_at``. Entries are kept for ``retention`` seconds after their
  ``revoked_at`` (the longest a token can live, plus leeway): every token they revoke has
  expired by then. An event of a kind this code does not know is applied as ``issued_before``:
  fail closed.
- ``Freshness``: when the feed last delivered anything; older than the bound is STALE.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import TypeVar

from broker.core.errors import Reason, Unauthenticated
from broker.core.model import RevocationEvent, RevocationKind
from broker.core.tokens.claims import TokenClaims

FLOOR_KINDS = frozenset({RevocationKind.AGENT, RevocationKind.SERVER, RevocationKind.TIER})
K = TypeVar("K")


class ReplayCache:
    """Single use within this process: ``consume`` is true once per jti."""

    def __init__(self, leeway: float) -> None:
        self._leeway = leeway
        self._seen: dict[str, float] = {}
        self._expiry: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, jti: object) -> bool:
        return jti in self._seen

    def consume(self, jti: str, exp: float, now: float) -> bool:
        """Record ``jti`` (valid until ``exp``); false if it was recorded before."""
        self.prune(now)
        if jti in self._seen:
            return False
        self._seen[jti] = exp
        heapq.heappush(self._expiry, (exp, jti))
        return True

    def prune(self, now: float) -> None:
        horizon = now - self._leeway
        while self._expiry and self._expiry[0][0] <= horizon:
            _, jti = heapq.heappop(self._expiry)
            self._seen.pop(jti, None)


@dataclass
class RevocationState:
    """Revocations seen on the feed; ``check`` raises REVOKED for a token they cover."""

    retention: float
    tasks: dict[str, float] = field(default_factory=dict)  # task id -> revoked_at
    credentials: dict[str, float] = field(default_factory=dict)  # jti -> revoked_at
    floors: dict[tuple[str, str], float] = field(default_factory=dict)  # (kind, subject) -> at
    # kill switches in force: (kind, subject) -> end of the block (inf: until lifted)
    blocks: dict[tuple[str, str], float] = field(default_factory=dict)
    issued_before: float = float("-inf")

    def apply(self, event: RevocationEvent) -> None:
        at = event.revoked_at
        if event.kind == RevocationKind.TASK:
            self.tasks[event.subject] = max(at, self.tasks.get(event.subject, at))
        elif event.kind == RevocationKind.CREDENTIAL:
            self.credentials[event.subject] = at
        elif event.kind in FLOOR_KINDS:
            key = (event.kind, event.subject)
            self.floors[key] = max(at, self.floors.get(key, at))
            if event.blocked:  # a kill switch: every token refused until it ends or is lifted
                self.blocks[key] = event.until or float("inf")
            else:  # a floor only, or the block's lift
                self.blocks.pop(key, None)
        else:  # "issued_before", or a kind this code does not know: fail closed
            self.revoke_issued_before(at)

    def revoke_issued_before(self, at: float) -> None:
        """Every token issued at or before ``at`` is revoked (also: after a feed reset)."""
        self.issued_before = max(self.issued_before, at)

    def check(self, claims: TokenClaims, now: float | None = None) -> None:
        """Raise ``Unauthenticated(REVOKED)`` if a feed event revoked this token (blocks are
        checked when ``now`` is given)."""
        if claims.task in self.tasks:
            raise Unauthenticated(f"task {claims.task} has ended or was revoked", Reason.REVOKED)
        if claims.jti in self.credentials:
            raise Unauthenticated(f"credential {claims.jti} was revoked", Reason.REVOKED)
        iat = claims.iat
        if iat <= self.issued_before:
            raise Unauthenticated(
                f"every token issued up to {self.issued_before:.0f} was revoked", Reason.REVOKED
            )
        if self.floors or self.blocks:
            for kind, subject in (
                (RevocationKind.SERVER, claims.aud),
                (RevocationKind.TIER, str(claims.tier)),
                (RevocationKind.AGENT, claims.sub),
                *((RevocationKind.AGENT, actor) for actor in claims.actors),
            ):
                until = self.blocks.get((kind, subject))
                if until is not None and now is not None and now < until:
                    raise Unauthenticated(
                        f"{kind} {subject} is blocked by an operator (kill switch)",
                        Reason.REVOKED,
                    )
                floor = self.floors.get((kind, subject))
                if floor is not None and iat <= floor:
                    raise Unauthenticated(
                        f"tokens of {kind} {subject} issued up to {floor:.0f} were revoked",
                        Reason.REVOKED,
                    )

    def prune(self, now: float) -> None:
        """Forget entries whose every token has expired (``revoked_at + retention < now``)."""
        horizon = now - self.retention
        _drop_older(self.tasks, horizon)
        _drop_older(self.credentials, horizon)
        _drop_older(self.floors, horizon)
        for key in [k for k, until in self.blocks.items() if until <= now]:
            del self.blocks[key]
        if self.issued_before < horizon:
            self.issued_before = float("-inf")

    def __len__(self) -> int:
        return len(self.tasks) + len(self.credentials) + len(self.floors)


def _drop_older(table: dict[K, float], horizon: float) -> None:
    for key in [k for k, at in table.items() if at < horizon]:
        del table[key]


class Freshness:
    """When the revocation feed last delivered something (event or heartbeat), on a monotonic
    clock. ``check`` raises STALE once that is longer ago than ``bound`` seconds, or if the feed
    never delivered at all."""

    def __init__(self, bound: float) -> None:
        if not bound > 0:
            raise ValueError("the staleness bound must be a positive number of seconds")
        self.bound = bound
        self.last: float | None = None

    def touch(self, now: float) -> None:
        self.last = now

    def age(self, now: float) -> float:
        return float("inf") if self.last is None else now - self.last

    def fresh(self, now: float) -> bool:
        return self.age(now) <= self.bound

    def check(self, now: float) -> None:
        if self.last is None:
            raise Unauthenticated(
                "the revocation feed has not been received yet: failing closed", Reason.STALE
            )
        age = now - self.last
        if age > self.bound:
            raise Unauthenticated(
                f"the revocation feed has been silent for {age:.1f} s (bound {self.bound:g} s): "
                "failing closed",
                Reason.STALE,
            )
