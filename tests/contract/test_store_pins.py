"""The store contract for tool definition pins (memory, Redis, Redis Cluster): first sight pins,
later sights only update what was observed, concurrent first sights agree, re-pins stick."""

from __future__ import annotations

import asyncio

from broker.app.ports import Store

FILES = "spiffe://dev.local/mcp/files"
OTHER = "spiffe://dev.local/mcp/everything"
A, B, C = "a" * 64, "b" * 64, "c" * 64
NOW = 1_800_000_000.0


async def test_first_sight_pins_and_later_sights_are_only_observed(store: Store) -> None:
    assert await store.tool_pins(FILES) == {}
    pins, newly = await store.observe_tools(FILES, {"read": A, "write": B}, NOW)
    assert newly == {"read", "write"}
    assert (pins["read"].pinned_sha256, pins["read"].observed_sha256) == (A, A)
    assert not pins["read"].changed
    pins, newly = await store.observe_tools(FILES, {"read": C}, NOW + 5)
    assert newly == frozenset()
    read = pins["read"]
    assert (read.pinned_sha256, read.observed_sha256, read.changed) == (A, C, True)
    assert (read.pinned_at, read.observed_at) == (NOW, NOW + 5)
    assert pins["write"].pinned_sha256 == B and not pins["write"].changed
    assert dict(await store.tool_pins(FILES)) == dict(pins)
    assert await store.tool_pins(OTHER) == {}  # per server


async def test_a_repin_makes_the_observed_definition_the_pin(store: Store) -> None:
    await store.observe_tools(FILES, {"read": A}, NOW)
    await store.observe_tools(FILES, {"read": C}, NOW + 1)
    await store.set_tool_pin(FILES, "read", C, NOW + 2)
    pin = (await store.tool_pins(FILES))["read"]
    assert (pin.pinned_sha256, pin.pinned_at, pin.changed) == (C, NOW + 2, False)
    pins, newly = await store.observe_tools(FILES, {"read": C}, NOW + 3)
    assert not newly and not pins["read"].changed


async def test_concurrent_first_sights_pin_exactly_one_definition(store: Store) -> None:
    results = await asyncio.gather(
        *(store.observe_tools(FILES, {"t": d}, NOW) for d in (A, B, C, A, B, C))
    )
    winners = [newly for _, newly in results if newly]
    assert len(winners) == 1
    pinned = (await store.tool_pins(FILES))["t"].pinned_sha256
    assert pinned in (A, B, C)
