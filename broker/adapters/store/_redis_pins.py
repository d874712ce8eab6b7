"""Tool definition pins in the Redis store (``broker.core.tooldefs.ToolPin``).

Two hashes per server, on one slot (``{pins:SERVER}``): ``pinned`` (tool -> "sha256|at") and
``observed`` (tool -> "sha256|at"). A first sight pins with HSETNX, so of two guards (or
replicas) racing on a new tool exactly one definition becomes the pin; the observed digest is
the last one any guard reported. An operator's re-pin overwrites ``pinned``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from broker.adapters.store._redis_io import Guard
from broker.core.tooldefs import ToolPin

Client = Redis | RedisCluster


def _s(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pair(raw: object) -> tuple[str, float]:
    sha, _, at = _s(raw).partition("|")
    return sha, float(at or 0)


def _pins(pinned: Mapping[Any, Any], observed: Mapping[Any, Any]) -> dict[str, ToolPin]:
    out: dict[str, ToolPin] = {}
    seen = {_s(k): _pair(v) for k, v in observed.items()}
    for key, value in pinned.items():
        tool = _s(key)
        sha, at = _pair(value)
        obs_sha, obs_at = seen.get(tool, (sha, at))
        out[tool] = ToolPin(tool, sha, at, obs_sha, obs_at)
    return out


class RedisToolPins:
    def __init__(self, client: Client, namespace: str, guard: Guard) -> None:
        self._r = client
        self._ns = namespace
        self._guard = guard

    def _keys(self, server: str) -> tuple[str, str]:
        p = f"{self._ns}:{{pins:{server}}}:"
        return p + "pinned", p + "observed"

    async def tool_pins(self, server: str) -> dict[str, ToolPin]:
        pinned_key, observed_key = self._keys(server)
        async with self._guard.io(), self._r.pipeline(transaction=False) as pipe:
            pipe.hgetall(pinned_key)
            pipe.hgetall(observed_key)
            pinned, observed = await pipe.execute()
        return _pins(pinned, observed)

    async def observe_tools(
        self, server: str, observed: Mapping[str, str], now: float
    ) -> tuple[dict[str, ToolPin], frozenset[str]]:
        pinned_key, observed_key = self._keys(server)
        tools = sorted(observed)
        if not tools:
            return await self.tool_pins(server), frozenset()
        async with self._guard.io(), self._r.pipeline(transaction=False) as pipe:
            for tool in tools:
                pipe.hsetnx(pinned_key, tool, f"{observed[tool]}|{now!r}")
            pipe.hset(observed_key, mapping={t: f"{observed[t]}|{now!r}" for t in tools})
            replies = await pipe.execute()
        newly = frozenset(t for t, created in zip(tools, replies, strict=False) if created)
        return await self.tool_pins(server), newly

    async def set_tool_pin(self, server: str, tool: str, sha256: str, now: float) -> None:
        pinned_key, _ = self._keys(server)
        async with self._guard.io():
            await self._r.hset(pinned_key, tool, f"{sha256}|{now!r}")
