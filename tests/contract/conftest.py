"""Store factories for the contract suite. Each param is one implementation of the store port.

The Redis implementations (single server and a 3-master cluster) come from
tests/contract/redis_factories.py; every test in this folder runs on each.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from broker.adapters.store.memory import MemoryStore
from broker.app.ports import Store

StoreFactory = Callable[[pytest.FixtureRequest], Awaitable[Store]]


async def _memory(_: pytest.FixtureRequest) -> Store:
    return MemoryStore()


FACTORIES: dict[str, StoreFactory] = {"memory": _memory}

from tests.contract.redis_factories import REDIS_FACTORIES  # noqa: E402 - after the type

FACTORIES.update(REDIS_FACTORIES)


@pytest.fixture(params=sorted(FACTORIES))
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    s = await FACTORIES[request.param](request)
    try:
        yield s
    finally:
        await s.close()
