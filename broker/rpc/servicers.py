"""The three broker.v1 services. Each method: convert the message, call the core, convert back.

Errors: any exception leaving a method is turned into a status by ``broker.rpc.status``
(reason code first, ErrorInfo in the details, INTERNAL with a correlation id for the rest).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from broker._proto.broker.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    verifier_pb2,
    verifier_pb2_grpc,
)
from broker.app import gateway_support
from broker.app.credentials import Broker
from broker.app.toolpins import MAX_TOOLS, ToolPins
from broker.core.errors import InvalidRequest
from broker.core.model import RevocationKind
from broker.core.requests import (
    MAX_REFUSALS,
    BeginTask,
    CredentialRequest,
    Outcome,
    Pending,
    Refusal,
    VerifyRequest,
)
from broker.rpc.convert import (
    PIN_STATUS_TO_PB,
    TAINT_FROM_PB,
    TAINT_TO_PB,
    digest_of_args,
    timestamp,
)
from broker.rpc.identity import current_peer
from broker.rpc.status import abort

R = TypeVar("R")
Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[R]]


def rpc(fn: Handler[R]) -> Handler[R]:
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
        try:
            return await fn(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - every error becomes a status, none escapes
            await abort(context, exc)

    return wrapper


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, broker: Broker) -> None:
        self._broker = broker

    @rpc
    async def BeginTask(
        self, request: agent_pb2.BeginTaskRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.BeginTaskResponse:
        task = await self._broker.begin_task(
            current_peer(),
            BeginTask(
                intent=request.intent,
                on_behalf_of=request.on_behalf_of,
                ttl_seconds=request.ttl_seconds,
                plan=tuple((s.server, s.tool) for s in request.plan),
                labels=dict(request.labels),
                parent_task_id=request.parent_task_id,
                delegates=tuple(request.delegates),
            ),
        )
        return agent_pb2.BeginTaskResponse(
            task_id=task.task_id, expires_at=timestamp(task.expires_at)
        )

    @rpc
    async def RequestCredential(
        self, request: agent_pb2.RequestCredentialRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.RequestCredentialResponse:
        result = await self._broker.request_credential(
            current_peer(),
            CredentialRequest(
                task_id=request.task_id,
                server=request.server,
                tool=request.tool,
                args_sha256=digest_of_args(request),
                prompt_sha256=request.prompt_sha256,
                justification=request.justification,
                ttl_seconds=request.ttl_seconds,
                approval_id=request.approval_id,
            ),
        )
        if isinstance(result, Pending):
            return agent_pb2.RequestCredentialResponse(
                pending_approval=agent_pb2.PendingApproval(
                    approval_id=result.approval_id,
                    expires_at=timestamp(result.expires_at),
                    reason=result.reason,
                )
            )
        return agent_pb2.RequestCredentialResponse(
            credential=agent_pb2.Credential(
                token=result.token, jti=result.jti, expires_at=timestamp(result.expires_at)
            )
        )

    @rpc
    async def EndTask(
        self, request: agent_pb2.EndTaskRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.EndTaskResponse:
        killed = await self._broker.end_task(current_peer(), request.task_id, request.outcome)
        return agent_pb2.EndTaskResponse(revoked_credentials=killed)

    @rpc
    async def PreviewTools(
        self, request: agent_pb2.PreviewToolsRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.PreviewToolsResponse:
        taint, previews = await gateway_support.preview_tools(
            self._broker,
            current_peer(),
            request.task_id,
            [(t.server, t.tool) for t in request.tools],
        )
        return agent_pb2.PreviewToolsResponse(
            taint=TAINT_TO_PB[taint],
            decisions=[
                agent_pb2.ToolPreview(
                    server=p.server,
                    tool=p.tool,
                    decision=_PREVIEW_TO_PB[p.decision],
                    reason=p.reason,
                    message=p.message,
                    policy_ids=list(p.policy_ids),
                    reasons=list(p.reasons),
                )
                for p in previews
            ],
        )

    @rpc
    async def RaiseTaint(
        self, request: agent_pb2.RaiseTaintRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.RaiseTaintResponse:
        taint = await gateway_support.raise_taint(
            self._broker,
            current_peer(),
            request.task_id,
            request.server,
            jti=request.jti,
            findings=[(f.kind, f.detail) for f in request.findings],
            floor=TAINT_FROM_PB.get(request.taint),
        )
        return agent_pb2.RaiseTaintResponse(taint=TAINT_TO_PB[taint])


_PREVIEW_TO_PB = {
    "allow": agent_pb2.PREVIEW_DECISION_ALLOW,
    "approval": agent_pb2.PREVIEW_DECISION_APPROVAL,
    "deny": agent_pb2.PREVIEW_DECISION_DENY,
}


class VerifierServicer(verifier_pb2_grpc.VerifierServiceServicer):
    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._pins = ToolPins(broker)

    @rpc
    async def VerifyCredential(
        self, request: verifier_pb2.VerifyCredentialRequest, context: grpc.aio.ServicerContext
    ) -> verifier_pb2.VerifyCredentialResponse:
        v = await self._broker.verify_credential(
            current_peer(),
            VerifyRequest(
                token=request.token,
                tool=request.tool,
                args_sha256=digest_of_args(request),
                presenter_cert_sha256=request.presenter_cert_sha256,
                check_only=request.check_only,
            ),
        )
        secret = None
        if v.secret is not None:  # the one place a secret's values leave the broker
            secret = verifier_pb2.DownstreamSecret(
                data=dict(v.secret.data.reveal()),
                lease_id=v.secret.lease_id,
                expires_at=timestamp(v.secret.expires_at),
                source=v.secret.source,
            )
        return verifier_pb2.VerifyCredentialResponse(
            task_id=v.task_id,
            agent=v.agent,
            tool=v.tool,
            tier=v.tier,
            taint=TAINT_TO_PB[v.taint],
            jti=v.jti,
            expires_at=timestamp(v.expires_at),
            secret=secret,
        )

    @rpc
    async def ReportOutcome(
        self, request: verifier_pb2.ReportOutcomeRequest, context: grpc.aio.ServicerContext
    ) -> verifier_pb2.ReportOutcomeResponse:
        trust = {verifier_pb2.TRUSTED: False, verifier_pb2.UNTRUSTED: True}.get(
            request.content_trust
        )
        taint = await self._broker.report_outcome(
            current_peer(),
            Outcome(
                jti=request.jti,
                succeeded=request.status != verifier_pb2.FAILED,
                result_sha256=request.result_sha256,
                untrusted=trust,
                findings=tuple((f.kind, f.detail) for f in request.findings),
            ),
        )
        return verifier_pb2.ReportOutcomeResponse(taint=TAINT_TO_PB[taint])

    @rpc
    async def SyncToolDefinitions(
        self, request: verifier_pb2.SyncToolDefinitionsRequest, context: grpc.aio.ServicerContext
    ) -> verifier_pb2.SyncToolDefinitionsResponse:
        if len(request.tools) > MAX_TOOLS:
            raise InvalidRequest("tools", f"at most {MAX_TOOLS} tools per sync")
        observed = {t.name: t.sha256 for t in request.tools}
        if len(observed) != len(request.tools):
            raise InvalidRequest("tools", "a tool name appears twice")
        result = await self._pins.sync(current_peer(), observed)
        return verifier_pb2.SyncToolDefinitionsResponse(
            tools=[
                verifier_pb2.ToolVerdict(name=n, status=PIN_STATUS_TO_PB[s])
                for n, s in result.tools.items()
            ],
            server=result.server.name,
            content_trust=verifier_pb2.TRUSTED if result.server.trusted else verifier_pb2.UNTRUSTED,
            allow_resources=result.server.allow_resources,
            allow_prompts=result.server.allow_prompts,
        )

    @rpc
    async def ReportRefusals(
        self, request: verifier_pb2.ReportRefusalsRequest, context: grpc.aio.ServicerContext
    ) -> verifier_pb2.ReportRefusalsResponse:
        refusals = tuple(
            Refusal(
                reason=r.reason,
                jti=r.jti,
                task_id=r.task_id,
                tool=r.tool,
                agent=r.agent,
                refused_at=r.refused_at.ToNanoseconds() / 1e9 if r.HasField("refused_at") else 0,
                mode=r.mode,
            )
            for r in request.refusals[: MAX_REFUSALS + 1]
        )
        recorded = self._broker.report_refusals(current_peer(), refusals, request.dropped)
        return verifier_pb2.ReportRefusalsResponse(recorded=recorded)

    @rpc
    async def GetSigningKeys(
        self, request: verifier_pb2.GetSigningKeysRequest, context: grpc.aio.ServicerContext
    ) -> verifier_pb2.GetSigningKeysResponse:
        import orjson

        jwks = {"keys": await self._broker.keyring.current_jwks()}  # every replica's
        return verifier_pb2.GetSigningKeysResponse(jwks_json=orjson.dumps(jwks).decode())

    async def WatchRevocations(
        self, request: verifier_pb2.WatchRevocationsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[verifier_pb2.RevocationEvent]:
        """The revocation feed with heartbeats (``broker.app.feed``); a bad ``since`` is
        INVALID_REQUEST naming it. Heartbeat interval: ``broker.app.feed.HEARTBEAT_SECONDS``."""
        import asyncio

        from broker.app import feed

        kinds = {
            feed.HEARTBEAT: verifier_pb2.REVOCATION_KIND_HEARTBEAT,
            RevocationKind.TASK: verifier_pb2.REVOCATION_KIND_TASK,
            RevocationKind.AGENT: verifier_pb2.REVOCATION_KIND_AGENT,
            RevocationKind.SERVER: verifier_pb2.REVOCATION_KIND_SERVER,
            RevocationKind.TIER: verifier_pb2.REVOCATION_KIND_TIER,
            RevocationKind.ISSUED_BEFORE: verifier_pb2.REVOCATION_KIND_ISSUED_BEFORE,
            RevocationKind.CREDENTIAL: verifier_pb2.REVOCATION_KIND_CREDENTIAL,
        }
        broker = self._broker
        try:
            async for event in feed.follow_revocations(
                broker.store, request.since, clock=broker.clock
            ):
                msg = verifier_pb2.RevocationEvent(
                    cursor=event.cursor,
                    kind=kinds.get(event.kind, verifier_pb2.REVOCATION_KIND_UNSPECIFIED),
                    subject=event.subject,
                    revoked_at=timestamp(event.revoked_at),
                    reason=event.reason,
                    blocked=event.blocked,
                )
                if event.blocked and event.until:
                    msg.blocked_until.CopyFrom(timestamp(event.until))
                yield msg
        except asyncio.CancelledError:
            return  # the verifier went away, or the server is stopping: the stream is over
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - every error becomes a status, none escapes
            await abort(context, exc)
