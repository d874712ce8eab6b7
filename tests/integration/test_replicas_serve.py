"""Issue 15: two `broker serve` processes on one real redis-server with the dev config as it is
(no key directory: each process has its own ephemeral keys) agree on every token. Each replica
publishes its public keys in the store: mint on A, verify on B; rotate on B, verify on A; an
offline verifier fed by A follows B's new key; the private keys never reach Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis

from broker._proto.broker.v1 import admin_pb2, admin_pb2_grpc, verifier_pb2
from broker.client.verifier import OfflineVerifier
from broker.client.verifier.base import VerifierSettings
from broker.core.tokens.jwk import KeySet
from tests.integration.conftest import DEV, channel
from tests.integration.helpers import Agent, Server
from tests.support.serve import Served, serve_env, serving

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ARGS = {"query": "replicas"}


@pytest.fixture
def replicas(pki: Path, redis_server: str) -> Iterator[tuple[Served, Served, str]]:
    namespace = f"rs{uuid.uuid4().hex[:8]}"
    env = serve_env(pki, BROKER_STORE=f"{redis_server}?namespace={namespace}")
    with serving(DEV / "broker.yaml", env) as a, serving(DEV / "broker.yaml", env) as b:
        yield a, b, namespace


def kid_of(token: str) -> str:
    import base64

    head = token.split(".", 1)[0]
    return str(orjson.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))["kid"])


async def jwks(port: int, pki: Path) -> KeySet:
    async with channel(port, pki, "mcp-docs") as ch:
        resp = await Server(ch).stub.GetSigningKeys(verifier_pb2.GetSigningKeysRequest())
    return KeySet.from_jwks(resp.jwks_json)


async def mint(port: int, pki: Path) -> str:
    async with channel(port, pki, "agent-demo") as ch:
        agent = Agent(ch)
        task = await agent.begin()
        return await agent.token(task, "docs", "search_docs", ARGS)


async def verify_online(port: int, pki: Path, token: str) -> None:
    async with channel(port, pki, "mcp-docs") as ch:
        await Server(ch).verify(token, "search_docs", ARGS)


async def test_two_serve_processes_on_one_redis_agree(
    replicas: tuple[Served, Served, str], pki: Path, redis_server: str
) -> None:
    a, b, namespace = replicas
    # mint on A, verify on B (online: B consumes it)
    token_a = await mint(a.port, pki)
    await verify_online(b.port, pki, token_a)
    kid_a = kid_of(token_a)

    # an offline verifier fed by A only
    verifier = OfflineVerifier(
        f"127.0.0.1:{a.port}",
        ca=pki / "ca.crt",
        cert=pki / "mcp-docs.crt",
        key=pki / "mcp-docs.key",
        settings=VerifierSettings(jwks_min_interval=0.0),  # refetch at each unknown kid
    )
    async with verifier:
        # a token of B verifies offline with the keys A serves (B's key is published)
        await verifier.verify(await mint(b.port, pki), tool="search_docs", arguments=ARGS)

        # rotate on B; a token B signs with its new key verifies on A and offline
        async with channel(b.port, pki, "operator-admin") as ch:
            stub = admin_pb2_grpc.AdminServiceStub(ch)  # type: ignore[no-untyped-call]
            rotated = await stub.RotateSigningKey(admin_pb2.RotateSigningKeyRequest())
        new_kid = rotated.key.kid
        # B's other worker signs with its retired key until it re-reads their shared ring (2 s)
        for _ in range(40):
            token_b = await mint(b.port, pki)
            if kid_of(token_b) == new_kid:
                break
            await asyncio.sleep(0.1)
        assert kid_of(token_b) == new_kid
        await verifier.authenticate(token_b)  # offline, without using it up
        await verify_online(a.port, pki, token_b)

        # both replicas serve the union: A's key, B's old (retired, still published) and new
        keys_a, keys_b = await jwks(a.port, pki), await jwks(b.port, pki)
        assert {kid_a, new_kid} <= set(keys_a) == set(keys_b)
        assert len(set(keys_a)) == 3

        # the operator sees whose key is whose
        async with channel(a.port, pki, "operator-admin") as ch:
            stub = admin_pb2_grpc.AdminServiceStub(ch)  # type: ignore[no-untyped-call]
            listed = await stub.ListSigningKeys(admin_pb2.ListSigningKeysRequest())
        by_kid = {k.kid: k for k in listed.keys}
        assert by_kid[kid_a].active and not by_kid[new_kid].active
        assert by_kid[new_kid].replica  # published by B

    # Redis holds public keys only
    client = redis.Redis.from_url(redis_server)
    try:
        docs = client.hgetall(f"{namespace}:{{keys}}:pub")
    finally:
        client.close()
    assert {k.decode() for k in docs} == set(keys_a)
    for raw in docs.values():
        jwk = orjson.loads(orjson.loads(raw)["jwk"])
        assert "d" not in jwk and set(jwk) <= {"kty", "crv", "x", "y", "kid", "alg", "use"}
