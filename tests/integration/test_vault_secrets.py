"""Downstream secrets from a real OpenBao: a KV v2 secret and database credentials (a real
PostgreSQL, tests/support/postgres.py) handed to the MCP server by VerifyCredential, revoked with
the task. The secret reaches the MCP server only: never the agent, never a log line or an audit
record."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from broker._proto.broker.v1 import admin_pb2, admin_pb2_grpc, agent_pb2
from broker.app.secrets import SecretBroker
from tests.integration.conftest import Running, start_broker
from tests.integration.helpers import Agent, Server
from tests.support.openbao import (
    OpenBao,
    approle_login,
    documented_policy,
    put_kv,
    token_auth,
    vault_section,
    write_registry,
)
from tests.support.openbao import openbao as openbao_server  # noqa: F401 - session fixture
from tests.support.postgres import Postgres, database_role
from tests.support.postgres import postgres as postgres_server  # noqa: F401 - session fixture

pytestmark = pytest.mark.integration

ARGS = {"query": "select name from items"}


@pytest.fixture
def openbao(openbao_server: OpenBao) -> OpenBao:  # noqa: F811
    return openbao_server


@pytest.fixture
def postgres(postgres_server: Postgres) -> Postgres:  # noqa: F811
    return postgres_server


@pytest.fixture
def db_role(openbao: OpenBao, postgres: Postgres) -> str:
    role = f"ro_{secrets.token_hex(3)}"
    with openbao.admin() as client:
        database_role(client, postgres, role)
    return role


async def broker_with(
    pki: Path, tmp_path: Path, addr: str, auth: dict[str, Any], tools: dict[str, Any]
) -> Running:
    registry = write_registry(tmp_path, tools)
    return await start_broker(pki, registry=str(registry), vault=vault_section(addr, auth))


def secrets_of(running: Running) -> SecretBroker:
    assert running.broker.secrets is not None
    return running.broker.secrets


def can_login(pg: Postgres, user: str, password: str) -> bool:
    try:
        with pg.login(user, password) as conn:
            rows = conn.execute("SELECT name FROM items ORDER BY id").fetchall()
    except psycopg.OperationalError:
        return False
    assert rows == [("one",), ("two",)]
    return True


def role_exists(pg: Postgres, user: str) -> bool:
    with pg.superuser() as conn:
        return (
            conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,)).fetchone()
            is not None
        )


async def eventually(check: Callable[[], bool], within: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_kv_secret_reaches_the_mcp_server_never_the_agent_nor_a_log(
    pki: Path,
    openbao: OpenBao,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, hvac's and urllib3's included
    value = "kv-" + secrets.token_hex(16)
    path = f"broker-test/{secrets.token_hex(4)}"
    with openbao.admin() as client:
        put_kv(client, path, {"api_key": value, "region": "eu-west", "other": "not-handed-out"})
    source = {"type": "kv", "path": path, "fields": ["api_key", "region"]}
    running = await broker_with(
        pki,
        tmp_path,
        openbao.addr,
        token_auth(openbao, tmp_path),
        {"read_api_key": {"risk": "secret", "secret": source}},
    )
    try:
        agent, server = Agent(running.channel("agent-demo")), Server(running.channel("mcp-secrets"))
        agent_bytes = b""
        task = await agent.begin()
        resp = await agent.credential(task, "secrets", "read_api_key", ARGS)
        agent_bytes += resp.SerializeToString()
        verified = await server.verify(resp.credential.token, "read_api_key", ARGS)
        assert dict(verified.secret.data) == {"api_key": value, "region": "eu-west"}
        assert verified.secret.lease_id == ""  # static KV: nothing to revoke
        assert verified.secret.source == f"kv:secret/{path}"
        assert verified.secret.expires_at == resp.credential.expires_at
        await server.report(resp.credential.jti)
        end = await agent.stub.EndTask(agent_pb2.EndTaskRequest(task_id=task), timeout=5)
        agent_bytes += end.SerializeToString()
    finally:
        await running.close()

    assert value.encode() not in agent_bytes
    assert value not in caplog.text
    for record in caplog.records:
        assert value not in record.getMessage() and value not in repr(record.args)
    audit = b"\n".join(r.to_json() for r in running.sink.records)
    assert value.encode() not in audit
    issued = [r.body for r in running.sink.records if r.body.get("event") == "secret.issue"]
    assert issued and issued[0]["outcome"] == "issued"
    assert issued[0]["extra"]["fields"] == "api_key,region"


async def test_database_credentials_work_until_end_task(
    pki: Path,
    openbao: OpenBao,
    postgres: Postgres,
    db_role: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    source = {"type": "dynamic", "mount": "database", "role": db_role}
    running = await broker_with(
        pki,
        tmp_path,
        openbao.addr,
        token_auth(openbao, tmp_path),
        {"query_db": {"risk": "secret", "secret": source}},
    )
    try:
        agent, server = Agent(running.channel("agent-demo")), Server(running.channel("mcp-secrets"))
        task = await agent.begin()
        resp = await agent.credential(task, "secrets", "query_db", ARGS)
        verified = await server.verify(resp.credential.token, "query_db", ARGS)
        secret = verified.secret
        user, password = secret.data["username"], secret.data["password"]
        assert secret.lease_id.startswith(f"database/creds/{db_role}/")
        assert secret.expires_at.seconds <= resp.credential.expires_at.seconds
        assert can_login(postgres, user, password)  # the MCP server can use them

        await agent.end(task)  # revokes before it answers
        assert not can_login(postgres, user, password)
        assert not role_exists(postgres, user)
        assert secrets_of(running).stats.revoked == 1
        revoked = [r.body for r in running.sink.records if r.body.get("event") == "secret.revoke"]
        assert revoked[0]["outcome"] == "revoked" and revoked[0]["extra"]["lease_id"] == (
            secret.lease_id
        )
    finally:
        await running.close()
    assert password not in caplog.text


async def test_a_lease_is_revoked_when_its_credential_expires(
    pki: Path, openbao: OpenBao, postgres: Postgres, db_role: str, tmp_path: Path
) -> None:
    """The role's TTL is 300 s; the credential's (tier 2) 60 s: the reaper revokes at 60 s."""
    source = {"type": "dynamic", "role": db_role}
    running = await broker_with(
        pki,
        tmp_path,
        openbao.addr,
        token_auth(openbao, tmp_path),
        {"query_db": {"risk": "secret", "secret": source}},
    )
    try:
        agent, server = Agent(running.channel("agent-demo")), Server(running.channel("mcp-secrets"))
        task = await agent.begin()
        resp = await agent.credential(task, "secrets", "query_db", ARGS)
        verified = await server.verify(resp.credential.token, "query_db", ARGS)
        user, password = verified.secret.data["username"], verified.secret.data["password"]
        await asyncio.sleep(0.2)  # a few reaper rounds: not due yet
        assert can_login(postgres, user, password)

        running.clock.advance(61)
        await eventually(lambda: secrets_of(running).stats.revoked == 1)
        assert not can_login(postgres, user, password)
    finally:
        await running.close()


async def test_an_operator_revoke_of_the_task_revokes_its_leases(
    pki: Path, openbao: OpenBao, postgres: Postgres, db_role: str, tmp_path: Path
) -> None:
    """An operator's RevokeTask / RevokeAgent (events of the store's feed) revoke the leases."""
    source = {"type": "dynamic", "role": db_role}
    running = await broker_with(
        pki,
        tmp_path,
        openbao.addr,
        token_auth(openbao, tmp_path),
        {"query_db": {"risk": "secret", "secret": source}},
    )
    try:
        agent, server = Agent(running.channel("agent-demo")), Server(running.channel("mcp-secrets"))
        task = await agent.begin()
        resp = await agent.credential(task, "secrets", "query_db", ARGS)
        verified = await server.verify(resp.credential.token, "query_db", ARGS)
        user, password = verified.secret.data["username"], verified.secret.data["password"]
        assert can_login(postgres, user, password)

        admin = admin_pb2_grpc.AdminServiceStub(running.channel("operator-admin"))
        await admin.RevokeTask(
            admin_pb2.RevokeTaskRequest(task_id=task, reason="incident 42"), timeout=5
        )
        await eventually(lambda: secrets_of(running).stats.revoked == 1)
        assert not can_login(postgres, user, password)

        # RevokeAgent (a floor event for the agent) reaches the leases of its other tasks too
        other = await agent.begin()
        resp = await agent.credential(other, "secrets", "query_db", ARGS)
        verified = await server.verify(resp.credential.token, "query_db", ARGS)
        user, password = verified.secret.data["username"], verified.secret.data["password"]
        await admin.RevokeAgent(
            admin_pb2.RevokeAgentRequest(agent="demo", reason="incident 43"), timeout=5
        )
        await eventually(lambda: secrets_of(running).stats.revoked == 2)
        assert not can_login(postgres, user, password)
    finally:
        await running.close()


async def test_a_failed_revocation_is_retried_reported_and_not_lost(
    pki: Path,
    openbao: OpenBao,
    postgres: Postgres,
    db_role: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """AppRole login under the documented policy, first without the revoke stanza: EndTask's
    revocation is denied, reported (log, counter, audit) and retried; once the policy allows it,
    the retry revokes the lease."""
    name = f"broker-{secrets.token_hex(3)}"
    policy = documented_policy(key=name, kv_prefix="unused", role=db_role)
    without_revoke = policy.replace("sys/leases/revoke/", "sys/leases/nothing/")
    with openbao.admin() as client:
        auth = approle_login(client, tmp_path, without_revoke, name, token_ttl="1h")
    source = {"type": "dynamic", "role": db_role}
    running = await broker_with(
        pki, tmp_path, openbao.addr, auth, {"query_db": {"risk": "secret", "secret": source}}
    )
    try:
        agent, server = Agent(running.channel("agent-demo")), Server(running.channel("mcp-secrets"))
        task = await agent.begin()
        resp = await agent.credential(task, "secrets", "query_db", ARGS)
        verified = await server.verify(resp.credential.token, "query_db", ARGS)
        user, password = verified.secret.data["username"], verified.secret.data["password"]
        stats = secrets_of(running).stats

        await agent.end(task)  # EndTask itself succeeds; the revocation is denied
        assert stats.revoke_failures >= 1 and stats.revoked == 0
        assert can_login(postgres, user, password)
        assert "failed to revoke" in caplog.text
        failed = [
            r.body
            for r in running.sink.records
            if r.body.get("event") == "secret.revoke" and r.body.get("outcome") == "failed"
        ]
        assert failed and "permission denied" in failed[0]["reason"]
        assert await secrets_of(running).leases.count() == 1  # kept for a retry

        with openbao.admin() as client:  # the operator fixes the policy
            client.sys.create_or_update_policy(name=name, policy=policy)
        running.clock.advance(5)  # past the backoff
        await eventually(lambda: stats.revoked == 1)
        assert not can_login(postgres, user, password)
        assert await secrets_of(running).leases.count() == 0
    finally:
        await running.close()
