"""Assemble and run a gateway: connection settings, the hub, then stdio or HTTP."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from broker.client.gateway.broker_link import BrokerLink
from broker.client.gateway.config import BrokerSettings, GatewayConfig
from broker.client.gateway.hub import Hub
from broker.client.gateway.tls import TlsFiles
from broker.core.errors import ConfigError

log = logging.getLogger("broker.gateway")

DEFAULT_ADDR = "127.0.0.1:7443"


@dataclass(frozen=True)
class Connection:
    addr: str
    ca: Path
    cert: Path
    key: Path


def resolve_connection(cli: BrokerSettings, cfg: GatewayConfig) -> Connection:
    """Command line and environment (BROKER_ADDR/CA/CERT/KEY) first, then the config's
    ``broker`` section; paths made absolute. No dev fallback: the gateway must run as an agent."""
    file = cfg.broker

    def pick(key: str, flag: str, env: str, what: str) -> Path:
        value: Path | None = getattr(cli, key) or getattr(file, key)
        if value is None:
            raise ConfigError(
                key, f"no {what}: pass {flag} FILE (env {env}) or set broker.{key} in the config"
            )
        path = value.expanduser().resolve()
        if not path.is_file():
            raise ConfigError(key, f"{path}: no such file ({what})")
        return path

    return Connection(
        addr=cli.addr or file.addr or DEFAULT_ADDR,
        ca=pick("ca", "--ca", "BROKER_CA", "trust bundle"),
        cert=pick("cert", "--cert", "BROKER_CERT", "agent certificate (spiffe://TD/agent/NAME)"),
        key=pick("key", "--key", "BROKER_KEY", "agent private key"),
    )


def build_hub(cfg: GatewayConfig, conn: Connection) -> Hub:
    tls = TlsFiles(conn.ca, conn.cert, conn.key)
    link = BrokerLink(conn.addr, tls)
    if "/agent/" not in link.identity:
        raise ConfigError(
            "cert", f"{conn.cert} names {link.identity}, not an agent (spiffe://TD/agent/NAME)"
        )
    return Hub(cfg, link, tls)


async def run(cfg: GatewayConfig, conn: Connection, listen: str | None = None) -> None:
    hub = build_hub(cfg, conn)
    hub.warn_unguarded()
    log.info(
        "broker gateway as %s, broker %s, servers: %s",
        hub.link.identity,
        conn.addr,
        ", ".join(f"{s.name}={s.url}" for s in cfg.servers),
    )
    try:
        if listen is None:
            from broker.client.gateway.stdio import serve_stdio

            await serve_stdio(hub)
        else:
            from broker.client.gateway.http import serve_http

            await serve_http(hub, listen)
    finally:
        await hub.aclose()
