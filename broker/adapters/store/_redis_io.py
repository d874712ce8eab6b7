"""The fail-closed edge of the Redis store: every round trip bounded, Redis trouble translated.

``Guard.io()`` wraps one round trip: it raises ``StoreUnavailable`` (naming the server, never a
password) when Redis refuses, breaks the connection, or does not answer in time, and lets other
errors (bugs) through. ``Guard.budget()`` bounds a call of several round trips as a whole, so
that a mint (quota, index, record) fails within one deadline too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar

import redis.exceptions as rexc

from broker.core.errors import StoreUnavailable

UNAVAILABLE = (
    rexc.ConnectionError,  # includes authentication failures, LOADING, pool exhaustion
    rexc.TimeoutError,
    rexc.ClusterError,  # CLUSTERDOWN, MASTERDOWN
    rexc.RedisClusterException,  # slot not covered, no reachable node
    rexc.OutOfMemoryError,
    rexc.ReadOnlyError,  # a failover in progress: we reached a replica
    rexc.TryAgainError,
    OSError,
)
REFUSALS = ("BUSY", "NOREPLICAS", "MASTERDOWN", "LOADING", "CLUSTERDOWN", "OOM", "READONLY")

# The loop time by which the current multi-step call (mint, create) must be done.
_BUDGET: ContextVar[float | None] = ContextVar("redis_store_budget", default=None)

log = logging.getLogger("broker.adapters.store.redis")


class Guard:
    def __init__(self, where: str, deadline: float) -> None:
        self.where = where
        self.deadline = deadline

    @contextmanager
    def budget(self) -> Iterator[None]:
        """Bound a call of several round trips as a whole by one ``deadline``."""
        if _BUDGET.get() is not None:
            yield
            return
        token = _BUDGET.set(asyncio.get_running_loop().time() + self.deadline)
        try:
            yield
        finally:
            _BUDGET.reset(token)

    @asynccontextmanager
    async def io(self, extra: float = 0.0) -> AsyncIterator[None]:
        """One bounded round trip (within the call's budget, if any); Redis trouble becomes
        StoreUnavailable (fail closed)."""
        limit = self.deadline + extra
        when = asyncio.get_running_loop().time() + limit
        budget = _BUDGET.get()
        if budget is not None and budget < when:
            when, limit = budget, self.deadline
        try:
            async with asyncio.timeout_at(when):
                yield
        except UNAVAILABLE as exc:
            # Clients see that the store is down, not redis-py's text (hosts, TLS and file
            # details); that goes to the broker log.
            log.warning("redis at %s unreachable: %s", self.where, exc)
            raise StoreUnavailable("the state store is unreachable; retry shortly") from exc
        except rexc.ResponseError as exc:
            if str(exc).startswith(REFUSALS):
                refusal = str(exc).split(" ", 1)[0]
                log.warning("redis at %s refused: %s", self.where, exc)
                raise StoreUnavailable(f"the state store refused the write ({refusal})") from exc
            raise
        except TimeoutError as exc:
            log.warning("redis at %s: no answer within %.2f s", self.where, limit)
            raise StoreUnavailable(
                f"the state store did not answer within {limit:.2f} s; retry shortly"
            ) from exc
