"""An opt-in metrics hook for the verifiers in MCP servers: verification outcomes (STALE among
them), revocation feed lag and silence, feed reconnects.

The verifiers call a ``VerifierMetrics`` (any object with these three methods) when given one
(``OfflineVerifier(..., metrics=...)``); nothing is counted otherwise, and the [client] extra
does not depend on prometheus-client. ``prometheus_metrics()`` builds one on prometheus-client
for a server that has it installed:

    broker_verifier_verifications_total{mode, outcome="accepted|rejected", reason}
    broker_verifier_feed_lag_seconds      histogram: revocation time -> applied here (offline)
    broker_verifier_feed_silence_seconds  gauge: seconds since the feed's last message (offline)
    broker_verifier_feed_reconnects_total

Alert on ``rate(broker_verifier_verifications_total{reason="STALE"}[5m]) > 0`` (this server
refuses every call because its feed is down) and on a feed lag p99 above a few seconds
(docs/operations.md).
"""

from __future__ import annotations

import time
from typing import Any, Protocol


class VerifierMetrics(Protocol):
    def verification(self, mode: str, outcome: str, reason: str) -> None:
        """One ``verify``/``authenticate``: outcome "accepted" (reason "") or "rejected"."""
        ...

    def feed_message(self, kind: str, lag: float | None) -> None:
        """A feed message applied (``kind`` "heartbeat" or an event kind); ``lag``: seconds from
        the revocation to now for an event, None for a heartbeat."""
        ...

    def feed_reconnect(self) -> None: ...


class _Prometheus:
    def __init__(self, registry: Any, namespace: str) -> None:
        from prometheus_client import REGISTRY, Counter, Gauge, Histogram

        registry = registry if registry is not None else REGISTRY
        self._last = time.monotonic()
        self._verifications = Counter(
            f"{namespace}_verifications",
            "Credential verifications in this MCP server.",
            ["mode", "outcome", "reason"],
            registry=registry,
        )
        self._lag = Histogram(
            f"{namespace}_feed_lag_seconds",
            "Seconds from a revocation at the broker to its arrival here.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=registry,
        )
        silence = Gauge(
            f"{namespace}_feed_silence_seconds",
            "Seconds since the revocation feed's last message (event or heartbeat).",
            registry=registry,
        )
        silence.set_function(lambda: time.monotonic() - self._last)
        self._reconnects = Counter(
            f"{namespace}_feed_reconnects",
            "Reconnections of the revocation feed.",
            registry=registry,
        )

    def verification(self, mode: str, outcome: str, reason: str) -> None:
        self._verifications.labels(mode, outcome, reason).inc()

    def feed_message(self, kind: str, lag: float | None) -> None:
        self._last = time.monotonic()
        if lag is not None:
            self._lag.observe(max(lag, 0.0))

    def feed_reconnect(self) -> None:
        self._reconnects.inc()


def prometheus_metrics(registry: Any = None, namespace: str = "broker_verifier") -> VerifierMetrics:
    """A ``VerifierMetrics`` on prometheus-client (``registry``: default the global one).
    Raises ImportError naming the package when prometheus-client is not installed."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ImportError(
            "prometheus_metrics() needs prometheus-client: pip install prometheus-client"
        ) from None
    return _Prometheus(registry, namespace)
