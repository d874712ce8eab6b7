"""The leases the broker obtained for tasks, behind a small port: ``LeaseTracker``.

A lease is recorded when its secret is handed to an MCP server and taken out (atomically: one
replica revokes it) when it is due: at its credential's expiry, when its task ends or is revoked,
when an operator revokes its agent, server, tier or everything issued before a time, or when a
failed revocation is retried. ``InMemoryLeaseTracker`` is the embedded implementation; it is not
durable (leases die with the process: the runtime revokes them all on a clean stop, Vault's own
TTL is the last resort). A Redis implementation is what several replicas share; see docs/vault.md.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """One Vault lease handed out for a task. The lease id is not a secret (it only names the
    lease; renewing or revoking it takes a token allowed to), so it appears in logs and audit."""

    lease_id: str
    task_id: str
    agent: str
    server: str
    tool: str
    tier: int
    source: str
    issued_at: float
    revoke_at: float  # the credential's exp (or Vault's lease end if that is sooner)
    vault_expires_at: float  # when Vault ends it on its own (issued_at + lease_duration)
    attempts: int = 0  # failed revocations so far
    next_attempt_at: float = 0.0  # 0: at revoke_at

    @property
    def due_at(self) -> float:
        return self.next_attempt_at or self.revoke_at

    def retry_at(self, when: float) -> LeaseRecord:
        return replace(self, attempts=self.attempts + 1, next_attempt_at=when)


@dataclass(frozen=True)
class LeaseSelector:
    """Leases an operator revocation covers (RevocationEvent kinds agent, server, tier,
    issued_before): every given condition must hold; issued at or before ``issued_before``."""

    agent: str | None = None
    server: str | None = None
    tier: int | None = None
    issued_before: float | None = None

    def matches(self, lease: LeaseRecord) -> bool:
        return (
            (self.agent is None or lease.agent == self.agent)
            and (self.server is None or lease.server == self.server)
            and (self.tier is None or lease.tier == self.tier)
            and (self.issued_before is None or lease.issued_at <= self.issued_before)
        )


class LeaseTracker(Protocol):
    """Every ``take_*`` removes what it returns, atomically: a lease is taken by one caller."""

    @property
    def durable(self) -> bool:
        """True if leases outlive this process (shared with other replicas)."""
        ...

    async def add(self, lease: LeaseRecord) -> None: ...

    async def take_lease(self, lease_id: str) -> LeaseRecord | None: ...

    async def take_task(self, task_id: str) -> Sequence[LeaseRecord]: ...

    async def take_matching(self, selector: LeaseSelector) -> Sequence[LeaseRecord]: ...

    async def take_due(self, now: float, limit: int = 256) -> Sequence[LeaseRecord]:
        """Leases whose ``due_at`` is at or before ``now``, soonest first."""
        ...

    async def take_all(self) -> Sequence[LeaseRecord]: ...

    async def count(self) -> int: ...


class InMemoryLeaseTracker:
    """The embedded ``LeaseTracker``: a dict, a per-task index and a heap of due times."""

    durable = False

    def __init__(self) -> None:
        self._leases: dict[str, LeaseRecord] = {}
        self._by_task: dict[str, set[str]] = {}
        self._due: list[tuple[float, str]] = []  # (due_at, lease_id); stale entries skipped
        self._lock = asyncio.Lock()

    async def add(self, lease: LeaseRecord) -> None:
        async with self._lock:
            self._leases[lease.lease_id] = lease
            self._by_task.setdefault(lease.task_id, set()).add(lease.lease_id)
            heapq.heappush(self._due, (lease.due_at, lease.lease_id))

    async def take_lease(self, lease_id: str) -> LeaseRecord | None:
        async with self._lock:
            return self._pop(lease_id) if lease_id in self._leases else None

    async def take_task(self, task_id: str) -> list[LeaseRecord]:
        async with self._lock:
            return [self._pop(i) for i in sorted(self._by_task.get(task_id, ()))]

    async def take_matching(self, selector: LeaseSelector) -> list[LeaseRecord]:
        async with self._lock:
            ids = [i for i, lease in self._leases.items() if selector.matches(lease)]
            return [self._pop(i) for i in ids]

    async def take_due(self, now: float, limit: int = 256) -> list[LeaseRecord]:
        async with self._lock:
            out: list[LeaseRecord] = []
            while self._due and self._due[0][0] <= now and len(out) < limit:
                due_at, lease_id = heapq.heappop(self._due)
                lease = self._leases.get(lease_id)
                if lease is not None and lease.due_at == due_at:
                    out.append(self._pop(lease_id))
            return out

    async def take_all(self) -> list[LeaseRecord]:
        async with self._lock:
            return [self._pop(i) for i in list(self._leases)]

    async def count(self) -> int:
        return len(self._leases)

    def _pop(self, lease_id: str) -> LeaseRecord:
        lease = self._leases.pop(lease_id)
        ids = self._by_task.get(lease.task_id)
        if ids is not None:
            ids.discard(lease_id)
            if not ids:
                del self._by_task[lease.task_id]
        return lease
