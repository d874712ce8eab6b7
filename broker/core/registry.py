"""The registry: which MCP servers exist, their authority tier, their tools, and the known agents.

Loaded once from YAML (see ``examples/dev/registry.yaml`` for the annotated format) into frozen,
typed entries; every problem is a :class:`~broker.core.errors.ConfigError` whose key is the path of
the offending value (``servers[2].tools.deploy.risk``) and whose message says what is allowed.

The authority tier of a server caps the life of its credentials (DESIGN.md, "Authority tiers");
policy may tighten that cap, never loosen it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from types import MappingProxyType
from typing import Final, TypeVar

from broker.core.errors import ConfigError, NotFound, Reason
from broker.core.secret import SecretSource, parse_secret_source

TIER_MAX_TTL: Final[Mapping[int, int]] = MappingProxyType({0: 300, 1: 120, 2: 60, 3: 30})
"""Default maximum credential life in seconds for each authority tier (DESIGN.md)."""

TIERS: Final[tuple[int, ...]] = tuple(sorted(TIER_MAX_TTL))


def tier_ttl_cap(tier: int) -> int:
    """The maximum credential life, in seconds, of ``tier``; ValueError for an unknown tier."""
    try:
        return TIER_MAX_TTL[tier]
    except KeyError:
        raise ValueError(f"unknown tier {tier!r}; tiers are {TIERS}") from None


class Risk(StrEnum):
    """What a tool can do: the policy's main lever besides the tier."""

    READ = "read"
    WRITE = "write"
    EXEC = "exec"
    SECRET = "secret"  # noqa: S105 - a risk class, not a password
    DEPLOY = "deploy"


class ContentTrust(StrEnum):
    """Whether what a server returns may carry instructions from outside (web pages, tickets)."""

    TRUSTED = "trusted"
    UNTRUSTED = "untrusted"


@dataclass(frozen=True, slots=True)
class ToolEntry:
    name: str
    risk: Risk
    description: str = ""
    secret: SecretSource | None = None  # handed to the MCP server on verification (docs/vault.md)


@dataclass(frozen=True, slots=True)
class ServerEntry:
    spiffe_id: str
    name: str
    tier: int
    content_trust: ContentTrust
    tools: Mapping[str, ToolEntry] = field(hash=False)
    # What a guard (`broker guard`) lets through besides tools: "resources", "prompts".
    allow: frozenset[str] = frozenset()

    @property
    def ttl_cap(self) -> int:
        """The tier's maximum credential life in seconds."""
        return TIER_MAX_TTL[self.tier]


@dataclass(frozen=True, slots=True)
class AgentEntry:
    spiffe_id: str
    name: str
    team: str = ""
    attributes: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)


_SHORT_REF = 120
_E = TypeVar("_E", bound=Enum)


def _show(ref: str) -> str:
    """A client-supplied reference, quoted and cut short, for an error message."""
    if len(ref) > _SHORT_REF:
        ref = ref[:_SHORT_REF] + "..."
    return repr(ref)


class Registry:
    """The loaded registry. Immutable; look-ups by SPIFFE ID or registry name are O(1)."""

    __slots__ = (
        "_agents",
        "_servers_by_id",
        "_servers_by_name",
        "agents",
        "servers",
        "trust_domain",
    )

    def __init__(
        self,
        trust_domain: str,
        servers: Iterable[ServerEntry],
        agents: Iterable[AgentEntry] = (),
    ) -> None:
        self.trust_domain = trust_domain
        self.servers: tuple[ServerEntry, ...] = tuple(servers)
        self.agents: tuple[AgentEntry, ...] = tuple(agents)
        self._servers_by_id = {s.spiffe_id: s for s in self.servers}
        self._servers_by_name = {s.name: s for s in self.servers}
        self._agents = {a.spiffe_id: a for a in self.agents}
        if len(self._servers_by_id) != len(self.servers):
            raise ValueError("duplicate server SPIFFE IDs")
        if len(self._servers_by_name) != len(self.servers):
            raise ValueError("duplicate server names")
        if len(self._agents) != len(self.agents):
            raise ValueError("duplicate agent SPIFFE IDs")

    def server(self, ref: str) -> ServerEntry:
        """The server named by ``ref``: its SPIFFE ID or its registry name. NotFound otherwise."""
        found = self._servers_by_id.get(ref) or self._servers_by_name.get(ref)
        if found is None:
            raise NotFound(f"unknown server {_show(ref)}", Reason.UNKNOWN_SERVER)
        return found

    def tool(self, server: ServerEntry, name: str) -> ToolEntry:
        """The tool ``name`` of ``server``; NotFound (UNKNOWN_TOOL) lists the server's tools."""
        found = server.tools.get(name)
        if found is None:
            known = ", ".join(sorted(server.tools)) or "none"
            raise NotFound(
                f"unknown tool {_show(name)} on server {server.name}; its tools: {known}",
                Reason.UNKNOWN_TOOL,
            )
        return found

    def agent(self, spiffe_id: str) -> AgentEntry | None:
        """The registered agent with this SPIFFE ID, or None (policy still evaluates others)."""
        return self._agents.get(spiffe_id)

    def __repr__(self) -> str:
        return (
            f"Registry(trust_domain={self.trust_domain!r}, servers={len(self.servers)}, "
            f"agents={len(self.agents)})"
        )


# --- loading -------------------------------------------------------------------------------------

_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
_TOOL = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")  # MCP tool names: 1-128 of these
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")  # SPIFFE ID path segment characters
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")

_TOP_KEYS = ("version", "servers", "agents")
_SERVER_KEYS = ("spiffe_id", "name", "tier", "content_trust", "tools", "allow")
ALLOWABLE = ("resources", "prompts")
_TOOL_KEYS = ("risk", "description", "secret")
_AGENT_KEYS = ("spiffe_id", "name", "team", "attributes")


def parse_registry(data: object, trust_domain: str, source: str = "registry") -> Registry:
    """Validate already-parsed YAML/JSON data. ``source`` is the key of errors about the document
    as a whole; entries are named by their path (``servers[0].tier``)."""
    if not _TRUST_DOMAIN.fullmatch(trust_domain):
        raise ValueError(f"invalid trust domain {trust_domain!r}")
    if data is None:
        data = {}
    top = _mapping(data, source, None)
    for k in top:
        if k not in _TOP_KEYS:
            raise ConfigError(str(k), f"unknown key; allowed: {', '.join(_TOP_KEYS)}")
    version = top.get("version", 1)
    if version != 1 or isinstance(version, bool):
        raise ConfigError("version", f"unsupported version {version!r}; the only version is 1")

    servers = [
        _server(item, f"servers[{i}]", trust_domain)
        for i, item in enumerate(_sequence(top.get("servers", []), "servers"))
    ]
    if not servers:
        raise ConfigError("servers", "no servers: the registry must list at least one MCP server")
    _refuse_duplicates(servers, "servers", ("spiffe_id", "name"))

    agents = [
        _agent(item, f"agents[{i}]", trust_domain)
        for i, item in enumerate(_sequence(top.get("agents", []), "agents"))
    ]
    _refuse_duplicates(agents, "agents", ("spiffe_id", "name"))
    return Registry(trust_domain, servers, agents)


def _server(item: object, key: str, trust_domain: str) -> ServerEntry:
    raw = _mapping(item, key, _SERVER_KEYS)
    spiffe_id = _spiffe_id(raw, key, trust_domain, "mcp")
    name = _name(raw, key, spiffe_id)
    tier = raw.get("tier")
    if tier is None:
        raise ConfigError(f"{key}.tier", f"missing; one of {', '.join(map(str, TIERS))}")
    if isinstance(tier, bool) or not isinstance(tier, int) or tier not in TIER_MAX_TTL:
        raise ConfigError(
            f"{key}.tier", f"{tier!r} is not a tier; one of {', '.join(map(str, TIERS))}"
        )
    content_trust = _enum(raw, "content_trust", key, ContentTrust)
    tools_raw = raw.get("tools")
    if tools_raw is None:
        raise ConfigError(f"{key}.tools", "missing: a mapping of tool name to {risk, description}")
    tools_map = _mapping(tools_raw, f"{key}.tools", None)
    if not tools_map:
        raise ConfigError(f"{key}.tools", "empty: a server must offer at least one tool")
    tools: dict[str, ToolEntry] = {}
    for tool_name, tool_raw in tools_map.items():
        tool_key = f"{key}.tools.{tool_name}"
        if not isinstance(tool_name, str) or not _TOOL.fullmatch(tool_name):
            raise ConfigError(
                tool_key, "invalid tool name: 1-128 of letters, digits, '_', '-', '.'"
            )
        tool_fields = _mapping(tool_raw, tool_key, _TOOL_KEYS)
        description = tool_fields.get("description", "")
        if not isinstance(description, str):
            raise ConfigError(f"{tool_key}.description", "must be a string")
        risk = _enum(tool_fields, "risk", tool_key, Risk)
        secret = tool_fields.get("secret")
        source = None if secret is None else parse_secret_source(secret, f"{tool_key}.secret")
        tools[tool_name] = ToolEntry(tool_name, risk, description, source)
    return ServerEntry(
        spiffe_id, name, tier, content_trust, MappingProxyType(tools), _allow(raw, key)
    )


def _allow(raw: Mapping[str, object], key: str) -> frozenset[str]:
    items = _sequence(raw.get("allow", []), f"{key}.allow")
    for i, item in enumerate(items):
        if item not in ALLOWABLE:
            raise ConfigError(
                f"{key}.allow[{i}]", f"{item!r} is not one of: {', '.join(ALLOWABLE)}"
            )
    return frozenset(str(i) for i in items)


def _agent(item: object, key: str, trust_domain: str) -> AgentEntry:
    raw = _mapping(item, key, _AGENT_KEYS)
    spiffe_id = _spiffe_id(raw, key, trust_domain, "agent")
    name = _name(raw, key, spiffe_id)
    team = raw.get("team", "")
    if not isinstance(team, str):
        raise ConfigError(f"{key}.team", "must be a string")
    attrs_raw = _mapping(raw.get("attributes", {}) or {}, f"{key}.attributes", None)
    attributes: dict[str, str] = {}
    for attr, value in attrs_raw.items():
        if not isinstance(attr, str) or not attr:
            raise ConfigError(f"{key}.attributes", f"attribute name {attr!r} must be a string")
        if not isinstance(value, str):
            raise ConfigError(
                f"{key}.attributes.{attr}", f"{value!r} must be a string (quote it in YAML)"
            )
        attributes[attr] = value
    return AgentEntry(spiffe_id, name, team, MappingProxyType(attributes))


def _spiffe_id(raw: Mapping[str, object], key: str, trust_domain: str, kind: str) -> str:
    value = raw.get("spiffe_id")
    prefix = f"spiffe://{trust_domain}/{kind}/"
    expected = f"spiffe://{trust_domain}/{kind}/NAME"
    if not isinstance(value, str):
        raise ConfigError(f"{key}.spiffe_id", f"missing or not a string; expected {expected}")
    rest = value[len(prefix) :] if value.startswith(prefix) else None
    if (
        rest is None
        or not rest
        or not all(_SEGMENT.fullmatch(seg) and seg not in (".", "..") for seg in rest.split("/"))
    ):
        raise ConfigError(
            f"{key}.spiffe_id",
            f"{value!r} is not a {kind} ID of trust domain {trust_domain}; expected {expected} "
            "(path segments of letters, digits, '.', '-', '_')",
        )
    return value


def _name(raw: Mapping[str, object], key: str, spiffe_id: str) -> str:
    """The registry name: given, or the last segment of the SPIFFE ID."""
    name = raw.get("name", spiffe_id.rsplit("/", 1)[-1])
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(
            f"{key}.name",
            f"{name!r} is not a valid name: 1-63 of lowercase letters, digits, '_', '-', '.', "
            "starting with a letter or digit",
        )
    return name


def _enum(raw: Mapping[str, object], attr: str, key: str, kind: type[_E]) -> _E:
    allowed = ", ".join(str(m.value) for m in kind)
    value = raw.get(attr)
    if value is None:
        raise ConfigError(f"{key}.{attr}", f"missing; one of: {allowed}")
    try:
        return kind(value)
    except ValueError:
        raise ConfigError(f"{key}.{attr}", f"{value!r} is not one of: {allowed}") from None


def _mapping(value: object, key: str, allowed: tuple[str, ...] | None) -> dict[str, object]:
    if not isinstance(value, dict):
        raise ConfigError(key, f"must be a mapping, got {type(value).__name__}")
    if allowed is not None:
        for k in value:
            if k not in allowed:
                raise ConfigError(f"{key}.{k}", f"unknown key; allowed: {', '.join(allowed)}")
    return value


def _sequence(value: object, key: str) -> list[object]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(key, f"must be a list, got {type(value).__name__}")
    return value


def _refuse_duplicates(
    entries: list[ServerEntry] | list[AgentEntry], key: str, attrs: tuple[str, ...]
) -> None:
    for attr in attrs:
        seen: dict[str, int] = {}
        for i, entry in enumerate(entries):
            value = getattr(entry, attr)
            if value in seen:
                raise ConfigError(
                    f"{key}[{i}].{attr}", f"duplicate {value!r} (already {key}[{seen[value]}])"
                )
            seen[value] = i
