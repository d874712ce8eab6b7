"""Signing keys shared by replicas in the Redis store (``Store.publish_keys``; broker.app.keyring).

Two keys on one slot (hash tag ``{keys}``)::

    ns:{keys}:pub     hash   kid -> orjson {"jwk": JWK JSON text, "c": created_at, "r": replica}
    ns:{keys}:until   zset   kid -> until (seconds since the epoch)

Each call is one script: publishing keeps the later ``until`` of a kid (never shortens a
publication) and drops every kid past its ``until``; both keys expire with the last one, so a
broker that stops leaves nothing behind. Public keys only: a private key never reaches Redis.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from broker.adapters.store._redis_codec import fnum
from broker.core.tokens.keys import PublishedKey

Run = Callable[[Any, Sequence[str], Iterable[object]], Awaitable[Any]]

# KEYS: pub, until
# ARGV: now, then (kid, until, doc) triples  -> the number of kids dropped
PUBLISH = """#!lua
local now = tonumber(ARGV[1])
for i = 2, #ARGV, 3 do
  local cur = redis.call('ZSCORE', KEYS[2], ARGV[i])
  if not cur or tonumber(ARGV[i + 1]) > tonumber(cur) then
    redis.call('ZADD', KEYS[2], ARGV[i + 1], ARGV[i])
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
  end
end
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
for _, kid in ipairs(gone) do redis.call('HDEL', KEYS[1], kid) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
if last[2] then
  local ttl = math.ceil((tonumber(last[2]) - now) * 1000) + 1000
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
return #gone
"""

# KEYS: pub, until
# ARGV: now  -> flat {kid, until, doc, ...} of the kids published after now
READ = """#!lua
local out = {}
local live = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[1], '+inf', 'WITHSCORES')
for i = 1, #live, 2 do
  local doc = redis.call('HGET', KEYS[1], live[i])
  if doc then
    out[#out + 1] = live[i]
    out[#out + 1] = live[i + 1]
    out[#out + 1] = doc
  end
end
return out
"""


def _s(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisPublishedKeys:
    def __init__(self, client: Redis | RedisCluster, namespace: str, run: Run) -> None:
        self._keys = [f"{namespace}:{{keys}}:pub", f"{namespace}:{{keys}}:until"]
        self._run = run
        self._publish = client.register_script(PUBLISH)
        self._read = client.register_script(READ)

    async def publish(self, keys: Sequence[PublishedKey], now: float) -> None:
        args: list[object] = [fnum(now)]
        for key in keys:
            doc = orjson.dumps({"jwk": key.jwk, "c": key.created_at, "r": key.replica})
            args += [key.kid, fnum(key.until), doc]
        await self._run(self._publish, self._keys, args)

    async def read(self, now: float) -> list[PublishedKey]:
        flat = await self._run(self._read, self._keys, [fnum(now)])
        out: list[PublishedKey] = []
        for i in range(0, len(flat) - 2, 3):
            try:
                doc = orjson.loads(flat[i + 2])
                out.append(
                    PublishedKey(
                        kid=_s(flat[i]),
                        jwk=str(doc["jwk"]),
                        until=float(flat[i + 1]),
                        created_at=float(doc.get("c") or 0.0),
                        replica=str(doc.get("r") or ""),
                    )
                )
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
                continue  # not ours: the keyring would refuse it anyway
        return out
