"""The in-memory revocation feed is bounded by age (REVOCATION_WINDOW) as well as by count."""

from __future__ import annotations

import pytest

from broker.adapters.store import memory
from broker.adapters.store.memory import MemoryStore
from broker.app.ports import REVOCATION_WINDOW
from broker.core.model import RevocationKind

T0 = 1_800_000_000.0


async def test_events_older_than_the_window_are_dropped() -> None:
    store = MemoryStore()
    assert store.feed_window == REVOCATION_WINDOW
    old = await store.publish_revocation(RevocationKind.TASK, "t_old", T0, "x")
    mid = await store.publish_revocation(RevocationKind.TASK, "t_mid", T0 + 1800, "x")
    assert [e.subject for e in await store.revocations_since("")] == ["t_old", "t_mid"]
    await store.publish_revocation(RevocationKind.TASK, "t_new", T0 + REVOCATION_WINDOW + 1, "x")
    assert [e.subject for e in await store.revocations_since("")] == ["t_mid", "t_new"]
    # cursors stay valid: after the dropped one, after one still kept
    assert [e.subject for e in await store.revocations_since(old.cursor)] == ["t_mid", "t_new"]
    assert [e.subject for e in await store.revocations_since(mid.cursor)] == ["t_new"]


async def test_and_by_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "MAX_EVENTS", 3)
    store = MemoryStore()
    for i in range(5):
        await store.publish_revocation(RevocationKind.TASK, f"t_{i}", T0 + i, "x")
    assert [e.subject for e in await store.revocations_since("")] == ["t_2", "t_3", "t_4"]
