"""The store's published signing keys (``Store.publish_keys`` / ``published_keys``), on every
store implementation: what replicas share so that each verifies the others' tokens."""

from __future__ import annotations

import asyncio

from broker.app.ports import Store
from broker.core.tokens.jwk import SigningKey
from broker.core.tokens.keys import PublishedKey

T0 = 1_800_000_000.0


def published(key: SigningKey, until: float, replica: str = "a-1") -> PublishedKey:
    return PublishedKey.of(key.public_key, until=until, created_at=T0 - 5, replica=replica)


async def test_published_keys_round_trip_until_they_expire(store: Store) -> None:
    one, two = SigningKey.generate(), SigningKey.generate("EdDSA")
    await store.publish_keys([published(one, T0 + 60), published(two, T0 + 30, "b-2")], now=T0)
    found = {k.kid: k for k in await store.published_keys(T0)}
    assert set(found) == {one.kid, two.kid}
    assert found[one.kid] == published(one, T0 + 60)
    assert found[two.kid].public_key().kid == two.kid  # the JWK survived as published
    assert found[two.kid].replica == "b-2"
    assert [k.kid for k in await store.published_keys(T0 + 30)] == [one.kid]
    assert await store.published_keys(T0 + 60) == []


async def test_a_publication_is_never_shortened(store: Store) -> None:
    key = SigningKey.generate()
    await store.publish_keys([published(key, T0 + 100)], now=T0)
    await store.publish_keys([published(key, T0 + 50)], now=T0 + 1)  # a late, older writer
    (found,) = await store.published_keys(T0 + 60)
    assert found.until == T0 + 100
    await store.publish_keys([published(key, T0 + 200)], now=T0 + 2)  # a renewal extends it
    (found,) = await store.published_keys(T0 + 150)
    assert found.until == T0 + 200


async def test_expired_keys_are_dropped_on_publish(store: Store) -> None:
    old, new = SigningKey.generate(), SigningKey.generate()
    await store.publish_keys([published(old, T0 + 10)], now=T0)
    await store.publish_keys([published(new, T0 + 100)], now=T0 + 20)
    assert [k.kid for k in await store.published_keys(T0)] == [new.kid]  # gone, not hidden


async def test_concurrent_publishers_all_land(store: Store) -> None:
    keys = [SigningKey.generate() for _ in range(8)]
    assert await store.published_keys(T0) == []  # (connects first: redis-py's cluster client
    # does not survive 8 concurrent first calls, whatever the script)
    await asyncio.gather(
        *(store.publish_keys([published(k, T0 + 60, f"r-{i}")], now=T0) for i, k in enumerate(keys))
    )
    assert {k.kid for k in await store.published_keys(T0)} == {k.kid for k in keys}
