"""Policy test cases: expected decisions, kept as data next to the policies they test.

The case-file format is documented in the header of ``examples/dev/policy-cases.yaml``. Loading
validates the file (ConfigError naming ``cases[3].expect`` and what is allowed); running resolves
each case against the engine's registry and compares the decision with the expectation. A case
naming an unknown server or tool fails; it does not stop the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

from broker.core.errors import ConfigError, NotFound
from broker.core.policy.engine import PolicyEngine
from broker.core.policy.model import TAINTS, Decision, Effect, PolicyRequest

DEFAULT_NOW: Final = 1_800_000_000  # 2027-01-15T08:00:00Z: cases are deterministic by default

EXPECT: Final = {
    "allow": Effect.ALLOW,
    "deny": Effect.DENY,
    "approval": Effect.APPROVAL_REQUIRED,
}
_EXPECT_NAME: Final = {effect: name for name, effect in EXPECT.items()}

_KEYS: Final = (
    "name",
    "agent",
    "server",
    "tool",
    "taint",
    "approved",
    "in_plan",
    "has_plan",
    "intent",
    "delegation_depth",
    "on_behalf_of",
    "now",
    "expect",
    "expect_policies",
    "expect_ttl_cap",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyCase:
    name: str
    agent: str
    server: str  # registry name or SPIFFE ID
    tool: str
    expect: Effect
    taint: str = "clean"
    approved: bool = False
    in_plan: bool = True
    has_plan: bool = False
    intent: str = ""
    delegation_depth: int = 0
    on_behalf_of: str = ""
    now: int = DEFAULT_NOW
    expect_policies: frozenset[str] | None = None  # exactly these @ids determine the decision
    expect_ttl_cap: int | None = None  # checked only when given


@dataclass(frozen=True, slots=True)
class CaseResult:
    case: PolicyCase
    decision: Decision | None  # None when the case could not be evaluated (unknown server/tool)
    problems: tuple[str, ...]  # empty when the case passed

    @property
    def passed(self) -> bool:
        return not self.problems


def effect_name(effect: Effect) -> str:
    """The case-file word for an effect: allow, deny, approval."""
    return _EXPECT_NAME[effect]


def parse_cases(data: object) -> tuple[PolicyCase, ...]:
    """Validate already-parsed case data: a list of mappings (see the module docstring)."""
    if not isinstance(data, list) or not data:
        raise ConfigError("cases", "must be a non-empty list of cases")
    cases: list[PolicyCase] = []
    names: dict[str, int] = {}
    for i, item in enumerate(data):
        case = _case(item, f"cases[{i}]")
        if case.name in names:
            raise ConfigError(
                f"cases[{i}].name", f"duplicate name {case.name!r} (cases[{names[case.name]}])"
            )
        names[case.name] = i
        cases.append(case)
    return tuple(cases)


def run_cases(engine: PolicyEngine, cases: Sequence[PolicyCase]) -> tuple[CaseResult, ...]:
    """Decide every case with ``engine`` and compare with its expectations."""
    return tuple(run_case(engine, case) for case in cases)


def run_case(engine: PolicyEngine, case: PolicyCase) -> CaseResult:
    registry = engine.registry
    try:
        server = registry.server(case.server)
        tool = registry.tool(server, case.tool)
    except NotFound as exc:
        return CaseResult(case, None, (exc.message,))
    decision = engine.decide(
        PolicyRequest(
            agent=case.agent,
            server=server,
            tool=tool,
            now=case.now,
            intent=case.intent,
            taint=case.taint,
            in_plan=case.in_plan,
            has_plan=case.has_plan,
            approved=case.approved,
            delegation_depth=case.delegation_depth,
            on_behalf_of=case.on_behalf_of,
        )
    )
    problems: list[str] = []
    if decision.effect is not case.expect:
        problems.append(f"got {effect_name(decision.effect)}, expected {effect_name(case.expect)}")
    if case.expect_policies is not None and frozenset(decision.policy_ids) != case.expect_policies:
        problems.append(
            f"policies {sorted(decision.policy_ids)}, expected {sorted(case.expect_policies)}"
        )
    if case.expect_ttl_cap is not None and decision.ttl_cap != case.expect_ttl_cap:
        problems.append(f"ttl cap {decision.ttl_cap}, expected {case.expect_ttl_cap}")
    return CaseResult(case, decision, tuple(problems))


def _case(item: object, key: str) -> PolicyCase:
    if not isinstance(item, dict):
        raise ConfigError(key, f"must be a mapping, got {type(item).__name__}")
    for k in item:
        if k not in _KEYS:
            raise ConfigError(f"{key}.{k}", f"unknown key; allowed: {', '.join(_KEYS)}")
    expect_raw = _get(item, key, "expect", str)
    if expect_raw not in EXPECT:
        raise ConfigError(f"{key}.expect", f"{expect_raw!r} is not one of: {', '.join(EXPECT)}")
    taint = _get(item, key, "taint", str, "clean")
    if taint not in TAINTS:
        raise ConfigError(f"{key}.taint", f"{taint!r} is not one of: {', '.join(TAINTS)}")
    policies = item.get("expect_policies")
    if policies is not None and (
        not isinstance(policies, list) or not all(isinstance(p, str) for p in policies)
    ):
        raise ConfigError(f"{key}.expect_policies", "must be a list of policy @ids")
    ttl_cap = item.get("expect_ttl_cap")
    if ttl_cap is not None and (isinstance(ttl_cap, bool) or not isinstance(ttl_cap, int)):
        raise ConfigError(f"{key}.expect_ttl_cap", "must be whole seconds")
    return PolicyCase(
        name=_get(item, key, "name", str),
        agent=_get(item, key, "agent", str),
        server=_get(item, key, "server", str),
        tool=_get(item, key, "tool", str),
        expect=EXPECT[expect_raw],
        taint=taint,
        approved=_get(item, key, "approved", bool, False),
        in_plan=_get(item, key, "in_plan", bool, True),
        has_plan=_get(item, key, "has_plan", bool, False),
        intent=_get(item, key, "intent", str, ""),
        delegation_depth=_get(item, key, "delegation_depth", int, 0),
        on_behalf_of=_get(item, key, "on_behalf_of", str, ""),
        now=_get(item, key, "now", int, DEFAULT_NOW),
        expect_policies=frozenset(policies) if policies is not None else None,
        expect_ttl_cap=ttl_cap,
    )


_MISSING: Final = object()
_KIND: Final[dict[type, str]] = {str: "string", bool: "boolean (true/false)", int: "whole number"}
_T = TypeVar("_T")


def _get(
    item: dict[str, object], key: str, attr: str, kind: type[_T], default: object = _MISSING
) -> _T:
    value = item.get(attr, default)
    if value is _MISSING:
        raise ConfigError(f"{key}.{attr}", f"missing: a {_KIND.get(kind, kind.__name__)}")
    # bool is an int in Python: a YAML `true` must not pass as a number, nor 1 as a flag.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{key}.{attr}", f"{value!r} must be a {_KIND.get(kind, kind.__name__)}")
    return value
