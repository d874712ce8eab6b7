"""Open a store from a URL (``broker serve --store URL``, ``BROKER_STORE``).

Accepted forms::

    memory://                                           in-process (the embedded default)
    redis://[user:password@]host[:port][/db]            one redis-server (or a Sentinel-managed
                                                        primary behind a stable address)
    rediss://[user:password@]host[:port][/db]?ssl_ca_certs=ca.pem[&ssl_certfile=c.pem
                                                        &ssl_keyfile=k.pem]   TLS
    redis+unix://[user:password@]/path/to/redis.sock[?db=N]
    redis-cluster://[user:password@]host:port[,host:port...]    Redis Cluster (startup nodes)
    rediss-cluster://...same, with the TLS query parameters

Every Redis form also takes ``namespace=`` (key prefix, default "brk"). ``timeout`` is the
connect and read timeout of one round trip; each store call fails with StoreUnavailable within
``DEADLINE_FACTOR * timeout`` (0.9 s by default) when Redis is down or hung. ``describe_store``
prints a URL without its password, for logs and errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis
import redis.cluster
import redis.retry
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from broker.adapters.store.memory import MemoryStore
from broker.adapters.store.redis import RedisStore
from broker.app.ports import Store
from broker.core.errors import ConfigError

DEADLINE_FACTOR = 1.8
HEALTH_CHECK_INTERVAL = 15  # seconds idle before a connection is PINGed before use

ACCEPTED = (
    "accepted forms: memory://, redis://[user:password@]host[:port][/db], "
    "rediss://[user:password@]host[:port][/db]?ssl_ca_certs=...&ssl_certfile=...&ssl_keyfile=..., "
    "redis+unix:///path/to/redis.sock[?db=N], "
    "redis-cluster://[user:password@]host:port[,host:port...] (rediss-cluster:// for TLS); "
    "Redis forms also accept ?namespace=NAME"
)
_TLS_PARAMS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
_SCHEMES = ("redis", "rediss", "redis+unix", "redis-cluster", "rediss-cluster")


def describe_store(url: str) -> str:
    """``url`` without its password (and without any query parameter values but namespace)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable store URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, hosts = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{hosts}" if ":" in userinfo else f"{user}@{hosts}"
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{parts.query}" if parts.query else "")


def _bad(url: str, problem: str) -> ConfigError:
    return ConfigError("store", f"{problem} in {describe_store(url)!r}; {ACCEPTED}")


def _hostport(url: str, item: str) -> tuple[str, int]:
    host, sep, port = item.rpartition(":")
    if not sep:
        host, port = item, "6379"
    host = host.strip("[]")  # [::1]:6379
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise _bad(url, f"bad host:port {item!r}")
    return host, int(port)


@dataclass(frozen=True)
class RedisTarget:
    """A parsed Redis URL: where to connect and how (never printed: it holds the password)."""

    cluster: bool
    nodes: tuple[tuple[str, int], ...]  # cluster startup nodes
    host: str
    port: int
    socket_path: str | None
    db: int
    username: str | None
    password: str | None
    tls: bool
    tls_kw: dict[str, str]
    namespace: str
    where: str  # host:port, socket path or node list, for messages

    def client_kwargs(self, timeout: float) -> dict[str, Any]:
        """Keyword arguments shared by the sync and asyncio clients (retry excluded)."""
        kw: dict[str, Any] = {
            "username": self.username,
            "password": self.password,
            "socket_connect_timeout": timeout,
            "socket_timeout": timeout,
            "health_check_interval": HEALTH_CHECK_INTERVAL,
            "ssl": self.tls,
            "ssl_ca_certs": self.tls_kw.get("ssl_ca_certs"),
            "ssl_certfile": self.tls_kw.get("ssl_certfile"),
            "ssl_keyfile": self.tls_kw.get("ssl_keyfile"),
        }
        if not self.cluster:
            kw.update(host=self.host, port=self.port, unix_socket_path=self.socket_path, db=self.db)
        return kw


def redis_target(url: str) -> RedisTarget:
    """Parse a Redis store URL (any form but memory://). Raises ConfigError naming the forms."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise _bad(url, "unparseable URL") from exc
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise _bad(url, f"unknown scheme {scheme!r}")
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    namespace = query.pop("namespace", "brk")
    if not namespace or "{" in namespace or "}" in namespace:
        raise _bad(url, "namespace must be non-empty and without braces")
    tls = scheme.startswith("rediss")
    tls_kw: dict[str, str] = {}
    for name in _TLS_PARAMS:
        if name in query:
            if not tls:
                raise _bad(url, f"{name} needs a rediss:// URL")
            tls_kw[name] = query.pop(name)
    db = query.pop("db", None) if scheme == "redis+unix" else None
    if query:
        raise _bad(url, f"unknown parameter(s) {', '.join(sorted(query))}")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    hosts = parts.netloc.rsplit("@", 1)[-1]
    common = {
        "username": username,
        "password": password,
        "tls": tls,
        "tls_kw": tls_kw,
        "namespace": namespace,
    }
    if scheme.endswith("-cluster"):
        if parts.path not in ("", "/"):
            raise _bad(url, "a cluster URL has no database path")
        items = [h for h in hosts.split(",") if h]
        if not items:
            raise _bad(url, "no startup node")
        nodes = tuple(_hostport(url, item) for item in items)
        where = "cluster " + ",".join(f"{h}:{p}" for h, p in nodes)
        return RedisTarget(
            cluster=True,
            nodes=nodes,
            host="",
            port=0,
            socket_path=None,
            db=0,
            where=where,
            **common,  # type: ignore[arg-type]
        )
    socket_path: str | None = None
    host, port, database = "localhost", 6379, 0
    if scheme == "redis+unix":
        if not parts.path or hosts:
            raise _bad(url, "expected redis+unix:///absolute/path/to/redis.sock")
        if db is not None and not db.isdigit():
            raise _bad(url, f"bad db {db!r}")
        socket_path, database, where = parts.path, int(db or 0), parts.path
    else:
        if not hosts or "," in hosts:
            raise _bad(url, "expected one host[:port]")
        host, port = _hostport(url, hosts)
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise _bad(url, f"bad database {path!r}")
        database, where = int(path or 0), f"{host}:{port}"
    return RedisTarget(
        cluster=False,
        nodes=(),
        host=host,
        port=port,
        socket_path=socket_path,
        db=database,
        where=where,
        **common,  # type: ignore[arg-type]
    )


def open_store(url: str, *, timeout: float = 0.5) -> Store:
    """The store named by ``url``. Raises ConfigError naming the accepted forms."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise _bad(url, "unparseable URL") from exc
    if parts.scheme.lower() == "memory":
        if parts.netloc or parts.path or parts.query:
            raise _bad(url, "memory:// takes no host, path or parameters")
        return MemoryStore()
    target = redis_target(url)
    deadline = DEADLINE_FACTOR * timeout
    client: Redis | RedisCluster
    if target.cluster:
        client = RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in target.nodes],
            retry=_no_retry(),
            **target.client_kwargs(timeout),
        )
    else:
        client = Redis(retry=_no_retry(), **target.client_kwargs(timeout))
    return RedisStore(client, where=target.where, namespace=target.namespace, deadline=deadline)


def open_sync_redis(
    url: str, *, timeout: float = 0.5
) -> tuple[redis.Redis | redis.cluster.RedisCluster, RedisTarget]:
    """A blocking redis-py client for ``url`` (the audit stream's writer thread and the CLI),
    with the same forms, timeouts and no-retry rule as the store's."""
    target = redis_target(url)
    retry = redis.retry.Retry(NoBackoff(), 0)
    if target.cluster:
        nodes = [redis.cluster.ClusterNode(h, p) for h, p in target.nodes]  # type: ignore[no-untyped-call]
        return (
            redis.cluster.RedisCluster(
                startup_nodes=nodes, retry=retry, **target.client_kwargs(timeout)
            ),
            target,
        )
    return redis.Redis(retry=retry, **target.client_kwargs(timeout)), target


def _lifo_acquire(node: ClusterNode) -> Any:
    """A cluster node's most recently released connection first (redis-py takes the oldest).

    On an ASK redirection (a slot being migrated) redis-py sends ASKING, releases that
    connection, then takes one again for the command itself. ASKING only lasts for the next
    command ON THE SAME CONNECTION: with a FIFO pool of two or more free connections the command
    goes out on another one, is answered MOVED back to the source, and the redirect loops until
    "TTL exhausted": every call on a migrated key fails. Taking the last released connection
    (there is no await between the two) keeps them on one connection."""
    free = node._free  # the pool redis-py keeps per node
    if free:
        return free.pop()
    return _FIFO_ACQUIRE(node)


_FIFO_ACQUIRE = ClusterNode.acquire_connection
ClusterNode.acquire_connection = _lifo_acquire  # type: ignore[method-assign,assignment]


def _no_retry() -> Retry:
    """No retries: a retried script may run twice; a failed call fails closed instead."""
    return Retry(NoBackoff(), 0)
