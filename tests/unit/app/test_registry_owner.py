"""One owner of the registry: the policy engine. A reload that takes a new registry changes what
the use cases resolve and what policy decides on together (issue 14)."""

from __future__ import annotations

import dataclasses

import pytest

from broker.adapters.files import policy_engine
from broker.core.errors import NotFound
from broker.core.registry import Registry, tier_ttl_cap
from broker.core.requests import Pending

from .conftest import OPERATOR, POLICIES, REGISTRY, make_harness


def without_server(registry: Registry, name: str) -> Registry:
    servers = (s for s in registry.servers if s.name != name)
    return Registry(registry.trust_domain, servers, registry.agents)


def with_tier(registry: Registry, name: str, tier: int) -> Registry:
    servers = (dataclasses.replace(s, tier=tier) if s.name == name else s for s in registry.servers)
    return Registry(registry.trust_domain, servers, registry.agents)


def test_the_broker_reads_the_engines_registry() -> None:
    h = make_harness()
    assert h.broker.registry is h.broker.policy.registry


async def test_a_reload_with_a_new_registry_is_seen_by_resolution_and_policy_at_once() -> None:
    engine = policy_engine(POLICIES, REGISTRY, check_requests=True)
    h = make_harness(policy=engine)
    task = await h.task()
    before = await h.grant(task, "repo", "read_file")
    assert before.expires_at - int(h.clock.now()) == tier_ttl_cap(1)

    engine.reload(with_tier(without_server(REGISTRY, "docs"), "repo", 3))

    assert h.broker.registry is engine.registry
    with pytest.raises(NotFound):  # resolution: docs is gone
        await h.ask(task, "docs", "search_docs")
    with pytest.raises(NotFound):  # the admin use cases resolve through the same owner
        await h.admin.revoke_server(OPERATOR, "docs", reason="gone", dry_run=True)
    # policy: repo is tier 3 now, so it needs an approval; before the reload it did not
    assert isinstance(await h.ask(task, "repo", "read_file"), Pending)


async def test_a_plan_is_checked_against_the_registry_in_force() -> None:
    engine = policy_engine(POLICIES, REGISTRY)
    h = make_harness(policy=engine)
    engine.reload(without_server(REGISTRY, "docs"))
    with pytest.raises(NotFound) as err:
        await h.task(plan=(("docs", "search_docs"),))
    assert "plan[0]" in err.value.message


async def test_a_policy_only_reload_keeps_the_registry() -> None:
    engine = policy_engine(POLICIES, REGISTRY)
    h = make_harness(policy=engine)
    engine.reload()
    assert h.broker.registry is REGISTRY
    await h.grant(await h.task(), "docs", "search_docs")
