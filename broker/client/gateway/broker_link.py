"""The gateway's side of AgentService: tasks, per-call credentials, policy previews, taint.

One gRPC channel over mutual TLS with the agent's SVID, rebuilt when the SVID is rotated
(``TlsFiles``). Errors are the broker's typed errors (``broker.client.sdk.errors``); a broker
that cannot be reached is ``BrokerUnavailable``: the gateway fails closed on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from broker._proto.broker.v1 import agent_pb2, agent_pb2_grpc, common_pb2
from broker.client.gateway.tls import TlsFiles
from broker.client.sdk.channel import secure_channel
from broker.client.sdk.errors import error_from_rpc
from broker.client.trace_context import grpc_metadata
from broker.core.canonical import args_sha256

DEFAULT_TIMEOUT = 5.0

_TAINT_FROM_PB = {
    common_pb2.TAINT_CLEAN: "clean",
    common_pb2.TAINT_UNTRUSTED: "untrusted",
    common_pb2.TAINT_SUSPECT: "suspect",
}
_TAINT_TO_PB = {v: k for k, v in _TAINT_FROM_PB.items()}


@dataclass(frozen=True)
class Granted:
    token: str
    jti: str
    expires_at: float

    def __repr__(self) -> str:
        return f"Granted(jti={self.jti!r}, expires_at={self.expires_at}, token=[secure])"


@dataclass(frozen=True)
class Pending:
    approval_id: str
    expires_at: float
    reason: str


@dataclass(frozen=True)
class Preview:
    """What policy would decide for one tool of this task now, without minting."""

    server: str
    tool: str
    decision: str  # "allow" | "approval" | "deny"
    reason: str  # broker reason code for a deny (POLICY_DENIED, OUTSIDE_PLAN, UNKNOWN_TOOL...)
    message: str
    policy_ids: tuple[str, ...]
    why: tuple[str, ...]


def _seconds(ts: Any) -> float:
    return float(ts.ToNanoseconds()) / 1e9


class BrokerLink:
    def __init__(self, address: str, tls: TlsFiles, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.address = address
        self.timeout = timeout
        self._tls = tls
        self._generation = tls.generation
        self._channel = secure_channel(address, tls.credentials)
        self._stub = agent_pb2_grpc.AgentServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self.identity = str(tls.credentials.identity().spiffe_id)
        self.trust_domain = self.identity.split("/")[2]

    async def aclose(self) -> None:
        await self._channel.close()

    def _current(self) -> Any:
        self._tls.refresh()
        if self._tls.generation != self._generation:
            old = self._channel
            self._channel = secure_channel(self.address, self._tls.credentials)
            self._stub = agent_pb2_grpc.AgentServiceStub(self._channel)  # type: ignore[no-untyped-call]
            self._generation = self._tls.generation
            asyncio.get_running_loop().create_task(old.close(grace=5.0))
        return self._stub

    async def _call(self, what: str, request: Any, deadline: float | None = None) -> Any:
        rpc = getattr(self._current(), what)
        try:
            # the assistant's trace (its tools/call _meta, made current) follows to the broker
            metadata = grpc_metadata() or None
            return await rpc(request, timeout=deadline or self.timeout, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, what=what) from None

    async def begin_task(
        self,
        intent: str,
        *,
        plan: Iterable[tuple[str, str]] = (),
        on_behalf_of: str = "",
        ttl_seconds: int = 0,
        labels: Mapping[str, str] | None = None,
    ) -> tuple[str, float]:
        resp = await self._call(
            "BeginTask",
            agent_pb2.BeginTaskRequest(
                intent=intent,
                on_behalf_of=on_behalf_of,
                ttl_seconds=ttl_seconds,
                plan=[common_pb2.PlannedStep(server=s, tool=t) for s, t in plan],
                labels=dict(labels or {}),
            ),
        )
        return str(resp.task_id), _seconds(resp.expires_at)

    async def end_task(self, task_id: str, outcome: str, deadline: float | None = None) -> int:
        resp = await self._call(
            "EndTask", agent_pb2.EndTaskRequest(task_id=task_id, outcome=outcome), deadline
        )
        return int(resp.revoked_credentials)

    async def request_credential(
        self,
        task_id: str,
        server: str,
        tool: str,
        arguments: Mapping[str, Any],
        *,
        approval_id: str = "",
        justification: str = "",
    ) -> Granted | Pending:
        resp = await self._call(
            "RequestCredential",
            agent_pb2.RequestCredentialRequest(
                task_id=task_id,
                server=server,
                tool=tool,
                args_sha256=args_sha256(dict(arguments)),
                justification=justification,
                approval_id=approval_id,
            ),
        )
        if resp.WhichOneof("result") == "pending_approval":
            p = resp.pending_approval
            return Pending(str(p.approval_id), _seconds(p.expires_at), str(p.reason))
        c = resp.credential
        return Granted(str(c.token), str(c.jti), _seconds(c.expires_at))

    async def preview_tools(
        self, task_id: str, tools: Sequence[tuple[str, str]]
    ) -> tuple[str, list[Preview]]:
        """Policy's answer for each (server, tool) of this task now, and the task's taint."""
        resp = await self._call(
            "PreviewTools",
            agent_pb2.PreviewToolsRequest(
                task_id=task_id,
                tools=[common_pb2.PlannedStep(server=s, tool=t) for s, t in tools],
            ),
        )
        out = [
            Preview(
                server=d.server,
                tool=d.tool,
                decision=_DECISIONS.get(d.decision, "deny"),
                reason=d.reason,
                message=d.message,
                policy_ids=tuple(d.policy_ids),
                why=tuple(d.reasons),
            )
            for d in resp.decisions
        ]
        return _TAINT_FROM_PB.get(resp.taint, "clean"), out

    async def raise_taint(
        self,
        task_id: str,
        server: str,
        *,
        jti: str = "",
        findings: Sequence[tuple[str, str]] = (),
        taint: str = "",
    ) -> str:
        """Report what an unguarded server returned: the broker raises the task's taint from
        the server's content trust and the findings (never lowers it). Returns the taint."""
        resp = await self._call(
            "RaiseTaint",
            agent_pb2.RaiseTaintRequest(
                task_id=task_id,
                server=server,
                jti=jti,
                findings=[common_pb2.Finding(kind=k, detail=d) for k, d in findings],
                taint=_TAINT_TO_PB.get(taint, common_pb2.TAINT_UNSPECIFIED),
            ),
        )
        return _TAINT_FROM_PB.get(resp.taint, "clean")


_DECISIONS = {1: "allow", 2: "approval", 3: "deny"}
