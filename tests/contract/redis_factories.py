"""Redis store factories for the contract suite: one real redis-server and a real 3-master
Redis Cluster, both started once per session (tests/conftest.py). Each test gets its own key
namespace, so tests never see each other's keys (nor their revocation streams)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import pytest

from broker.adapters.store.factory import open_store
from broker.app.ports import Store

# Generous: other test runs may share the machine's two cores. Fail-closed timing is tested
# separately (tests/integration/test_redis_store.py) with the production default.
TIMEOUT = 3.0


def _factory(fixture: str) -> Callable[[pytest.FixtureRequest], Awaitable[Store]]:
    async def make(request: pytest.FixtureRequest) -> Store:
        url = request.getfixturevalue(fixture)
        return open_store(f"{url}?namespace=t{uuid.uuid4().hex[:12]}", timeout=TIMEOUT)

    return make


REDIS_FACTORIES: dict[str, Callable[[pytest.FixtureRequest], Awaitable[Store]]] = {
    "redis": _factory("redis_server"),
    "cluster": _factory("redis_cluster"),
}
