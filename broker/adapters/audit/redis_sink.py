"""The audit trail on a Redis stream: the sink (``audit.sinks: [redis]``), the live tail behind
``AdminService.TailAudit``, and reading it back for ``broker audit verify|export|tail --redis``.

Keys (namespace ``ns`` from the store URL, ``brk`` by default; one hash slot, ``{audit}``)::

    ns:{audit}:stream   stream   one entry per record: field ``r`` = the stored JSON line
    ns:{audit}:heads    hash     chain id -> "SEQ:SHA256" of its last record in the stream

Every replica writes its own chain into the one stream; entries of different chains interleave
and ``verify`` checks each chain on its own, as for a shared JSON lines file.

``Auditor.record`` is synchronous and runs on the event loop, so the sink never talks to Redis
there: ``write`` puts the record on a bounded queue (raising, so that the ``Auditor`` logs and
counts it, when the queue is full) and a writer thread sends batches with one Lua script each.
The script skips records at or below the chain's head, so a batch retried after a timeout (it may
have been written) is never written twice, and it appends the rest atomically: the stream only
ever holds whole batches, in chain order. While Redis is down the thread retries with a growing
back-off and keeps order; records that do not fit in the queue meanwhile are lost to this sink,
which ``verify`` then reports as a gap ("deleted or inserted"): the truth. Failures are counted in
``failures`` (send attempts) and ``dropped`` (records), and logged without the record's content.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, TypeVar

import redis
import redis.cluster
import redis.exceptions

from broker.adapters.audit.sinks import parse_json_line
from broker.core.audit.record import ChainedRecord
from broker.core.errors import StoreUnavailable

log = logging.getLogger("broker.core.audit")
_T = TypeVar("_T")

SyncClient = redis.Redis | redis.cluster.RedisCluster

DEFAULT_MAXLEN = 1_000_000
"""The stream is trimmed to about this many entries (``XADD MAXLEN ~``); 0 keeps everything.
Verifying a trimmed stream needs ``--partial`` (its chains no longer start at seq 0)."""
QUEUE_SIZE = 10_000
BATCH = 200
_BLOCK_MS = 500

# KEYS: stream, heads      ARGV: chain, maxlen, then (seq, sha256, line) per record, in order
# -> how many were appended (records at or below the chain's head are skipped: retries)
APPEND = """#!lua
local h = redis.call('HGET', KEYS[2], ARGV[1])
local head = -1
if h then head = tonumber(string.match(h, '^(%d+):')) end
local n = 0
local last = nil
for i = 3, #ARGV, 3 do
  local seq = tonumber(ARGV[i])
  if seq > head then
    if ARGV[2] == '0' then
      redis.call('XADD', KEYS[1], '*', 'r', ARGV[i + 2])
    else
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'r', ARGV[i + 2])
    end
    head = seq
    last = ARGV[i] .. ':' .. ARGV[i + 1]
    n = n + 1
  end
end
if last then redis.call('HSET', KEYS[2], ARGV[1], last) end
return n
"""


def stream_key(namespace: str = "brk") -> str:
    return f"{namespace}:{{audit}}:stream"


def heads_key(namespace: str = "brk") -> str:
    return f"{namespace}:{{audit}}:heads"


class AuditQueueFull(RuntimeError):
    """The writer thread is behind (Redis slow or down): this record is lost to this sink."""


class RedisStreamSink:
    """An ``AuditSink`` appending to the Redis stream from a background thread."""

    def __init__(
        self,
        client: SyncClient,
        *,
        namespace: str = "brk",
        maxlen: int = DEFAULT_MAXLEN,
        queue_size: int = QUEUE_SIZE,
        where: str = "redis",
        block: float = _BLOCK_MS / 1000,
    ) -> None:
        """``block``: how long a following tail waits in one read; keep it under the client's
        socket timeout (a blocking read is not exempt from it)."""
        self.stream = stream_key(namespace)
        self._heads = heads_key(namespace)
        self._client = client
        self._maxlen = maxlen
        self._where = where
        self._block_ms = max(10, int(block * 1000))
        self._append: Any = client.register_script(APPEND)
        self._queue: queue.Queue[ChainedRecord] = queue.Queue(maxsize=queue_size)
        self._idle = threading.Condition()
        self._unsent = 0  # records accepted by write() and not yet in Redis (or given up)
        self._closed = False
        self._stop_now = threading.Event()
        self.failures = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="audit-redis", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"RedisStreamSink({self._where!r}, stream={self.stream!r})"

    def source(self) -> RedisStreamSource:
        """The tail of the stream this sink writes (every replica's records)."""
        return RedisStreamSource(self._client, self.stream, block_ms=self._block_ms)

    # -- AuditSink ---------------------------------------------------------------------------

    def write(self, record: ChainedRecord) -> None:
        if self._closed:
            raise ValueError("audit sink is closed")
        with self._idle:
            self._unsent += 1
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._settle(1)
            self.dropped += 1
            raise AuditQueueFull(
                f"{self._queue.maxsize} records wait for Redis; this one is lost to the stream"
            ) from None

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every record written so far is in Redis (or given up); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._unsent:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self, timeout: float = 2.0) -> None:
        """Send what is queued (for up to ``timeout`` seconds), then stop the thread."""
        if self._closed:
            return
        self._closed = True
        self.flush(timeout)
        self._stop_now.set()
        self._thread.join(timeout)
        with self._idle:
            lost, self._unsent = self._unsent, 0
        if lost:
            self.dropped += lost
            log.error("audit sink %r closed with %d records not written", self, lost)

    # -- the writer thread -------------------------------------------------------------------

    def _settle(self, n: int) -> None:
        with self._idle:
            self._unsent -= n
            if self._unsent <= 0:
                self._unsent = 0
                self._idle.notify_all()

    def _run(self) -> None:
        batch: list[ChainedRecord] = []
        backoff = 0.05
        down_since: float | None = None
        while True:
            if not batch:
                try:
                    batch.append(self._queue.get(timeout=0.25))
                except queue.Empty:
                    if self._stop_now.is_set():
                        return
                    continue
            while len(batch) < BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._send(batch)
            except Exception as exc:  # noqa: BLE001 - any failure: count, log, retry in order
                self.failures += 1
                now = time.monotonic()
                if down_since is None:
                    down_since = now
                    log.error(
                        "audit sink %r: cannot append %d records (retrying): %s",
                        self,
                        len(batch),
                        type(exc).__name__,
                    )
                if self._stop_now.wait(backoff):
                    return  # closing: close() counts what is left as lost
                backoff = min(backoff * 2, 2.0)
                continue
            if down_since is not None:
                log.warning(
                    "audit sink %r: appending again after %.1f s",
                    self,
                    time.monotonic() - down_since,
                )
                down_since = None
            backoff = 0.05
            self._settle(len(batch))
            batch = []

    def _send(self, batch: Sequence[ChainedRecord]) -> None:
        for chain, group in itertools.groupby(batch, key=lambda r: r.chain):
            args: list[object] = [chain, self._maxlen]
            for record in group:
                args.extend((record.seq, record.sha256, record.to_json()))
            self._append(keys=[self.stream, self._heads], args=args)


# -- reading the stream back -------------------------------------------------------------------


def read_stream(
    client: SyncClient, stream: str, *, batch: int = 1000
) -> Iterator[tuple[str, bytes]]:
    """(entry id, stored line) of every entry, oldest first."""
    start = "-"
    while True:
        entries: Any = client.xrange(stream, start, "+", count=batch)
        for entry_id, fields in entries:
            yield _s(entry_id), _line(fields)
        if len(entries) < batch:
            return
        start = "(" + _s(entries[-1][0])


def last_entries(client: SyncClient, stream: str, n: int) -> list[tuple[str, bytes]]:
    """The ``n`` newest entries, oldest first."""
    if n <= 0:
        return []
    entries: Any = client.xrevrange(stream, "+", "-", count=n)
    return [(_s(entry_id), _line(fields)) for entry_id, fields in reversed(entries)]


def follow_stream(
    client: SyncClient, stream: str, after: str, block_ms: int = _BLOCK_MS
) -> list[tuple[str, bytes]]:
    """Entries after ``after`` ("$": from now), waiting up to ``block_ms`` for the first."""
    res: Any = client.xread({stream: after}, count=BATCH, block=block_ms)
    return [(_s(i), _line(f)) for _stream, entries in res or () for i, f in entries]


def last_id(client: SyncClient, stream: str) -> str:
    entries: Any = client.xrevrange(stream, "+", "-", count=1)
    return _s(entries[0][0]) if entries else "0-0"


def _s(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _line(fields: Any) -> bytes:
    raw = fields.get(b"r", fields.get("r", b""))
    return raw if isinstance(raw, bytes) else str(raw).encode()


class RedisStreamSource:
    """An ``AuditSource`` on the stream (every replica's records), for ``TailAudit``. The
    blocking client runs in worker threads, never on the event loop."""

    def __init__(self, client: SyncClient, stream: str, *, block_ms: int = _BLOCK_MS) -> None:
        self._client = client
        self._stream = stream
        self._block_ms = block_ms

    async def tail(self, last: int, follow: bool) -> AsyncIterator[ChainedRecord]:
        entries = await self._call(last_entries, last) if last else []
        cursor = entries[-1][0] if entries else await self._call(last_id)
        while True:
            for entry_id, line in entries:
                cursor = entry_id
                record = _record(line)
                if record is not None:
                    yield record
            if not follow:
                return
            entries = await self._call(follow_stream, cursor, self._block_ms)

    async def _call(self, fn: Callable[..., _T], *args: object) -> _T:
        try:
            return await asyncio.to_thread(fn, self._client, self._stream, *args)
        except (redis.exceptions.RedisError, OSError) as exc:
            raise StoreUnavailable(f"audit stream unreachable: {type(exc).__name__}") from exc


def _record(line: bytes) -> ChainedRecord | None:
    try:
        return ChainedRecord.from_dict(parse_json_line(line))
    except ValueError:
        log.warning("audit stream: an entry is not a record (skipped in the tail)")
        return None
