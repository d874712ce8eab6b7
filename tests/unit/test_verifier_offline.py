"""The offline verifier without a broker: keys from a fake fetch, feed messages applied by hand,
wall clock and monotonic clock injected."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from broker.adapters.pki import ensure_dev_pki
from broker.client.sdk.channel import WorkloadCredentials
from broker.client.verifier import OfflineVerifier, VerifierSettings
from broker.client.verifier.keys import KeyCache
from broker.core.clock import FakeClock
from broker.core.errors import InvalidRequest, Reason, Unauthenticated
from broker.core.model import RevocationEvent
from broker.core.tokens import KeySet, mint_token
from tests.support.tokens import (
    ARGUMENTS,
    JTI,
    T0,
    TASK,
    TOOL,
    OneKeyProvider,
    fixed_key,
    keyset,
    make_claims,
)

KEY = fixed_key()
ROTATED = fixed_key(label="rotated")


class Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    ensure_dev_pki(directory, "test.example")  # mcp-repo is spiffe://test.example/mcp/repo
    return directory


class Fixture:
    def __init__(self, pki: Path) -> None:
        self.clock = FakeClock(T0 + 1)
        self.mono = Monotonic()
        self.published = keyset(KEY)
        self.verifier = OfflineVerifier(
            "127.0.0.1:1",
            credentials=WorkloadCredentials.from_dev_dir(pki, "mcp-repo"),
            settings=VerifierSettings(stale_after=5.0, jwks_min_interval=5.0),
            clock=self.clock,
            monotonic=self.mono,
        )
        self.fetches = 0
        self.verifier.keys = KeyCache(self._fetch, monotonic=self.mono, min_interval=5.0)

    async def _fetch(self) -> KeySet:
        self.fetches += 1
        return self.published

    def beat(self) -> None:
        self.verifier.apply(RevocationEvent("7", "heartbeat", "", self.clock.now()))

    def token(self, key: Any = KEY, **changes: Any) -> str:
        return mint_token(make_claims(**changes), OneKeyProvider(key))

    async def verify(self, token: str, **changes: Any) -> Any:
        call: dict[str, Any] = {"tool": TOOL, "arguments": ARGUMENTS, **changes}
        return await self.verifier.verify(token, **call)


@pytest.fixture
async def f(pki: Path) -> Fixture:
    fx = Fixture(pki)
    await fx.verifier.keys.refresh(force=True)
    fx.beat()
    return fx


async def reason(coro: Any) -> Reason:
    with pytest.raises(Unauthenticated) as exc:
        await coro
    return exc.value.reason


async def test_verify_consumes_once(f: Fixture) -> None:
    token = f.token()
    assert f.verifier.identity == "spiffe://test.example/mcp/repo"
    claims = await f.verifier.authenticate(token)  # the HTTP layer does not consume
    assert claims.jti == JTI
    call = await f.verify(token)
    assert (call.task_id, call.tool, call.jti, call.mode) == (TASK, TOOL, JTI, "offline")
    assert await reason(f.verify(token)) is Reason.REPLAYED
    # issue 13 item 8: a used credential is refused at every later request of a session too
    assert await reason(f.verifier.authenticate(token)) is Reason.REPLAYED


@pytest.mark.parametrize(
    ("changes", "call", "expected"),
    [
        ({"aud": "spiffe://test.example/mcp/deploy"}, {}, Reason.WRONG_AUDIENCE),
        ({"iss": "spiffe://elsewhere/broker"}, {}, Reason.WRONG_ISSUER),
        ({}, {"tool": "write_file"}, Reason.TOOL_MISMATCH),
        ({}, {"arguments": {"path": "other"}}, Reason.ARGS_MISMATCH),
        ({}, {"arguments": None, "args_sha256": "0" * 64}, Reason.ARGS_MISMATCH),
        ({}, {"presenter_cert_sha256": "ab" * 32}, Reason.CERT_MISMATCH),
        ({"exp": T0 - 10, "iat": T0 - 70, "nbf": T0 - 70}, {}, Reason.TOKEN_EXPIRED),
    ],
)
async def test_same_reasons_as_the_broker(
    f: Fixture, changes: dict[str, Any], call: dict[str, Any], expected: Reason
) -> None:
    assert await reason(f.verify(f.token(**changes), **call)) is expected


async def test_stale_feed_fails_everything_closed(f: Fixture) -> None:
    f.mono.now += 4.9
    await f.verify(f.token())
    f.mono.now += 0.2  # 5.1 s since the last heartbeat
    for attempt in (
        f.verify(f.token(jti=TASK + ".CCCCCCCCCCCCCCCCCCCCCC")),
        f.verifier.authenticate(f.token()),
    ):
        assert await reason(attempt) is Reason.STALE
    assert await reason(f.verifier.authenticate("garbage")) is Reason.STALE
    f.beat()  # the feed is back
    await f.verifier.authenticate(f.token(jti=TASK + ".DDDDDDDDDDDDDDDDDDDDDD"))


async def test_not_fresh_before_the_first_heartbeat(pki: Path) -> None:
    fx = Fixture(pki)
    await fx.verifier.keys.refresh(force=True)
    assert await reason(fx.verify(fx.token())) is Reason.STALE


async def test_revocation_events_apply_at_once(f: Fixture) -> None:
    token = f.token()
    f.verifier.apply(RevocationEvent("8", "task", TASK, T0 + 1, "ended by agent"))
    assert f.verifier.cursor == "8" and f.verifier.events == 1
    assert await reason(f.verifier.authenticate(token)) is Reason.REVOKED
    assert await reason(f.verify(token)) is Reason.REVOKED


async def test_feed_reset_revokes_what_came_before(f: Fixture) -> None:
    f.verifier.cursor = "41"
    assert f.verifier.keys.keys  # (loaded)
    f.verifier._feed_failed(InvalidRequest("since", "is ahead of the feed"))
    assert f.verifier.cursor == ""
    assert not f.verifier.keys.keys  # issue 13 item 9: a reset drops the cached keys too
    await f.verifier.keys.refresh()
    assert await reason(f.verify(f.token())) is Reason.REVOKED
    later = int(f.clock.now() + 10)
    fresh = f.token(iat=later, nbf=later, exp=later + 60, jti=TASK + ".DDDDDDDDDDDDDDDDDDDDDD")
    f.clock.advance(10)
    f.beat()
    await f.verify(fresh)


async def test_unknown_kid_refetches_the_keys_rate_limited(f: Fixture) -> None:
    assert f.fetches == 1
    f.published = keyset(KEY, ROTATED)  # the broker rotated
    assert await reason(f.verify(f.token(ROTATED))) is Reason.UNKNOWN_KEY  # fetched < 5 s ago
    f.mono.now += 5.0
    f.beat()
    await f.verify(f.token(ROTATED))
    assert f.fetches == 2
    # a flood of tokens with kids nobody published: at most one fetch per 5 s
    stranger = fixed_key(label="stranger")
    for i in range(20):
        token = f.token(stranger, jti=f"{TASK}.{'E' * 21}{'ABCDEFGHIJKLMNOPQRSTU'[i]}")
        assert await reason(f.verify(token)) is Reason.UNKNOWN_KEY
    assert f.fetches == 2
    f.mono.now += 5.0
    f.beat()
    assert await reason(f.verify(f.token(stranger))) is Reason.UNKNOWN_KEY
    assert f.fetches == 3


async def test_caches_are_pruned_as_time_passes(f: Fixture) -> None:
    await f.verify(f.token())
    f.verifier.apply(RevocationEvent("9", "task", "t_BBBBBBBBBBBBBBBBBBBBBB", T0))
    assert len(f.verifier.replay) == 1 and len(f.verifier.revocations) == 1
    f.clock.advance(400)  # past every token's exp + leeway and the revocation's retention
    f.mono.now += 2
    f.beat()
    assert len(f.verifier.replay) == 0 and len(f.verifier.revocations) == 0


def test_settings_are_frozen() -> None:
    s = VerifierSettings()
    assert s.stale_after == 5.0 and s.max_token_ttl == 300
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.stale_after = 1  # type: ignore[misc]
