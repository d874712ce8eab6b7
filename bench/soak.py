"""`make soak` (`python -m bench.soak`): N minutes at half load on the memory and Redis stores.

    python -m bench.soak [--minutes N] [--stores memory,redis] [--retention S] [--drain S]
    SOAK_MINUTES=5 SOAK_RETENTION=60 make soak

For each store: a broker (`broker serve`, one worker; Redis: a private redis-server) in a
temporary directory. Its capacity for the work cycle is measured for 10 s (closed loop, 8 in
flight), then cycles run at half of it for N minutes (default 30, ``SOAK_MINUTES``). A cycle is
what an agent and an MCP server do: BeginTask (TTL 60 s), four RequestCredential each verified
online by the server, then EndTask for three tasks in four (the fourth expires).

Every 10 s it samples the broker's RSS and open file descriptors, the live and retained tasks
(admin ListTasks; on Redis its task indexes) and the Redis keys. It prints: the growth of RSS,
fds and keys from when the retention window is full (task TTL + ``tasks.retention_seconds``)
to the end; the RequestCredential p99 of the first and the last five minutes; and, after the
load stops and the TTLs and retention have passed (``--drain``), what is left. Targets (issue
18): RSS growth < 5 %, no fd growth, nothing left over, p99 last/first <= 1.5.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import redis

from bench.load import credentials, open_channel
from bench.procs import BrokerProc, RedisServer, start_broker, start_redis
from bench.scenarios import ARGS, SERVER, TOOL, _struct
from broker._proto.broker.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    agent_pb2,
    agent_pb2_grpc,
    verifier_pb2,
    verifier_pb2_grpc,
)

TASK_TTL = 60
MINTS_PER_TASK = 4
SAMPLE_EVERY = 10.0
WINDOW = 300.0  # "the first and the last five minutes"
MAX_IN_FLIGHT = 64  # cycles; beyond it a cycle is dropped (counted), not queued
QUOTA_BUCKET = 5.0  # the Redis agent quota's bucket: its key outlives the last exp by this


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Sample:
    at: float  # seconds since the load started
    rss_kb: int
    fds: int
    live: int
    retained: int  # -1: unknown; a memory store's count is capped at 1000 (ListTasks)
    redis_keys: int = -1
    redis_bytes: int = -1


@dataclass
class Run:
    store: str
    capacity: float = 0.0  # cycles per second, closed loop
    rate: float = 0.0
    cycles: int = 0
    errors: int = 0
    dropped: int = 0
    first_error: str = ""
    mints: list[tuple[float, float]] = field(default_factory=list)  # (at, seconds)
    samples: list[Sample] = field(default_factory=list)
    start_keys: int = -1
    left: Sample | None = None


def proc_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def proc_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Soak:
    def __init__(self, broker: BrokerProc, redis_server: RedisServer | None, run: Run) -> None:
        self.broker = broker
        self.redis = redis.Redis(port=redis_server.port) if redis_server else None
        self.run = run
        self.args = _struct(ARGS)
        self.started = 0.0
        self.channels: list[grpc.aio.Channel] = []
        self.agent: Any = None
        self.verifier: Any = None
        self.admin: Any = None

    async def open(self) -> None:
        pki, target = self.broker.pki, self.broker.target
        for name in ("agent-demo", "mcp-docs", "operator-admin"):
            self.channels.append(await open_channel(target, credentials(pki, name)))
        agent, server, admin = self.channels
        self.agent = agent_pb2_grpc.AgentServiceStub(agent)  # type: ignore[no-untyped-call]
        self.verifier = verifier_pb2_grpc.VerifierServiceStub(server)  # type: ignore[no-untyped-call]
        self.admin = admin_pb2_grpc.AdminServiceStub(admin)  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()
        if self.redis is not None:
            self.redis.close()

    async def cycle(self, n: int, *, record: bool = True) -> None:
        loop = asyncio.get_running_loop()
        try:
            begun = await self.agent.BeginTask(
                agent_pb2.BeginTaskRequest(intent="soak", ttl_seconds=TASK_TTL), timeout=10
            )
            for _ in range(MINTS_PER_TASK):
                t0 = time.perf_counter()
                granted = await self.agent.RequestCredential(
                    agent_pb2.RequestCredentialRequest(
                        task_id=begun.task_id, server=SERVER, tool=TOOL, arguments=self.args
                    ),
                    timeout=10,
                )
                if record:
                    self.run.mints.append((loop.time() - self.started, time.perf_counter() - t0))
                await self.verifier.VerifyCredential(
                    verifier_pb2.VerifyCredentialRequest(
                        token=granted.credential.token, tool=TOOL, arguments=self.args
                    ),
                    timeout=10,
                )
            if n % 4:
                await self.agent.EndTask(
                    agent_pb2.EndTaskRequest(task_id=begun.task_id, outcome="done"), timeout=10
                )
            self.run.cycles += record
        except grpc.aio.AioRpcError as exc:
            self.run.errors += 1
            self.run.first_error = self.run.first_error or f"{exc.code().name}: {exc.details()}"

    async def capacity(self, seconds: float = 10.0, inflight: int = 8) -> float:
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        done = [0]

        async def worker(i: int) -> None:
            n = i
            while loop.time() < end:
                await self.cycle(n, record=False)
                done[0] += 1
                n += inflight

        start = loop.time()
        await asyncio.gather(*(worker(i) for i in range(inflight)))
        return done[0] / (loop.time() - start)

    async def paced(self, rate: float, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        interval, n = 1.0 / rate, 0
        next_at = self.started = loop.time()
        end = self.started + seconds
        running: set[asyncio.Task[None]] = set()
        while next_at < end:
            if len(running) < MAX_IN_FLIGHT:
                job = asyncio.create_task(self.cycle(n))
                running.add(job)
                job.add_done_callback(running.discard)
            else:
                self.run.dropped += 1
            n += 1
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))
        await asyncio.gather(*running)

    async def sample(self) -> Sample:
        pid = self.broker.proc.pid
        live = await self.admin.ListTasks(
            admin_pb2.ListTasksRequest(state=admin_pb2.TASK_STATE_ACTIVE, limit=1000), timeout=30
        )
        out = Sample(
            at=asyncio.get_running_loop().time() - self.started,
            rss_kb=proc_rss_kb(pid),
            fds=proc_fds(pid),
            live=len(live.tasks),
            retained=-1,
        )
        if self.redis is not None:
            out.retained = int(self.redis.zcard("brk:{idx}:tasks"))
            out.redis_keys = int(self.redis.dbsize())
            out.redis_bytes = int(self.redis.info("memory")["used_memory"])
        else:
            every = await self.admin.ListTasks(admin_pb2.ListTasksRequest(limit=1000), timeout=30)
            out.retained = len(every.tasks)
        return out

    async def sampler(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.run.samples.append(await self.sample())
            s = self.run.samples[-1]
            log(
                f"  [{self.run.store}] {s.at:6.0f} s: rss {s.rss_kb / 1024:.1f} MB, fds {s.fds}, "
                f"live {s.live}, retained {s.retained}"
                + (f", redis keys {s.redis_keys}" if s.redis_keys >= 0 else "")
                + f", cycles {self.run.cycles}, errors {self.run.errors}"
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SAMPLE_EVERY)


def p99(values: list[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)] * 1000


def growth(first: float, last: float) -> str:
    return f"{(last - first) / first * 100:+.1f} %" if first > 0 else "n/a"


def report(run: Run, minutes: float, full_after: float) -> list[str]:
    seconds = minutes * 60
    window = min(WINDOW, seconds / 3)
    first = p99([d for at, d in run.mints if at < window])
    last = p99([d for at, d in run.mints if at >= seconds - window])
    steady = [s for s in run.samples if s.at >= full_after]
    note = ""
    if len(steady) < 2:  # the run ended before the retention window filled
        steady = [s for s in run.samples if s.at >= seconds / 2]
        note = " (window not full before the end: from mid-run)"
    lines = [
        f"{run.store}: capacity {run.capacity:.1f} cycles/s, ran at {run.rate:.1f}/s for "
        f"{minutes:g} min: {run.cycles} cycles ({run.cycles * MINTS_PER_TASK} mints and "
        f"verifications), {run.errors} errors, {run.dropped} dropped"
        + (f"; first error: {run.first_error}" if run.first_error else ""),
        f"  RequestCredential p99: first {window / 60:.1f} min {first:.2f} ms, last {last:.2f} ms "
        f"(x{last / first if first else 0:.2f})",
    ]
    if len(steady) >= 2:
        a, b = steady[0], steady[-1]
        lines.append(
            f"  growth from {a.at:.0f} s to {b.at:.0f} s{note}: RSS {a.rss_kb / 1024:.1f} -> "
            f"{b.rss_kb / 1024:.1f} MB ({growth(a.rss_kb, b.rss_kb)}), fds {a.fds} -> {b.fds}, "
            f"retained {a.retained} -> {b.retained}"
            + (
                f", redis keys {a.redis_keys} -> {b.redis_keys} "
                f"({growth(a.redis_keys, b.redis_keys)})"
                f", redis memory {a.redis_bytes / 2**20:.1f} -> {b.redis_bytes / 2**20:.1f} MB"
                if a.redis_keys >= 0
                else ""
            )
        )
    if run.left is not None:
        s = run.left
        lines.append(
            f"  after the TTLs and retention ({s.at - seconds:.0f} s after the load): live "
            f"{s.live}, retained {s.retained}"
            + (
                f", redis keys {s.redis_keys} (at start: {run.start_keys})"
                if s.redis_keys >= 0
                else ""
            )
            + f", RSS {s.rss_kb / 1024:.1f} MB, fds {s.fds}"
        )
    return lines


async def soak_one(store: str, minutes: float, retention: float, drain: float) -> Run:
    run = Run(store)
    directory = Path(tempfile.mkdtemp(prefix=f"broker-soak-{store}-"))
    redis_server = start_redis(directory / "redis") if store == "redis" else None
    broker: BrokerProc | None = None
    try:
        url = redis_server.url if redis_server else "memory://"
        broker = start_broker(
            directory / "broker",
            url,
            workers=1,
            settings={"tasks": {"retention_seconds": retention, "max_ttl_seconds": 3600}},
        )
        soak = Soak(broker, redis_server, run)
        await soak.open()
        try:
            if soak.redis is not None:
                run.start_keys = int(soak.redis.dbsize())
            run.capacity = await soak.capacity()
            run.rate = max(1.0, run.capacity / 2)
            log(f"[{store}] capacity {run.capacity:.1f} cycles/s: running at {run.rate:.1f}/s")
            stop = asyncio.Event()
            soak.started = asyncio.get_running_loop().time()
            sampling = asyncio.create_task(soak.sampler(stop))
            await soak.paced(run.rate, minutes * 60)
            stop.set()
            await sampling
            log(f"[{store}] load done; waiting {drain:.0f} s for TTLs and retention to pass")
            await asyncio.sleep(drain)
            run.left = await soak.sample()
        finally:
            await soak.close()
    finally:
        if broker is not None:
            broker.stop()
        if redis_server is not None:
            redis_server.stop()
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES", 30)))
    parser.add_argument(
        "--retention", type=float, default=float(os.environ.get("SOAK_RETENTION", 600))
    )
    parser.add_argument("--drain", type=float, default=None, help="default: TTLs + retention")
    parser.add_argument("--stores", default=os.environ.get("SOAK_STORES", "memory,redis"))
    args = parser.parse_args(argv)
    # The capacity run's tasks, begun before the soak, are gone too by then.
    drain = args.drain if args.drain is not None else TASK_TTL + args.retention + QUOTA_BUCKET + 15
    full_after = TASK_TTL + args.retention
    lines = [
        f"soak: {args.minutes:g} min per store, task TTL {TASK_TTL} s, retention "
        f"{args.retention:g} s (window full after {full_after:.0f} s), drain {drain:.0f} s; "
        f"load average before: {os.getloadavg()[0]:.1f}"
    ]
    for store in args.stores.split(","):
        run = asyncio.run(soak_one(store.strip(), args.minutes, args.retention, drain))
        lines += report(run, args.minutes, full_after)
    lines.append(f"load average after: {os.getloadavg()[0]:.1f}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
