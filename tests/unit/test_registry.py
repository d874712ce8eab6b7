"""The registry loader: the dev registry loads, and every kind of mistake names its key."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.adapters.files import load_registry
from broker.core.errors import ConfigError, NotFound, Reason
from broker.core.registry import (
    TIER_MAX_TTL,
    ContentTrust,
    Risk,
    parse_registry,
    tier_ttl_cap,
)

ROOT = Path(__file__).resolve().parents[2]
DEV_REGISTRY = ROOT / "examples" / "dev" / "registry.yaml"
TD = "dev.local"


def dev_data() -> dict[str, Any]:
    data = yaml.safe_load(DEV_REGISTRY.read_text())
    assert isinstance(data, dict)
    return data


def test_dev_registry_loads_as_api_md_describes() -> None:
    reg = load_registry(DEV_REGISTRY, TD)
    assert [(s.name, s.tier) for s in reg.servers] == [
        ("docs", 0),
        ("repo", 1),
        ("secrets", 2),
        ("deploy", 3),
        ("files", 1),
        ("everything", 0),
    ]
    docs = reg.server("docs")
    assert docs.spiffe_id == "spiffe://dev.local/mcp/docs"
    assert docs.content_trust is ContentTrust.UNTRUSTED
    assert reg.server("repo").content_trust is ContentTrust.TRUSTED
    # API.md "Dev setup additions": the npm servers behind `broker guard`
    files, everything = reg.server("files"), reg.server("everything")
    assert files.content_trust is ContentTrust.TRUSTED and not files.allow
    assert everything.content_trust is ContentTrust.UNTRUSTED
    assert not everything.allow  # untrusted: resources and prompts could not taint a task
    writes = {t.name for t in files.tools.values() if t.risk is Risk.WRITE}
    assert writes == {"write_file", "edit_file", "create_directory", "move_file"}
    assert len(files.tools) == 14
    assert everything.tools["echo"].risk is Risk.READ
    risks = {
        (s.name, t.name): t.risk
        for s in reg.servers
        if s.name not in ("files", "everything")
        for t in s.tools.values()
    }
    assert risks == {
        ("docs", "search_docs"): Risk.READ,
        ("docs", "fetch_page"): Risk.READ,
        ("repo", "read_file"): Risk.READ,
        ("repo", "write_file"): Risk.WRITE,
        ("repo", "run_tests"): Risk.EXEC,
        ("secrets", "read_secret"): Risk.SECRET,
        ("deploy", "deploy"): Risk.DEPLOY,
        ("deploy", "rollback"): Risk.DEPLOY,
    }
    agent = reg.agent("spiffe://dev.local/agent/demo")
    assert agent is not None
    assert (agent.name, agent.team) == ("demo", "dev")
    assert reg.agent("spiffe://dev.local/agent/other") is None


def test_server_by_name_or_spiffe_id() -> None:
    reg = load_registry(DEV_REGISTRY, TD)
    assert reg.server("spiffe://dev.local/mcp/deploy") is reg.server("deploy")
    assert reg.tool(reg.server("deploy"), "rollback").risk is Risk.DEPLOY


def test_unknown_server_names_the_ref() -> None:
    reg = load_registry(DEV_REGISTRY, TD)
    with pytest.raises(NotFound) as err:
        reg.server("spiffe://dev.local/mcp/payments")
    assert err.value.reason is Reason.UNKNOWN_SERVER
    assert "spiffe://dev.local/mcp/payments" in err.value.message


def test_unknown_server_message_is_bounded() -> None:
    reg = load_registry(DEV_REGISTRY, TD)
    with pytest.raises(NotFound) as err:
        reg.server("x" * 10_000)
    assert len(err.value.message) < 200


def test_unknown_tool_lists_the_servers_tools() -> None:
    reg = load_registry(DEV_REGISTRY, TD)
    with pytest.raises(NotFound) as err:
        reg.tool(reg.server("repo"), "delete_repo")
    assert err.value.reason is Reason.UNKNOWN_TOOL
    assert "delete_repo" in err.value.message
    for tool in ("read_file", "write_file", "run_tests"):
        assert tool in err.value.message


def test_entries_are_immutable() -> None:
    reg = load_registry(DEV_REGISTRY, TD)
    server = reg.server("repo")
    with pytest.raises(dataclasses.FrozenInstanceError):
        server.tier = 0  # type: ignore[misc]
    with pytest.raises(TypeError):
        server.tools["rm"] = server.tools["read_file"]  # type: ignore[index]


def test_tier_ttl_caps() -> None:
    assert dict(TIER_MAX_TTL) == {0: 300, 1: 120, 2: 60, 3: 30}
    assert [tier_ttl_cap(t) for t in range(4)] == [300, 120, 60, 30]
    assert load_registry(DEV_REGISTRY, TD).server("deploy").ttl_cap == 30
    with pytest.raises(ValueError, match="unknown tier"):
        tier_ttl_cap(4)


def test_name_defaults_to_last_segment_of_the_id() -> None:
    data = dev_data()
    del data["servers"][0]["name"]
    del data["agents"][0]["name"]
    reg = parse_registry(data, TD)
    assert reg.server("docs").spiffe_id == "spiffe://dev.local/mcp/docs"
    assert reg.agents[0].name == "demo"


def test_agent_attributes_are_strings() -> None:
    data = dev_data()
    data["agents"][0]["attributes"] = {"clearance": "high"}
    reg = parse_registry(data, TD)
    assert dict(reg.agents[0].attributes) == {"clearance": "high"}


Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: object) -> Mutation:
    """Set a value at a dotted path; integers index lists."""

    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        if last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


def _delete(path: str) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        del node[last]

    return mutate


def _append_copy(kind: str, index: int, **changes: object) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        entry = copy.deepcopy(data[kind][index])
        entry.update(changes)
        data[kind].append(entry)

    return mutate


ERRORS: list[tuple[str, Mutation, str, str]] = [
    # (case id, mutation, expected key, expected words of the problem)
    (
        "bad risk",
        _set("servers.2.tools.read_secret.risk", "admin"),
        "servers[2].tools.read_secret.risk",
        "read, write, exec, secret, deploy",
    ),
    (
        "missing risk",
        _set("servers.3.tools.deploy", {"description": "x"}),
        "servers[3].tools.deploy.risk",
        "missing",
    ),
    ("tier out of range", _set("servers.0.tier", 4), "servers[0].tier", "0, 1, 2, 3"),
    ("tier as bool", _set("servers.0.tier", True), "servers[0].tier", "not a tier"),
    ("tier as string", _set("servers.0.tier", "1"), "servers[0].tier", "not a tier"),
    ("tier missing", _delete("servers.1.tier"), "servers[1].tier", "missing"),
    (
        "bad content trust",
        _set("servers.0.content_trust", "maybe"),
        "servers[0].content_trust",
        "trusted, untrusted",
    ),
    (
        "content trust missing",
        _delete("servers.0.content_trust"),
        "servers[0].content_trust",
        "missing",
    ),
    (
        "other trust domain",
        _set("servers.1.spiffe_id", "spiffe://evil.example/mcp/repo"),
        "servers[1].spiffe_id",
        "spiffe://dev.local/mcp/NAME",
    ),
    (
        "agent id for a server",
        _set("servers.1.spiffe_id", "spiffe://dev.local/agent/repo"),
        "servers[1].spiffe_id",
        "/mcp/",
    ),
    (
        "empty path",
        _set("servers.1.spiffe_id", "spiffe://dev.local/mcp/"),
        "servers[1].spiffe_id",
        "expected",
    ),
    (
        "dot-dot segment",
        _set("servers.1.spiffe_id", "spiffe://dev.local/mcp/../agent/x"),
        "servers[1].spiffe_id",
        "expected",
    ),
    (
        "trailing slash",
        _set("servers.1.spiffe_id", "spiffe://dev.local/mcp/repo/"),
        "servers[1].spiffe_id",
        "expected",
    ),
    ("id missing", _delete("servers.1.spiffe_id"), "servers[1].spiffe_id", "missing"),
    (
        "server id for an agent",
        _set("agents.0.spiffe_id", "spiffe://dev.local/mcp/demo"),
        "agents[0].spiffe_id",
        "spiffe://dev.local/agent/NAME",
    ),
    (
        "duplicate server name",
        _append_copy("servers", 0, spiffe_id="spiffe://dev.local/mcp/docs2"),
        "servers[6].name",
        "duplicate 'docs'",
    ),
    (
        "duplicate server id",
        _append_copy("servers", 0, name="docs2"),
        "servers[6].spiffe_id",
        "already servers[0]",
    ),
    (
        "duplicate agent id",
        _append_copy("agents", 0, name="demo2"),
        "agents[1].spiffe_id",
        "duplicate",
    ),
    ("bad name", _set("servers.0.name", "Docs Server"), "servers[0].name", "lowercase"),
    (
        "name like an id",
        _set("servers.0.name", "spiffe://dev.local/mcp/x"),
        "servers[0].name",
        "not a valid name",
    ),
    ("typo in a key", _set("servers.0.tols", {}), "servers[0].tols", "unknown key"),
    (
        "allow what a guard cannot pass",
        _set("servers.0.allow", ["sampling"]),
        "servers[0].allow[0]",
        "one of: resources, prompts",
    ),
    (
        "allow not a list",
        _set("servers.0.allow", "resources"),
        "servers[0].allow",
        "must be a list",
    ),
    ("unknown top key", _set("server", []), "server", "allowed: version, servers"),
    ("no servers", _set("servers", []), "servers", "at least one"),
    ("servers not a list", _set("servers", {"a": 1}), "servers", "must be a list"),
    ("server not a mapping", _set("servers.0", "docs"), "servers[0]", "must be a mapping"),
    ("tools empty", _set("servers.0.tools", {}), "servers[0].tools", "at least one tool"),
    ("tools missing", _delete("servers.0.tools"), "servers[0].tools", "missing"),
    (
        "bad tool name",
        _set("servers.0.tools.bad tool", {"risk": "read"}),
        "servers[0].tools.bad tool",
        "invalid tool name",
    ),
    (
        "tool not a mapping",
        _set("servers.0.tools.search_docs", "read"),
        "servers[0].tools.search_docs",
        "must be a mapping",
    ),
    (
        "description not text",
        _set("servers.0.tools.search_docs.description", 3),
        "servers[0].tools.search_docs.description",
        "string",
    ),
    (
        "attribute not a string",
        _set("agents.0.attributes", {"level": 3}),
        "agents[0].attributes.level",
        "must be a string",
    ),
    ("team not a string", _set("agents.0.team", 7), "agents[0].team", "string"),
    ("version", _set("version", 2), "version", "the only version is 1"),
]


@pytest.mark.parametrize(
    ("mutation", "key", "words"),
    [pytest.param(m, k, w, id=name) for name, m, k, w in ERRORS],
)
def test_each_error_names_its_key(mutation: Mutation, key: str, words: str) -> None:
    data = dev_data()
    mutation(data)
    with pytest.raises(ConfigError) as err:
        parse_registry(data, TD)
    assert err.value.key == key
    assert words in err.value.message
    assert err.value.reason is Reason.CONFIG_INVALID


def test_document_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError) as err:
        parse_registry(["servers"], TD)
    assert err.value.key == "registry"


def test_duplicate_yaml_keys_are_refused(tmp_path: Path) -> None:
    text = DEV_REGISTRY.read_text().replace(
        "      fetch_page: {risk: read",
        "      search_docs: {risk: write}\n      fetch_page: {risk: read",
    )
    path = tmp_path / "registry.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_registry(path, TD)
    assert err.value.key == "registry"
    assert "duplicate key 'search_docs'" in err.value.message
    assert "line" in err.value.message


def test_unreadable_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_registry(tmp_path / "missing.yaml", TD)
    assert err.value.key == "registry"
    assert "missing.yaml" in err.value.message


def test_other_trust_domain_refuses_the_dev_registry() -> None:
    with pytest.raises(ConfigError) as err:
        load_registry(DEV_REGISTRY, "prod.example")
    assert err.value.key == "servers[0].spiffe_id"


def test_allow_lists_what_a_guard_passes_besides_tools() -> None:
    data = dev_data()
    _set("servers.0.allow", ["prompts", "resources"])(data)
    reg = parse_registry(data, TD)
    assert reg.servers[0].allow == {"prompts", "resources"}
    assert not reg.servers[1].allow  # default: nothing but tools
