"""`broker serve`: run the broker."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from broker.core.errors import BrokerError
from broker.rpc.run import serve_forever  # the server's dependencies: a missing one is named

log = logging.getLogger("broker")


@click.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="YAML config file.")
@click.option("--listen", help="HOST:PORT (env BROKER_LISTEN).")
@click.option("--store", help="memory:// | redis://... | redis-cluster://... (env BROKER_STORE).")
@click.option(
    "--overlay",
    "overlays",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="A YAML file merged over --config (repeatable; env BROKER_OVERLAY), e.g. "
    "examples/dev/vault.yaml for the dev OpenBao.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="Processes sharing the port (SO_REUSEPORT); default: the cores, 1 with memory://.",
)
def serve(
    config_path: Path | None,
    listen: str | None,
    store: str | None,
    overlays: tuple[Path, ...],
    workers: int | None,
) -> None:
    """Serve the broker over gRPC with mutual TLS."""
    from broker.adapters.config import load_config
    from broker.adapters.logs import setup_logging

    try:
        config = load_config(
            config_path,
            overrides={"listen": listen, "store": store, "workers": workers},
            overlays=overlays,
        )
    except BrokerError as exc:
        raise click.ClickException(f"invalid configuration: {exc.message}") from None
    setup_logging(config.log_level, config.log_format)

    try:
        serve_forever(config)
    except BrokerError as exc:
        raise click.ClickException(f"cannot start: {exc.message}") from None
    except KeyboardInterrupt:
        pass
