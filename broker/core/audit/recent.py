"""Where ``AdminService.TailAudit`` reads from: the ``AuditSource`` port and its in-process
implementation, a ring buffer of the most recent records that is also an audit sink.

With the Redis stream sink configured, the tail reads the stream instead (every replica's chain:
``broker.adapters.audit.redis_sink.RedisStreamSource``); otherwise it reads ``RecentRecords``,
which holds this process's last records only.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import AsyncIterator
from typing import Protocol

from broker.core.audit.record import ChainedRecord

DEFAULT_SIZE = 10_000


class AuditSource(Protocol):
    def tail(self, last: int, follow: bool) -> AsyncIterator[ChainedRecord]:
        """The ``last`` most recent records, oldest first; then, with ``follow``, every new
        record as it is written, until the consumer stops iterating."""
        ...


class RecentRecords:
    """An ``AuditSink`` keeping the last ``size`` records in memory, and an ``AuditSource``.

    ``write`` may be called from any thread; followers are woken on their own event loop.
    A follower slower than ``size`` records misses the oldest of them (it is a tail, not an
    archive: the JSON lines file or the Redis stream is the record).
    """

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self._lock = threading.Lock()
        self._buf: deque[ChainedRecord] = deque(maxlen=size)
        self._count = 0  # records written so far; the newest is number self._count
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    def write(self, record: ChainedRecord) -> None:
        with self._lock:
            self._buf.append(record)
            self._count += 1
            waiters = list(self._waiters)
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits there
                loop.call_soon_threadsafe(event.set)

    def close(self) -> None:
        return None

    def _after(self, number: int) -> tuple[list[ChainedRecord], int]:
        """Records numbered after ``number`` still held, and the newest number."""
        with self._lock:
            new = min(self._count - number, len(self._buf))
            items = list(self._buf)[len(self._buf) - new :] if new > 0 else []
            return items, self._count

    async def tail(self, last: int, follow: bool) -> AsyncIterator[ChainedRecord]:
        with self._lock:
            position = self._count
        items, position = self._after(max(0, position - last))
        for record in items:
            yield record
        if not follow:
            return
        event = asyncio.Event()
        waiter = (asyncio.get_running_loop(), event)
        with self._lock:
            self._waiters.add(waiter)
        try:
            while True:
                await event.wait()
                event.clear()
                items, position = self._after(position)
                for record in items:
                    yield record
        finally:
            with self._lock:
                self._waiters.discard(waiter)
