"""Fixtures shared by every test folder: real Redis processes (see tests/redis_procs.py).

``redis_server`` is a redis:// URL of one session-wide redis-server (no persistence) that also
listens on a unix socket (``redis_proc.unix_url``); ``redis_cluster`` is a redis-cluster:// URL
of a session-wide 3-master Redis Cluster (its processes: ``redis_cluster_procs``). A test that
pauses a shared server must resume it in a ``finally``. Tests share them: isolate with a unique
``?namespace=`` in the store URL (see tests/contract/redis_factories.py) rather than FLUSHALL.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.redis_procs import RedisClusterProcs, RedisProc, start_cluster, start_redis

pytest_plugins = ["tests.support.otel"]  # the `spans` fixture: OpenTelemetry in memory


@pytest.fixture(scope="session")
def redis_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProc]:
    proc = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def redis_server(redis_proc: RedisProc) -> str:
    return redis_proc.url


@pytest.fixture(scope="session")
def redis_cluster_procs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcs]:
    cluster = start_cluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def redis_cluster(redis_cluster_procs: RedisClusterProcs) -> str:
    return redis_cluster_procs.url
