"""The offline verifier's pure state: replay cache, revocation state, feed freshness."""

from __future__ import annotations

import pytest

from broker.client.verifier.state import Freshness, ReplayCache, RevocationState
from broker.core.errors import Reason, Unauthenticated
from broker.core.model import RevocationEvent
from tests.support.tokens import AGENT, AUDIENCE, JTI, PARENT_AGENT, T0, TASK, make_claims

CLAIMS = make_claims()  # issued at T0, tier 1, by AGENT for AUDIENCE in TASK


def test_replay_cache_is_single_use_and_pruned() -> None:
    cache = ReplayCache(leeway=5)
    assert cache.consume("a", exp=T0 + 60, now=T0)
    assert not cache.consume("a", exp=T0 + 60, now=T0 + 1)
    assert cache.consume("b", exp=T0 + 10, now=T0 + 1)
    assert len(cache) == 2
    cache.prune(T0 + 15)  # b's exp + leeway has passed; a's has not
    assert "b" not in cache and "a" in cache
    assert not cache.consume("a", exp=T0 + 60, now=T0 + 64)
    cache.prune(T0 + 65.5)
    assert len(cache) == 0


def test_replay_cache_stays_bounded_by_live_credentials() -> None:
    cache = ReplayCache(leeway=0)
    for i in range(10_000):
        cache.consume(f"jti-{i}", exp=T0 + i + 1, now=T0 + i)
    assert len(cache) <= 2


def event(kind: str, subject: str, at: float = T0) -> RevocationEvent:
    return RevocationEvent("1", kind, subject, at)


@pytest.mark.parametrize(
    ("revocation", "claims"),
    [
        (event("task", TASK), CLAIMS),
        (event("credential", JTI), CLAIMS),
        (event("agent", AGENT), CLAIMS),
        (event("agent", PARENT_AGENT), make_claims(act={"sub": PARENT_AGENT})),
        (event("server", AUDIENCE), CLAIMS),
        (event("tier", "1"), CLAIMS),
        (event("issued_before", "", T0), CLAIMS),
        (event("some-future-kind", "x", T0), CLAIMS),  # unknown: fail closed
    ],
)
def test_revocations_cover_their_tokens(revocation: RevocationEvent, claims: object) -> None:
    state = RevocationState(retention=310)
    state.check(claims)  # type: ignore[arg-type]
    state.apply(revocation)
    with pytest.raises(Unauthenticated) as exc:
        state.check(claims)  # type: ignore[arg-type]
    assert exc.value.reason is Reason.REVOKED


@pytest.mark.parametrize(
    "revocation",
    [
        event("task", "t_BBBBBBBBBBBBBBBBBBBBBB"),
        event("agent", "spiffe://test.example/agent/other"),
        event("tier", "2"),
        event("server", "spiffe://test.example/mcp/other"),
        event("agent", AGENT, T0 - 1),  # floors cover tokens issued up to revoked_at only
        event("issued_before", "", T0 - 1),
    ],
)
def test_revocations_leave_other_tokens_alone(revocation: RevocationEvent) -> None:
    state = RevocationState(retention=310)
    state.apply(revocation)
    state.check(CLAIMS)


def test_revocation_state_forgets_after_retention() -> None:
    state = RevocationState(retention=310)
    for kind, subject in (("task", TASK), ("agent", AGENT), ("credential", JTI)):
        state.apply(event(kind, subject))
    state.revoke_issued_before(T0)
    state.prune(T0 + 300)
    assert len(state) == 3
    state.prune(T0 + 311)
    assert len(state) == 0 and state.issued_before == float("-inf")


def test_floors_only_move_forward() -> None:
    state = RevocationState(retention=310)
    state.apply(event("agent", AGENT, T0 + 10))
    state.apply(event("agent", AGENT, T0))
    assert state.floors[("agent", AGENT)] == T0 + 10


def test_freshness() -> None:
    fresh = Freshness(bound=5)
    with pytest.raises(Unauthenticated, match="not been received") as exc:
        fresh.check(100)
    assert exc.value.reason is Reason.STALE
    fresh.touch(100)
    fresh.check(105)
    with pytest.raises(Unauthenticated, match=r"silent for 5\.1 s") as exc:
        fresh.check(105.1)
    assert exc.value.reason is Reason.STALE
    fresh.touch(105.2)
    assert fresh.fresh(106)
    with pytest.raises(ValueError, match="positive"):
        Freshness(bound=0)
