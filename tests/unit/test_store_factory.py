"""Store URLs: every accepted form, the refusals, and no password in any message."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from broker.adapters.store.factory import describe_store, open_store
from broker.adapters.store.memory import MemoryStore
from broker.adapters.store.redis import RedisStore
from broker.core.errors import ConfigError


async def test_memory() -> None:
    store = open_store("memory://")
    assert isinstance(store, MemoryStore)
    await store.close()


async def _redis_kwargs(url: str) -> dict[str, object]:
    store = open_store(url, timeout=0.25)
    try:
        assert isinstance(store, RedisStore)
        client = store._r
        assert isinstance(client, Redis)
        return dict(client.connection_pool.connection_kwargs)
    finally:
        await store.close()


async def test_redis_tcp_with_credentials_and_db() -> None:
    kw = await _redis_kwargs("redis://alice:s%40cret@cache.internal:6380/2")
    assert (kw["host"], kw["port"], kw["db"]) == ("cache.internal", 6380, 2)
    assert (kw["username"], kw["password"]) == ("alice", "s@cret")
    assert kw["socket_timeout"] == kw["socket_connect_timeout"] == 0.25


async def test_redis_defaults() -> None:
    kw = await _redis_kwargs("redis://localhost")
    assert (kw["host"], kw["port"], kw["db"], kw["password"]) == ("localhost", 6379, 0, None)


async def test_rediss_takes_tls_files() -> None:
    kw = await _redis_kwargs(
        "rediss://r.example:6379/0?ssl_ca_certs=/etc/ca.pem&ssl_certfile=/c.pem&ssl_keyfile=/k.pem"
    )
    assert (kw["ssl_ca_certs"], kw["ssl_certfile"], kw["ssl_keyfile"]) == (
        "/etc/ca.pem",
        "/c.pem",
        "/k.pem",
    )
    assert kw["ssl_cert_reqs"] == "required"


async def test_unix_socket() -> None:
    kw = await _redis_kwargs("redis+unix:///run/redis/redis.sock?db=3")
    assert (kw["path"], kw["db"]) == ("/run/redis/redis.sock", 3)


async def test_cluster_startup_nodes() -> None:
    store = open_store("redis-cluster://10.0.0.1:7000,10.0.0.2:7001,[::1]:7002?namespace=x")
    try:
        assert isinstance(store, RedisStore)
        client = store._r
        assert isinstance(client, RedisCluster)
        assert [(n.host, n.port) for n in client.startup_nodes] == [
            ("10.0.0.1", 7000),
            ("10.0.0.2", 7001),
            ("::1", 7002),
        ]
    finally:
        await store.close()


@pytest.mark.parametrize(
    "url",
    [
        "",
        "localhost:6379",
        "http://localhost:6379",
        "memory://somewhere",
        "redis://",
        "redis://host:port",
        "redis://host:70000",
        "redis://a:1,b:2",
        "redis://host/db",
        "redis://host?unknown=1",
        "redis://host?ssl_ca_certs=/ca.pem",
        "redis://host?namespace={x}",
        "redis+unix://host/sock",
        "redis-cluster://",
        "redis-cluster://a:1/0",
    ],
)
def test_bad_urls_name_the_accepted_forms(url: str) -> None:
    with pytest.raises(ConfigError) as exc:
        open_store(url)
    assert exc.value.key == "store"
    assert "accepted forms: memory://" in exc.value.message


def test_no_password_in_errors_or_descriptions() -> None:
    url = "redis://alice:hunter2@cache:bad/0"
    with pytest.raises(ConfigError) as exc:
        open_store(url)
    assert "hunter2" not in str(exc.value)
    assert describe_store("redis://alice:hunter2@cache:6379/0") == "redis://alice:***@cache:6379/0"
    assert describe_store("redis-cluster://:pw@a:1,b:2") == "redis-cluster://:***@a:1,b:2"
    assert describe_store("redis://cache:6379") == "redis://cache:6379"
    assert describe_store("memory://") == "memory://"
