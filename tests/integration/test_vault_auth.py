"""How the broker logs in to Vault: TLS certificate auth with its own X.509-SVID (against an
OpenBao with a TLS listener), and AppRole whose short-lived token is renewed, then replaced by a
fresh login when it reaches its max TTL."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.adapters.vault.runtime import VaultRuntime
from tests.integration.conftest import Running, start_broker
from tests.integration.helpers import Agent, Server
from tests.support.openbao import (
    OpenBao,
    approle_login,
    enable_auth,
    put_kv,
    start_openbao,
    vault_section,
    write_registry,
)
from tests.support.openbao import openbao as openbao_server  # noqa: F401 - session fixture

pytestmark = pytest.mark.integration

ARGS = {"q": "x"}
KV_POLICY = 'path "secret/data/{path}" {{ capabilities = ["read"] }}\n'


@pytest.fixture
def tls_openbao(tmp_path: Path) -> Iterator[OpenBao]:
    bao = start_openbao(tmp_path / "openbao-tls", tls=True)
    try:
        yield bao
    finally:
        bao.stop()


def vault_of(running: Running) -> VaultRuntime:
    vault = running.server.components.vault
    assert vault is not None
    return vault


async def read_secret(running: Running, task: str) -> dict[str, str]:
    agent = Agent(running.channel("agent-demo"))
    token = await agent.token(task, "secrets", "read_api_key", ARGS)
    verified = await Server(running.channel("mcp-secrets")).verify(token, "read_api_key", ARGS)
    return dict(verified.secret.data)


async def test_cert_auth_with_the_brokers_svid(
    pki: Path, tls_openbao: OpenBao, tmp_path: Path
) -> None:
    path = f"app/{secrets.token_hex(3)}"
    value = "kv-" + secrets.token_hex(8)
    with tls_openbao.admin() as client:
        put_kv(client, path, {"api_key": value})
        client.sys.create_or_update_policy(name="broker", policy=KV_POLICY.format(path=path))
        enable_auth(client, "cert", "cert")
        client.write_data(
            "auth/cert/certs/broker",
            data={
                "certificate": (pki / "ca.crt").read_text(),
                "allowed_uri_sans": "spiffe://dev.local/broker",
                "token_policies": "broker",
                "token_ttl": "1h",
            },
        )
    auth = {
        "method": "cert",
        "cert": str(pki / "broker.crt"),
        "key": str(pki / "broker.key"),
        "role": "broker",
    }
    assert tls_openbao.ca_cert is not None
    section = vault_section(tls_openbao.addr, auth, ca_cert=str(tls_openbao.ca_cert))
    registry = write_registry(
        tmp_path, {"read_api_key": {"risk": "secret", "secret": {"type": "kv", "path": path}}}
    )
    running = await start_broker(pki, registry=str(registry), vault=section)
    try:
        task = await Agent(running.channel("agent-demo")).begin()
        assert await read_secret(running, task) == {"api_key": value}
        with tls_openbao.admin() as client:  # the token is the cert role's, not root
            looked_up = client.auth.token.lookup(vault_of(running).client.token())["data"]
        assert looked_up["policies"] == ["broker", "default"]
        assert looked_up["path"] == "auth/cert/login"
    finally:
        await running.close()


async def test_approle_token_is_renewed_then_replaced_by_a_new_login(
    pki: Path,
    openbao_server: OpenBao,  # noqa: F811
    tmp_path: Path,
) -> None:
    path = f"app/{secrets.token_hex(3)}"
    name = f"broker-{secrets.token_hex(3)}"
    with openbao_server.admin() as client:
        put_kv(client, path, {"api_key": "v"})
        auth = approle_login(
            client, tmp_path, KV_POLICY.format(path=path), name, token_ttl="2s", token_max_ttl="3s"
        )
    registry = write_registry(
        tmp_path, {"read_api_key": {"risk": "secret", "secret": {"type": "kv", "path": path}}}
    )
    running = await start_broker(
        pki, registry=str(registry), vault=vault_section(openbao_server.addr, auth)
    )
    try:
        client = vault_of(running).client
        task = await Agent(running.channel("agent-demo")).begin()
        assert await read_secret(running, task) == {"api_key": "v"}
        first = client.token()
        for _ in range(80):  # renewal at 2/3 of 2 s; a new login before the 3 s max TTL
            await asyncio.sleep(0.1)
            assert await read_secret(running, task) == {"api_key": "v"}
            if client.logins >= 2:
                break
        assert client.renewals >= 1, "the token was never renewed"
        assert client.logins >= 2 and client.token() != first, "the broker never logged in again"
    finally:
        await running.close()
