"""``broker blocks list|lift``: the kill switches in force, and ending one.

Revoking an agent (``broker agents revoke``), a server (``broker servers revoke``) or a tier
(``broker revoke --tier``) blocks it: nothing new is started or minted for it, and every token
of it is refused online and offline, until ``--for`` runs out or an operator lifts the block.
Lifting needs a reason; it is audited (``block.lift``). What the revoke revoked stays revoked.
"""

from __future__ import annotations

import time

import click

from broker._proto.broker.v1 import admin_pb2
from broker.cli.client import admin_stub, call
from broker.cli.output import emit_json, fields, json_option, message_dict, relative, table, when


@click.group("blocks")
def blocks() -> None:
    """Kill switches in force (revoked agents, servers, tiers): list and lift them."""


def _until(b: admin_pb2.Block, now: float) -> str:
    if not b.blocked:
        return "lifted" if b.kind != "issued_before" else "-"
    return relative(b.blocked_until, now) if b.HasField("blocked_until") else "until lifted"


@blocks.command("list")
@click.option("--all", "every", is_flag=True, help="Also lifted blocks and floors still kept.")
@json_option
def list_blocks(every: bool, as_json: bool) -> None:
    """List the blocks in force, oldest first."""
    with admin_stub() as stub:
        resp = call(stub.ListBlocks, admin_pb2.ListBlocksRequest(all=every))
    if as_json:
        emit_json([message_dict(b) for b in resp.blocks])
        return
    if not resp.blocks:
        click.echo("no blocks" + ("" if every else " in force"))
        return
    now = time.time()
    table(
        ("KIND", "SUBJECT", "SINCE", "BLOCKED", "BY", "REASON"),
        [(b.kind, b.subject, when(b.floor), _until(b, now), b.by, b.reason) for b in resp.blocks],
    )


@blocks.command("lift")
@click.argument("kind", type=click.Choice(["agent", "server", "tier"]))
@click.argument("subject")
@click.option("--reason", required=True, help="Why the block ends (kept in the audit trail).")
@json_option
def lift(kind: str, subject: str, reason: str, as_json: bool) -> None:
    """Lift the block of KIND SUBJECT (agent SPIFFE ID or name, server, tier number)."""
    with admin_stub() as stub:
        resp = call(
            stub.LiftBlock, admin_pb2.LiftBlockRequest(kind=kind, subject=subject, reason=reason)
        )
    if as_json:
        emit_json(message_dict(resp.block))
        return
    b = resp.block
    click.echo(f"lifted the block of {b.kind} {b.subject}")
    fields([("revoked up to", when(b.floor)), ("by", b.by), ("reason", b.reason)])
