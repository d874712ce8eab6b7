"""The revocation feed as verifiers follow it: ``VerifierService.WatchRevocations``.

A verifier subscribes with a cursor (``since``): empty means "from now on", a cursor from an
earlier event means "every event after it". It then receives the store's revocation events as
they are published and, whenever nothing was sent for ``heartbeat`` seconds, a ``heartbeat``
event. Heartbeats are how a verifier tells a live, idle feed from a dead one: one that has heard
nothing (event or heartbeat) for longer than its bound fails closed (``Reason.STALE``).

Every heartbeat carries the cursor of the last event the stream has passed (the feed's position
at subscription time if there was none), so a verifier that reconnects resumes without a gap even
when it never saw an event. The first message of every stream is a heartbeat. A subscription
from now (``since`` empty) then gets the kill switches and floors in force
(``broker.core.blocks``), one event each at the start cursor, before any new event.

A heartbeat is only sent after the store answered a ``ping``: while the store cannot be reached
the stream stays silent, so verifiers go stale instead of trusting a feed that cannot deliver.

Cursors are the store's (``"57"`` in memory, ``"1700000000000-0"`` in Redis): opaque to
verifiers, compared here as tuples of integers. A cursor the store does not know, or one ahead of
the feed (the feed was reset, e.g. an in-memory broker restarted), is ``INVALID_REQUEST`` naming
``since``: the verifier must then resubscribe from now and treat every token issued before as
revoked, since it cannot know what it missed.

No gRPC here: the servicer converts these events to messages.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

from broker.app.ports import Store
from broker.core.clock import Clock
from broker.core.errors import InvalidRequest, NotFound, StoreUnavailable
from broker.core.model import RevocationEvent, RevocationKind

HEARTBEAT_SECONDS = 1.0
"""Default idle time after which the stream sends a heartbeat. Verifiers' staleness bound
(default 5 s) must be several times this."""

HEARTBEAT = "heartbeat"
"""The ``kind`` of a heartbeat event (RevocationKind HEARTBEAT on the wire)."""

KINDS = frozenset(RevocationKind)
"""The kinds of revocation event the store publishes."""

_CURSOR = re.compile(r"[0-9]{1,20}(-[0-9]{1,20})?")
_QUEUE = 1024


def cursor_key(cursor: str) -> tuple[int, ...]:
    """A cursor as a sortable tuple: ``"57"`` -> ``(57,)``, ``"1700-3"`` -> ``(1700, 3)``.
    Raises ``InvalidRequest("since", ...)`` for anything else."""
    if _CURSOR.fullmatch(cursor) is None:
        raise InvalidRequest("since", f"{cursor[:40]!r} is not a revocation feed cursor")
    return tuple(int(part) for part in cursor.split("-"))


async def start_cursor(store: Store, since: str) -> str:
    """The cursor to follow the store from: its current end for ``""``, else ``since`` once
    checked to be a cursor of this feed that is not ahead of it."""
    if not since:
        return await store.last_revocation_cursor()
    wanted = cursor_key(since)
    try:
        await store.revocations_since(since, 1)
    except NotFound:
        raise InvalidRequest(
            "since", f"{since!r} is not a cursor of this broker's revocation feed"
        ) from None
    last = await store.last_revocation_cursor()
    if wanted > cursor_key(last):
        raise InvalidRequest(
            "since",
            f"{since!r} is ahead of the feed (last event {last!r}): the feed was reset. "
            "Resubscribe from now and treat tokens issued before now as revoked",
        )
    return since


async def follow_revocations(
    store: Store, since: str, *, clock: Clock, heartbeat: float | None = None
) -> AsyncIterator[RevocationEvent]:
    """Revocation events after ``since`` ("" = from now on), with a heartbeat whenever nothing
    was sent for ``heartbeat`` seconds (default ``HEARTBEAT_SECONDS``), the first one at once.

    Ends only when the consumer stops iterating or the store's watch fails (re-raised)."""
    interval = HEARTBEAT_SECONDS if heartbeat is None else heartbeat
    if not interval > 0:
        raise ValueError("heartbeat must be a positive number of seconds")
    cursor = await start_cursor(store, since)
    queue: asyncio.Queue[RevocationEvent | BaseException] = asyncio.Queue(_QUEUE)

    async def pump() -> None:
        try:
            async for event in store.watch_revocations(cursor):
                await queue.put(event)
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            await queue.put(exc)

    # From now on: a verifier that starts (or was reset) does not know the kill switches and
    # floors already in force; they come first, as events at the start cursor.
    snapshot = await store.list_blocks(clock.now()) if not since else ()
    pumping = asyncio.create_task(pump(), name="revocation-feed-pump")
    try:
        yield RevocationEvent(cursor, HEARTBEAT, "", clock.now())
        for block in snapshot:
            yield RevocationEvent(
                cursor,
                block.kind,
                block.subject,
                block.floor,
                block.reason,
                block.blocks(clock.now()),
                block.until,
            )
        while True:
            try:
                async with asyncio.timeout(interval):
                    item = await queue.get()
            except TimeoutError:
                try:
                    await store.ping()
                except StoreUnavailable:
                    continue  # stay silent: verifiers must see this feed as stale
                yield RevocationEvent(cursor, HEARTBEAT, "", clock.now())
                continue
            if isinstance(item, BaseException):
                raise item
            cursor = item.cursor
            yield item
    finally:
        pumping.cancel()
        await asyncio.wait({pumping})  # (a cancellation of this task still propagates)
