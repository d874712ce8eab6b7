"""Vault goes away: a tool that needs a secret fails closed with a clear reason (UNAVAILABLE,
SECRET_UNAVAILABLE), the other tools go on; with Transit signing, minting fails closed
(SIGNING_UNAVAILABLE) while verification goes on with the keys already published."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from broker._proto.broker.v1 import verifier_pb2
from broker.core.errors import ConfigError, VaultUnavailable
from broker.core.model import TaskState
from tests.integration.conftest import start_broker
from tests.integration.helpers import Agent, Server, reason_of
from tests.redis_procs import free_port
from tests.support.openbao import (
    OpenBao,
    enable_engine,
    put_kv,
    start_openbao,
    token_auth,
    vault_section,
    write_registry,
)

pytestmark = pytest.mark.integration

ARGS = {"q": "x"}


@pytest.fixture
def own_openbao(tmp_path: Path) -> Iterator[OpenBao]:
    """A server of this test's own, which it may kill."""
    bao = start_openbao(tmp_path / "openbao")
    try:
        yield bao
    finally:
        bao.stop()


async def test_vault_down_fails_the_secret_tool_closed_and_other_tools_go_on(
    pki: Path, own_openbao: OpenBao, tmp_path: Path
) -> None:
    path = f"app/{secrets.token_hex(3)}"
    with own_openbao.admin() as client:
        put_kv(client, path, {"api_key": "kv-" + secrets.token_hex(8)})
    registry = write_registry(
        tmp_path, {"read_api_key": {"risk": "secret", "secret": {"type": "kv", "path": path}}}
    )
    section = vault_section(own_openbao.addr, token_auth(own_openbao, tmp_path))
    running = await start_broker(pki, registry=str(registry), vault=section)
    try:
        agent = Agent(running.channel("agent-demo"))
        secrets_server = Server(running.channel("mcp-secrets"))
        repo = Server(running.channel("mcp-repo"))
        task = await agent.begin()
        token = await agent.token(task, "secrets", "read_api_key", ARGS)
        assert (await secrets_server.verify(token, "read_api_key", ARGS)).secret.data

        own_openbao.kill()
        token = await agent.token(task, "secrets", "read_api_key", ARGS)
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await secrets_server.verify(token, "read_api_key", ARGS)
        assert exc.value.code() is grpc.StatusCode.UNAVAILABLE
        assert reason_of(exc.value) == "SECRET_UNAVAILABLE"
        assert "unreachable" in (exc.value.details() or "")

        # a tool without a secret is not affected, and the task ends normally
        token = await agent.token(task, "repo", "read_file", ARGS)
        assert (await repo.verify(token, "read_file", ARGS)).HasField("secret") is False
        await agent.end(task)
        ended = await running.store.get_task(task)
        assert ended is not None and ended.state is TaskState.ENDED
    finally:
        await running.close()
    failed = [
        r.body
        for r in running.sink.records
        if r.body.get("event") == "secret.issue" and r.body.get("outcome") == "failed"
    ]
    assert failed and "unreachable" in failed[0]["reason"]


async def test_a_broker_starts_while_vault_is_down_and_only_secret_tools_fail(
    pki: Path, tmp_path: Path
) -> None:
    registry = write_registry(
        tmp_path, {"read_api_key": {"risk": "secret", "secret": {"type": "kv", "path": "a/b"}}}
    )
    token_file = tmp_path / "token"
    token_file.write_text("nothing-listens")
    auth = {"method": "token", "token_file": str(token_file)}
    section = vault_section(f"http://127.0.0.1:{free_port()}", auth)
    running = await start_broker(pki, registry=str(registry), vault=section)
    try:
        agent = Agent(running.channel("agent-demo"))
        task = await agent.begin()
        token = await agent.token(task, "secrets", "read_api_key", ARGS)
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await Server(running.channel("mcp-secrets")).verify(token, "read_api_key", ARGS)
        assert reason_of(exc.value) == "SECRET_UNAVAILABLE"
        token = await agent.token(task, "repo", "read_file", ARGS)
        await Server(running.channel("mcp-repo")).verify(token, "read_file", ARGS)
    finally:
        await running.close()


async def test_transit_down_fails_minting_closed_and_verification_goes_on(
    pki: Path, own_openbao: OpenBao, tmp_path: Path
) -> None:
    with own_openbao.admin() as client:
        enable_engine(client, "transit", "transit")
    section = vault_section(
        own_openbao.addr, token_auth(own_openbao, tmp_path), transit={"key": "broker-tokens"}
    )
    running = await start_broker(pki, vault=section)
    try:
        agent, repo = Agent(running.channel("agent-demo")), Server(running.channel("mcp-repo"))
        task = await agent.begin()
        before = await agent.token(task, "repo", "read_file", ARGS)

        own_openbao.kill()
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await agent.credential(task, "repo", "read_file", ARGS)
        assert exc.value.code() is grpc.StatusCode.UNAVAILABLE
        assert reason_of(exc.value) == "SIGNING_UNAVAILABLE"

        keys = await repo.stub.GetSigningKeys(verifier_pb2.GetSigningKeysRequest(), timeout=5)
        assert "keys" in keys.jwks_json
        assert (await repo.verify(before, "read_file", ARGS)).task_id == task
    finally:
        await running.close()


async def test_misconfigurations_refuse_to_start(pki: Path, tmp_path: Path) -> None:
    registry = write_registry(
        tmp_path, {"read_api_key": {"risk": "secret", "secret": {"type": "kv", "path": "a/b"}}}
    )
    with pytest.raises(ConfigError) as exc:  # a secret source needs a vault: section
        await start_broker(pki, registry=str(registry))
    assert exc.value.key == "vault"
    token_file = tmp_path / "token"
    token_file.write_text("t")
    section = vault_section(
        f"http://127.0.0.1:{free_port()}",
        {"method": "token", "token_file": str(token_file)},
        transit={"key": "k"},
    )
    with pytest.raises(ConfigError) as exc:  # Transit keys and a local keys dir: pick one
        await start_broker(pki, vault=section, **{"tokens.keys_dir": str(tmp_path / "keys")})
    assert exc.value.key == "tokens.keys_dir"
    with pytest.raises(VaultUnavailable) as unavailable:  # signing keys unreachable: no start
        await start_broker(pki, vault=section)
    assert unavailable.value.reason.value == "SIGNING_UNAVAILABLE"
