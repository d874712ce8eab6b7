"""Small clients over the generated stubs, for integration tests."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from broker._proto.broker.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    common_pb2,
    verifier_pb2,
    verifier_pb2_grpc,
)


def reason_of(err: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, f"no google.rpc.Status in the trailers: {err}"
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.domain == "broker.v1"
    assert err.details().startswith(info.reason + ":")
    return str(info.reason)


def struct(args: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(args)
    return s


def cert_sha256(pki: Path, name: str) -> str:
    cert = x509.load_pem_x509_certificate((pki / f"{name}.crt").read_bytes())
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


class Agent:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.stub = agent_pb2_grpc.AgentServiceStub(channel)

    async def begin(self, intent: str = "fix the flaky retry test", **kw: Any) -> str:
        plan = [common_pb2.PlannedStep(server=s, tool=t) for s, t in kw.pop("plan", [])]
        resp = await self.stub.BeginTask(
            agent_pb2.BeginTaskRequest(intent=intent, plan=plan, **kw), timeout=5
        )
        return str(resp.task_id)

    async def credential(
        self, task: str, server: str, tool: str, args: dict[str, Any] | None = None, **kw: Any
    ) -> agent_pb2.RequestCredentialResponse:
        return await self.stub.RequestCredential(
            agent_pb2.RequestCredentialRequest(
                task_id=task, server=server, tool=tool, arguments=struct(args or {}), **kw
            ),
            timeout=5,
        )

    async def token(
        self, task: str, server: str, tool: str, args: dict[str, Any] | None = None
    ) -> str:
        resp = await self.credential(task, server, tool, args)
        assert resp.WhichOneof("result") == "credential"
        return str(resp.credential.token)

    async def end(self, task: str) -> int:
        resp = await self.stub.EndTask(agent_pb2.EndTaskRequest(task_id=task), timeout=5)
        return int(resp.revoked_credentials)


class Server:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.stub = verifier_pb2_grpc.VerifierServiceStub(channel)

    async def verify(
        self, token: str, tool: str, args: dict[str, Any] | None = None, **kw: Any
    ) -> verifier_pb2.VerifyCredentialResponse:
        return await self.stub.VerifyCredential(
            verifier_pb2.VerifyCredentialRequest(
                token=token, tool=tool, arguments=struct(args or {}), **kw
            ),
            timeout=5,
        )

    async def report(
        self, jti: str, *, untrusted: bool | None = None, findings: tuple[str, ...] = ()
    ) -> int:
        trust = {None: 0, True: verifier_pb2.UNTRUSTED, False: verifier_pb2.TRUSTED}[untrusted]
        resp = await self.stub.ReportOutcome(
            verifier_pb2.ReportOutcomeRequest(
                jti=jti,
                status=verifier_pb2.SUCCEEDED,
                content_trust=trust,  # type: ignore[arg-type]
                findings=[common_pb2.Finding(kind=k, detail="test") for k in findings],
            ),
            timeout=5,
        )
        return int(resp.taint)
