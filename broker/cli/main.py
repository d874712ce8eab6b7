"""The `broker` command: serve, dev PKI, policy tools and (later) the operator commands."""

from __future__ import annotations

import click

from broker.cli.audit import audit
from broker.cli.ca import ca, dev
from broker.cli.policy import policy
from broker.cli.serve import serve


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="broker")
def cli() -> None:
    """Just-in-time, per-tool-call credentials for AI agents and MCP servers."""


for command in (serve, ca, dev, policy, audit):
    cli.add_command(command)


def main() -> None:
    cli()
