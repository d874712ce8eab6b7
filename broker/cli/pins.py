"""`broker servers pins NAME` and `broker servers pin NAME`: the tool definitions a guard may
list and call (docs/guard.md, "Pins and rug pulls").

A guard pins each registry tool's definition (name, description, input schema, annotations:
RFC 8785 JSON, SHA-256) the first time it sees it. A definition that changes afterwards is a
rug pull until an operator has looked at it and re-pinned it here.
"""

from __future__ import annotations

import click

from broker._proto.broker.v1 import admin_pb2
from broker.cli.client import admin_stub, call
from broker.cli.output import emit_json, json_option, message_dict, table, when


def _short(sha: str) -> str:
    return sha[:16]


def _rows(pins: list[admin_pb2.ToolPin]) -> list[list[object]]:
    return [
        [
            p.tool,
            "CHANGED" if p.changed else "ok",
            _short(p.pinned_sha256),
            when(p.pinned_at),
            _short(p.observed_sha256),
            when(p.observed_at),
        ]
        for p in pins
    ]


HEADERS = ["TOOL", "STATE", "PINNED", "PINNED AT", "OBSERVED", "OBSERVED AT"]


@click.command("pins")
@click.argument("server")
@json_option
def pins(server: str, as_json: bool) -> None:
    """Tool definition pins of SERVER: pinned vs last observed digest; CHANGED tools are
    neither listed nor callable through its guard until re-pinned."""
    with admin_stub() as stub:
        resp = call(stub.ListToolPins, admin_pb2.ListToolPinsRequest(server=server))
    if as_json:
        emit_json([message_dict(p) for p in resp.pins])
        return
    if not resp.pins:
        click.echo(f"no pins for {server}: its guard has not reported any registry tool yet")
        return
    table(HEADERS, _rows(list(resp.pins)))
    changed = sum(p.changed for p in resp.pins)
    if changed:
        click.echo(
            f"\n{changed} tool(s) changed since pinned: review the server, then "
            f"`broker servers pin {server} [--tool T]`"
        )


@click.command("pin")
@click.argument("server")
@click.option("--tool", default="", help="Only this tool (default: every CHANGED tool).")
@click.option("--dry-run", is_flag=True, help="Show what would be re-pinned; change nothing.")
@json_option
def pin(server: str, tool: str, dry_run: bool, as_json: bool) -> None:
    """Re-pin SERVER's tools to the definitions its guard last observed (audited)."""
    with admin_stub() as stub:
        resp = call(
            stub.PinTools, admin_pb2.PinToolsRequest(server=server, tool=tool, dry_run=dry_run)
        )
    if as_json:
        emit_json({"dry_run": resp.dry_run, "pins": [message_dict(p) for p in resp.pins]})
        return
    if not resp.pins:
        click.echo(f"nothing to re-pin for {server}: no tool changed")
        return
    table(HEADERS, _rows(list(resp.pins)))
    verb = "would re-pin" if resp.dry_run else "re-pinned"
    click.echo(f"\n{verb} {len(resp.pins)} tool(s) of {server}")
