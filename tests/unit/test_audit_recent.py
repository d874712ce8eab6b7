"""The in-process tail of recent audit records (RecentRecords)."""

from __future__ import annotations

import asyncio
import threading

from broker.app.audit import Auditor
from broker.core.audit.recent import RecentRecords
from tests.support.audit import event


async def test_last_and_follow() -> None:
    recent = RecentRecords(size=4)
    auditor = Auditor("r1", [recent])
    for i in range(6):
        auditor.record(event(i))
    assert [r.seq for r in [r async for r in recent.tail(10, False)]] == [2, 3, 4, 5]
    assert [r.seq for r in [r async for r in recent.tail(2, False)]] == [4, 5]
    assert [r async for r in recent.tail(0, False)] == []

    follow = recent.tail(1, True)
    assert (await anext(follow)).seq == 5
    pending = asyncio.ensure_future(anext(follow))
    await asyncio.sleep(0.01)
    assert not pending.done()
    # written from another thread, as an Auditor may be
    thread = threading.Thread(target=auditor.record, args=(event(6),))
    thread.start()
    thread.join()
    assert (await asyncio.wait_for(pending, 2)).seq == 6
    await follow.aclose()
    assert not recent._waiters  # the follower unregistered
