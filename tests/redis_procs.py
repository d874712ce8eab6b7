"""Real redis-server processes for tests: one server, or a 3-master Redis Cluster.

Each process listens on 127.0.0.1 on a free port (and, for a single server, on a unix socket
too), keeps its files in its own directory, and is stopped by its owner (a fixture's teardown;
an atexit hook catches whatever a crashed session left). Nothing here ever touches a redis that
happens to run on 6379.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

START_TIMEOUT = 10.0
CLUSTER_TIMEOUT = 30.0
MISSING = "redis-server not found: run `make test` (installs it) or apt-get install redis-server"

_RUNNING: set[subprocess.Popen[bytes]] = set()


def redis_server_binary() -> str:
    path = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.access(path, os.X_OK):
        raise RuntimeError(MISSING)
    return path


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(*, with_bus: bool = False) -> int:
    """A port nobody listens on; ``with_bus``: port + 10000 too (the cluster bus)."""
    if not with_bus:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
            return port
    for _ in range(200):
        port = random.randrange(20_000, 45_000)
        if _port_free(port) and _port_free(port + 10_000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def command(port: int, *args: str, timeout: float = 2.0) -> bytes:
    """Send one command over a raw socket and return the raw reply (enough for tests)."""
    payload = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload.encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return data
            data += chunk
            if data.startswith(b"$") and b"\r\n" in data:
                header, _, rest = data.partition(b"\r\n")
                size = int(header[1:])
                if size < 0 or len(rest) >= size + 2:
                    return data
            elif data.endswith(b"\r\n"):
                return data


@dataclass
class RedisProc:
    """One redis-server. ``restart`` brings it back on the same port and directory."""

    directory: Path
    port: int
    args: list[str]
    unix_socket: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        assert self.unix_socket is not None
        return f"redis+unix://{self.unix_socket}"

    def start(self) -> None:
        with open(self.directory / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(
                [redis_server_binary(), *self.args],
                cwd=self.directory,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        _RUNNING.add(self.proc)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                self._reap()
                tail = (self.directory / "redis.log").read_text(errors="replace")[-800:]
                raise RuntimeError(f"redis-server on port {self.port} exited:\n{tail}")
            with contextlib.suppress(OSError):
                if command(self.port, "PING", timeout=0.5).startswith(b"+PONG"):
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port}: no PONG in {START_TIMEOUT}s")
            time.sleep(0.02)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: no shutdown save, like a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self._reap()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._reap()

    def restart(self) -> None:
        self.stop()
        self.start()

    def _reap(self) -> None:
        if self.proc is not None:
            self.proc.wait()
            _RUNNING.discard(self.proc)
            self.proc = None


def start_redis(
    directory: Path, *, appendonly: bool = False, unix_socket: bool = True
) -> RedisProc:
    """A redis-server on a free port (retrying if another process grabs it first)."""
    directory.mkdir(parents=True, exist_ok=True)
    last: Exception | None = None
    for _ in range(5):
        port = free_port()
        args = [
            "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
            "--save", "", "--daemonize", "no", "--databases", "16",
        ]  # fmt: skip
        if appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        sock = directory / "redis.sock" if unix_socket else None
        if sock is not None:
            args += ["--unixsocket", str(sock), "--unixsocketperm", "700"]
        proc = RedisProc(directory, port, args, sock)
        try:
            proc.start()
            return proc
        except RuntimeError as exc:  # most likely the port was taken meanwhile
            last = exc
    raise RuntimeError(f"could not start redis-server: {last}")


@dataclass
class RedisClusterProcs:
    nodes: list[RedisProc]

    @property
    def url(self) -> str:
        return "redis-cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def node_id(self, node: RedisProc) -> str:
        return command(node.port, "CLUSTER", "MYID").decode().split("\r\n")[1]

    def owner(self, slot: int) -> RedisProc:
        """The live master serving ``slot``."""
        for node in self.nodes:
            if node.proc is not None and any(lo <= slot <= hi for lo, hi in self.slots(node)):
                return node
        raise LookupError(f"no live master serves slot {slot}")

    def masters(self) -> list[RedisProc]:
        return [n for n in self.nodes if n.proc is not None and self.slots(n)]

    def slots(self, node: RedisProc) -> list[tuple[int, int]]:
        """The slot ranges ``node`` serves (from its CLUSTER NODES "myself" line)."""
        reply = command(node.port, "CLUSTER", "NODES").decode()
        mine = next(line for line in reply.splitlines() if "myself" in line)
        ranges = []
        for item in mine.split()[8:]:
            if item[0].isdigit():
                lo, _, hi = item.partition("-")
                ranges.append((int(lo), int(hi or lo)))
        return ranges


def _cluster_ok(port: int) -> bool:
    with contextlib.suppress(OSError):
        return b"cluster_state:ok" in command(port, "CLUSTER", "INFO", timeout=1.0)
    return False


def _replica_synced(port: int) -> bool:
    """A master, or a replica whose link to its master is up."""
    with contextlib.suppress(OSError):
        info = command(port, "INFO", "replication", timeout=1.0)
        return b"role:master" in info or b"master_link_status:up" in info
    return False


def start_cluster(
    directory: Path, masters: int = 3, *, replicas: int = 0, node_timeout_ms: int = 5000
) -> RedisClusterProcs:
    """``masters`` cluster-enabled servers joined by ``redis-cli --cluster create``, each with
    ``replicas`` replicas (``node_timeout_ms``: how long a silent master lasts before its
    replica takes over)."""
    nodes: list[RedisProc] = []
    try:
        for i in range(masters * (1 + replicas)):
            node_dir = directory / f"node{i}"
            node_dir.mkdir(parents=True, exist_ok=True)
            for attempt in range(5):
                port = free_port(with_bus=True)
                args = [
                    "--port", str(port), "--bind", "127.0.0.1", "--dir", str(node_dir),
                    "--save", "", "--appendonly", "no", "--daemonize", "no",
                    "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", str(node_timeout_ms),
                ]  # fmt: skip
                node = RedisProc(node_dir, port, args)
                try:
                    node.start()
                    break
                except RuntimeError:
                    (node_dir / "nodes.conf").unlink(missing_ok=True)
                    if attempt == 4:
                        raise
            nodes.append(node)
        cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
        create = subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in nodes),
                "--cluster-replicas",
                str(replicas),
                "--cluster-yes",
            ],
            capture_output=True,
            timeout=CLUSTER_TIMEOUT,
            check=False,
        )
        if create.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {create.stdout[-800:]!r}")
        deadline = time.monotonic() + CLUSTER_TIMEOUT
        while not all(_cluster_ok(n.port) and _replica_synced(n.port) for n in nodes):
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster not ok within {CLUSTER_TIMEOUT}s")
            time.sleep(0.05)
        return RedisClusterProcs(nodes)
    except BaseException:
        for node in nodes:
            node.stop()
        raise


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_RUNNING):
        with contextlib.suppress(OSError):
            proc.kill()
            proc.wait(5)
