"""Signing keys in Vault Transit, against a real OpenBao dev server (tests/support/openbao.py).

Tokens minted through Transit verify offline against the published JWKS (GetSigningKeys) and
online; the private key is nowhere on disk; rotation maps to Transit key versions, an old version
stays published until its last token has expired and is then trimmed in Vault too.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
from pathlib import Path
from typing import Any

import hvac
import orjson
import pytest
from cryptography.hazmat.primitives import serialization

from broker._proto.broker.v1 import verifier_pb2
from broker.adapters.vault.transit import TransitKeyProvider
from broker.core.canonical import args_sha256
from broker.core.errors import Reason, Unauthenticated
from broker.core.tokens.jwk import KeySet, PublicKey
from broker.core.tokens.verify import verify_token
from tests.integration.conftest import Running, start_broker
from tests.integration.helpers import Agent, Server
from tests.support.openbao import OpenBao, enable_engine
from tests.support.openbao import openbao as openbao_server  # noqa: F401 - session fixture

pytestmark = pytest.mark.integration


@pytest.fixture
def openbao(openbao_server: OpenBao) -> OpenBao:  # noqa: F811
    """The session's OpenBao with Transit mounted at transit/."""
    with openbao_server.admin() as client:
        enable_engine(client, "transit", "transit")
    return openbao_server


REPO = "spiffe://dev.local/mcp/repo"
ARGS = {"path": "README.md"}


def vault_section(bao: OpenBao, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    """A ``vault:`` config logging in with the root token from a 0600 file."""
    token_file = tmp_path / "vault-token"
    token_file.write_text(bao.token)
    token_file.chmod(0o600)
    return {"addr": bao.addr, "auth": {"method": "token", "token_file": str(token_file)}, **extra}


async def transit_broker(
    pki: Path, bao: OpenBao, tmp_path: Path, *, alg: str = "ES256", **transit: Any
) -> tuple[Running, str]:
    key = f"broker-{alg.lower()}-{secrets.token_hex(4)}"
    section = vault_section(bao, tmp_path, transit={"key": key, **transit})
    running = await start_broker(pki, **{"tokens.alg": alg, "vault": section})
    return running, key


async def jwks_of(server: Server) -> KeySet:
    resp = await server.stub.GetSigningKeys(verifier_pb2.GetSigningKeysRequest(), timeout=5)
    return KeySet.from_jwks(resp.jwks_json)


def kid_of(token: str) -> str:
    head = token.split(".", 1)[0]
    return str(orjson.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))["kid"])


def offline(token: str, keys: KeySet, running: Running, alg: str = "ES256") -> None:
    verify_token(
        token,
        keys=keys,
        allowed_algs=frozenset({alg}),
        issuer="spiffe://dev.local/broker",
        audience=REPO,
        now=running.clock.now(),
        tool="read_file",
        args_sha256=args_sha256(ARGS),
    )


def transit_public_keys(bao: OpenBao, key: str) -> dict[int, PublicKey]:
    with bao.admin() as client:
        data = client.secrets.transit.read_key(key)["data"]
    out: dict[int, PublicKey] = {}
    for version, info in data["keys"].items():
        material = info["public_key"]
        if data["type"] == "ed25519":
            from cryptography.hazmat.primitives.asymmetric import ed25519

            out[int(version)] = PublicKey(
                ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(material))
            )
        else:
            out[int(version)] = PublicKey(serialization.load_pem_public_key(material.encode()))  # type: ignore[arg-type]
    return out


def private_keys_under(*roots: Path) -> list[PublicKey]:
    """The public halves of every PEM private key found in files under ``roots``."""
    found: list[PublicKey] = []
    skip = {".venv", ".git", ".mypy_cache", ".ruff_cache", ".pytest_cache", "__pycache__"}
    for root in roots:
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d not in skip]
            for name in files:
                path = Path(folder, name)
                try:
                    if not path.is_file() or path.is_symlink() or path.stat().st_size > 1 << 20:
                        continue  # sockets (redis.sock), fifos, links, big files
                    data = path.read_bytes()
                except OSError:  # gone meanwhile, or unreadable
                    continue
                if b"PRIVATE KEY-----" not in data:
                    continue
                try:
                    key = serialization.load_pem_private_key(data, password=None)
                    found.append(PublicKey(key.public_key()))  # type: ignore[arg-type]
                except (ValueError, TypeError):
                    continue
    return found


@pytest.mark.parametrize("alg", ["ES256", "EdDSA"])
async def test_transit_tokens_verify_against_the_published_jwks(
    pki: Path,
    openbao: OpenBao,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    alg: str,
) -> None:
    running, key = await transit_broker(pki, openbao, tmp_path, alg=alg)
    try:
        assert isinstance(running.broker.keys, TransitKeyProvider)
        assert running.server.config.keys_dir is None
        agent, server = Agent(running.channel("agent-demo")), Server(running.channel("mcp-repo"))
        task = await agent.begin()
        token = await agent.token(task, "repo", "read_file", ARGS)

        # offline: the JWKS names the Transit version's public key by its RFC 7638 thumbprint
        keys = await jwks_of(server)
        offline(token, keys, running, alg)
        published = transit_public_keys(openbao, key)
        assert kid_of(token) == published[1].kid
        assert set(keys) == {published[1].kid}

        # online: VerifyCredential checks the same signature
        verified = await server.verify(token, "read_file", ARGS)
        assert verified.task_id == task

        # the private key exists only in Vault: not exportable, and on no disk we can see
        with openbao.admin() as client:
            info = client.secrets.transit.read_key(key)["data"]
            assert info["exportable"] is False and info["allow_plaintext_backup"] is False
            with pytest.raises(hvac.exceptions.VaultError):
                client.secrets.transit.export_key(key, key_type="signing-key")
        on_disk = {k.kid for k in private_keys_under(tmp_path_factory.getbasetemp(), Path.cwd())}
        assert published[1].kid not in on_disk
    finally:
        await running.close()


async def test_rotation_maps_to_transit_versions_and_old_versions_are_trimmed(
    pki: Path,
    openbao: OpenBao,
    tmp_path: Path,
) -> None:
    running, key = await transit_broker(pki, openbao, tmp_path)
    try:
        provider = running.broker.keys
        assert isinstance(provider, TransitKeyProvider)
        agent, server = Agent(running.channel("agent-demo")), Server(running.channel("mcp-repo"))
        task = await agent.begin()
        old_token = await agent.token(task, "repo", "read_file", ARGS)
        v1 = kid_of(old_token)

        new_kid = await provider.rotate(running.clock.now(), max_token_ttl=300)
        assert provider.versions() == {v1: 1, new_kid: 2}
        new_token = await agent.token(task, "repo", "read_file", ARGS)
        assert kid_of(new_token) == new_kid != v1

        keys = await jwks_of(server)  # both versions published: the old token still verifies
        assert set(keys) == {v1, new_kid}
        offline(old_token, keys, running)
        offline(new_token, keys, running)
        with pytest.raises(LookupError):  # a retired version never signs again
            await provider.sign(v1, b"x.y")

        # once every token of version 1 has expired (max TTL + margin), it is withdrawn...
        running.clock.advance(300 + 60 + 1)
        assert await provider.refresh(running.clock.now()) is False
        assert [k["kid"] for k in provider.public_jwks()] == [new_kid]
        assert set(await jwks_of(server)) == {new_kid}
        # ...and trimmed in Vault: gone for good
        with openbao.admin() as client:
            data = client.secrets.transit.read_key(key)["data"]
        assert data["min_available_version"] == 2 and list(data["keys"]) == ["2"]
        with pytest.raises(Unauthenticated) as exc:
            offline(old_token, await jwks_of(server), running)
        assert exc.value.reason is Reason.UNKNOWN_KEY
    finally:
        await running.close()


async def test_rotation_in_vault_is_followed_and_concurrent_mints_are_batched(
    pki: Path,
    openbao: OpenBao,
    tmp_path: Path,
) -> None:
    """Another replica (or auto_rotate_period) rotates in Vault: a refresh picks it up. Many
    concurrent mints share Transit requests (batch_input) and all verify."""
    running, key = await transit_broker(pki, openbao, tmp_path)
    try:
        provider = running.broker.keys
        assert isinstance(provider, TransitKeyProvider)
        with openbao.admin() as client:
            client.secrets.transit.rotate_key(key)
        assert await provider.refresh(running.clock.now()) is True
        assert provider.versions()[provider.active_kid()] == 2

        agent, server = Agent(running.channel("agent-demo")), Server(running.channel("mcp-repo"))
        task = await agent.begin()
        tokens = await asyncio.gather(
            *(agent.token(task, "repo", "read_file", ARGS) for _ in range(24))
        )
        keys = await jwks_of(server)
        for token in tokens:
            assert kid_of(token) == provider.active_kid()
            offline(token, keys, running)
        assert len(set(tokens)) == 24
    finally:
        await running.close()


async def test_a_version_below_min_encryption_version_is_never_used(
    pki: Path,
    openbao: OpenBao,
    tmp_path: Path,
) -> None:
    """An operator pins signing to a newer version in Vault: the stale replica's first sign is
    refused by Transit, the provider re-reads the key and the mint succeeds with the new one."""
    running, key = await transit_broker(pki, openbao, tmp_path)
    try:
        provider = running.broker.keys
        assert isinstance(provider, TransitKeyProvider)
        stale = provider.active_kid()
        with openbao.admin() as client:
            client.secrets.transit.rotate_key(key)
            client.adapter.post(
                f"/v1/transit/keys/{key}/config",
                json={"min_encryption_version": 2, "min_decryption_version": 1},
            )
        agent = Agent(running.channel("agent-demo"))
        task = await agent.begin()
        token = await agent.token(task, "repo", "read_file", ARGS)
        assert kid_of(token) != stale and kid_of(token) == provider.active_kid()
    finally:
        await running.close()
