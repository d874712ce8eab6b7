"""The verifiers' opt-in metrics hook: outcomes with their reasons (STALE among them), the
revocation feed's lag and silence, scraped from a prometheus-client registry through its own
text format and parser."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from broker.client.verifier.metrics import prometheus_metrics
from broker.core.model import RevocationEvent
from tests.unit.test_verifier_offline import Fixture, reason
from tests.unit.test_verifier_offline import pki as pki


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
async def f(pki: Path) -> tuple[Fixture, CollectorRegistry]:
    registry = CollectorRegistry()
    fx = Fixture(pki)
    fx.verifier.metrics = prometheus_metrics(registry)
    await fx.verifier.keys.refresh(force=True)
    fx.beat()
    return fx, registry


async def test_outcomes_stale_and_feed_lag_are_counted(
    f: tuple[Fixture, CollectorRegistry],
) -> None:
    fx, registry = f
    token = fx.token()
    await fx.verify(token)
    assert (await reason(fx.verify(token))).value == "REPLAYED"
    fx.mono.now += 6  # the feed has been silent longer than stale_after
    assert (await reason(fx.verifier.authenticate(fx.token()))).value == "STALE"
    fx.clock.advance(0.25)
    fx.verifier.apply(RevocationEvent("8", "task", "t_x", fx.clock.now() - 0.25, "ended"))

    got = samples(registry)
    name = "broker_verifier_verifications_total"
    accepted = (("mode", "offline"), ("outcome", "accepted"), ("reason", ""))
    assert got[(name, accepted)] == 1
    for why in ("REPLAYED", "STALE"):
        assert got[(name, (("mode", "offline"), ("outcome", "rejected"), ("reason", why)))] == 1
    assert got[("broker_verifier_feed_lag_seconds_count", ())] == 1  # the event, not heartbeats
    assert got[("broker_verifier_feed_lag_seconds_bucket", (("le", "0.25"),))] == 1
    assert got[("broker_verifier_feed_silence_seconds", ())] < 5


async def test_no_hook_no_counting(pki: Path) -> None:
    fx = Fixture(pki)
    assert fx.verifier.metrics is None
    await fx.verifier.keys.refresh(force=True)
    fx.beat()
    await fx.verify(fx.token())  # nothing to call: no error
