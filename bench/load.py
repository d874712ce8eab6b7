"""Closed-loop load: N coroutines, each sending its next call when the previous one answered.

``closed_loop`` runs for a fixed time and returns the count, the errors and every latency.
``balanced_channels`` opens mTLS channels (each its own TCP connection) spread evenly over the
broker's worker processes: with SO_REUSEPORT the kernel hashes each new connection to a worker, so
16 connections can land 11/5; a real broker with many clients sees the even average, which is what
the benchmark measures. Which worker holds a connection is read from /proc (Linux).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]  # one TCP connection per channel


class Exhausted(Exception):
    """Raised by a call when its supply (e.g. of tokens) ran out: that coroutine stops."""


@dataclass
class Sample:
    """One timed run."""

    count: int
    elapsed: float
    latencies: list[float] = field(default_factory=list, repr=False)  # seconds
    errors: int = 0

    @property
    def rps(self) -> float:
        return self.count / self.elapsed if self.elapsed > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        index = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
        return ordered[index] * 1000

    def summary(self) -> dict[str, float]:
        out = {"rps": round(self.rps, 1)}
        if self.latencies:
            out["p50_ms"] = round(self.percentile_ms(50), 3)
            out["p99_ms"] = round(self.percentile_ms(99), 3)
        return {
            **out,
            "count": self.count,
            "errors": self.errors,
            "seconds": round(self.elapsed, 3),
        }


async def closed_loop(
    call: Callable[[int], Awaitable[object]], inflight: int, duration: float
) -> Sample:
    """Run ``call(worker_index)`` from ``inflight`` coroutines for ``duration`` seconds. A call
    that raises counts as an error (not timed); more errors than successes abort the run."""
    latencies: list[float] = []
    errors = 0
    first_error: BaseException | None = None
    start = time.perf_counter()
    end = start + duration

    async def worker(i: int) -> None:
        nonlocal errors, first_error
        while True:
            t0 = time.perf_counter()
            if t0 >= end:
                return
            try:
                await call(i)
            except Exhausted:
                return
            except Exception as exc:  # counted; fatal when most calls fail
                errors += 1
                first_error = first_error or exc
                if errors > 20 and errors > len(latencies):
                    raise RuntimeError(f"most calls fail; first error: {first_error}") from exc
                continue
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(worker(i) for i in range(inflight)))
    return Sample(len(latencies), time.perf_counter() - start, latencies, errors)


def timed_loop(call: Callable[[int], object], duration: float) -> Sample:
    """A synchronous loop on this thread (one core): ``call(i)`` for ``duration`` seconds."""
    count = 0
    start = time.perf_counter()
    end = start + duration
    now = start
    while now < end:
        for _ in range(64):  # read the clock every 64 calls: the loop itself costs ~nothing
            call(count)
            count += 1
        now = time.perf_counter()
    return Sample(count, now - start)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux /proc), 0 if unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- channels spread over the workers -----------------------------------------------------------


def credentials(pki: Path, name: str) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        (pki / "ca.crt").read_bytes(),
        (pki / f"{name}.key").read_bytes(),
        (pki / f"{name}.crt").read_bytes(),
    )


def _established_to(port: int) -> dict[int, int]:
    """Server-side sockets of established connections to ``port``: client port -> inode."""
    out: dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)
            for line in f:
                cols = line.split()
                local, remote, state, inode = cols[1], cols[2], cols[3], int(cols[9])
                if state == "01" and int(local.rsplit(":", 1)[1], 16) == port and inode:
                    out[int(remote.rsplit(":", 1)[1], 16)] = inode
    return out


def _can_see_sockets() -> bool:
    return os.path.exists("/proc/net/tcp")


def _socket_owner(inode: int, pids: Sequence[int]) -> int | None:
    needle = f"socket:[{inode}]"
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        with contextlib.suppress(OSError):
            for fd in os.listdir(fd_dir):
                with contextlib.suppress(OSError):
                    if os.readlink(f"{fd_dir}/{fd}") == needle:
                        return pid
    return None


async def open_channel(target: str, creds: grpc.ChannelCredentials) -> grpc.aio.Channel:
    channel = grpc.aio.secure_channel(target, creds, options=CHANNEL_OPTIONS)
    await asyncio.wait_for(channel.channel_ready(), 10)
    return channel


async def balanced_channels(
    target: str, port: int, creds: grpc.ChannelCredentials, count: int, workers: Sequence[int]
) -> list[grpc.aio.Channel]:
    """``count`` ready channels, as evenly spread over the ``workers`` pids as possible."""
    if len(workers) <= 1 or not _can_see_sockets():
        return [await open_channel(target, creds) for _ in range(count)]
    share = math.ceil(count / len(workers))
    held: dict[int, list[grpc.aio.Channel]] = {pid: [] for pid in workers}
    spare: list[grpc.aio.Channel] = []
    chosen: list[grpc.aio.Channel] = []
    for _ in range(count * 8):
        if len(chosen) >= count:
            break
        before = _established_to(port)
        channel = await open_channel(target, creds)
        new = [inode for peer, inode in _established_to(port).items() if peer not in before]
        owner = _socket_owner(new[0], workers) if len(new) == 1 else None
        if owner is not None and len(held[owner]) < share:
            held[owner].append(channel)
            chosen.append(channel)
        else:
            spare.append(channel)
    for channel in spare:
        if len(chosen) < count:  # could not balance (e.g. /proc unreadable): take what there is
            chosen.append(channel)
        else:
            await channel.close()
    return chosen


async def close_all(channels: Sequence[grpc.aio.Channel]) -> None:
    for channel in channels:
        await channel.close()
