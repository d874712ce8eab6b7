"""`broker serve` as a real subprocess for tests: started with a config and environment, waited
for until it prints where it serves, stopped with SIGTERM (SIGKILL after 30 s)."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

SERVING = re.compile(r"serving on 127\.0\.0\.1:(\d+)")
METRICS = re.compile(r"metrics on http://127\.0\.0\.1:(\d+)/metrics")


def broker_command() -> list[str]:
    script = Path(sys.executable).with_name("broker")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from broker.cli.main import main; main()"]


class Served:
    """A running `broker serve`: its process, gRPC port, and what it printed so far."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.port = 0
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._lines: queue.Queue[str] = queue.Queue()
        self._pumps = [
            threading.Thread(target=self._pump, args=(proc.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._pump, args=(proc.stderr, self.stderr), daemon=True),
        ]
        for pump in self._pumps:
            pump.start()

    def _pump(self, stream: object, keep: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            keep.append(line)
            self._lines.put(line)

    def wait_serving(self, timeout: float = 90.0) -> int:
        deadline = time.monotonic() + timeout
        while not self.port:
            try:
                line = self._lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(
                    f"broker did not start: {''.join(self.stderr)[-2000:]}"
                ) from None
            if m := SERVING.search(line):
                self.port = int(m.group(1))
        return self.port

    def metrics_ports(self) -> set[int]:
        return {int(m.group(1)) for line in self.stderr if (m := METRICS.search(line))}

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pump in self._pumps:
            pump.join(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return self.proc.returncode


def serve_env(pki: Path, **overrides: str) -> dict[str, str]:
    """This process's environment without BROKER_* variables, with the dev PKI of ``pki`` and
    ``overrides`` (BROKER_STORE=..., ...)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env.update(
        BROKER_LISTEN="127.0.0.1:0",
        BROKER_TLS_CERT=str(pki / "broker.crt"),
        BROKER_TLS_KEY=str(pki / "broker.key"),
        BROKER_TLS_BUNDLE=str(pki / "ca.crt"),
        BROKER_METRICS_LISTEN="",
    )
    env.update(overrides)
    return env


@contextlib.contextmanager
def serving(
    config: Path, env: Mapping[str, str], *args: str, wrapper: Sequence[str] = ()
) -> Iterator[Served]:
    """`broker serve --config CONFIG ARGS`, run by ``wrapper`` (a command taking it after
    ``--``) if given."""
    proc = subprocess.Popen(
        [*wrapper, *broker_command(), "serve", "--config", str(config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=dict(env),
    )
    served = Served(proc)
    try:
        served.wait_serving()
        yield served
    finally:
        served.stop()
