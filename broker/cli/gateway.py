"""`broker gateway`: an MCP server for unmodified MCP clients that asks the broker for a
credential per tool call (API.md "Drop-in enforcement", docs/gateway.md)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from broker.cli.client import CliError, ExitCode, settings


@click.command()
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The gateway's YAML config (intent, servers, plan, approval_wait...).",
)
@click.option(
    "--listen",
    metavar="HOST:PORT",
    help="Serve streamable HTTP at http://HOST:PORT/mcp instead of stdio (loopback advised).",
)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging on stderr.")
def gateway(config_path: Path, listen: str | None, verbose: bool) -> None:
    """Serve MCP to an unmodified client (stdio, or HTTP with --listen) in front of the
    servers of the config, as the agent of --cert/--key: a task per session, a credential
    per tool call, refusals as tool results. Decisions are logged on stderr, one line each.

    \b
    Claude Code:  claude mcp add broker -- broker --cert /abs/agent.crt \\
                    --key /abs/agent.key --ca /abs/ca.crt gateway --config /abs/gateway.yaml
    """
    import asyncio

    from broker.client.gateway.app import resolve_connection, run
    from broker.client.gateway.config import BrokerSettings, load_config
    from broker.core.errors import BrokerError

    _logging(verbose)
    s = settings()
    try:
        cfg = load_config(config_path)
        conn = resolve_connection(
            BrokerSettings(addr=s.addr or "", ca=s.ca, cert=s.cert, key=s.key), cfg
        )
    except BrokerError as exc:
        raise CliError(f"invalid gateway configuration: {exc.message}", ExitCode.USAGE) from None
    try:
        asyncio.run(run(cfg, conn, listen))
    except BrokerError as exc:
        raise CliError(f"cannot start the gateway: {exc.message}", ExitCode.USAGE) from None
    except KeyboardInterrupt:  # pragma: no cover - signals are handled in the loop
        pass


def _logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    decisions = logging.getLogger("broker.gateway.decisions")
    decisions.addHandler(handler)
    decisions.setLevel(logging.INFO)
    decisions.propagate = False
    other = logging.StreamHandler(sys.stderr)
    other.setFormatter(logging.Formatter("broker gateway: %(levelname)s %(message)s"))
    root = logging.getLogger("broker.gateway")
    root.addHandler(other)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
