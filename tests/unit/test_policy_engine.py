"""The Cedar policy engine: the dev policy's cases, approval and TTL annotations, reload,
fail-closed evaluation, and no per-call parsing."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import cedarpy
import pytest

import broker.core.policy.engine as engine_module
from broker.adapters.files import load_cases, load_registry, policy_engine
from broker.core.errors import ConfigError
from broker.core.policy.cases import run_case
from broker.core.policy.engine import PolicyEngine, registry_entities
from broker.core.policy.model import TAINTS, Decision, Effect, PolicyRequest
from broker.core.registry import Registry, parse_registry

ROOT = Path(__file__).resolve().parents[2]
DEV = ROOT / "examples" / "dev"
DEMO = "spiffe://dev.local/agent/demo"
NOW = 1_800_000_000  # 08:00 UTC

PERMIT_DEMO = """
@id("demo-all")
permit (principal == Broker::Agent::"spiffe://dev.local/agent/demo", action, resource);
"""


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry(DEV / "registry.yaml", "dev.local")


@pytest.fixture(scope="module")
def dev_engine(registry: Registry) -> PolicyEngine:
    return policy_engine(DEV / "policies", registry)


def request(
    registry: Registry, server: str, tool: str, agent: str = DEMO, **kw: Any
) -> PolicyRequest:
    entry = registry.server(server)
    return PolicyRequest(
        agent=agent, server=entry, tool=registry.tool(entry, tool), now=kw.pop("now", NOW), **kw
    )


def engine_with(tmp_path: Path, registry: Registry, **files: str) -> PolicyEngine:
    for name, text in files.items():
        (tmp_path / f"{name}.cedar").write_text(text)
    return policy_engine(tmp_path, registry)


# --- the dev policy ------------------------------------------------------------------------------

DEV_CASES = load_cases(DEV / "policy-cases.yaml")


@pytest.mark.parametrize("check_requests", [False, True], ids=["fast", "schema-checked"])
@pytest.mark.parametrize("case", DEV_CASES, ids=[c.name for c in DEV_CASES])
def test_dev_policy_cases(registry: Registry, case: Any, check_requests: bool) -> None:
    # schema-checked: the context the engine builds matches schema.cedarschema exactly.
    engine = policy_engine(DEV / "policies", registry, check_requests=check_requests)
    result = run_case(engine, case)
    assert result.passed, result.problems
    assert result.decision is not None
    assert not any("error" in r for r in result.decision.reasons)


def test_dev_cases_cover_every_rule_and_effect() -> None:
    effects = {c.expect for c in DEV_CASES}
    assert effects == {Effect.ALLOW, Effect.DENY, Effect.APPROVAL_REQUIRED}
    named = set().union(*(c.expect_policies or frozenset() for c in DEV_CASES))
    ids = policy_engine(DEV / "policies", load_registry(DEV / "registry.yaml", "dev.local"))
    assert named == set(ids.policy_ids)
    assert len(DEV_CASES) >= 12


def test_dev_policy_ids_and_digest(dev_engine: PolicyEngine) -> None:
    assert dev_engine.policy_count == 6
    assert "tier3-needs-approval" in dev_engine.policy_ids
    assert len(dev_engine.digest) == 64
    int(dev_engine.digest, 16)
    assert policy_engine(DEV / "policies", dev_engine.registry).digest == (dev_engine.digest)


def test_approval_required_names_the_forbidding_policy(
    dev_engine: PolicyEngine, registry: Registry
) -> None:
    decision = dev_engine.decide(request(registry, "deploy", "deploy"))
    assert decision.effect is Effect.APPROVAL_REQUIRED
    assert decision.policy_ids == ("tier3-needs-approval",)
    assert len(decision.reasons) == 1
    assert "approval" in decision.reasons[0]
    assert decision.policy_digest == dev_engine.digest
    assert not decision.allowed


def test_skipping_the_second_evaluation_never_changes_a_decision(
    monkeypatch: pytest.MonkeyPatch, dev_engine: PolicyEngine, registry: Registry
) -> None:
    """The shortcut (no re-evaluation when approval cannot help) agrees with always re-evaluating,
    over every tool, taint, approval and a known and an unknown agent."""
    requests = [
        request(registry, server.name, tool, agent=agent, taint=taint, approved=approved)
        for server in registry.servers
        for tool in server.tools
        for taint in TAINTS
        for approved in (False, True)
        for agent in (DEMO, "spiffe://dev.local/agent/other")
    ]
    fast = [dev_engine.decide(r) for r in requests]
    monkeypatch.setattr(engine_module, "_approval_could_help", lambda state, forbids: True)
    assert [dev_engine.decide(r) for r in requests] == fast


def test_a_permit_that_needs_approval(tmp_path: Path, registry: Registry) -> None:
    engine = engine_with(
        tmp_path,
        registry,
        p="""
@id("deploy-when-approved")
permit (principal, action, resource) when { context.approved };
""",
    )
    decision = engine.decide(request(registry, "deploy", "deploy"))
    assert decision.effect is Effect.APPROVAL_REQUIRED
    assert decision.policy_ids == ("deploy-when-approved",)


def test_no_permit_is_a_deny_with_a_reason(tmp_path: Path, registry: Registry) -> None:
    engine = engine_with(
        tmp_path,
        registry,
        p='@id("docs-only") permit (principal, action, resource) when { context.tier == 0 };',
    )
    decision = engine.decide(request(registry, "repo", "read_file"))
    assert decision.effect is Effect.DENY
    assert decision.policy_ids == ()
    assert "no policy permits" in decision.reasons[0]


def test_context_time_attributes(tmp_path: Path, registry: Registry) -> None:
    engine = engine_with(
        tmp_path,
        registry,
        p=PERMIT_DEMO
        + """
@id("no-night-deploys")
forbid (principal, action, resource) when { context.hour_utc < 6 && context.tier >= 1 };
""",
    )
    day = engine.decide(request(registry, "repo", "read_file", now=NOW))
    night = engine.decide(request(registry, "repo", "read_file", now=NOW - 4 * 3600))
    assert day.effect is Effect.ALLOW
    assert night.effect is Effect.DENY
    assert night.policy_ids == ("no-night-deploys",)


# --- @ttl ----------------------------------------------------------------------------------------


def test_ttl_cap_is_the_tightest_determining_permit(tmp_path: Path, registry: Registry) -> None:
    engine = engine_with(
        tmp_path,
        registry,
        a="""
@id("demo-all") @ttl("40")
permit (principal == Broker::Agent::"spiffe://dev.local/agent/demo", action, resource);
""",
        b="""
@id("tainted-short") @ttl("15")
permit (principal, action, resource) when { context.taint != "clean" };
""",
    )
    clean = engine.decide(request(registry, "repo", "read_file"))
    assert (clean.effect, clean.ttl_cap, clean.policy_ids) == (Effect.ALLOW, 40, ("demo-all",))
    tainted = engine.decide(request(registry, "repo", "read_file", taint="untrusted"))
    assert tainted.ttl_cap == 15
    assert set(tainted.policy_ids) == {"demo-all", "tainted-short"}


def test_no_ttl_annotation_means_no_cap(dev_engine: PolicyEngine, registry: Registry) -> None:
    assert dev_engine.decide(request(registry, "docs", "search_docs")).ttl_cap is None


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('@id("f") @ttl("10") forbid (principal, action, resource);', "only means something"),
        ('@id("p") @ttl("0") permit (principal, action, resource);', "1-86400"),
        ('@id("p") @ttl("15s") permit (principal, action, resource);', "whole seconds"),
    ],
)
def test_bad_ttl_annotations_are_refused(
    tmp_path: Path, registry: Registry, text: str, words: str
) -> None:
    with pytest.raises(ConfigError) as err:
        engine_with(tmp_path, registry, p=text)
    assert err.value.key == "policy/p.cedar"
    assert words in err.value.message


# --- loading and validation ----------------------------------------------------------------------


def test_schema_validation_rejects_an_unknown_attribute(tmp_path: Path, registry: Registry) -> None:
    with pytest.raises(ConfigError) as err:
        engine_with(
            tmp_path,
            registry,
            good=PERMIT_DEMO,
            bad="""
@id("uses-role")
forbid (principal, action, resource) when { principal.role == "intern" };
""",
        )
    assert err.value.key == "policy/bad.cedar"
    assert "schema" in err.value.message
    assert "role" in err.value.message
    assert "uses-role" in err.value.message  # Cedar's policy0 is shown as the @id


def test_schema_validation_rejects_an_unknown_context_attribute(
    tmp_path: Path, registry: Registry
) -> None:
    with pytest.raises(ConfigError) as err:
        engine_with(
            tmp_path,
            registry,
            p='@id("x") permit (principal, action, resource) when { context.tierx > 1 };',
        )
    assert "tierx" in err.value.message


def test_parse_error_names_the_file(tmp_path: Path, registry: Registry) -> None:
    with pytest.raises(ConfigError) as err:
        engine_with(tmp_path, registry, broken='@id("x") permit (principal, action, resource) {')
    assert err.value.key == "policy/broken.cedar"
    assert "cannot parse" in err.value.message


def test_every_policy_needs_an_id(tmp_path: Path, registry: Registry) -> None:
    with pytest.raises(ConfigError) as err:
        engine_with(tmp_path, registry, p=PERMIT_DEMO + "forbid (principal, action, resource);")
    assert err.value.key == "policy/p.cedar"
    assert "@id" in err.value.message
    assert "2nd policy" in err.value.message


def test_ids_are_unique_across_files(tmp_path: Path, registry: Registry) -> None:
    with pytest.raises(ConfigError) as err:
        engine_with(tmp_path, registry, a=PERMIT_DEMO, b=PERMIT_DEMO)
    assert err.value.key == "policy/b.cedar"
    assert "demo-all" in err.value.message
    assert "a.cedar" in err.value.message


def test_templates_are_refused(tmp_path: Path, registry: Registry) -> None:
    with pytest.raises(ConfigError) as err:
        engine_with(
            tmp_path, registry, t='@id("t") permit (principal == ?principal, action, resource);'
        )
    assert "templates" in err.value.message


def test_an_empty_directory_is_refused(tmp_path: Path, registry: Registry) -> None:
    with pytest.raises(ConfigError) as err:
        policy_engine(tmp_path, registry)
    assert err.value.key == "policy"


def test_a_list_of_files(tmp_path: Path, registry: Registry) -> None:
    files = sorted((DEV / "policies").glob("*.cedar"))
    engine = policy_engine(files, registry)
    assert engine.policy_count == 6
    assert engine.files == tuple(f.name for f in files)


# --- reload --------------------------------------------------------------------------------------


def test_reload_keeps_the_running_set_on_an_invalid_policy(
    tmp_path: Path, registry: Registry
) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(DEV / "policies", policies)
    engine = policy_engine(policies, registry)
    before = engine.digest
    write = request(registry, "repo", "write_file")
    assert engine.decide(write).effect is Effect.ALLOW

    (policies / "zz-bad.cedar").write_text(
        '@id("no-writes") forbid (principal, action, resource) when { context.risk == write };'
    )
    with pytest.raises(ConfigError) as err:
        engine.reload()
    assert err.value.key == "policy/zz-bad.cedar"
    assert engine.digest == before
    assert engine.decide(write).effect is Effect.ALLOW

    (policies / "zz-bad.cedar").write_text(
        '@id("no-writes") forbid (principal, action, resource) when { context.risk == "write" };'
    )
    engine.reload()
    assert engine.digest != before
    assert engine.policy_count == 7
    decision = engine.decide(write)
    assert (decision.effect, decision.policy_ids) == (Effect.DENY, ("no-writes",))


def test_reload_with_a_new_registry(tmp_path: Path, registry: Registry) -> None:
    engine = policy_engine(DEV / "policies", registry)
    data: dict[str, Any] = {
        "agents": [{"spiffe_id": "spiffe://dev.local/agent/demo", "team": "dev"}],
        "servers": [
            {
                "spiffe_id": "spiffe://dev.local/mcp/wiki",
                "tier": 0,
                "content_trust": "untrusted",
                "tools": {"read_page": {"risk": "read"}},
            }
        ],
    }
    wiki_registry = parse_registry(data, "dev.local")
    engine.reload(wiki_registry)
    assert engine.registry is wiki_registry
    wiki = wiki_registry.server("wiki")
    req = PolicyRequest(agent=DEMO, server=wiki, tool=wiki.tools["read_page"], now=NOW)
    assert engine.decide(req).effect is Effect.ALLOW
    # A tool of the old registry is no longer known to the engine: fail closed.
    assert engine.decide(request(registry, "docs", "search_docs")).effect is Effect.DENY


# --- unknown agents, attributes, fail closed -----------------------------------------------------


def test_unknown_agent_is_evaluated(tmp_path: Path, registry: Registry) -> None:
    engine = engine_with(
        tmp_path,
        registry,
        p="""
@id("guests-read-docs")
permit (principal, action, resource)
when { !principal.registered && principal.team == "" && resource.server == "docs" };
""",
    )
    guest = "spiffe://dev.local/agent/guest"
    decision = engine.decide(request(registry, "docs", "search_docs", agent=guest))
    assert (decision.effect, decision.policy_ids) == (Effect.ALLOW, ("guests-read-docs",))
    assert engine.decide(request(registry, "repo", "read_file", agent=guest)).effect is (
        Effect.DENY
    )
    # the registered agent is not a guest
    assert engine.decide(request(registry, "docs", "search_docs")).effect is Effect.DENY


def test_unknown_agent_in_the_dev_policy_is_denied_by_name(
    dev_engine: PolicyEngine, registry: Registry
) -> None:
    stranger = request(registry, "docs", "search_docs", agent="spiffe://dev.local/agent/x")
    decision = dev_engine.decide(stranger)
    assert decision.effect is Effect.DENY
    assert decision.policy_ids == ("base-registered-agents-only",)
    assert decision.reasons == ("base-registered-agents-only: the agent is not in the registry",)


def test_agent_attributes_are_tags(tmp_path: Path) -> None:
    data: dict[str, Any] = {
        "agents": [
            {
                "spiffe_id": "spiffe://dev.local/agent/ops",
                "team": "ops",
                "attributes": {"clearance": "prod"},
            },
            {"spiffe_id": "spiffe://dev.local/agent/dev", "team": "dev"},
        ],
        "servers": [
            {
                "spiffe_id": "spiffe://dev.local/mcp/deploy",
                "tier": 3,
                "content_trust": "trusted",
                "tools": {"deploy": {"risk": "deploy"}},
            }
        ],
    }
    reg = parse_registry(data, "dev.local")
    engine = engine_with(
        tmp_path,
        reg,
        p="""
@id("prod-clearance")
permit (principal, action, resource in Broker::Server::"spiffe://dev.local/mcp/deploy")
when { principal.hasTag("clearance") && principal.getTag("clearance") == "prod" };
""",
    )
    deploy = reg.server("deploy")
    tool = deploy.tools["deploy"]

    def decide(agent: str) -> Decision:
        return engine.decide(PolicyRequest(agent=agent, server=deploy, tool=tool, now=NOW))

    assert decide("spiffe://dev.local/agent/ops").effect is Effect.ALLOW
    assert decide("spiffe://dev.local/agent/dev").effect is Effect.DENY


def test_an_evaluation_error_is_a_deny(tmp_path: Path, registry: Registry) -> None:
    """Cedar skips a policy whose evaluation errors (here an overflow); for a forbid that would be
    fail-open. The engine denies instead, and says why, naming the policy by its @id."""
    engine = engine_with(
        tmp_path,
        registry,
        p=PERMIT_DEMO
        + """
@id("overflows")
forbid (principal, action, resource) when { context.now * 10000000000 > 0 };
""",
    )
    decision = engine.decide(request(registry, "docs", "search_docs"))
    assert decision.effect is Effect.DENY
    assert decision.policy_ids == ()
    assert "evaluation error" in decision.reasons[0]
    assert "overflows" in decision.reasons[0]


def test_unknown_taint_is_a_deny(dev_engine: PolicyEngine, registry: Registry) -> None:
    decision = dev_engine.decide(request(registry, "docs", "search_docs", taint="dirty"))
    assert decision.effect is Effect.DENY
    assert "unknown taint" in decision.reasons[0]


def test_a_tool_outside_the_engines_registry_is_a_deny(dev_engine: PolicyEngine) -> None:
    data: dict[str, Any] = {
        "servers": [
            {
                "spiffe_id": "spiffe://dev.local/mcp/docs",
                "tier": 0,
                "content_trust": "trusted",
                "tools": {"drop_database": {"risk": "read"}},
            }
        ]
    }
    other = parse_registry(data, "dev.local").server("docs")
    req = PolicyRequest(agent=DEMO, server=other, tool=other.tools["drop_database"], now=NOW)
    decision = dev_engine.decide(req)
    assert decision.effect is Effect.DENY
    assert "not in the registry" in decision.reasons[0]


def test_a_failing_evaluation_is_a_deny(
    monkeypatch: pytest.MonkeyPatch, dev_engine: PolicyEngine, registry: Registry
) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("engine exploded")

    monkeypatch.setattr(cedarpy, "is_authorized", boom)
    decision = dev_engine.decide(request(registry, "docs", "search_docs"))
    assert decision.effect is Effect.DENY
    assert "engine exploded" in decision.reasons[0]


# --- no per-call parsing -------------------------------------------------------------------------


def test_decisions_reuse_the_parsed_handles(
    monkeypatch: pytest.MonkeyPatch, dev_engine: PolicyEngine, registry: Registry
) -> None:
    seen: list[tuple[Any, Any, Any]] = []
    real = cedarpy.is_authorized

    def spy(req: Any, policies: Any, entities: Any, schema: Any = None) -> Any:
        seen.append((policies, entities, schema))
        return real(req, policies, entities, schema)

    def no_parsing(*args: object, **kwargs: object) -> None:
        raise AssertionError("parsed during a decision")

    monkeypatch.setattr(cedarpy, "is_authorized", spy)
    monkeypatch.setattr(cedarpy, "PolicySet", type("NoParse", (), {"from_str": no_parsing}))
    monkeypatch.setattr(cedarpy, "Schema", type("NoParse", (), {"from_str": no_parsing}))
    monkeypatch.setattr(cedarpy.Entities, "from_json_str", no_parsing)

    for _ in range(3):
        for server in registry.servers:
            for tool in server.tools:
                dev_engine.decide(request(registry, server.name, tool))
        dev_engine.decide(
            request(registry, "docs", "search_docs", agent="spiffe://dev.local/agent/x")
        )

    assert len(seen) > 24
    policy_sets = {id(p) for p, _, _ in seen}
    assert policy_sets == {id(dev_engine.policy_set)}
    assert not any(isinstance(p, str) for p, _, _ in seen)
    assert all(isinstance(e, cedarpy.Entities) for _, e, _ in seen)
    # one entity set for the registry, one cached for the unknown agent
    assert len({id(e) for _, e, _ in seen}) == 2


def test_registry_entities_shape(registry: Registry) -> None:
    entities = registry_entities(registry)
    uids = {(e["uid"]["type"], e["uid"]["id"]) for e in entities}
    assert ("Broker::Agent", DEMO) in uids
    assert ("Broker::Server", "spiffe://dev.local/mcp/deploy") in uids
    assert ("Broker::Tool", "spiffe://dev.local/mcp/deploy#rollback") in uids
    assert len(entities) == 1 + 6 + 8 + 14 + 8  # agent, servers, tools (files 14, everything 8)
