"""The Cedar policy engine: decides each credential request (ALLOW, DENY or APPROVAL_REQUIRED).

Policies are parsed and validated once (``broker.core.policy.loader``), the registry becomes a Cedar
entity set once, and each decision reuses both handles: only the small request and context are
built per call (PERF-NOTES.md, "Cedar"). ``reload()`` builds a complete new state and swaps it in
with one assignment, so a decision always sees one consistent policy set; a faulty reload leaves
the running set in force.

Approval: a policy says "needs approval" as ``forbid (...) unless { context.approved };``. A
request that is denied without an approval is evaluated again as if approved; if that would be
allowed, the decision is APPROVAL_REQUIRED, naming the forbidding policies. The second evaluation
is skipped when it cannot change the outcome (a determining forbid does not read
``context.approved``).

Fail closed: a Cedar evaluation error in any policy, or any failure to evaluate, is a DENY whose
reasons say what went wrong.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import cedarpy
import orjson

from broker.core.errors import ConfigError
from broker.core.policy.loader import LoadedPolicies, PolicyInfo, rename_ids, schema
from broker.core.policy.model import TAINTS, Decision, Effect, PolicyRequest
from broker.core.registry import AgentEntry, Registry, ServerEntry

__all__ = ["Decision", "Effect", "PolicyEngine", "PolicyRequest", "registry_entities", "tool_uid"]

AGENT_TYPE: Final = "Broker::Agent"
SERVER_TYPE: Final = "Broker::Server"
TOOL_TYPE: Final = "Broker::Tool"
ACTION_TYPE: Final = "Broker::Action"
ACTION_ID: Final = "call_tool"
_UNKNOWN_AGENT_CACHE = 4096  # entity handles kept for agents missing from the registry


def tool_uid(server: ServerEntry, tool: str) -> str:
    """The Cedar entity id of a tool: ``SERVER_SPIFFE_ID#TOOL``."""
    return f"{server.spiffe_id}#{tool}"


@dataclass(frozen=True, slots=True)
class _ToolFacts:
    server: str  # registry name
    tool: str
    tier: int
    risk: str


@dataclass(frozen=True, slots=True)
class _Outcome:
    allowed: bool
    determining: tuple[PolicyInfo, ...]
    errors: tuple[str, ...]


class _State:
    """One consistent generation: policies, registry and their Cedar handles. Never mutated except
    for the bounded cache of entity sets for unknown agents."""

    __slots__ = ("entities", "policies", "registry", "schema", "tools", "unknown_agents")

    def __init__(self, policies: LoadedPolicies, registry: Registry, *, checked: bool) -> None:
        self.policies = policies
        self.registry = registry
        # Each request is checked against the schema only on demand: the broker builds the context
        # from typed fields, the check costs about half of a decision, and a wrongly typed
        # attribute would be an evaluation error, which is a DENY anyway.
        self.schema: Any = schema() if checked else None
        self.tools: dict[str, _ToolFacts] = {
            tool_uid(server, tool.name): _ToolFacts(
                server.name, tool.name, server.tier, tool.risk.value
            )
            for server in registry.servers
            for tool in server.tools.values()
        }
        try:
            self.entities: Any = cedarpy.Entities.from_json_str(
                json.dumps(registry_entities(registry)), schema()
            )
        except ValueError as exc:
            raise ConfigError("registry", f"cannot build the Cedar entities: {exc}") from exc
        self.unknown_agents: dict[str, Any] = {}

    def entities_for(self, agent: str) -> Any:
        """The entity set for a request by ``agent``: the registry's, plus a bare principal
        entity (registered == false) when the agent is not in the registry."""
        if self.registry.agent(agent) is not None:
            return self.entities
        handle = self.unknown_agents.get(agent)
        if handle is None:
            delta = json.dumps([_agent_entity(AgentEntry(agent, ""), registered=False)])
            handle = self.entities.with_added_json_str(delta)
            if len(self.unknown_agents) >= _UNKNOWN_AGENT_CACHE:
                self.unknown_agents.clear()
            self.unknown_agents[agent] = handle
        return handle


class PolicyEngine:
    """Decides credential requests with the Cedar policies ``source()`` returns (parsed and
    validated: ``broker.adapters.files.policy_source`` reads them from ``*.cedar`` files) against
    the entities of ``registry``. ``reload`` calls ``source()`` again.

    The engine is the one owner of the registry in force (``registry``): the use cases read it
    from here, so a reload that takes a new registry swaps what they resolve and what policy
    decides on together, in one step.

    Raises ConfigError("policy/FILE", problem) when a policy does not parse or validate.
    ``check_requests=True`` also validates every request and context against the schema (about
    1.5 times the cost per decision; the tests use it to prove the context matches the schema).
    """

    def __init__(
        self,
        source: Callable[[], LoadedPolicies],
        registry: Registry,
        *,
        check_requests: bool = False,
    ) -> None:
        self._source = source
        self._checked = check_requests
        self._lock = threading.Lock()
        self._state = _State(source(), registry, checked=check_requests)

    # --- introspection ---------------------------------------------------------------------------

    @property
    def digest(self) -> str:
        """SHA-256 (hex) of the loaded policy files (names and texts)."""
        return self._state.policies.digest

    @property
    def policy_count(self) -> int:
        return len(self._state.policies.by_cedar_id)

    @property
    def policy_ids(self) -> tuple[str, ...]:
        return self._state.policies.ids

    @property
    def policies(self) -> tuple[PolicyInfo, ...]:
        """What the broker knows of each loaded policy (@id, effect, file, @ttl, @reason)."""
        return tuple(self._state.policies.by_cedar_id.values())

    @property
    def files(self) -> tuple[str, ...]:
        return self._state.policies.files

    @property
    def registry(self) -> Registry:
        return self._state.registry

    @property
    def policy_set(self) -> Any:
        """The parsed ``cedarpy.PolicySet`` handle in force (the same object for every decision)."""
        return self._state.policies.policy_set

    # --- reload ----------------------------------------------------------------------------------

    def reload(self, registry: Registry | None = None) -> None:
        """Re-read the policies (and take ``registry`` if given), validate, and swap atomically.
        On any problem raise ConfigError and keep the running set in force."""
        with self._lock:
            current = self._state
            self._state = _State(
                self._source(), registry or current.registry, checked=self._checked
            )

    # --- decisions -------------------------------------------------------------------------------

    def decide(self, req: PolicyRequest) -> Decision:
        """The decision for one request. Never raises: any failure to evaluate is a DENY."""
        state = self._state
        digest = state.policies.digest
        uid = tool_uid(req.server, req.tool.name)
        facts = state.tools.get(uid)
        if facts is None:
            return Decision(
                Effect.DENY,
                reasons=(
                    f"tool {req.tool.name!r} of {req.server.spiffe_id} is not in the registry",
                ),
                policy_digest=digest,
            )
        if req.taint not in TAINTS:
            return Decision(
                Effect.DENY,
                reasons=(f"unknown taint {req.taint!r}; one of: {', '.join(TAINTS)}",),
                policy_digest=digest,
            )
        try:
            entities = state.entities_for(req.agent)
            first = _evaluate(state, req, uid, facts, entities, approved=req.approved)
            if first.errors:
                return _failed(first.errors, digest)
            if first.allowed:
                return _allow(first, digest)
            forbids = first.determining
            if req.approved or not _approval_could_help(state, forbids):
                return _deny(forbids, req, facts, digest)
            second = _evaluate(state, req, uid, facts, entities, approved=True)
            if second.errors:
                return _failed(second.errors, digest)
            if not second.allowed:
                return _deny(forbids, req, facts, digest)
            named = forbids or second.determining
            return Decision(
                Effect.APPROVAL_REQUIRED,
                policy_ids=tuple(p.id for p in named),
                ttl_cap=_ttl_cap(second.determining),
                reasons=tuple(_reason(p, "needs an approval") for p in named),
                policy_digest=digest,
            )
        except Exception as exc:  # noqa: BLE001 - fail closed: whatever went wrong, deny
            return Decision(
                Effect.DENY,
                reasons=(f"policy evaluation failed: {type(exc).__name__}: {exc}",),
                policy_digest=digest,
            )


def _evaluate(
    state: _State,
    req: PolicyRequest,
    uid: str,
    facts: _ToolFacts,
    entities: Any,
    *,
    approved: bool,
) -> _Outcome:
    request = cedar_request(req, uid, facts, approved=approved)
    # The context goes as JSON text (orjson is several times faster than the wrapper's json.dumps).
    request["context"] = orjson.dumps(request["context"]).decode()
    result = cedarpy.is_authorized(request, state.policies.policy_set, entities, state.schema)
    infos = state.policies.by_cedar_id
    diagnostics = result.diagnostics
    errors = tuple(rename_ids(str(e), infos) for e in diagnostics.errors)
    if not errors and result.decision not in (cedarpy.Decision.Allow, cedarpy.Decision.Deny):
        errors = (f"no decision ({result.decision.value})",)
    return _Outcome(
        allowed=result.allowed,
        determining=tuple(infos[cedar_id] for cedar_id in sorted(diagnostics.reasons, key=_order)),
        errors=errors,
    )


def cedar_request(
    req: PolicyRequest, uid: str, facts: _ToolFacts, *, approved: bool
) -> dict[str, Any]:
    """The Cedar request for ``req``: principal, action, resource and the fixed context of
    ``schema.cedarschema`` (tier and risk taken from the engine's own registry)."""
    now = int(req.now)
    context: dict[str, Any] = {
        "intent": req.intent,
        "taint": req.taint,
        "tier": facts.tier,
        "risk": facts.risk,
        "in_plan": req.in_plan,
        "has_plan": req.has_plan,
        "approved": approved,
        "now": now,
        "hour_utc": (now // 3600) % 24,
        "delegation_depth": req.delegation_depth,
        "on_behalf_of": req.on_behalf_of,
    }
    return {
        "principal": {"type": AGENT_TYPE, "id": req.agent},
        "action": {"type": ACTION_TYPE, "id": ACTION_ID},
        "resource": {"type": TOOL_TYPE, "id": uid},
        "context": context,
    }


def _order(cedar_id: str) -> int:
    """Cedar's positional ids (policy0, policy1, ...) in load order."""
    return int(cedar_id.removeprefix("policy"))


def _approval_could_help(state: _State, forbids: tuple[PolicyInfo, ...]) -> bool:
    """Whether evaluating again with approved=true could change a denial. A forbid that does not
    read context.approved would forbid again; with no forbid at all, only a permit that reads it
    could now apply."""
    if forbids:
        return all(p.approval_sensitive for p in forbids)
    return any(
        p.effect == "permit" and p.approval_sensitive for p in state.policies.by_cedar_id.values()
    )


def _allow(outcome: _Outcome, digest: str) -> Decision:
    return Decision(
        Effect.ALLOW,
        policy_ids=tuple(p.id for p in outcome.determining),
        ttl_cap=_ttl_cap(outcome.determining),
        reasons=tuple(_reason(p, "permits the call") for p in outcome.determining),
        policy_digest=digest,
    )


def _deny(
    forbids: tuple[PolicyInfo, ...], req: PolicyRequest, facts: _ToolFacts, digest: str
) -> Decision:
    if forbids:
        reasons = tuple(_reason(p, "forbids the call") for p in forbids)
    else:
        reasons = (
            f"no policy permits {req.agent} to call {facts.tool} on {facts.server} "
            f"(tier {facts.tier}, risk {facts.risk}, taint {req.taint})",
        )
    return Decision(
        Effect.DENY, policy_ids=tuple(p.id for p in forbids), reasons=reasons, policy_digest=digest
    )


def _failed(errors: tuple[str, ...], digest: str) -> Decision:
    return Decision(
        Effect.DENY,
        reasons=tuple(f"policy evaluation error (fail closed): {e}" for e in errors),
        policy_digest=digest,
    )


def _ttl_cap(permits: tuple[PolicyInfo, ...]) -> int | None:
    caps = [p.ttl for p in permits if p.ttl is not None]
    return min(caps) if caps else None


def _reason(policy: PolicyInfo, default: str) -> str:
    return f"{policy.id}: {policy.reason or default}"


# --- entities ------------------------------------------------------------------------------------


def registry_entities(registry: Registry) -> list[dict[str, Any]]:
    """The registry as Cedar JSON entities: agents, servers, and tools (in their server)."""
    entities: list[dict[str, Any]] = [_agent_entity(a, registered=True) for a in registry.agents]
    for server in registry.servers:
        server_ref = {"type": SERVER_TYPE, "id": server.spiffe_id}
        entities.append(
            {
                "uid": server_ref,
                "attrs": {
                    "name": server.name,
                    "tier": server.tier,
                    "content_trust": server.content_trust.value,
                },
                "parents": [],
            }
        )
        for tool in server.tools.values():
            entities.append(
                {
                    "uid": {"type": TOOL_TYPE, "id": tool_uid(server, tool.name)},
                    "attrs": {
                        "name": tool.name,
                        "risk": tool.risk.value,
                        "tier": server.tier,
                        "server": server.name,
                    },
                    "parents": [server_ref],
                }
            )
    return entities


def _agent_entity(agent: AgentEntry, *, registered: bool) -> dict[str, Any]:
    return {
        "uid": {"type": AGENT_TYPE, "id": agent.spiffe_id},
        "attrs": {"name": agent.name, "team": agent.team, "registered": registered},
        "parents": [],
        "tags": dict(agent.attributes),
    }
