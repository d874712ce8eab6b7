"""Run a broker from its config: open the store, the audit sinks, the server; say how to connect."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket

from broker.adapters.audit.sinks import JsonLinesSink, StdoutSink
from broker.adapters.config import Config
from broker.app.audit import Auditor, AuditSink
from broker.app.ports import Store
from broker.core.errors import ConfigError
from broker.rpc.app import BrokerServer, build_components, run_until_signalled
from broker.rpc.metrics_http import start_listener

log = logging.getLogger("broker")


def open_audit(config: Config, store: Store) -> Auditor:
    """The audit trail of ``audit.sinks`` (docs/audit.md). Each process writes its own chain,
    named HOST-RANDOM-PID so that a restarted container (same host name, same pid) never
    continues, or forks, its predecessor's chain."""
    sinks: list[AuditSink] = []
    for spec in config.audit_sinks:
        if spec == "stdout":
            sinks.append(StdoutSink())
        elif spec.startswith("jsonl:"):
            sinks.append(JsonLinesSink(spec.removeprefix("jsonl:")))
        elif spec == "redis":
            sinks.append(_redis_sink(config))
        else:
            raise ConfigError("audit.sinks", f"sink {spec!r} is not available in this build")
    chain = f"{socket.gethostname()}-{secrets.token_hex(3)}-{os.getpid()}"
    return Auditor(chain, sinks)


def _redis_sink(config: Config) -> AuditSink:
    """The Redis stream sink, on the store's Redis (same URL, same namespace)."""
    from broker.adapters.audit.redis_sink import RedisStreamSink
    from broker.adapters.store.factory import open_sync_redis

    if not config.store.startswith(("redis", "rediss")):
        raise ConfigError(
            "audit.sinks", "the redis sink writes to the store's Redis: set store to a redis URL"
        )
    client, target = open_sync_redis(config.store, timeout=config.store_timeout)
    return RedisStreamSink(
        client, namespace=target.namespace, where=target.where, block=config.store_timeout / 2
    )


async def open_store(config: Config) -> Store:
    from broker.adapters.store.factory import open_store as _open

    store = _open(config.store, timeout=config.store_timeout)
    await store.ping()
    return store


def serve_forever(config: Config) -> None:
    """Serve until SIGTERM/SIGINT: in this process, or with ``workers`` processes sharing the
    port (``broker.rpc.workers``). Raises ``BrokerError`` if the broker cannot start."""
    from broker.rpc.workers import Supervisor, resolve_workers

    workers = resolve_workers(config)
    if workers > 1:
        Supervisor(config, workers).run()
    else:
        asyncio.run(run(config))


async def run(config: Config) -> None:
    """One process serving (``--workers 1``)."""
    store = await open_store(config)
    auditor = open_audit(config, store)
    server = BrokerServer(config, build_components(config, store=store, auditor=auditor))
    port = await server.start()
    host = config.listen.rpartition(":")[0]
    log.info("broker serving on %s:%d (store %s)", host, port, _describe(config.store))
    metrics = start_listener(config.metrics_listen)
    print(how_to_connect(host, port), flush=True)
    try:
        await run_until_signalled(server)
    finally:
        if metrics is not None:
            metrics.close()
        auditor.close()  # sends what the Redis stream sink still has queued
        await store.close()


def _describe(url: str) -> str:
    from broker.adapters.store.factory import describe_store

    return describe_store(url)


def how_to_connect(host: str, port: int, *, workers: int = 1) -> str:
    procs = f", {workers} worker processes" if workers > 1 else ""
    return f"""
broker: serving on {host}:{port} with mutual TLS{procs} (Ctrl-C to stop)

  Try it with the dev operator certificate (grpcurl is in .venv/bin):
    .venv/bin/grpcurl -cacert .broker-dev/ca.crt -cert .broker-dev/operator-admin.crt \\
      -key .broker-dev/operator-admin.key {host}:{port} list
    .venv/bin/grpcurl -cacert .broker-dev/ca.crt -cert .broker-dev/operator-admin.crt \\
      -key .broker-dev/operator-admin.key {host}:{port} grpc.health.v1.Health/Check
"""
