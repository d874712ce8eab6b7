"""`broker guard`: per-call broker credentials in front of an unmodified MCP server (API.md,
"Drop-in enforcement"; docs/guard.md). The global --cert/--key are the MCP server's own
X.509-SVID (spiffe://TD/mcp/NAME); --addr/--ca reach the broker.

    broker --cert mcp-files.crt --key mcp-files.key guard --listen 127.0.0.1:8201 --tls \\
        -- node node_modules/@modelcontextprotocol/server-filesystem/dist/index.js /srv
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
from pathlib import Path

import click

from broker.cli.client import DEFAULT_ADDR, CliError, ExitCode, Settings


def _svid(settings: Settings) -> tuple[str, Path, Path, Path]:
    addr = settings.addr or os.environ.get("BROKER_ADDR") or DEFAULT_ADDR
    ca = settings.ca or _env_path("BROKER_CA")
    cert = settings.cert or _env_path("BROKER_CERT")
    key = settings.key or _env_path("BROKER_KEY")
    if cert is None or key is None:
        raise CliError(
            "the guard runs as its MCP server's identity: give --cert and --key (or "
            "BROKER_CERT/BROKER_KEY) of its X.509-SVID spiffe://TD/mcp/NAME",
            ExitCode.USAGE,
            hint="broker --cert .broker-dev/mcp-files.crt --key .broker-dev/mcp-files.key "
            "guard ...",
        )
    if ca is None:
        dev = Path(".broker-dev/ca.crt")
        if not dev.exists():
            raise CliError("give --ca (or BROKER_CA): the trust bundle", ExitCode.USAGE)
        ca = dev
    for path in (ca, cert, key):
        if not path.is_file():
            raise CliError(f"{path}: no such file", ExitCode.USAGE)
    return addr, ca, cert, key


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


@click.command(
    "guard",
    context_settings={"ignore_unknown_options": False, "allow_interspersed_args": False},
)
@click.option(
    "--listen", required=True, metavar="HOST:PORT", help="Where clients reach /mcp (port 0: any)."
)
@click.option(
    "--tls",
    is_flag=True,
    help="HTTPS with the SVID; client certificates from the trust bundle are asked for, and "
    "a presented one must match the credential's cnf.x5t#S256.",
)
@click.option("--public-url", metavar="URL", help="The URL clients use (RFC 9728 resource).")
@click.option(
    "--online", is_flag=True, help="Verify each credential at the broker (VerifyCredential)."
)
@click.option("--upstream", "upstream_url", metavar="URL", help="A streamable HTTP MCP server.")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning"]),
    default="info",
    show_default=True,
)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def guard(
    settings: Settings,
    listen: str,
    tls: bool,
    public_url: str | None,
    online: bool,
    upstream_url: str | None,
    log_level: str,
    command: tuple[str, ...],
) -> None:
    """Enforce per-call broker credentials in front of an MCP server you did not write.

    The upstream is --upstream URL (streamable HTTP) or, after `--`, a stdio command that the
    guard starts, restarts when it dies and stops on exit. Clients call http(s)://HOST:PORT/mcp
    with `Authorization: Bearer <credential>` on every tools/call. See docs/guard.md.
    """
    if (upstream_url is None) == (not command):
        raise CliError(
            "give exactly one upstream: --upstream URL, or -- COMMAND [ARGS...]", ExitCode.USAGE
        )
    if command and shutil.which(command[0]) is None:
        raise CliError(
            f"the upstream command {command[0]!r} was not found (not a file, not on PATH)",
            ExitCode.USAGE,
        )
    addr, ca, cert, key = _svid(settings)
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from broker.client.guard.run import Guard, GuardOptions

    options = GuardOptions(
        broker=addr,
        ca=ca,
        cert=cert,
        key=key,
        listen=listen,
        tls=tls,
        public_url=public_url,
        online=online,
        upstream_url=upstream_url,
        upstream_command=list(command),
    )
    from broker.core.errors import BrokerError

    try:
        asyncio.run(_serve(Guard, options))
    except ValueError as exc:
        raise CliError(str(exc), ExitCode.USAGE) from None
    except BrokerError as exc:  # e.g. the broker cannot be reached at start: fail, say why
        raise CliError(
            f"the guard could not start: {exc}",
            ExitCode.UNAVAILABLE,
            hint=f"is the broker running on {addr}, and does it trust {cert}?",
        ) from None
    except OSError as exc:
        raise CliError(f"cannot listen on {listen}: {exc}", ExitCode.ERROR) from None


async def _serve(guard_class: type, options: object) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with guard_class(options) as running:
        click.echo(f"guard {running.server_id} listening on {running.url}", err=True)
        await stop.wait()
