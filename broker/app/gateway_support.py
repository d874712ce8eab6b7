"""Two AgentService use cases for agents that front unmodified MCP clients (``broker gateway``).

- ``preview_tools``: what policy would decide now, per (server, tool), for a live task of the
  caller, without minting, asking for approval or counting against quotas. A gateway lists only
  what could be granted, so that listing matches calling.
- ``raise_taint``: the agent read what an MCP server that does not verify credentials returned
  (an unguarded upstream): nobody else will report it, so the agent does. The taint rises from
  the server's content trust (registry), the sanitizer's findings and an optional floor, never
  falls; a credential named by ``jti`` is used up; live credentials that policy would no longer
  grant at the new taint are revoked, as after an MCP server's own ReportOutcome.

Both act on the caller's own tasks only (another agent's task is reported absent).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from broker.app.credentials import Broker, _policy_request
from broker.core.audit.record import AuditEventName
from broker.core.errors import InvalidRequest, NotFound, Reason
from broker.core.ids import task_of_jti
from broker.core.model import Taint, TaskRecord
from broker.core.policy.model import Effect
from broker.core.registry import ContentTrust
from broker.core.spiffe import PeerIdentity

MAX_PREVIEW = 1000  # tools per PreviewTools request
MAX_FINDINGS = 50


@dataclass(frozen=True)
class ToolPreview:
    server: str  # as asked
    tool: str
    decision: str  # "allow" | "approval" | "deny"
    reason: str = ""  # a Reason code for "deny"
    message: str = ""
    policy_ids: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()  # the policies' @reason texts


async def preview_tools(
    broker: Broker, peer: PeerIdentity, task_id: str, tools: Sequence[tuple[str, str]]
) -> tuple[Taint, list[ToolPreview]]:
    if len(tools) > MAX_PREVIEW:
        raise InvalidRequest("tools", f"at most {MAX_PREVIEW} per request, got {len(tools)}")
    now = broker.clock.now()
    task = await broker._task(task_id, now, owner=str(peer.spiffe_id))
    out: list[ToolPreview] = []
    counts = {"allow": 0, "approval": 0, "deny": 0}
    for ref, name in tools:
        try:
            server = broker.registry.server(ref)
            tool = broker.registry.tool(server, name)
        except NotFound as exc:
            out.append(ToolPreview(ref, name, "deny", exc.reason.value, exc.message))
            counts["deny"] += 1
            continue
        in_plan = not task.plan or any(s.covers(server.spiffe_id, tool.name) for s in task.plan)
        if not in_plan:
            out.append(
                ToolPreview(
                    ref,
                    name,
                    "deny",
                    Reason.OUTSIDE_PLAN.value,
                    f"{server.name}/{tool.name} is not in the plan declared at BeginTask",
                )
            )
            counts["deny"] += 1
            continue
        decision = broker.policy.decide(_policy_request(task, server, tool, task.taint, now))
        ids = tuple(decision.policy_ids)
        if decision.effect is Effect.ALLOW:
            out.append(ToolPreview(ref, name, "allow", policy_ids=ids))
        elif decision.effect is Effect.APPROVAL_REQUIRED:
            out.append(
                ToolPreview(
                    ref,
                    name,
                    "approval",
                    Reason.APPROVAL_REQUIRED.value,
                    "needs an operator's approval",
                    ids,
                    tuple(decision.reasons),
                )
            )
        else:
            out.append(
                ToolPreview(
                    ref,
                    name,
                    "deny",
                    Reason.POLICY_DENIED.value,
                    f"denied by policy {', '.join(ids) or '(no permit matched)'}",
                    ids,
                    tuple(decision.reasons),
                )
            )
        counts[out[-1].decision] += 1
    broker._audit(
        AuditEventName.TASK_PREVIEW,
        peer,
        task=task.task_id,
        extra={"taint": task.taint.label, **counts},
    )
    return task.taint, out


async def raise_taint(
    broker: Broker,
    peer: PeerIdentity,
    task_id: str,
    server_ref: str,
    *,
    jti: str = "",
    findings: Sequence[tuple[str, str]] = (),
    floor: Taint | None = None,
) -> Taint:
    if len(findings) > MAX_FINDINGS:
        raise InvalidRequest("findings", f"at most {MAX_FINDINGS}, got {len(findings)}")
    now = broker.clock.now()
    task = await broker._task(task_id, now, owner=str(peer.spiffe_id), live=False)
    if not server_ref:  # a floor alone: e.g. a gateway carrying a session's taint to a new task
        if jti or findings:
            raise InvalidRequest("server", "is required with a jti or findings")
        if floor is None:
            raise InvalidRequest("taint", "is required when no server is named")
        return await _raise(broker, peer, task, floor, None, "", ())
    server = broker.registry.server(server_ref)
    taint = floor or Taint.CLEAN
    if server.content_trust is ContentTrust.UNTRUSTED:
        taint = max(taint, Taint.UNTRUSTED)
    if findings:
        taint = Taint.SUSPECT
    if jti:
        if task_of_jti(jti) != task.task_id:
            raise InvalidRequest("jti", "is not a credential of this task")
        cred = await broker.store.get_credential(task.task_id, jti)
        if cred is None or cred.server != server.spiffe_id:
            raise NotFound(f"no credential {jti} for {server.name} in task {task.task_id}")
        if not cred.consumed:  # the unguarded call was made: the credential is used up
            await broker.store.consume_credential(task.task_id, jti, now)
    return await _raise(broker, peer, task, taint, server.spiffe_id, jti, findings)


async def _raise(
    broker: Broker,
    peer: PeerIdentity,
    task: TaskRecord,
    taint: Taint,
    server: str | None,
    jti: str,
    findings: Sequence[tuple[str, str]],
) -> Taint:
    # As after an MCP server's ReportOutcome: the whole delegation tree rises with the task, and
    # live credentials policy would no longer grant are revoked.
    new, tainted = await broker.raise_taint(peer, task.task_id, taint)
    broker._audit(
        AuditEventName.TAINT_RAISE,
        peer,
        task=task.task_id,
        server=server,
        jti=jti or None,
        extra={
            "taint": new.label,
            "tainted_tasks": tainted,
            "findings": ",".join(sorted({k for k, _ in findings})),
            "unguarded": server is not None,
        },
    )
    return new
