"""``broker tasks|agents|servers|revoke``: see what agents are doing, and stop them.

broker tasks list [--agent A] [--server S] [--state S] [--since T] [--limit N] [--json]
broker tasks show TASK_ID [--json]
broker tasks revoke TASK_ID [--reason R] [--dry-run] [--json]
broker agents revoke AGENT [--for D] [--reason R] [--dry-run] [--json]
broker servers revoke SERVER [--for D] [--reason R] [--dry-run] [--json]
broker revoke (--tier N [--for D] | --issued-before T) [--reason R] [--dry-run] [--json]

Revoking an agent, a server or a tier is a kill switch that persists: it stays refused until
``--for`` runs out or an operator lifts it (``broker blocks list|lift``).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import click
from google.protobuf import timestamp_pb2

from broker._proto.broker.v1 import admin_pb2
from broker.cli.client import admin_stub, call
from broker.cli.output import (
    emit_json,
    fields,
    json_option,
    message_dict,
    relative,
    short_id,
    table,
    when,
)
from broker.cli.pins import pin, pins
from broker.core.durations import parse_duration

STATES = {
    "all": admin_pb2.TASK_STATE_UNSPECIFIED,
    "active": admin_pb2.TASK_STATE_ACTIVE,
    "ended": admin_pb2.TASK_STATE_ENDED,
    "revoked": admin_pb2.TASK_STATE_REVOKED,
    "expired": admin_pb2.TASK_STATE_EXPIRED,
}
STATE_NAMES = {v: k for k, v in STATES.items()}
TAINTS = {0: "-", 1: "clean", 2: "untrusted", 3: "suspect"}
APPROVAL_STATES = {0: "-", 1: "pending", 2: "approved", 3: "denied", 4: "used", 5: "expired"}


class TimeParam(click.ParamType[float]):
    """A point in time: ISO 8601 (UTC without a zone), a duration ago (``90s``, ``2h``), or
    epoch seconds (``@1767225600``)."""

    name = "TIME"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float):
            return value
        text = str(value).strip()
        if text.startswith("@"):
            try:
                return float(text[1:])
            except ValueError:
                self.fail(f"{text!r}: expected @EPOCH_SECONDS", param, ctx)
        try:
            when_ = datetime.fromisoformat(text)
        except ValueError:
            try:
                return time.time() - parse_duration(text)
            except ValueError:
                self.fail(
                    f"{text!r} is not an ISO 8601 time, a duration ago (2h) or @EPOCH", param, ctx
                )
        if when_.tzinfo is None:
            when_ = when_.replace(tzinfo=UTC)
        return when_.timestamp()


TIME = TimeParam()


def _ts(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


_dry_run = click.option(
    "--dry-run", is_flag=True, help="Show what would be revoked (the blast radius); change nothing."
)
_for = click.option(
    "--for",
    "duration",
    default="",
    help="How long the block lasts (30m, 2h, 7d); default: until lifted (broker blocks lift).",
)


def _seconds(duration: str) -> int:
    if not duration:
        return 0
    try:
        return int(parse_duration(duration))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--for") from None


_reason = click.option(
    "--reason", default="", help="Why (kept in the audit trail and the revocation event)."
)


def _print_revoke(resp: admin_pb2.RevokeResponse, as_json: bool, what: str) -> None:
    if as_json:
        emit_json(message_dict(resp))
        return
    n, live = len(resp.task_ids), resp.live_credentials
    tasks = f"{n} task{'s' if n != 1 else ''}"
    creds = f"{live} live credential{'s' if live != 1 else ''}"
    if resp.dry_run:
        click.echo(f"DRY RUN: revoking {what} would end {tasks} holding {creds}; nothing changed")
    elif resp.HasField("block"):
        b = resp.block
        scope = "task created and token" if b.kind in ("agent", "issued_before") else "token"
        click.echo(f"revoked {what}: every {scope} issued up to {when(b.floor)} is refused")
        if b.blocked:
            end = when(b.blocked_until.ToSeconds()) if b.HasField("blocked_until") else "lifted"
            click.echo(
                f"blocked until {end}: nothing new for it "
                f"(lift with: broker blocks lift {b.kind} {b.subject} --reason ...)"
            )
    elif n:
        click.echo(f"revoked {what}: ended {tasks}, {creds} stopped working")
    else:
        click.echo(f"revoked {what}: no live task was in scope")
    for task_id in resp.task_ids:
        click.echo(f"  {task_id}")


# -- tasks --------------------------------------------------------------------------------------


@click.group("tasks")
def tasks() -> None:
    """List, inspect and revoke tasks."""


@tasks.command("list")
@click.option("--agent", default="", help="Only this agent's (SPIFFE ID or name).")
@click.option("--server", default="", help="Only tasks granted credentials for this server.")
@click.option(
    "--state",
    type=click.Choice(sorted(STATES)),
    default="active",
    show_default=True,
    help="Which tasks.",
)
@click.option("--since", type=TIME, help="Created at or after (ISO time, or a duration ago: 2h).")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@json_option
def list_tasks(
    agent: str, server: str, state: str, since: float | None, limit: int, as_json: bool
) -> None:
    """List tasks, oldest first."""
    req = admin_pb2.ListTasksRequest(agent=agent, server=server, state=STATES[state], limit=limit)
    if since is not None:
        req.since.CopyFrom(_ts(since))
    with admin_stub() as stub:
        resp = call(stub.ListTasks, req)
    if as_json:
        emit_json([message_dict(t) for t in resp.tasks])
        return
    if not resp.tasks:
        click.echo(f"no {'' if state == 'all' else state + ' '}tasks")
        return
    now = time.time()
    table(
        ("TASK", "AGENT", "STATE", "TAINT", "LIVE", "CREATED", "EXPIRES", "SERVERS"),
        [
            (
                t.task_id,
                short_id(t.agent),
                STATE_NAMES.get(t.state, "?"),
                TAINTS.get(t.taint, "?"),
                t.live_credentials,
                when(t.created_at),
                relative(t.expires_at, now),
                ", ".join(short_id(s) for s in t.servers) or "-",
            )
            for t in resp.tasks
        ],
    )


@tasks.command("show")
@click.argument("task_id")
@json_option
def show_task(task_id: str, as_json: bool) -> None:
    """Show a task: its credentials, approvals and recent audit records."""
    with admin_stub() as stub:
        resp = call(stub.GetTask, admin_pb2.GetTaskRequest(task_id=task_id))
    if as_json:
        emit_json(message_dict(resp))
        return
    t, now = resp.task, time.time()
    fields(
        [
            ("task", t.task_id),
            ("agent", t.agent),
            ("state", STATE_NAMES.get(t.state, "?")),
            ("taint", TAINTS.get(t.taint, "?")),
            ("intent", t.intent),
            ("on behalf of", t.on_behalf_of or "-"),
            ("parent", t.parent_task_id or "-"),
            ("created", when(t.created_at)),
            ("expires", f"{when(t.expires_at)} ({relative(t.expires_at, now)})"),
            ("plan", ", ".join(f"{short_id(s.server)} {s.tool or '*'}" for s in t.plan) or "-"),
            ("labels", ", ".join(f"{k}={v}" for k, v in sorted(t.labels.items())) or "-"),
            ("live credentials", t.live_credentials),
        ]
    )
    _section("credentials", resp.credentials, _credential_rows(resp.credentials, now))
    _section("approvals", resp.approvals, approval_rows(resp.approvals, now))
    _section("audit (recent)", resp.audit, audit_rows(resp.audit))


def _section(
    title: str, items: Any, rows: tuple[tuple[str, ...], list[tuple[object, ...]]]
) -> None:
    click.echo(f"\n{title}:" + ("" if items else " none"))
    if items:
        table(*rows)


def _credential_rows(creds: Any, now: float) -> tuple[tuple[str, ...], list[tuple[object, ...]]]:
    return (
        ("JTI", "SERVER", "TOOL", "ARGS", "ISSUED", "EXPIRES", "USED"),
        [
            (
                c.jti,
                short_id(c.server),
                c.tool,
                c.args_sha256[:12],
                when(c.issued_at),
                relative(c.expires_at, now),
                "yes" if c.consumed else "no",
            )
            for c in creds
        ],
    )


def approval_rows(found: Any, now: float) -> tuple[tuple[str, ...], list[tuple[object, ...]]]:
    return (
        ("APPROVAL", "STATE", "AGENT", "SERVER", "TOOL", "ARGS", "EXPIRES", "DETAIL"),
        [
            (
                a.approval_id,
                APPROVAL_STATES.get(a.state, "?"),
                short_id(a.agent),
                short_id(a.server),
                a.tool,
                a.args_sha256[:12],
                relative(a.expires_at, now),
                (
                    f"{'by ' + short_id(a.decided_by) + ': ' if a.decided_by else ''}"
                    f"{a.decision_reason or a.justification or a.reason}"
                ),
            )
            for a in found
        ],
    )


def audit_rows(records: Any) -> tuple[tuple[str, ...], list[tuple[object, ...]]]:
    import json

    rows: list[tuple[object, ...]] = []
    for r in records:
        body = json.loads(r.json)
        rows.append(
            (
                when(float(body.get("time", 0))),
                body.get("event", "?"),
                short_id(str(body.get("actor", "-"))),
                f"{short_id(str(body.get('server', '')))} {body.get('tool', '')}".strip() or "-",
                body.get("decision") or body.get("outcome") or "-",
                body.get("reason", ""),
            )
        )
    return ("TIME", "EVENT", "ACTOR", "CALL", "RESULT", "REASON"), rows


@tasks.command("revoke")
@click.argument("task_id")
@_reason
@_dry_run
@json_option
def revoke_task(task_id: str, reason: str, dry_run: bool, as_json: bool) -> None:
    """Revoke a task (and its sub-tasks): every credential of it stops verifying."""
    with admin_stub() as stub:
        resp = call(
            stub.RevokeTask,
            admin_pb2.RevokeTaskRequest(task_id=task_id, reason=reason, dry_run=dry_run),
        )
    _print_revoke(resp, as_json, f"task {task_id}")


# -- agents, servers, tier / time ---------------------------------------------------------------


@click.group("agents")
def agents() -> None:
    """Kill switches per agent."""


@agents.command("revoke")
@click.argument("agent")
@_for
@_reason
@_dry_run
@json_option
def revoke_agent(agent: str, duration: str, reason: str, dry_run: bool, as_json: bool) -> None:
    """Revoke AGENT (SPIFFE ID, or its name: demo): its tasks and tokens now, and block it."""
    with admin_stub() as stub:
        resp = call(
            stub.RevokeAgent,
            admin_pb2.RevokeAgentRequest(
                agent=agent, reason=reason, dry_run=dry_run, duration_seconds=_seconds(duration)
            ),
        )
    _print_revoke(resp, as_json, f"agent {agent}")


@click.group("servers")
def servers() -> None:
    """Kill switches per MCP server, and the pins of its tool definitions."""


@servers.command("revoke")
@click.argument("server")
@_for
@_reason
@_dry_run
@json_option
def revoke_server(server: str, duration: str, reason: str, dry_run: bool, as_json: bool) -> None:
    """Revoke every token for SERVER (SPIFFE ID or registry name) and block it."""
    with admin_stub() as stub:
        resp = call(
            stub.RevokeServer,
            admin_pb2.RevokeServerRequest(
                server=server, reason=reason, dry_run=dry_run, duration_seconds=_seconds(duration)
            ),
        )
    _print_revoke(resp, as_json, f"server {server}")


servers.add_command(pins)
servers.add_command(pin)


@click.command("revoke")
@click.option("--tier", type=click.IntRange(0, 3), help="Every task using a server of this tier.")
@click.option("--issued-before", type=TIME, help="Every task created before this time.")
@_for
@_reason
@_dry_run
@json_option
def revoke(
    tier: int | None,
    issued_before: float | None,
    duration: str,
    reason: str,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Revoke by authority tier or by time: exactly one of --tier or --issued-before."""
    if (tier is None) == (issued_before is None):
        raise click.UsageError("give exactly one of --tier N or --issued-before TIME")
    with admin_stub() as stub:
        if tier is not None:
            resp = call(
                stub.RevokeTier,
                admin_pb2.RevokeTierRequest(
                    tier=tier, reason=reason, dry_run=dry_run, duration_seconds=_seconds(duration)
                ),
            )
            what = f"tier {tier}"
        else:
            assert issued_before is not None
            req = admin_pb2.RevokeIssuedBeforeRequest(reason=reason, dry_run=dry_run)
            req.issued_before.CopyFrom(_ts(issued_before))
            resp = call(stub.RevokeIssuedBefore, req)
            what = f"everything issued before {when(issued_before)}"
    _print_revoke(resp, as_json, what)
