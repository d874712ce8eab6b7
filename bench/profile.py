"""`python -m bench profile`: where one mint's time goes.

Starts Redis and the broker like `make bench`, drives RequestCredential at 16 in flight, and
meanwhile:

- counts the CPU time (user + system, from /proc) of every broker worker, of redis-server and of
  this load generator, per mint served;
- samples one worker with py-spy (``--native``: C, Cython and Rust frames of the Python threads
  too) and attributes each sample to an area by the innermost frame that belongs to one (a
  Redis round trip made for the store counts as "Redis store", the ES256 signature as
  "token signing", ...).

py-spy sees Python threads only: gRPC core also runs its own C++ threads (TLS, HTTP/2 framing),
whose CPU shows in the /proc total but not in the samples. Writes the summary to ``--out``
(bench/profile.txt) and prints it.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.load import cpu_seconds
from bench.procs import start_broker, start_redis
from bench.scenarios import ARGS, SERVER, TOOL, Context, Settings, TaskPool, _channels, _struct
from broker._proto.broker.v1 import agent_pb2, agent_pb2_grpc

# (area, substrings of a frame "function (file)"). A sample goes to the innermost frame that
# matches an area of the first tier; failing that, of the second; then of the third. So the
# socket write of a Redis round trip counts as "Redis store", not as the event loop's.
AREAS: tuple[tuple[tuple[str, tuple[str, ...]], ...], ...] = (
    (
        ("Cedar policy", ("cedarpy", "/broker/core/policy/")),
        ("token signing (ES256 JWS)", ("/broker/core/tokens/", "cryptography")),
        ("Redis store (redis-py, round trips)", ("/redis/", "/broker/adapters/store/", "hiredis")),
        (
            "audit (hash chain, JSON lines write)",
            ("/broker/core/audit/", "/broker/adapters/audit/", "/broker/app/audit"),
        ),
        ("args digest (Struct -> RFC 8785)", ("rfc8785", "/broker/core/canonical", "json_format")),
        ("identity (mTLS peer, SVID)", ("peer_of (", "authorize (", "/broker/core/spiffe")),
    ),
    (
        (
            "broker core + servicer (the rest)",
            (
                "/broker/app/credentials.py",
                "/broker/rpc/servicers",
                "/broker/rpc/convert",
                "/broker/rpc/status",
                "/broker/core/requests",
                "/broker/core/model",
                "/broker/core/ids",
                "/broker/core/registry",
            ),
        ),
    ),
    (
        ("protobuf", ("google/protobuf", "_message")),
        ("gRPC (Cython + core: HTTP/2, TLS, I/O)", ("grpc",)),
        ("asyncio event loop (incl. epoll)", ("asyncio", "selectors", "uvloop")),
    ),
)


def area_of(stack: list[str]) -> str:
    for tier in AREAS:
        for frame in reversed(stack):
            for area, needles in tier:
                if any(n in frame for n in needles):
                    return area
    return "other (interpreter, GC, libc)"


IDLE_LEAVES = ("epoll_wait", "epoll_pwait", "poll (", "select (", "pthread_cond", "sem_wait")


def summarize(raw: Path) -> tuple[collections.Counter[str], collections.Counter[str], int]:
    """Samples per area, samples per innermost Python function, total samples. Samples whose
    innermost frame is a wait (epoll, condition variable: py-spy --native counts them) are
    idle, not work: they are left out."""
    areas: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        stack = stack_text.split(";")
        if stack[-1].startswith(IDLE_LEAVES):
            continue
        total += count
        areas[area_of(stack)] += count
        python = [f for f in stack if ".py)" in f or ".pyx)" in f]
        leaves[python[-1] if python else stack[-1]] += count
    return areas, leaves, total


async def _drive(ctx: Context, seconds: float, raw: Path, pid: int) -> dict[str, float]:
    channels = await _channels(ctx, "agent-demo", 16)
    stubs = [agent_pb2_grpc.AgentServiceStub(ch) for ch in channels]  # type: ignore[no-untyped-call]
    pool = TaskPool(stubs[0])
    await pool.fill(int(3000 * (seconds + 3) / 60))
    arguments = _struct(ARGS)
    served = [0]
    stop = time.perf_counter() + seconds + 3

    async def worker(i: int) -> None:
        while time.perf_counter() < stop:
            task = await pool.task_for(i)
            await stubs[i % len(stubs)].RequestCredential(
                agent_pb2.RequestCredentialRequest(
                    task_id=task, server=SERVER, tool=TOOL, arguments=arguments
                ),
                timeout=10,
            )
            served[0] += 1

    load = asyncio.gather(*(worker(i) for i in range(16)))
    await asyncio.sleep(1.0)  # warm
    pids = ctx.broker.worker_pids()
    cpu0 = {p: cpu_seconds(p) for p in [*pids, ctx.redis.proc.pid]}
    me0, n0, t0 = time.process_time(), served[0], time.perf_counter()
    spy = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("py-spy")),
        "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "250",
        "--format", "raw", "--output", str(raw), "--native", "--full-filenames", "--nolineno",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await spy.communicate()
    if spy.returncode != 0:
        raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')[-500:]}")
    elapsed, mints = time.perf_counter() - t0, served[0] - n0
    me = time.process_time() - me0
    cpu = {p: cpu_seconds(p) - c for p, c in cpu0.items()}
    await load
    for ch in channels:
        await ch.close()
    per = 1e6 / max(mints, 1)
    return {
        "mints_per_second": mints / elapsed,
        "broker_cpu_us_per_mint": sum(cpu[p] for p in pids) * per,
        "profiled_worker_cpu_us_per_mint": cpu[pid] * per * len(pids),
        "redis_cpu_us_per_mint": cpu[ctx.redis.proc.pid] * per,
        "loadgen_cpu_us_per_mint": me * per,
    }


def profile(args: argparse.Namespace) -> int:
    from broker.rpc.workers import usable_cores

    workers = args.workers or usable_cores()
    directory = Path(tempfile.mkdtemp(prefix="broker-profile-"))
    redis = start_redis(directory / "redis")
    broker = None
    raw = directory / "pyspy.txt"
    try:
        broker = start_broker(directory / "broker", f"{redis.url}?namespace=prof", workers=workers)
        ctx = Context(broker=broker, redis=redis, settings=Settings())
        pid = broker.worker_pids()[0]
        cpu = asyncio.run(_drive(ctx, args.seconds, raw, pid))
        areas, leaves, total = summarize(raw)
    finally:
        if broker is not None:
            broker.stop()
        redis.stop()
    lines = [
        f"mint@16 for {args.seconds:g} s, {workers} workers, py-spy on worker pid {pid}",
        f"mints/s during the profile (py-spy pauses the worker to sample): "
        f"{cpu['mints_per_second']:,.0f}",
        f"CPU per mint: broker {cpu['broker_cpu_us_per_mint']:.0f} us (all workers), "
        f"redis-server {cpu['redis_cpu_us_per_mint']:.0f} us, "
        f"load generator {cpu['loadgen_cpu_us_per_mint']:.0f} us",
        "",
        f"Python-thread samples of the profiled worker ({total} samples), by area:",
        "| area | share |",
        "|---|---|",
        *(f"| {a} | {100 * n / total:.1f}% |" for a, n in areas.most_common()),
        "",
        "Innermost Python function, top 25:",
        *(f"  {100 * n / total:5.1f}%  {leaf}" for leaf, n in leaves.most_common(25)),
    ]
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    if getattr(args, "keep_raw", None):
        shutil.copy(raw, args.keep_raw)
    shutil.rmtree(directory, ignore_errors=True)
    print(text)
    return 0
