"""Run a broker from its config: open the store, the audit sinks, the server; say how to connect."""

from __future__ import annotations

import logging
import os
import socket

from broker.audit.sinks import Auditor, AuditSink, JsonLinesSink, StdoutSink
from broker.config import Config
from broker.errors import ConfigError
from broker.server.app import BrokerServer, build_components, run_until_signalled
from broker.store.base import Store

log = logging.getLogger("broker")


def open_audit(config: Config, store: Store) -> Auditor:
    sinks: list[AuditSink] = []
    for spec in config.audit_sinks:
        if spec == "stdout":
            sinks.append(StdoutSink())
        elif spec.startswith("jsonl:"):
            sinks.append(JsonLinesSink(spec.removeprefix("jsonl:")))
        else:
            raise ConfigError("audit.sinks", f"sink {spec!r} is not available in this build")
    chain = f"{socket.gethostname()}-{os.getpid()}"
    return Auditor(chain, sinks)


async def open_store(config: Config) -> Store:
    from broker.store.factory import open_store as _open

    store = _open(config.store, timeout=config.store_timeout)
    await store.ping()
    return store


async def run(config: Config) -> None:
    store = await open_store(config)
    auditor = open_audit(config, store)
    server = BrokerServer(config, build_components(config, store=store, auditor=auditor))
    port = await server.start(reuse_port=config.workers > 1)
    host = config.listen.rpartition(":")[0]
    log.info("broker serving on %s:%d (store %s)", host, port, _describe(config.store))
    print(_how_to_connect(host, port), flush=True)
    try:
        await run_until_signalled(server)
    finally:
        await store.close()


def _describe(url: str) -> str:
    from broker.store.factory import describe_store

    return describe_store(url)


def _how_to_connect(host: str, port: int) -> str:
    return f"""
broker: serving on {host}:{port} with mutual TLS (Ctrl-C to stop)

  Try it with the dev operator certificate (grpcurl is in .venv/bin):
    .venv/bin/grpcurl -cacert .broker-dev/ca.crt -cert .broker-dev/operator-admin.crt \\
      -key .broker-dev/operator-admin.key {host}:{port} list
    .venv/bin/grpcurl -cacert .broker-dev/ca.crt -cert .broker-dev/operator-admin.crt \\
      -key .broker-dev/operator-admin.key {host}:{port} grpc.health.v1.Health/Check
"""
