"""broker.app.keyring on the in-memory store: replicas share their public keys through the
store, a retired key stays published until its last token has expired, the provider is refreshed
at its own interval (Transit's refresh_seconds), a shared provider publishes nothing, and a
malformed published key is ignored."""

from __future__ import annotations

import logging

import pytest

from broker.adapters.keys import LocalKeyProvider
from broker.adapters.store.memory import MemoryStore
from broker.app.keyring import SigningKeys
from broker.core.clock import FakeClock
from broker.core.tokens.claims import mint_token_async
from broker.core.tokens.keys import PublishedKey
from tests.support.tokens import T0, make_claims

MAX_TTL = 300.0
WINDOW = MAX_TTL + 60.0


class Ticks:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def replica(store: MemoryStore, clock: FakeClock, name: str, ticks: Ticks) -> SigningKeys:
    provider = LocalKeyProvider(now=clock.now())
    return SigningKeys(provider, store, clock, max_token_ttl=MAX_TTL, replica=name, monotonic=ticks)


async def test_replicas_verify_each_others_keys_until_their_last_token_expired() -> None:
    store, clock, ticks = MemoryStore(), FakeClock(T0), Ticks()
    a, b = replica(store, clock, "a", ticks), replica(store, clock, "b", ticks)
    await a.maintain(clock.now())
    await b.maintain(clock.now())
    await a.maintain(clock.now())  # a learns b's key too
    kid_a, kid_b = a.provider.active_kid(), b.provider.active_kid()
    assert set(a.keyset()) == set(b.keyset()) == {kid_a, kid_b}
    assert [k.kid for k in a.list_keys()] == [kid_a, kid_b]
    assert a.list_keys()[1].replica == "b" and not a.list_keys()[1].active

    # b rotates: its new key is published at once; a finds it on the first token that names it
    new = await b.rotate(clock.now(), MAX_TTL)
    token = await mint_token_async(make_claims(), b.provider)
    ticks.now += 2  # (unknown kids re-read the store at most once a second)
    assert new in await a.keyset_for(token)
    assert {k["kid"] for k in await a.current_jwks()} == {kid_a, kid_b, new}

    # b's retired key stays published until its last token has expired, then it is gone
    clock.advance(WINDOW - 1)
    await a.sync(clock.now())
    assert kid_b in a.keyset()
    clock.advance(2)
    await a.sync(clock.now())
    assert kid_b not in a.keyset()


async def test_a_dead_replicas_key_stays_until_its_tokens_expired() -> None:
    store, clock, ticks = MemoryStore(), FakeClock(T0), Ticks()
    a, b = replica(store, clock, "a", ticks), replica(store, clock, "b", ticks)
    await b.maintain(clock.now())  # b publishes, then dies (never renews)
    kid_b = b.provider.active_kid()
    clock.advance(WINDOW - 1)
    await a.maintain(clock.now())
    assert kid_b in a.keyset()
    clock.advance(2)
    ticks.now += 60
    await a.maintain(clock.now())
    assert kid_b not in a.keyset()


async def test_the_provider_is_refreshed_at_its_own_interval() -> None:
    class Counting(LocalKeyProvider):
        refresh_interval = 30.0  # as vault.transit.refresh_seconds: 30
        refreshes = 0

        async def refresh(self, now: float) -> bool:
            self.refreshes += 1
            return await super().refresh(now)

    store, clock, ticks = MemoryStore(), FakeClock(T0), Ticks()
    provider = Counting(now=clock.now())
    keys = SigningKeys(provider, store, clock, max_token_ttl=MAX_TTL, monotonic=ticks)
    for second in range(0, 62, 2):  # the housekeeping loop runs every 2 s
        ticks.now = float(second)
        await keys.maintain(clock.now())
    assert provider.refreshes == 3  # at 0, 30 and 60 s: not every 2 s


async def test_a_shared_provider_publishes_nothing() -> None:
    class Shared(LocalKeyProvider):
        shared = True  # type: ignore[assignment]

    store, clock = MemoryStore(), FakeClock(T0)
    keys = SigningKeys(Shared(now=clock.now()), store, clock, max_token_ttl=MAX_TTL)
    await keys.maintain(clock.now())
    await keys.rotate(clock.now(), MAX_TTL)
    assert await store.published_keys(clock.now()) == []


async def test_sharing_turned_off_neither_publishes_nor_reads() -> None:
    store, clock, ticks = MemoryStore(), FakeClock(T0), Ticks()
    other = replica(store, clock, "other", ticks)
    await other.maintain(clock.now())
    keys = SigningKeys(
        LocalKeyProvider(now=clock.now()), store, clock, max_token_ttl=MAX_TTL, share=False
    )
    await keys.maintain(clock.now())
    assert [k.kid for k in await store.published_keys(clock.now())] == [other.provider.active_kid()]
    assert set(keys.keyset()) == {keys.provider.active_kid()}


async def test_a_malformed_published_key_is_ignored(caplog: pytest.LogCaptureFixture) -> None:
    store, clock, ticks = MemoryStore(), FakeClock(T0), Ticks()
    a, b = replica(store, clock, "a", ticks), replica(store, clock, "b", ticks)
    await b.maintain(clock.now())
    good = b.provider.active_kid()
    forged = PublishedKey(
        kid="A" * 43, jwk=(await store.published_keys(clock.now()))[0].jwk, until=T0 + 100
    )
    await store.publish_keys([forged, PublishedKey("x", "not json", T0 + 100)], now=clock.now())
    with caplog.at_level(logging.WARNING, logger="broker.app.keyring"):
        await a.maintain(clock.now())
    assert good in a.keyset() and "A" * 43 not in a.keyset() and "x" not in a.keyset()
    assert sum("malformed published signing key" in r.message for r in caplog.records) == 2
