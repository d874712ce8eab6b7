"""``broker.v1.AdminService``: operators (``spiffe://TD/operator/...``) over mTLS.

Each method converts the message, calls ``broker.app.admin.Admin`` and converts back; errors become
statuses through ``broker.rpc.status`` like everywhere else.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from broker._proto.broker.v1 import admin_pb2, admin_pb2_grpc, common_pb2
from broker.adapters.audit.redis_sink import RedisStreamSink
from broker.app.admin import Admin, RevokeResult, TaskView
from broker.app.audit import Auditor
from broker.app.toolpins import ToolPins, check_server_ref
from broker.core.approvals import ApprovalRecord, ApprovalState
from broker.core.audit.recent import AuditSource, RecentRecords
from broker.core.audit.record import ChainedRecord
from broker.core.blocks import Block
from broker.core.model import CredentialRecord, TaskState
from broker.core.registry import ServerEntry
from broker.core.tokens.keys import KeyInfo
from broker.core.tooldefs import ToolPin
from broker.rpc.convert import TAINT_TO_PB, seconds, timestamp
from broker.rpc.identity import current_peer
from broker.rpc.servicers import rpc
from broker.rpc.status import abort


def task_info(view: TaskView) -> admin_pb2.TaskInfo:
    t = view.task
    return admin_pb2.TaskInfo(
        task_id=t.task_id,
        agent=t.agent,
        intent=t.intent,
        on_behalf_of=t.on_behalf_of,
        state=int(view.state),  # type: ignore[arg-type]
        taint=TAINT_TO_PB[t.taint],
        created_at=timestamp(t.created_at),
        expires_at=timestamp(t.expires_at),
        parent_task_id=t.parent_task_id,
        labels=dict(t.labels),
        plan=[common_pb2.PlannedStep(server=s.server, tool=s.tool) for s in t.plan],
        live_credentials=view.live_credentials,
        servers=list(view.servers),
    )


def credential_info(c: CredentialRecord) -> admin_pb2.CredentialInfo:
    return admin_pb2.CredentialInfo(
        jti=c.jti,
        server=c.server,
        tool=c.tool,
        args_sha256=c.args_sha256,
        issued_at=timestamp(c.issued_at),
        expires_at=timestamp(c.expires_at),
        consumed=c.consumed,
    )


def approval_info(a: ApprovalRecord, now: float) -> admin_pb2.Approval:
    return admin_pb2.Approval(
        approval_id=a.approval_id,
        task_id=a.task_id,
        agent=a.agent,
        server=a.server,
        tool=a.tool,
        args_sha256=a.args_sha256,
        justification=a.justification,
        reason=a.reason,
        state=int(a.state_at(now)),  # type: ignore[arg-type]
        decided_by=a.decided_by,
        decision_reason=a.decision_reason,
        created_at=timestamp(a.created_at),
        expires_at=timestamp(a.expires_at),
    )


def audit_record(r: ChainedRecord) -> admin_pb2.AuditRecord:
    return admin_pb2.AuditRecord(
        seq=r.seq,
        chain=r.chain,
        prev_sha256=r.prev,
        sha256=r.sha256,
        json=r.canonical_bytes().decode("utf-8"),
    )


def signing_key(k: KeyInfo) -> admin_pb2.SigningKey:
    key = admin_pb2.SigningKey(
        kid=k.kid, alg=k.alg, active=k.active, transit_version=k.transit_version or 0,
        replica=k.replica,
    )  # fmt: skip
    if k.created_at:
        key.created_at.CopyFrom(timestamp(k.created_at))
    if k.retired_at is not None:
        key.retired_at.CopyFrom(timestamp(k.retired_at))
    if k.publish_until is not None:
        key.publish_until.CopyFrom(timestamp(k.publish_until))
    return key


def block_info(b: Block) -> admin_pb2.Block:
    msg = admin_pb2.Block(
        kind=b.kind,
        subject=b.subject,
        floor=timestamp(b.floor),
        blocked=b.blocked,
        reason=b.reason,
        by=b.by,
        created_at=timestamp(b.created_at),
    )
    if b.blocked and b.until:
        msg.blocked_until.CopyFrom(timestamp(b.until))
    return msg


def revoked(r: RevokeResult) -> admin_pb2.RevokeResponse:
    resp = admin_pb2.RevokeResponse(
        dry_run=r.dry_run, task_ids=list(r.task_ids), live_credentials=r.live_credentials
    )
    if r.block is not None:
        resp.block.CopyFrom(block_info(r.block))
    return resp


def audit_source_for(auditor: Auditor) -> AuditSource:
    """Where TailAudit reads: the Redis stream when the auditor writes one (every replica's
    records), else an in-process ring of this process's recent records (added as a sink)."""
    for sink in auditor.sinks:
        if isinstance(sink, RedisStreamSink):
            return sink.source()
    for sink in auditor.sinks:
        if isinstance(sink, RecentRecords):
            return sink
    recent = RecentRecords()
    auditor.add_sink(recent)
    return recent


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, admin: Admin, pins: ToolPins) -> None:
        self._admin = admin
        self._pins = pins

    @property
    def _now(self) -> float:
        return self._admin.now()

    @rpc
    async def ListTasks(
        self, request: admin_pb2.ListTasksRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListTasksResponse:
        views = await self._admin.list_tasks(
            agent=request.agent,
            server=request.server,
            state=TaskState(request.state) if request.state else None,
            since=seconds(request.since) if request.HasField("since") else 0.0,
            limit=request.limit,
        )
        return admin_pb2.ListTasksResponse(tasks=[task_info(v) for v in views])

    @rpc
    async def GetTask(
        self, request: admin_pb2.GetTaskRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.GetTaskResponse:
        d = await self._admin.get_task(request.task_id)
        now = self._now
        return admin_pb2.GetTaskResponse(
            task=task_info(d.view),
            credentials=[credential_info(c) for c in d.credentials],
            approvals=[approval_info(a, now) for a in d.approvals],
            audit=[audit_record(r) for r in d.audit],
        )

    @rpc
    async def RevokeTask(
        self, request: admin_pb2.RevokeTaskRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.RevokeResponse:
        return revoked(
            await self._admin.revoke_task(
                current_peer(), request.task_id, reason=request.reason, dry_run=request.dry_run
            )
        )

    @rpc
    async def RevokeAgent(
        self, request: admin_pb2.RevokeAgentRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.RevokeResponse:
        return revoked(
            await self._admin.revoke_agent(
                current_peer(),
                request.agent,
                reason=request.reason,
                dry_run=request.dry_run,
                duration=request.duration_seconds,
            )
        )

    @rpc
    async def RevokeServer(
        self, request: admin_pb2.RevokeServerRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.RevokeResponse:
        return revoked(
            await self._admin.revoke_server(
                current_peer(),
                request.server,
                reason=request.reason,
                dry_run=request.dry_run,
                duration=request.duration_seconds,
            )
        )

    @rpc
    async def RevokeTier(
        self, request: admin_pb2.RevokeTierRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.RevokeResponse:
        return revoked(
            await self._admin.revoke_tier(
                current_peer(),
                request.tier,
                reason=request.reason,
                dry_run=request.dry_run,
                duration=request.duration_seconds,
            )
        )

    @rpc
    async def RevokeIssuedBefore(
        self, request: admin_pb2.RevokeIssuedBeforeRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.RevokeResponse:
        before = seconds(request.issued_before) if request.HasField("issued_before") else 0.0
        return revoked(
            await self._admin.revoke_issued_before(
                current_peer(), before, reason=request.reason, dry_run=request.dry_run
            )
        )

    @rpc
    async def ListApprovals(
        self, request: admin_pb2.ListApprovalsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListApprovalsResponse:
        found = await self._admin.list_approvals(
            state=ApprovalState(request.state) if request.state else None,
            every=request.all,
            task_id=request.task_id,
        )
        now = self._now
        return admin_pb2.ListApprovalsResponse(approvals=[approval_info(a, now) for a in found])

    @rpc
    async def DecideApproval(
        self, request: admin_pb2.DecideApprovalRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.DecideApprovalResponse:
        record = await self._admin.decide_approval(
            current_peer(), request.approval_id, approve=request.approve, reason=request.reason
        )
        return admin_pb2.DecideApprovalResponse(approval=approval_info(record, self._now))

    @rpc
    async def ListSigningKeys(
        self, request: admin_pb2.ListSigningKeysRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListSigningKeysResponse:
        return admin_pb2.ListSigningKeysResponse(
            keys=[signing_key(k) for k in await self._admin.list_keys()]
        )

    @rpc
    async def RotateSigningKey(
        self, request: admin_pb2.RotateSigningKeyRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.RotateSigningKeyResponse:
        return admin_pb2.RotateSigningKeyResponse(
            key=signing_key(await self._admin.rotate_key(current_peer()))
        )

    @rpc
    async def ReloadPolicy(
        self, request: admin_pb2.ReloadPolicyRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ReloadPolicyResponse:
        loaded = self._admin.reload_policy(current_peer())
        return admin_pb2.ReloadPolicyResponse(policies=loaded.policies, digest=loaded.digest)

    @rpc
    async def ListToolPins(
        self, request: admin_pb2.ListToolPinsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListToolPinsResponse:
        server = check_server_ref(request.server)
        entry, pins = await self._pins.list(server)
        return admin_pb2.ListToolPinsResponse(pins=[tool_pin(entry, p) for p in pins])

    @rpc
    async def PinTools(
        self, request: admin_pb2.PinToolsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.PinToolsResponse:
        server = check_server_ref(request.server)
        entry, pins = await self._pins.repin(
            current_peer(), server, request.tool, dry_run=request.dry_run
        )
        return admin_pb2.PinToolsResponse(
            pins=[tool_pin(entry, p) for p in pins], dry_run=request.dry_run
        )

    @rpc
    async def ListBlocks(
        self, request: admin_pb2.ListBlocksRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListBlocksResponse:
        now = self._now
        found = await self._admin.list_blocks()
        return admin_pb2.ListBlocksResponse(
            blocks=[block_info(b) for b in found if request.all or b.blocks(now)]
        )

    @rpc
    async def LiftBlock(
        self, request: admin_pb2.LiftBlockRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.LiftBlockResponse:
        block = await self._admin.lift_block(
            current_peer(), request.kind, request.subject, request.reason
        )
        return admin_pb2.LiftBlockResponse(block=block_info(block))

    async def TailAudit(
        self, request: admin_pb2.TailAuditRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[admin_pb2.AuditRecord]:
        try:
            async for record in self._admin.tail_audit(request.last, request.follow):
                yield audit_record(record)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - every error becomes a status, none escapes
            await abort(context, exc)


def tool_pin(server: ServerEntry, pin: ToolPin) -> admin_pb2.ToolPin:
    return admin_pb2.ToolPin(
        server=server.spiffe_id,
        tool=pin.tool,
        pinned_sha256=pin.pinned_sha256,
        pinned_at=timestamp(pin.pinned_at),
        observed_sha256=pin.observed_sha256,
        observed_at=timestamp(pin.observed_at),
        changed=pin.changed,
    )
