"""The processes under test, each started in a private directory on free ports and stopped by its
owner: redis-server (no persistence), the broker (`broker serve --workers N` on that Redis), and
OpenBao with integrated raft storage (initialized with one key share and unsealed here)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT / "examples" / "dev"
START_TIMEOUT = 90.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _binary(name: str, fallback: str | None = None) -> str:
    beside = Path(sys.executable).with_name(name)
    if beside.exists():
        return str(beside)
    found = shutil.which(name) or fallback
    if found is None or not os.access(found, os.X_OK):
        raise RuntimeError(f"{name} not found (run `make venv`; redis-server: apt-get install)")
    return found


def _stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tail(path: Path, size: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-size:]
    except OSError:
        return ""


def _wait(what: str, check: object, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}:\n{_tail(log)}")
        with contextlib.suppress(OSError):
            if check():  # type: ignore[operator]
                return
        if time.monotonic() > deadline:
            _stop(proc)
            raise RuntimeError(f"{what} did not start within {START_TIMEOUT:g} s:\n{_tail(log)}")
        time.sleep(0.05)


# -- Redis --------------------------------------------------------------------------------------


@dataclass
class RedisServer:
    proc: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def version(self) -> str:
        import redis

        client = redis.Redis(port=self.port)
        try:
            return str(client.info("server")["redis_version"])
        finally:
            client.close()

    def stop(self) -> None:
        _stop(self.proc)


def start_redis(directory: Path) -> RedisServer:
    import redis

    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = directory / "redis.log"
    command = [
        _binary("redis-server", "/usr/bin/redis-server"),
        "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
        "--save", "", "--appendonly", "no", "--daemonize", "no",
    ]  # fmt: skip
    with log.open("ab") as out:
        proc = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def ping() -> bool:
        client = redis.Redis(port=port, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False
        finally:
            client.close()

    _wait("redis-server", ping, proc, log)
    return RedisServer(proc, port)


# -- the broker ---------------------------------------------------------------------------------


@dataclass
class BrokerProc:
    proc: subprocess.Popen[bytes]
    port: int
    pki: Path
    keys_dir: Path
    workers: int
    directory: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def worker_pids(self) -> list[int]:
        """The serving processes: the supervisor's children that run a worker."""
        if self.workers == 1:
            return [self.proc.pid]
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        pids = []
        for pid in map(int, children.split()):
            with contextlib.suppress(OSError):
                if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    pids.append(pid)
        return sorted(pids)

    def stop(self) -> None:
        _stop(self.proc, timeout=30)


def start_broker(
    directory: Path,
    store_url: str,
    *,
    workers: int,
    per_agent_quota: int = 10_000_000,
    registry: Path | None = None,
    settings: dict[str, object] | None = None,
) -> BrokerProc:
    """`broker serve` with the dev registry and policies, a JSON lines audit file, signing keys
    in ``directory/keys`` (the harness signs offline-verify tokens with the same key).
    ``settings``: config sections to add (e.g. ``{"tasks": {"retention_seconds": 60}}``)."""
    from broker.adapters.pki import ensure_dev_pki

    directory.mkdir(parents=True, exist_ok=True)
    pki = directory / "pki"
    ensure_dev_pki(pki)
    keys = directory / "keys"
    config = {
        "listen": "127.0.0.1:0",
        "trust_domain": "dev.local",
        "store": store_url,
        "registry": str(registry or DEV / "registry.yaml"),
        "policies": str(DEV / "policies"),
        "tls": {
            "cert": str(pki / "broker.crt"),
            "key": str(pki / "broker.key"),
            "bundle": str(pki / "ca.crt"),
        },
        "tokens": {"alg": "ES256", "keys_dir": str(keys)},
        # The load comes from one agent identity: lift its cap on live credentials (the per-task
        # cap stays at its default; the load spreads over many tasks).
        "quotas": {"per_agent": per_agent_quota},
        "tasks": {"max_live_per_agent": 1_000_000},  # likewise its cap on live tasks
        "audit": {"sinks": [f"jsonl:{directory / 'audit.jsonl'}"]},
        "log_level": "warning",
        **(settings or {}),
    }
    path = directory / "broker.yaml"
    path.write_bytes(orjson.dumps(config))  # JSON is YAML
    out, err = directory / "broker.out", directory / "broker.err"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [_binary("broker"), "serve", "--config", str(path), "--workers", str(workers)],
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=directory,
        )
    port = 0

    def serving() -> bool:
        nonlocal port
        for line in out.read_text(errors="replace").splitlines():
            if "serving on 127.0.0.1:" in line:
                port = int(line.split("serving on 127.0.0.1:")[1].split()[0])
                return True
        return False

    _wait("broker", serving, proc, err)
    return BrokerProc(proc, port, pki, keys, workers, directory)


# -- OpenBao ------------------------------------------------------------------------------------


@dataclass
class OpenBao:
    proc: subprocess.Popen[bytes]
    addr: str
    root_token: str
    version: str

    def stop(self) -> None:
        _stop(self.proc)


def start_openbao(directory: Path) -> OpenBao:
    """`bao server` with integrated raft storage (one node), plain HTTP on 127.0.0.1, then
    init (one key share), unseal, and wait until it is the active node."""
    import httpx

    data = directory / "raft"
    data.mkdir(parents=True, exist_ok=True)
    port, cluster_port = free_port(), free_port()
    config = f"""
storage "raft" {{
  path    = "{data}"
  node_id = "bench"
}}
listener "tcp" {{
  address         = "127.0.0.1:{port}"
  cluster_address = "127.0.0.1:{cluster_port}"
  tls_disable     = true
}}
api_addr     = "http://127.0.0.1:{port}"
cluster_addr = "http://127.0.0.1:{cluster_port}"
ui           = false
log_level    = "warn"
"""
    (directory / "bao.hcl").write_text(config)
    bao = _binary("bao")
    log = directory / "bao.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [bao, "server", "-config", str(directory / "bao.hcl")],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    addr = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=addr, timeout=30) as http:

            def answers() -> bool:
                try:
                    return http.get("/v1/sys/seal-status").status_code == 200
                except httpx.TransportError:
                    return False

            _wait("bao server", answers, proc, log)
            init = http.put("/v1/sys/init", json={"secret_shares": 1, "secret_threshold": 1})
            init.raise_for_status()
            keys = init.json()
            key = (keys.get("keys_base64") or keys["keys"])[0]
            http.put("/v1/sys/unseal", json={"key": key}).raise_for_status()

            def active() -> bool:
                return http.get("/v1/sys/health").status_code == 200  # 200: active, unsealed

            _wait("bao (unseal, raft leader)", active, proc, log)
            version = str(http.get("/v1/sys/health").json().get("version", "?"))
    except BaseException:
        _stop(proc)
        raise
    return OpenBao(proc, addr, str(keys["root_token"]), version)
