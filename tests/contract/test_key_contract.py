"""The KeyProvider port's contract (broker.app.ports), run against every implementation: the
file key ring in memory and in a directory (broker.adapters.keys) and Vault Transit on a real
OpenBao dev server (broker.adapters.vault.transit).

What every provider keeps: the active key signs and its signature verifies with the published
JWK; a rotation makes a new key active at once and keeps the old one published (not signing)
until ``now + max_token_ttl + margin``; a ``refresh`` after that window drops it; nothing in the
port does file or Vault I/O on the event loop's thread.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from broker.adapters.keys import LocalKeyProvider
from broker.adapters.vault.client import VaultClient
from broker.adapters.vault.config import parse_vault_config
from broker.adapters.vault.transit import TransitKeyProvider
from broker.app.ports import KeyProvider
from broker.core.clock import FakeClock
from broker.core.tokens.jwk import KeySet
from broker.core.tokens.jws import ES256
from broker.core.tokens.keys import DEFAULT_PUBLISH_MARGIN
from tests.support.openbao import OpenBao, enable_engine
from tests.support.openbao import openbao as openbao_server  # noqa: F401 - session fixture

MAX_TTL = 300.0
WINDOW = MAX_TTL + DEFAULT_PUBLISH_MARGIN

Factory = Callable[[pytest.FixtureRequest, Path, FakeClock], Awaitable[KeyProvider]]


async def _memory(_: pytest.FixtureRequest, tmp: Path, clock: FakeClock) -> KeyProvider:
    return LocalKeyProvider(now=clock.now())


async def _directory(_: pytest.FixtureRequest, tmp: Path, clock: FakeClock) -> KeyProvider:
    return LocalKeyProvider(now=clock.now(), directory=tmp / "keys")


async def _transit(request: pytest.FixtureRequest, tmp: Path, clock: FakeClock) -> KeyProvider:
    bao: OpenBao = request.getfixturevalue("openbao_server")
    with bao.admin() as client:
        enable_engine(client, "transit", "transit")
    token_file = tmp / "vault-token"
    token_file.write_text(bao.token)
    token_file.chmod(0o600)
    config = parse_vault_config(
        {
            "addr": bao.addr,
            "auth": {"method": "token", "token_file": str(token_file)},
            "transit": {"key": f"contract-{secrets.token_hex(4)}", "refresh_seconds": 7},
        },
        tmp,
    )
    assert config.transit is not None
    client = VaultClient(config)
    return await asyncio.to_thread(
        TransitKeyProvider, client, config.transit, clock=clock, alg=ES256, max_token_ttl=MAX_TTL
    )


FACTORIES: dict[str, Factory] = {"memory": _memory, "directory": _directory, "transit": _transit}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(time.time())  # Transit dates versions by Vault's clock: start at real time


@pytest.fixture(params=sorted(FACTORIES))
async def provider(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[KeyProvider]:
    p = await FACTORIES[request.param](request, tmp_path, clock)
    try:
        yield p
    finally:
        await p.aclose()
        if isinstance(p, TransitKeyProvider):
            await asyncio.to_thread(p._client.close)


def kids(provider: KeyProvider) -> list[str]:
    return [str(k["kid"]) for k in provider.public_jwks()]


async def test_the_active_key_signs_and_its_signature_verifies(provider: KeyProvider) -> None:
    kid = provider.active_kid()
    assert kids(provider)[0] == kid
    assert provider.list_keys()[0].kid == kid and provider.list_keys()[0].active
    data = b"header.payload"
    signature = await provider.sign(kid, data)
    KeySet.from_jwks({"keys": provider.public_jwks()}).get(kid).verify(data, signature)
    assert provider.alg == ES256
    assert provider.refresh_interval > 0
    if isinstance(provider, TransitKeyProvider):  # vault.transit.refresh_seconds, as configured
        assert provider.refresh_interval == 7 and provider.shared
    else:  # process-local keys: published in the store by the broker (broker.app.keyring)
        assert not provider.shared


async def test_only_the_active_key_signs(provider: KeyProvider) -> None:
    with pytest.raises(LookupError):
        await provider.sign("not-a-kid", b"x")


async def test_rotation_keeps_the_old_key_published_until_its_tokens_expired(
    provider: KeyProvider, clock: FakeClock
) -> None:
    old = provider.active_kid()
    new = await provider.rotate(clock.now(), MAX_TTL)
    assert new != old and provider.active_kid() == new
    assert kids(provider) == [new, old]
    retired = {info.kid: info for info in provider.list_keys()}[old]
    assert not retired.active
    assert retired.publish_until is not None
    assert retired.publish_until >= clock.now() + WINDOW - 5  # Transit: Vault's clock
    with pytest.raises(LookupError):  # a retired key never signs again
        await provider.sign(old, b"x")
    signature = await provider.sign(new, b"x")
    KeySet.from_jwks({"keys": provider.public_jwks()}).get(new).verify(b"x", signature)

    assert await provider.refresh(clock.now() + 1) is False  # nothing changed: still both
    assert kids(provider) == [new, old]
    clock.advance(WINDOW + 10)
    await provider.refresh(clock.now())
    assert kids(provider) == [new]


async def test_no_io_on_the_event_loop(
    provider: KeyProvider, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every file lock, fsync and Vault request of the port runs off the event loop's thread
    (the file key ring used to flock and fsync on the loop every 2 s)."""
    loop_thread = threading.get_ident()
    io_threads: list[tuple[str, int]] = []

    def spy(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            io_threads.append((name, threading.get_ident()))
            return real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(fcntl, "flock", spy("flock", fcntl.flock))
    monkeypatch.setattr(os, "fsync", spy("fsync", os.fsync))
    monkeypatch.setattr(VaultClient, "call", spy("vault", VaultClient.call))
    before = kids(provider)
    for _ in range(2):
        assert await provider.refresh(clock.now()) is False
        await provider.rotate(clock.now(), MAX_TTL)
    await asyncio.gather(*(provider.sign(provider.active_kid(), b"x") for _ in range(8)))
    assert len(kids(provider)) == len(before) + 2
    on_loop = [name for name, thread in io_threads if thread == loop_thread]
    assert on_loop == []
    if not isinstance(provider, LocalKeyProvider) or provider.keys_dir is not None:
        assert io_threads  # the spies saw the I/O: the check above is not vacuous
