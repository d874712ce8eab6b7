"""The agent SDK: tasks as context managers and one call per tool-call credential.

    async with BrokerClient("127.0.0.1:7443", ca="ca.crt", cert="agent.crt", key="agent.key") as b:
        async with b.task("fix the flaky retry test", plan=[("docs", "search_docs")]) as task:
            cred = await task.credential("docs", "search_docs", {"query": "retry"})
            ...  # call the tool with "Authorization: Bearer <cred.token>"

The task ends when the block exits, also on an exception (its outcome then names the exception
type), and every credential minted in it dies at once. Errors are the broker's own typed errors
(``broker.core.errors``; see ``broker.client.sdk.errors``), whatever the RPC.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc

from broker._proto.broker.v1 import agent_pb2, agent_pb2_grpc, common_pb2
from broker.client.sdk.channel import PathLike, WorkloadCredentials, secure_channel
from broker.client.sdk.errors import ApprovalPending, error_from_rpc
from broker.core.canonical import args_sha256
from broker.core.errors import BrokerError

log = logging.getLogger("broker.client.sdk")

DEFAULT_TIMEOUT = 5.0


def _seconds(ts: Any) -> float:
    return float(ts.ToNanoseconds()) / 1e9


@dataclass(frozen=True)
class Credential:
    """One tool call's credential: present ``token`` as ``Authorization: Bearer <token>``."""

    token: str
    jti: str
    expires_at: float
    server: str
    tool: str
    args_sha256: str

    def __repr__(self) -> str:
        return (
            f"Credential(server={self.server!r}, tool={self.tool!r}, jti={self.jti!r}, "
            f"expires_at={self.expires_at}, token=[secure])"
        )


class BrokerClient:
    """An agent's connection to the broker (gRPC over mutual TLS with the agent's SVID)."""

    def __init__(
        self,
        address: str,
        *,
        ca: PathLike | None = None,
        cert: PathLike | None = None,
        key: PathLike | None = None,
        credentials: WorkloadCredentials | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if credentials is None:
            if ca is None or cert is None or key is None:
                raise TypeError("give ca, cert and key, or credentials")
            credentials = WorkloadCredentials.from_files(ca, cert, key)
        self.address = address
        self.identity = str(credentials.identity().spiffe_id)
        self.timeout = timeout
        self._channel = secure_channel(address, credentials)
        self._stub = agent_pb2_grpc.AgentServiceStub(self._channel)  # type: ignore[no-untyped-call]

    async def __aenter__(self) -> BrokerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._channel.close()

    async def _call(self, what: str, rpc: Any, request: Any) -> Any:
        try:
            return await rpc(request, timeout=self.timeout)
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
        parent_task_id: str = "",
        delegates: Iterable[str] = (),
    ) -> Task:
        """Begin a task; prefer ``task()``, which also ends it. ``plan`` holds ``(server,
        tool)`` steps (tool ``""``: any tool of that server). ``delegates``: SPIFFE IDs of the
        other agents that may begin sub-tasks of this one (its own agent always may)."""
        resp = await self._call(
            "BeginTask",
            self._stub.BeginTask,
            agent_pb2.BeginTaskRequest(
                intent=intent,
                on_behalf_of=on_behalf_of,
                ttl_seconds=ttl_seconds,
                plan=[common_pb2.PlannedStep(server=s, tool=t) for s, t in plan],
                labels=dict(labels or {}),
                parent_task_id=parent_task_id,
                delegates=list(delegates),
            ),
        )
        return Task(self, str(resp.task_id), _seconds(resp.expires_at))

    @asynccontextmanager
    async def task(
        self,
        intent: str,
        *,
        plan: Iterable[tuple[str, str]] = (),
        on_behalf_of: str = "",
        ttl_seconds: int = 0,
        labels: Mapping[str, str] | None = None,
        parent: Task | None = None,
        outcome: str = "completed",
        delegates: Iterable[str] = (),
    ) -> AsyncIterator[Task]:
        """A task for the duration of the block: ended on exit with ``outcome``, or with
        ``"failed: <ExceptionType>"`` when the block raises (the exception propagates)."""
        task = await self.begin_task(
            intent,
            plan=plan,
            on_behalf_of=on_behalf_of,
            ttl_seconds=ttl_seconds,
            labels=labels,
            parent_task_id=parent.task_id if parent else "",
            delegates=delegates,
        )
        try:
            yield task
        except BaseException as exc:
            await asyncio.shield(task.end_quietly(f"failed: {type(exc).__name__}"))
            raise
        await task.end(task.outcome or outcome)


class Task:
    """A live task. ``credential()`` mints one credential per tool call."""

    def __init__(self, client: BrokerClient, task_id: str, expires_at: float) -> None:
        self.client = client
        self.task_id = task_id
        self.expires_at = expires_at
        self.outcome = ""  # set to override the outcome recorded when the block exits
        self.ended = False

    def __repr__(self) -> str:
        return f"Task({self.task_id!r}, ended={self.ended})"

    async def credential(
        self,
        server: str,
        tool: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        prompt_sha256: str = "",
        justification: str = "",
        ttl_seconds: int = 0,
        approval_id: str = "",
    ) -> Credential:
        """A credential for exactly this call: ``server`` (registry name or SPIFFE ID),
        ``tool`` and ``arguments`` (the JSON object the tool is called with; its RFC 8785
        digest is what the credential is bound to). Raises the broker's typed errors, and
        ``ApprovalPending`` when an operator must decide first."""
        args = dict(arguments or {})
        digest = args_sha256(args)
        resp = await self.client._call(
            "RequestCredential",
            self.client._stub.RequestCredential,
            agent_pb2.RequestCredentialRequest(
                task_id=self.task_id,
                server=server,
                tool=tool,
                args_sha256=digest,
                prompt_sha256=prompt_sha256,
                justification=justification,
                ttl_seconds=ttl_seconds,
                approval_id=approval_id,
            ),
        )
        if resp.WhichOneof("result") == "pending_approval":
            pending = resp.pending_approval
            raise ApprovalPending(
                f"{server}/{tool} awaits an operator's approval: {pending.reason}",
                approval_id=str(pending.approval_id),
                expires_at=_seconds(pending.expires_at),
            )
        cred = resp.credential
        return Credential(
            token=str(cred.token),
            jti=str(cred.jti),
            expires_at=_seconds(cred.expires_at),
            server=server,
            tool=tool,
            args_sha256=digest,
        )

    async def end(self, outcome: str = "") -> int:
        """End the task: every credential minted in it stops verifying. Returns how many live
        credentials died. Idempotent on this object."""
        if self.ended:
            return 0
        resp = await self.client._call(
            "EndTask",
            self.client._stub.EndTask,
            agent_pb2.EndTaskRequest(task_id=self.task_id, outcome=outcome),
        )
        self.ended = True
        return int(resp.revoked_credentials)

    async def end_quietly(self, outcome: str) -> None:
        """End the task, logging (not raising) a failure: for clean-up paths."""
        try:
            await self.end(outcome)
        except BrokerError as exc:
            log.warning("could not end task %s: %s", self.task_id, exc)
