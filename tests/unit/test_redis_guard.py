"""Guard.call: what the Redis store repeats, and what it never repeats.

The operations here are plain coroutines raising the errors redis-py raises; the same rules are
exercised against a real Redis Cluster in tests/integration/test_redis_cluster_ops.py.
"""

from __future__ import annotations

import asyncio

import pytest
import redis.exceptions as rexc

from broker.adapters.store._redis_io import Guard
from broker.core.errors import StoreUnavailable


class Flaky:
    """Raises the given errors in turn, then answers "ok"; counts the attempts."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.attempts = 0

    async def __call__(self) -> str:
        self.attempts += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


NOT_RUN = [
    rexc.TryAgainError("TRYAGAIN Multiple keys request during rehashing of slot"),
    rexc.ClusterError("TTL exhausted."),
    rexc.ClusterDownError("CLUSTERDOWN The cluster is down"),
    rexc.ReadOnlyError("READONLY You can't write against a read only replica."),
    rexc.ConnectionError("Error 111 connecting to 127.0.0.1:7000. Connection refused."),
    rexc.MaxConnectionsError("Too many connections"),
]


@pytest.mark.parametrize("error", NOT_RUN, ids=lambda e: type(e).__name__)
async def test_a_command_redis_did_not_run_is_repeated_even_a_write(error: Exception) -> None:
    op = Flaky(error, error)
    assert await Guard("here", 1.0).call(op) == "ok"
    assert op.attempts == 3


async def test_a_broken_connection_repeats_a_read_once_and_never_a_write() -> None:
    closed = rexc.ConnectionError("Connection closed by server.")
    read = Flaky(closed)
    assert await Guard("here", 1.0).read(read) == "ok"
    assert read.attempts == 2
    twice = Flaky(closed, closed)
    with pytest.raises(StoreUnavailable):
        await Guard("here", 1.0).read(twice)
    assert twice.attempts == 2
    write = Flaky(closed)
    with pytest.raises(StoreUnavailable):
        await Guard("here", 1.0).call(write)
    assert write.attempts == 1


async def test_a_timeout_is_not_repeated() -> None:
    async def hung() -> None:
        await asyncio.sleep(10)

    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(StoreUnavailable, match="did not answer"):
        await Guard("here", 0.2).read(hung)
    assert loop.time() - started < 0.4


async def test_retries_stop_within_the_deadline() -> None:
    endless = Flaky(*[rexc.TryAgainError("TRYAGAIN")] * 1000)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(StoreUnavailable):
        await Guard("here", 0.3).call(endless)
    assert loop.time() - started <= 0.3
    assert 3 <= endless.attempts < 20  # backed off, not spinning


async def test_other_errors_are_not_repeated() -> None:
    bug = Flaky(rexc.ResponseError("ERR wrong number of arguments"))
    with pytest.raises(rexc.ResponseError):
        await Guard("here", 1.0).call(bug)
    assert bug.attempts == 1
