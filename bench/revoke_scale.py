"""`python -m bench.revoke_scale`: what an operator's kill switch costs with many live tasks.

One agent holds N live tasks (default 10,000), each with one live credential. Then
``RevokeAgent`` (the use case, as the AdminService servicer calls it) runs once, and this prints
its wall time, the store calls it made (every Store method call counted through a proxy), and
whether a credential minted before it is refused afterwards. On the memory store and on a real
redis-server started for the run (Debian's redis-server).

    .venv/bin/python -m bench.revoke_scale [--tasks 10000] [--store memory|redis|both]

docs/performance.md keeps the figures (and those of the walk over every task it replaced).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

from broker.adapters.audit.sinks import MemorySink
from broker.adapters.files import load_registry, policy_engine
from broker.adapters.keys import LocalKeyProvider
from broker.adapters.store.factory import open_store
from broker.adapters.store.memory import MemoryStore
from broker.app.admin import Admin
from broker.app.audit import Auditor
from broker.app.credentials import Broker, Limits
from broker.app.ports import Quotas, Store
from broker.core.audit.recent import RecentRecords
from broker.core.canonical import args_sha256
from broker.core.clock import SystemClock
from broker.core.errors import StoreUnavailable, Unauthenticated
from broker.core.requests import BeginTask, CredentialRequest, Granted, VerifyRequest
from broker.core.spiffe import PeerIdentity, parse_spiffe_id

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT / "examples" / "dev"
AGENT = "spiffe://dev.local/agent/demo"
DOCS = "spiffe://dev.local/mcp/docs"


class CountingStore:
    """Every call to the store, counted by method name (the proxy adds no store work)."""

    def __init__(self, inner: Store) -> None:
        self._inner = inner
        self.calls: Counter[str] = Counter()
        self.counting = False

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.counting:
                self.calls[name] += 1
            return attr(*args, **kwargs)

        return call


async def _retried(make: Any) -> Any:
    """Setup only: a store call that timed out on a busy machine is tried again (not measured)."""
    for attempt in range(5):
        try:
            return await make()
        except StoreUnavailable:
            if attempt == 4:
                raise
            await asyncio.sleep(0.5)
    raise AssertionError("unreachable")


def _peer(ref: str) -> PeerIdentity:
    return PeerIdentity.of(parse_spiffe_id(ref), "0" * 64)


async def measure(store: Store, tasks: int, label: str) -> dict[str, Any]:
    counted = CountingStore(store)
    registry = load_registry(DEV / "registry.yaml", "dev.local")
    clock = SystemClock()
    recent = RecentRecords()
    broker = Broker(
        issuer="spiffe://dev.local/broker",
        policy=policy_engine(DEV / "policies", registry),
        keys=LocalKeyProvider(now=clock.now()),
        store=counted,  # type: ignore[arg-type]
        audit=Auditor("bench", [MemorySink(), recent]),
        clock=clock,
        limits=Limits(
            max_live_tasks_per_agent=tasks + 10,
            quotas=Quotas(per_task=8, per_agent=tasks * 2),
        ),
    )
    admin = Admin(broker, recent)
    agent, operator = _peer(AGENT), _peer("spiffe://dev.local/operator/admin")
    digest = args_sha256({"query": "retry"})
    start = time.perf_counter()
    first: Granted | None = None
    for i in range(tasks):
        task = await _retried(partial(broker.begin_task, agent, BeginTask(intent=f"bench {i}")))
        request = CredentialRequest(
            task_id=task.task_id, server="docs", tool="search_docs", args_sha256=digest
        )
        got = await _retried(partial(broker.request_credential, agent, request))
        assert isinstance(got, Granted), got
        first = first or got
    setup = time.perf_counter() - start
    assert first is not None

    counted.counting = True
    start = time.perf_counter()
    result = await admin.revoke_agent(operator, AGENT, reason="bench", dry_run=False)
    revoke_ms = (time.perf_counter() - start) * 1000
    counted.counting = False

    try:
        await broker.verify_credential(
            _peer(DOCS), VerifyRequest(token=first.token, tool="search_docs", args_sha256=digest)
        )
        refused = "ACCEPTED (wrong)"
    except Unauthenticated as exc:
        refused = str(exc.reason)
    row = {
        "store": label,
        "tasks": tasks,
        "setup_s": round(setup, 1),
        "revoke_ms": round(revoke_ms, 2),
        "store_calls": sum(counted.calls.values()),
        "calls": dict(counted.calls),
        "old_credential": refused,
        "result": type(result).__name__,
    }
    print(row, flush=True)
    return row


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--store", choices=["memory", "redis", "both"], default="both")
    args = parser.parse_args()
    if args.store in ("memory", "both"):
        await measure(MemoryStore(), args.tasks, "memory")
    if args.store in ("redis", "both"):
        from bench.procs import start_redis

        with tempfile.TemporaryDirectory(prefix="broker-revoke-") as tmp:
            redis = start_redis(Path(tmp))
            try:
                store = open_store(redis.url)
                try:
                    await measure(store, args.tasks, "redis")
                finally:
                    await store.close()
            finally:
                redis.stop()


if __name__ == "__main__":
    asyncio.run(main())
