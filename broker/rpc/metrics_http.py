"""The metrics listener: Prometheus text format on ``metrics.listen`` (``BROKER_METRICS_LISTEN``;
empty: no listener), on its own port, plain HTTP, path ``/metrics``. Bind it to loopback or to a
pod network that only the scraper reaches: it says how busy the broker is, nothing secret.

Worker processes (``broker serve --workers N``) use prometheus-client's multiprocess mode: the
supervisor creates a private directory and names it in ``PROMETHEUS_MULTIPROC_DIR`` before it
spawns the workers; each worker's counters live in memory-mapped files there, and the
supervisor's listener (the only one) sums every worker's, dead ones' counters included, so a
restarted worker never makes a counter go down. With one process the listener is in it.

A port already taken is logged and the broker serves without metrics: metrics are not worth an
outage (two `make run` on one host).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from wsgiref.simple_server import WSGIServer

log = logging.getLogger("broker.metrics")

ENV = "PROMETHEUS_MULTIPROC_DIR"


@dataclass
class MetricsListener:
    server: WSGIServer
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_listener(listen: str, *, multiprocess_dir: Path | None = None) -> MetricsListener | None:
    """Serve /metrics on ``listen`` (HOST:PORT; port 0 picks one) in a daemon thread; None when
    ``listen`` is empty or the address cannot be bound (logged)."""
    if not listen:
        return None
    from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    registry = REGISTRY
    if multiprocess_dir is not None:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(multiprocess_dir))  # type: ignore[no-untyped-call]
    try:
        server, _ = start_http_server(int(port), addr=host, registry=registry)
    except OSError as exc:
        log.error("metrics: cannot listen on %s (%s): serving without metrics", listen, exc)
        return None
    listener = MetricsListener(server, host, server.server_port)
    log.info("metrics on %s", listener.url)
    return listener


class MultiprocessDir:
    """The supervisor's ``PROMETHEUS_MULTIPROC_DIR``: created empty (0700) and exported before
    the workers are spawned, removed at exit."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="broker-metrics-"))
        os.environ[ENV] = str(self.path)

    def worker_died(self, pid: int) -> None:
        """Drop a dead worker's live gauges (its counters stay in the sums)."""
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, str(self.path))  # type: ignore[no-untyped-call]

    def remove(self) -> None:
        if os.environ.get(ENV) == str(self.path):
            del os.environ[ENV]
        shutil.rmtree(self.path, ignore_errors=True)
