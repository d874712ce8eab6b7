"""The `broker` command: serve, dev PKI, policy tools, and the operator commands (docs/cli.md).

Global options (before the command) say how operator commands reach the broker; commands that
work offline (serve, ca, dev, policy validate|test|explain, audit verify|export, token inspect)
ignore them.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import click

from broker.cli.client import DEFAULT_ADDR, DEFAULT_TIMEOUT, Settings

_FILE = click.Path(dir_okay=False, path_type=Path)

# name -> "module:attribute". Commands load when used, so that a client-side install
# (`pip install 'broker[client]'`: no cedarpy, no redis) runs `broker guard` and `broker gateway`.
COMMANDS: dict[str, str] = {
    "serve": "broker.cli.serve:serve",
    "ca": "broker.cli.ca:ca",
    "dev": "broker.cli.ca:dev",
    "policy": "broker.cli.policy:policy",
    "audit": "broker.cli.audit:audit",
    "tasks": "broker.cli.tasks:tasks",
    "agents": "broker.cli.tasks:agents",
    "servers": "broker.cli.tasks:servers",
    "revoke": "broker.cli.tasks:revoke",
    "blocks": "broker.cli.blocks:blocks",
    "approvals": "broker.cli.approvals:approvals",
    "keys": "broker.cli.keys:keys",
    "token": "broker.cli.token:token",
    "gateway": "broker.cli.gateway:gateway",
    "guard": "broker.cli.guard:guard",
    "registry": "broker.cli.registry:registry",
    "completion": "broker.cli.main:completion",
}
# Third-party modules only the broker server needs (the [server] extra).
_SERVER_ONLY = ("cedarpy", "redis", "hiredis", "prometheus_client")


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use (see ``COMMANDS``)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMANDS) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] not in _SERVER_ONLY:
                raise
            return _needs_server_extra(cmd_name, exc.name or "")
        command = getattr(module, attr)
        assert isinstance(command, click.Command)
        return command


def _needs_server_extra(name: str, missing: str) -> click.Command:
    @click.command(name, context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def unavailable(args: tuple[str, ...]) -> None:
        raise click.ClickException(
            f"`broker {name}` needs the broker's server dependencies ({missing} is not "
            "installed): pip install 'broker[server]'"
        )

    unavailable.short_help = "(needs pip install 'broker[server]')"
    return unavailable


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="broker")
@click.option(
    "--addr",
    envvar="BROKER_ADDR",
    metavar="HOST:PORT",
    help=f"The broker to talk to (env BROKER_ADDR) [{DEFAULT_ADDR}].",
)
@click.option(
    "--ca",
    envvar="BROKER_CA",
    type=_FILE,
    help="Trust bundle of the broker's certificate (env BROKER_CA) [.broker-dev/ca.crt].",
)
@click.option(
    "--cert",
    envvar="BROKER_CERT",
    type=_FILE,
    help="Operator certificate, an X.509-SVID spiffe://TD/operator/NAME (env BROKER_CERT) "
    "[.broker-dev/operator-admin.crt].",
)
@click.option(
    "--key",
    envvar="BROKER_KEY",
    type=_FILE,
    help="Its private key (env BROKER_KEY) [.broker-dev/operator-admin.key].",
)
@click.option(
    "--tls-server-name",
    envvar="BROKER_TLS_SERVER_NAME",
    metavar="NAME",
    help="Expect this DNS name in the broker's certificate instead of the --addr host.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=DEFAULT_TIMEOUT,
    show_default=True,
    help="Seconds to wait for the broker's answer.",
)
@click.pass_context
def cli(
    ctx: click.Context,
    addr: str | None,
    ca: Path | None,
    cert: Path | None,
    key: Path | None,
    tls_server_name: str | None,
    timeout: float,
) -> None:
    """Just-in-time, per-tool-call credentials for AI agents and MCP servers.

    Operator commands (tasks, agents, servers, revoke, approvals, keys, audit tail,
    policy reload) talk to a running broker over mutual TLS with an operator certificate;
    with no options they use the dev setup of `make run`. Exit codes: 0 ok, 1 error,
    2 usage, 3 not found, 4 permission denied, 5 broker unavailable, 6 conflict
    (see docs/cli.md).
    """
    ctx.obj = Settings(
        addr=addr, ca=ca, cert=cert, key=key, server_name=tls_server_name, timeout=timeout
    )


@click.command("completion")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print a shell completion script: eval "$(broker completion bash)"."""
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    if cls is None:  # pragma: no cover - click ships all three
        raise click.UsageError(f"no completion for {shell}")
    click.echo(cls(cli, {}, "broker", "_BROKER_COMPLETE").source())


def main() -> None:
    cli()
