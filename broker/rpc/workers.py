"""`broker serve --workers N`: N processes serving one port, so that the broker uses every core.

One Python process serves gRPC on one core at most (the GIL; see ../shared/PERF-NOTES.md), so
the broker runs N worker processes that each bind the same address with ``SO_REUSEPORT`` (the
gRPC option ``grpc.so_reuseport``): the kernel spreads new connections over them. Workers share
nothing in memory; everything they share lives in the store, which is why N > 1 needs a shared
store (Redis) and is refused with the in-process ``memory://`` one.

The parent (``Supervisor``) does not serve. It:

- decides N (``resolve_workers``: the usable cores by default, 1 with ``memory://``);
- gives every worker the same signing keys, so that all of them sign with one key and publish one
  JWKS: ``tokens.keys_dir`` when configured, else a private 0700 temporary directory it creates
  (first key included) and deletes on exit. Workers share the directory through
  ``LocalKeyProvider`` (a file lock; each worker re-reads the key ring periodically, which is how
  a rotation made by one worker reaches the others);
- with port 0 (tests), reserves a free port for all workers with a bound, non-listening
  ``SO_REUSEPORT`` socket that it holds until exit;
- starts the workers (``multiprocessing`` spawn: no fork of a process holding gRPC state), waits
  until each one serves, prints how to connect, restarts a worker that dies, and on SIGTERM or
  SIGINT stops every worker gracefully (SIGTERM, then SIGKILL after ``STOP_TIMEOUT``);
- serves the metrics of every worker on ``metrics.listen`` (prometheus-client's multiprocess
  mode: ``broker.rpc.metrics_http``).

A worker stops when it gets SIGTERM/SIGINT or when its parent is gone (it checks every second),
so that a killed supervisor leaves no orphan serving with stale keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

from broker.adapters.config import Config, with_listen
from broker.core.errors import BrokerError, ConfigError
from broker.rpc.metrics_http import MetricsListener, MultiprocessDir, start_listener

log = logging.getLogger("broker.workers")

READY_TIMEOUT = 60.0  # seconds for a worker to load registry, policy and keys and bind
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL at shutdown
RESTART_BACKOFF = (0.5, 10.0)  # first and longest delay before restarting a dead worker
PARENT_CHECK = 1.0  # seconds between a worker's checks that its parent is still there


def usable_cores(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The CPUs this process may use: its affinity mask (``taskset``, cpusets), capped by a
    cgroup CPU quota (a container's CPU limit, rounded up)."""
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        cores = max(1, os.cpu_count() or 1)
    limit = cgroup_cpu_limit(cgroup)
    return cores if limit is None else max(1, min(cores, math.ceil(limit)))


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup in cores (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``),
    or None when there is none or it cannot be read."""
    try:
        fields = (root / "cpu.max").read_text().split()
        if fields and fields[0] != "max":
            return int(fields[0]) / int(fields[1] if len(fields) > 1 else 100_000)
        return None
    except (OSError, ValueError, ZeroDivisionError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def store_is_shared(url: str) -> bool:
    """Whether processes can share the store named by ``url`` (everything but ``memory://``)."""
    return not url.lower().startswith("memory:")


def resolve_workers(config: Config) -> int:
    """How many processes serve: ``workers`` if set, else the usable cores with a shared store
    and 1 with ``memory://``. Raises ``ConfigError("workers")`` for N > 1 on ``memory://``."""
    shared = store_is_shared(config.store)
    if config.workers is None:
        return usable_cores() if shared else 1
    if config.workers > 1 and not shared:
        raise ConfigError(
            "workers",
            f"{config.workers} processes cannot share the in-process memory:// store (each would "
            "hold its own tasks and credentials): use --workers 1, or a shared store such as "
            "redis://host:6379",
        )
    return config.workers


# -- the parent ---------------------------------------------------------------------------------


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    conn: Connection  # the parent's end of the readiness pipe
    pid: int = 0
    ready: bool = False
    started_at: float = 0.0


class Supervisor:
    """Runs ``workers`` broker processes on ``config.listen`` until SIGTERM or SIGINT."""

    def __init__(self, config: Config, workers: int) -> None:
        if workers < 1:
            raise ConfigError("workers", f"must be at least 1, got {workers}")
        self.config = config
        self.workers = workers
        self.port = 0
        self._ctx = multiprocessing.get_context("spawn")
        self._stopping = False
        self._keys_tmp: Path | None = None
        self._metrics_dir: MultiprocessDir | None = None
        self._metrics: MetricsListener | None = None
        self._reservation: socket.socket | None = None
        self._procs: dict[int, _Worker] = {}
        self._backoff = dict.fromkeys(range(workers), RESTART_BACKOFF[0])

    # -- public ----------------------------------------------------------------------------------

    def run(self) -> None:
        """Start the workers, serve until signalled, stop them. Raises ``BrokerError`` if a worker
        cannot start (the others are stopped first)."""
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            worker_config = self._prepare()
            if self.config.metrics_listen:  # before the spawns: workers inherit the variable
                self._metrics_dir = MultiprocessDir()
            for index in range(self.workers):
                self._spawn(index, worker_config)
            self._await_ready()
            if self._stopping:
                return
            if self._metrics_dir is not None:
                self._metrics = start_listener(
                    self.config.metrics_listen, multiprocess_dir=self._metrics_dir.path
                )
            host = self.config.listen.rpartition(":")[0]
            pids = ", ".join(str(w.pid) for w in self._procs.values())
            log.info("broker serving on %s:%d with %d workers (pids %s)", host, self.port,
                     self.workers, pids)  # fmt: skip
            from broker.rpc.run import how_to_connect

            print(how_to_connect(host, self.port, workers=self.workers), flush=True)
            self._supervise(worker_config)
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._cleanup()

    # -- steps -----------------------------------------------------------------------------------

    def _prepare(self) -> Config:
        """The workers' config: a concrete port, and a keys directory they share."""
        config = self.config
        host, _, port_text = config.listen.rpartition(":")
        port = int(port_text)
        if port == 0:
            self._reservation = _reserve_port(host)
            port = self._reservation.getsockname()[1]
            config = with_listen(config, f"{host}:{port}")
        self.port = port
        if config.keys_dir is None:
            from broker.adapters.keys import LocalKeyProvider
            from broker.core.clock import SystemClock

            # mkdtemp creates the directory 0700, readable by this user only.
            self._keys_tmp = Path(tempfile.mkdtemp(prefix="broker-keys-"))
            LocalKeyProvider(
                alg=config.token_alg, directory=self._keys_tmp, now=SystemClock().now()
            )
            config = dataclasses.replace(config, keys_dir=self._keys_tmp)
            log.info("signing keys shared by the workers in %s (removed at exit)", self._keys_tmp)
        return config

    def _spawn(self, index: int, config: Config) -> None:
        parent_end, child_end = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(
            target=worker_main,
            args=(config, index, child_end, os.getpid()),
            name=f"broker-worker-{index}",
        )
        process.start()
        child_end.close()
        self._procs[index] = _Worker(index, process, parent_end, started_at=time.monotonic())

    def _await_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while not self._stopping and not all(w.ready for w in self._procs.values()):
            if time.monotonic() > deadline:
                raise BrokerError(f"workers not serving within {READY_TIMEOUT:g} s")
            for worker in self._procs.values():
                if worker.ready:
                    continue
                problem = self._poll_ready(worker, timeout=0.05)
                if problem is not None and not self._stopping:
                    raise BrokerError(f"worker {worker.index} could not start: {problem}")

    def _poll_ready(self, worker: _Worker, timeout: float) -> str | None:
        """Read the worker's readiness message if there is one; a problem, or None."""
        try:
            if not worker.conn.poll(timeout):
                if not worker.process.is_alive():
                    return f"exited with code {worker.process.exitcode}"
                return None
            kind, pid, detail = worker.conn.recv()
        except (EOFError, OSError):
            worker.process.join(1.0)
            return f"exited with code {worker.process.exitcode}"
        if kind != "ready":
            return str(detail)
        worker.pid, worker.ready = int(pid), True
        log.info("worker %d (pid %d) serving", worker.index, worker.pid)
        return None

    def _supervise(self, config: Config) -> None:
        """Until told to stop: restart workers that die (with a growing delay)."""
        restart_at: dict[int, float] = {}
        while not self._stopping:
            sentinels = [w.process.sentinel for w in self._procs.values() if w.process.is_alive()]
            multiprocessing.connection.wait(sentinels, timeout=0.25)
            now = time.monotonic()
            for index, worker in list(self._procs.items()):
                if not worker.ready and worker.process.is_alive():
                    self._poll_ready(worker, timeout=0)
                    continue
                if worker.process.is_alive() or self._stopping:
                    continue
                if index not in restart_at:
                    delay = self._backoff[index]
                    if worker.ready and now - worker.started_at > 60:
                        delay = RESTART_BACKOFF[0]  # it ran for a while: not a crash loop
                    self._backoff[index] = min(delay * 2, RESTART_BACKOFF[1])
                    log.error(
                        "worker %d (pid %s) exited with code %s; restarting in %.1f s",
                        index, worker.pid or "?", worker.process.exitcode, delay,
                    )  # fmt: skip
                    restart_at[index] = now + delay
                    if self._metrics_dir is not None and worker.pid:
                        self._metrics_dir.worker_died(worker.pid)
                elif now >= restart_at[index]:
                    del restart_at[index]
                    worker.conn.close()
                    self._spawn(index, config)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if not self._stopping:
            log.info("shutting down %d workers (%s)", self.workers, signal.Signals(signum).name)
        self._stopping = True

    def _stop_all(self) -> None:
        alive = [w for w in self._procs.values() if w.process.is_alive()]
        for worker in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.process.pid or 0, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for worker in alive:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                log.warning("worker %d did not stop in %g s: killed", worker.index, STOP_TIMEOUT)
                worker.process.kill()
                worker.process.join(5.0)
        for worker in self._procs.values():
            worker.conn.close()

    def _cleanup(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        if self._metrics_dir is not None:
            self._metrics_dir.remove()
            self._metrics_dir = None
        if self._reservation is not None:
            self._reservation.close()
            self._reservation = None
        if self._keys_tmp is not None:
            shutil.rmtree(self._keys_tmp, ignore_errors=True)
            self._keys_tmp = None


def _reserve_port(host: str) -> socket.socket:
    """A bound (not listening) SO_REUSEPORT socket on a free port of ``host``: the workers bind
    the same port next to it, and nobody else can take the port while the parent holds it."""
    infos = socket.getaddrinfo(
        host.strip("[]"), 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError("listen", f"cannot bind {host}:0: {exc.strerror}") from None
    return sock


# -- a worker -----------------------------------------------------------------------------------


def worker_main(config: Config, index: int, conn: Connection, parent_pid: int) -> None:
    """Entry point of a worker process (spawned: a fresh interpreter)."""
    from broker.adapters.logs import formatter, set_process_fields, setup_logging

    setup_logging(config.log_level, config.log_format)
    set_process_fields(worker=index)
    fmt = f"%(asctime)s %(levelname)s %(name)s [worker {index} pid %(process)d]: %(message)s"
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter(config.log_format, fmt))
    try:
        asyncio.run(_serve(config, conn, parent_pid, index))
    except BaseException as exc:  # tell the parent why, then exit non-zero
        message = exc.message if isinstance(exc, BrokerError) else f"{type(exc).__name__}: {exc}"
        with contextlib.suppress(OSError, ValueError):
            conn.send(("failed", os.getpid(), message))
        if not isinstance(exc, BrokerError | KeyboardInterrupt | SystemExit):
            log.exception("worker %d failed", index)
        raise SystemExit(1) from None
    finally:
        conn.close()


async def _serve(config: Config, conn: Connection, parent_pid: int, index: int) -> None:
    from broker.rpc.app import BrokerServer, build_components
    from broker.rpc.run import open_audit, open_store

    store = await open_store(config)
    try:
        auditor = open_audit(config, store)
        components = build_components(config, store=store, auditor=auditor)
        # one worker samples the store for broker_live_tasks: the same count N times is waste
        server = BrokerServer(config, components, sample_live_tasks=index == 0)
        port = await server.start(reuse_port=True)
        conn.send(("ready", os.getpid(), port))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        watchdog = asyncio.create_task(_watch_parent(parent_pid, stop))
        await stop.wait()
        watchdog.cancel()
        await server.stop()
    finally:
        await store.close()


async def _watch_parent(parent_pid: int, stop: asyncio.Event) -> None:
    while True:
        await asyncio.sleep(PARENT_CHECK)
        if os.getppid() != parent_pid:
            break
    log.warning("the supervisor (pid %d) is gone: stopping", parent_pid)
    stop.set()
