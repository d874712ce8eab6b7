"""The revocation feed on a Redis stream: one entry per event, its id is the cursor.

Replicas and verifiers follow it (``WatchRevocations``); it is trimmed to about ``MAX_EVENTS``
entries (``XADD MAXLEN ~``) and to the events of the last ``window`` seconds (``XTRIM MINID ~``
by Redis's clock), and the key expires ``window`` seconds after the last event. On a Redis
Cluster the stream is one key, on one node.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from broker.adapters.store import _redis_lua as lua
from broker.adapters.store._redis_codec import fnum
from broker.adapters.store._redis_io import Guard
from broker.app.ports import REVOCATION_WINDOW
from broker.core.errors import NotFound, StoreUnavailable
from broker.core.model import RevocationEvent, RevocationKind

log = logging.getLogger(__name__)

MAX_EVENTS = 100_000  # retention (approximate, by count)
_CURSOR = re.compile(r"[0-9]{1,20}(-[0-9]{1,20})?")
_BATCH = 500


def _s(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _id_key(stream_id: str) -> tuple[int, int]:
    ms_, _, seq = stream_id.partition("-")
    return int(ms_), int(seq or 0)


def _check_cursor(cursor: str) -> str:
    if _CURSOR.fullmatch(cursor) is None:
        raise NotFound(f"unknown revocation cursor {cursor!r}")
    return cursor


class RevocationFeed:
    def __init__(
        self, client: Redis | RedisCluster, stream: str, guard: Guard, block: float
    ) -> None:
        self._r = client
        self._stream = stream
        self._guard = guard
        self._block_ms = max(10, int(block * 1000))
        self._closed = False
        self._publish = client.register_script(lua.FEED_PUBLISH)
        self.window = REVOCATION_WINDOW

    def close(self) -> None:
        """End the watch loops (at their next read)."""
        self._closed = True

    async def publish(
        self,
        kind: RevocationKind,
        subject: str,
        revoked_at: float,
        reason: str,
        *,
        blocked: bool = False,
        until: float = 0.0,
    ) -> RevocationEvent:
        args: list[Any] = [MAX_EVENTS, max(1, int(self.window * 1000))]
        args += ["k", kind, "s", subject, "t", fnum(revoked_at), "r", reason]
        if blocked:
            args += ["b", fnum(until)]
        cursor = await self._guard.call(lambda: self._publish(keys=[self._stream], args=args))
        return RevocationEvent(_s(cursor), kind, subject, revoked_at, reason, blocked, until)

    @staticmethod
    def _event(cursor: object, fields: dict[bytes, bytes]) -> RevocationEvent:
        until = fields.get(b"b")
        return RevocationEvent(
            _s(cursor),
            fields[b"k"].decode(),
            fields[b"s"].decode(),
            float(fields[b"t"]),
            fields.get(b"r", b"").decode(),
            until is not None,
            float(until) if until is not None else 0.0,
        )

    async def since(self, cursor: str, limit: int = 1000) -> Sequence[RevocationEvent]:
        if cursor == "$":
            return []
        start = "-" if cursor in ("", "0") else "(" + _check_cursor(cursor)
        if start != "-":
            await self._check_retained(cursor)
        entries: Any = await self._guard.read(
            lambda: self._r.xrange(self._stream, start, "+", count=limit)
        )
        return [self._event(c, f) for c, f in entries]

    async def _check_retained(self, cursor: str) -> None:
        """A cursor older than what the trimmed stream still holds is not this feed's any more:
        events after it are gone. Refused (NotFound: a reset for the verifier), never clamped
        silently. A stream that was trimmed (``entries-added`` > ``length``, Redis 7) holds
        every event after a cursor only if the cursor is not older than its first entry."""
        try:
            async with self._guard.io():
                info: Any = await self._r.xinfo_stream(self._stream)
        except StoreUnavailable:
            raise
        except Exception:  # noqa: BLE001 - no stream yet: nothing was ever trimmed
            return
        if not isinstance(info, dict):
            return
        at = _id_key(cursor)
        deleted = info.get("max-deleted-entry-id")  # XDEL
        first = info.get("first-entry")
        added, length = info.get("entries-added"), info.get("length", 0)
        trimmed = added is None or int(added) > int(length)  # XTRIM / MAXLEN
        if (deleted is not None and at < _id_key(_s(deleted))) or (
            trimmed and first and at < _id_key(_s(first[0]))
        ):
            raise NotFound(f"revocation cursor {cursor!r} is older than the feed keeps")

    async def watch(self, cursor: str) -> AsyncIterator[RevocationEvent]:
        """Follows the stream with short blocking reads. Survives Redis outages: it waits with
        a growing back-off (up to 2 s) and resumes after the last event it delivered, so the
        generator only ends when closed. It never raises StoreUnavailable: a consumer that must
        know the feed is stale keeps its own clock (e.g. with ``ping``)."""
        backoff = 0.05
        if cursor == "$":
            while not self._closed:
                try:
                    last = await self.last_cursor()
                    break
                except StoreUnavailable as exc:
                    log.warning("revocation feed: %s", exc.message)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
        else:
            last = "0-0" if cursor in ("", "0") else _check_cursor(cursor)
        while not self._closed:
            try:
                async with self._guard.io(extra=self._block_ms / 1000):
                    res: Any = await self._r.xread(
                        {self._stream: last}, count=_BATCH, block=self._block_ms
                    )
            except StoreUnavailable as exc:
                log.warning("revocation feed: %s (retrying in %.2f s)", exc.message, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.05
            for _stream, entries in res or ():
                for c, fields in entries:
                    event = self._event(c, fields)
                    last = event.cursor
                    yield event

    async def last_cursor(self) -> str:
        entries: Any = await self._guard.read(
            lambda: self._r.xrevrange(self._stream, "+", "-", count=1)
        )
        return _s(entries[0][0]) if entries else "0"
