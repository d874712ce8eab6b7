"""``broker approvals list|approve|deny``: decide the calls policy sent to an operator.

An approval is for one exact call (agent, task, server, tool, arguments digest), is used once,
and expires (``approvals.ttl_seconds``, 10 minutes by default). Deciding needs a reason; the
decision is recorded with the operator's SPIFFE ID.
"""

from __future__ import annotations

import time

import click

from broker._proto.broker.v1 import admin_pb2
from broker.cli.client import admin_stub, call
from broker.cli.output import emit_json, fields, json_option, message_dict, relative, table, when
from broker.cli.tasks import APPROVAL_STATES, approval_rows

_STATES = {name: number for number, name in APPROVAL_STATES.items() if number}


@click.group("approvals")
def approvals() -> None:
    """List, approve and deny per-call approvals."""


@approvals.command("list")
@click.option(
    "--state",
    type=click.Choice(sorted(_STATES)),
    default="pending",
    show_default=True,
    help="Which approvals.",
)
@click.option("--all", "every", is_flag=True, help="Every retained approval, whatever its state.")
@click.option("--task", "task_id", default="", help="Only this task's.")
@json_option
def list_approvals(state: str, every: bool, task_id: str, as_json: bool) -> None:
    """List approvals (pending ones by default), oldest first."""
    req = admin_pb2.ListApprovalsRequest(
        state=_STATES[state],  # type: ignore[arg-type]
        all=every,
        task_id=task_id,
    )
    with admin_stub() as stub:
        resp = call(stub.ListApprovals, req)
    if as_json:
        emit_json([message_dict(a) for a in resp.approvals])
        return
    if not resp.approvals:
        click.echo("no approvals" if every else f"no {state} approvals")
        return
    table(*approval_rows(resp.approvals, time.time()))


def _decide(approval_id: str, approve: bool, reason: str, as_json: bool) -> None:
    req = admin_pb2.DecideApprovalRequest(approval_id=approval_id, approve=approve, reason=reason)
    with admin_stub() as stub:
        resp = call(stub.DecideApproval, req)
    if as_json:
        emit_json(message_dict(resp.approval))
        return
    a = resp.approval
    click.echo(f"{'approved' if approve else 'denied'} {a.approval_id}")
    fields(
        [
            ("call", f"{a.server} {a.tool} (args_sha256 {a.args_sha256})"),
            ("task", f"{a.task_id} (agent {a.agent})"),
            ("decided by", f"{a.decided_by}: {a.decision_reason}"),
            ("expires", f"{when(a.expires_at)} ({relative(a.expires_at, time.time())})"),
        ]
    )
    if approve:
        click.echo("the agent gets its credential when it retries this exact call with the id")


_reason = click.option(
    "--reason", required=True, help="Why (required: kept in the audit trail and shown to others)."
)


@approvals.command("approve")
@click.argument("approval_id")
@_reason
@json_option
def approve(approval_id: str, reason: str, as_json: bool) -> None:
    """Approve one pending call: good for that exact call, once, until it expires."""
    _decide(approval_id, True, reason, as_json)


@approvals.command("deny")
@click.argument("approval_id")
@_reason
@json_option
def deny(approval_id: str, reason: str, as_json: bool) -> None:
    """Deny one pending call: the agent gets no credential for it."""
    _decide(approval_id, False, reason, as_json)
