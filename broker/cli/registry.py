"""`broker registry suggest`: registry entries for the tools of an MCP server you did not write,
for a person to review (docs/guard.md). Risks are guessed from the server's MCP annotations
(``broker.core.tooldefs.guess_risk``): hints from the server itself, never facts.

    broker registry suggest --name files -- node .../server-filesystem/dist/index.js /srv
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import click

from broker.cli.client import CliError, ExitCode

TIER_HELP = "0 informs only, 1 code in a sandbox or branch, 2 shared systems/secrets, 3 production"


@click.group("registry")
def registry() -> None:
    """Help writing the registry (examples/dev/registry.yaml documents its format)."""


@registry.command("suggest")
@click.option("--name", required=True, help="The server's registry name (spiffe://TD/mcp/NAME).")
@click.option("--trust-domain", default="dev.local", show_default=True)
@click.option("--upstream", "upstream_url", metavar="URL", help="A streamable HTTP MCP server.")
@click.option("--timeout", type=float, default=30.0, show_default=True)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def suggest(
    name: str,
    trust_domain: str,
    upstream_url: str | None,
    timeout: float,
    command: tuple[str, ...],
) -> None:
    """Print a registry entry for an upstream's tools (--upstream URL or -- COMMAND ...)."""
    if (upstream_url is None) == (not command):
        raise CliError(
            "give exactly one upstream: --upstream URL, or -- COMMAND [ARGS...]", ExitCode.USAGE
        )
    try:
        info, tools = asyncio.run(_list(upstream_url, list(command), wait=timeout))
    except Exception as exc:  # noqa: BLE001 - the command reports what failed, exit 5
        raise CliError(f"cannot list the upstream's tools: {exc}", ExitCode.UNAVAILABLE) from None
    click.echo(render(name, trust_domain, info, tools, upstream_url or " ".join(command)), nl=False)


async def _list(
    url: str | None, command: list[str], *, wait: float
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from broker.client.guard.upstream import StdioUpstream, Upstream
    from broker.client.guard.upstream_http import HttpUpstream

    upstream: Upstream = HttpUpstream(url) if url else StdioUpstream(command)
    await upstream.start()
    try:
        await upstream.wait_ready(wait)
        tools: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(100):
            page = await upstream.request("tools/list", {"cursor": cursor} if cursor else {})
            tools.extend(t for t in page.get("tools", []) if isinstance(t, dict))
            cursor = page.get("nextCursor")
            if not cursor:
                break
        info = (upstream.init_result or {}).get("serverInfo") or {}
        return info if isinstance(info, dict) else {}, tools
    finally:
        await upstream.aclose()


def render(
    name: str,
    trust_domain: str,
    info: dict[str, Any],
    tools: list[dict[str, Any]],
    source: str,
) -> str:
    """The YAML text (with review comments) of one registry server entry."""
    from broker.core.tooldefs import guess_risk, tool_digest

    server = f"{info.get('name', '?')} {info.get('version', '')}".strip()
    lines = [
        f"# Suggested by `broker registry suggest` from: {source}",
        f"# Server: {server}. REVIEW before use: risks are guessed from the server's own",
        "# annotations (hints, not facts); choose the tier and content trust yourself.",
        "servers:",
        f"  - spiffe_id: spiffe://{trust_domain}/mcp/{name}",
        f"    name: {name}",
        f"    tier: 1  # {TIER_HELP}",
        "    content_trust: untrusted  # trusted only if nothing it returns comes from outside",
        "    tools:",
    ]
    for tool in sorted(tools, key=lambda t: str(t.get("name"))):
        tool_name = str(tool.get("name"))
        risk, why = guess_risk(tool)
        text = str(tool.get("description") or "").strip().splitlines()
        first = text[0][:120] if text else ""
        try:
            pin = tool_digest(tool)[:16]
        except ValueError:
            pin = "not digestible"
        entry = json.dumps({"risk": risk, "description": first}, ensure_ascii=False)
        lines.append(f"      {json.dumps(tool_name)}: {entry}  # {why}; pin {pin}")
    return "\n".join(lines) + "\n"
