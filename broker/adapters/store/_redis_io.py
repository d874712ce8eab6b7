"""The fail-closed edge of the Redis store: every round trip bounded, Redis trouble translated.

``Guard.io()`` wraps one round trip: it raises ``StoreUnavailable`` (naming the server, never a
password) when Redis refuses, breaks the connection, or does not answer in time, and lets other
errors (bugs) through. ``Guard.budget()`` bounds a call of several round trips as a whole, so
that a mint (quota, index, record) fails within one deadline too.

``Guard.call()`` runs one round trip and repeats it, with a bounded back-off inside the call's
budget, while Redis answers that it did NOT run the command: TRYAGAIN (a multi-key command in a
slot being migrated, keys split between source and destination), ASK/MOVED redirections that
outran redis-py's own 16, CLUSTERDOWN/MASTERDOWN and READONLY (a failover under way), LOADING, or
a connection that could not be opened or a full connection pool. Those are safe to repeat even
for writes. A read
(``idempotent=True``) is also repeated once when a connection breaks under it (a pooled
connection to a master that died); a write never is: it may have run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from typing import TypeVar

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

# Errors with which Redis (or redis-py, before sending) says the command did not run.
NOT_RUN = (
    rexc.TryAgainError,
    rexc.AskError,  # and MovedError
    rexc.ClusterDownError,  # and MasterDownError
    rexc.SlotNotCoveredError,
    rexc.ReadOnlyError,
    rexc.BusyLoadingError,
    rexc.MaxConnectionsError,  # the client's pool is full: nothing was sent
)
_NOT_RUN_TEXT = ("TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "LOADING", "READONLY", "TTL exhausted")
BACKOFF_FIRST = 0.01
BACKOFF_MAX = 0.2

T = TypeVar("T")

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

    async def call(self, op: Callable[[], Awaitable[T]], *, idempotent: bool = False) -> T:
        """``op`` (one round trip) within the call's budget, repeated while Redis did not run it
        (and, if ``idempotent``, once after a broken connection): see the module docstring."""
        with self.budget():
            budget = _BUDGET.get()
            assert budget is not None
            loop = asyncio.get_running_loop()
            delay = BACKOFF_FIRST
            reconnected = False
            while True:
                try:
                    async with self.io():
                        return await op()
                except StoreUnavailable as exc:
                    cause = exc.__cause__
                    if (
                        idempotent
                        and not reconnected
                        and _connection_lost(cause)
                        and loop.time() < budget
                    ):
                        reconnected = True
                        continue
                    if not _not_run(cause) or loop.time() + delay >= budget:
                        raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)

    async def read(self, op: Callable[[], Awaitable[T]]) -> T:
        """``call`` for a read that is safe to repeat."""
        return await self.call(op, idempotent=True)

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
        except TimeoutError as exc:  # before UNAVAILABLE: the builtin is an OSError
            log.warning("redis at %s: no answer within %.2f s", self.where, limit)
            raise StoreUnavailable(
                f"the state store did not answer within {limit:.2f} s; retry shortly"
            ) from exc
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


def _not_run(exc: BaseException | None) -> bool:
    """Did Redis (or redis-py, before sending anything) say the command did not run?"""
    if isinstance(exc, NOT_RUN):
        return True
    text = str(exc)
    if isinstance(exc, rexc.ConnectionError | rexc.TimeoutError):
        return "connecting to" in text  # the connection never opened: nothing was sent
    if isinstance(exc, rexc.RedisClusterException | rexc.ClusterError | rexc.ResponseError):
        return text.startswith(_NOT_RUN_TEXT) or "TTL exhausted" in text
    return False


def _connection_lost(exc: BaseException | None) -> bool:
    """A connection broke (not a timeout: a hung server is not asked twice)."""
    return isinstance(exc, rexc.ConnectionError | OSError) and not isinstance(
        exc, TimeoutError | rexc.AuthenticationError | rexc.AuthorizationError
    )
