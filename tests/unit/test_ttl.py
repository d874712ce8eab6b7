"""The TTL clamp (broker.core.ttl.granted_ttl): a granted TTL never exceeds any of its bounds."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from broker.core.registry import TIERS, tier_ttl_cap
from broker.core.ttl import granted_ttl

NOW = st.floats(min_value=1_700_000_000, max_value=1_900_000_000, allow_nan=False)


@given(
    tier=st.sampled_from(TIERS),
    remaining=st.floats(min_value=-100, max_value=10_000, allow_nan=False),
    policy_cap=st.none() | st.integers(min_value=1, max_value=10_000),
    requested=st.none() | st.integers(min_value=0, max_value=10_000),
    now=NOW,
)
def test_a_granted_ttl_never_exceeds_tier_policy_task_or_request(
    tier: int, remaining: float, policy_cap: int | None, requested: int | None, now: float
) -> None:
    ttl = granted_ttl(
        tier_cap=tier_ttl_cap(tier),
        task_remaining=remaining,
        policy_cap=policy_cap,
        requested=requested,
    )
    assert isinstance(ttl, int)
    assert 0 <= ttl <= tier_ttl_cap(tier)
    assert ttl <= max(remaining, 0)
    # the token's exp (whole seconds from int(now)) never outlives the task
    if ttl:
        assert int(now) + ttl <= now + remaining
    if policy_cap is not None:
        assert ttl <= policy_cap
    if requested:
        assert ttl <= requested


@given(
    tier=st.sampled_from(TIERS),
    remaining=st.floats(min_value=0, max_value=10_000, allow_nan=False),
    policy_cap=st.none() | st.integers(min_value=1, max_value=10_000),
    requested=st.none() | st.integers(min_value=0, max_value=10_000),
)
def test_it_grants_the_tightest_bound_not_less(
    tier: int, remaining: float, policy_cap: int | None, requested: int | None
) -> None:
    bounds = [tier_ttl_cap(tier), remaining]
    bounds += [policy_cap] if policy_cap is not None else []
    bounds += [requested] if requested else []
    ttl = granted_ttl(
        tier_cap=tier_ttl_cap(tier),
        task_remaining=remaining,
        policy_cap=policy_cap,
        requested=requested,
    )
    assert ttl == math.floor(min(bounds))


def test_no_ask_means_the_caps_alone() -> None:
    assert granted_ttl(tier_cap=60, task_remaining=900.0, requested=0) == 60
    assert granted_ttl(tier_cap=60, task_remaining=900.0, requested=None) == 60
    assert granted_ttl(tier_cap=60, task_remaining=900.0, policy_cap=20, requested=30) == 20


def test_a_task_ending_within_a_second_leaves_nothing_to_grant() -> None:
    assert granted_ttl(tier_cap=300, task_remaining=0.999) == 0
    assert granted_ttl(tier_cap=300, task_remaining=-5.0) == 0
    assert granted_ttl(tier_cap=300, task_remaining=float("-inf")) == 0
