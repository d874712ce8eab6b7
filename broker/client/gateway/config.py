"""The gateway's configuration file (YAML), API.md "Drop-in enforcement" and docs/gateway.md.

    intent: "fix the flaky retry test"     # the task's intent; env BROKER_TASK_INTENT overrides
    servers:                               # SERVER: the registry name; tools appear as SERVER__TOOL
      files: {url: "https://127.0.0.1:8201/mcp"}   # a broker guard (guarded: true is the default)
      saas:  {url: "https://mcp.example.com/mcp", guarded: false}  # does not verify
    plan: [files, "files__read_text_file"]  # optional: the task's plan (SERVER or SERVER__TOOL)
    approval_wait: 0                       # seconds to wait for an operator's approval per call
    idle_timeout: 900                      # HTTP mode: a session idle this long ends its task
    task_ttl: 0                            # seconds asked at BeginTask (0: the broker's default)
    broker: {addr: "127.0.0.1:7443", ca: /abs/ca.crt, cert: /abs/agent.crt, key: /abs/agent.key}

Unknown keys are refused, so a typo fails at start instead of being ignored. Relative paths in
the file are relative to the file itself, never to the working directory: assistants start the
gateway in the user's project directory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from broker.core.errors import ConfigError

SEPARATOR = "__"  # SERVER__TOOL: a server name never contains it, so the first one splits


@dataclass(frozen=True)
class UpstreamConfig:
    """One upstream MCP server: ``name`` is the config key (the SERVER of SERVER__TOOL)."""

    name: str
    url: str
    guarded: bool = True
    server: str = ""  # its registry name or SPIFFE ID at the broker; default: ``name``
    timeout: float = 60.0  # seconds for one upstream request

    @property
    def ref(self) -> str:
        """How the broker names this server in RequestCredential."""
        return self.server or self.name


@dataclass(frozen=True)
class BrokerSettings:
    """Where the broker is and the agent's X.509-SVID (absolute paths once resolved)."""

    addr: str = ""
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None


@dataclass(frozen=True)
class GatewayConfig:
    servers: tuple[UpstreamConfig, ...]
    intent: str = ""
    on_behalf_of: str = ""
    plan: tuple[tuple[str, str], ...] = ()  # (config server name, tool or "")
    labels: Mapping[str, str] = field(default_factory=dict)
    task_ttl: int = 0
    approval_wait: float = 0.0
    approval_poll: float = 0.5
    idle_timeout: float = 900.0
    allowed_origins: tuple[str, ...] = ()
    http_token_file: Path | None = None
    broker: BrokerSettings = field(default_factory=BrokerSettings)

    def http_token(self) -> str:
        """HTTP mode off loopback: the bearer secret every request must carry ("" = none)."""
        if self.http_token_file is None:
            return ""
        try:
            token = self.http_token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError("http_token_file", f"cannot read it: {exc.strerror}") from None
        if len(token) < 32:
            raise ConfigError("http_token_file", "the secret must be at least 32 characters")
        return token

    def upstream(self, name: str) -> UpstreamConfig | None:
        for s in self.servers:
            if s.name == name:
                return s
        return None

    def task_intent(self, client_name: str = "", env: Mapping[str, str] | None = None) -> str:
        """The intent of a new task: env BROKER_TASK_INTENT, else the config's, else the
        client's name (from initialize), else a generic one."""
        env = os.environ if env is None else env
        return (
            env.get("BROKER_TASK_INTENT", "").strip()
            or self.intent
            or (f"session of {client_name} through broker gateway" if client_name else "")
            or "MCP session through broker gateway"
        )

    def plan_refs(self) -> tuple[tuple[str, str], ...]:
        """The plan as the broker wants it: (registry ref, tool)."""
        out = []
        for server, tool in self.plan:
            up = self.upstream(server)
            out.append((up.ref if up else server, tool))
        return tuple(out)


_TOP = {
    "intent",
    "on_behalf_of",
    "servers",
    "plan",
    "labels",
    "task_ttl",
    "approval_wait",
    "approval_poll",
    "idle_timeout",
    "allowed_origins",
    "http_token_file",
    "broker",
}
_SERVER = {"url", "guarded", "server", "timeout"}
_BROKER = {"addr", "ca", "cert", "key"}


def load_config(path: str | os.PathLike[str]) -> GatewayConfig:
    """Read and check a gateway config file. Raises ConfigError naming the bad key."""
    p = Path(path).expanduser().resolve()
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError("config", f"cannot read {p}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError("config", f"{p} is not valid YAML: {exc}") from None
    return parse_config(raw, base=p.parent)


def parse_config(raw: Any, *, base: Path) -> GatewayConfig:
    doc = _mapping(raw, "the config file")
    _no_unknown(doc, _TOP, "")
    servers_raw = _mapping(doc.get("servers"), "servers")
    if not servers_raw:
        raise ConfigError("servers", "give at least one upstream server (servers: {NAME: {url}})")
    servers = tuple(_server(str(k), v) for k, v in servers_raw.items())
    names = {s.name for s in servers}
    plan = tuple(_plan_step(i, step, names) for i, step in enumerate(doc.get("plan") or ()))
    labels = _mapping(doc.get("labels") or {}, "labels")
    return GatewayConfig(
        servers=servers,
        intent=_str(doc.get("intent", ""), "intent"),
        on_behalf_of=_str(doc.get("on_behalf_of", ""), "on_behalf_of"),
        plan=plan,
        labels={str(k): str(v) for k, v in labels.items()},
        task_ttl=int(_number(doc.get("task_ttl", 0), "task_ttl")),
        approval_wait=_number(doc.get("approval_wait", 0), "approval_wait"),
        approval_poll=max(0.05, _number(doc.get("approval_poll", 0.5), "approval_poll")),
        idle_timeout=_number(doc.get("idle_timeout", 900), "idle_timeout", positive=True),
        allowed_origins=tuple(str(o) for o in doc.get("allowed_origins") or ()),
        http_token_file=_path(doc.get("http_token_file"), "http_token_file", base),
        broker=_broker(doc.get("broker") or {}, base),
    )


def _server(name: str, raw: Any) -> UpstreamConfig:
    where = f"servers.{name}"
    if not name or SEPARATOR in name or not all(c.isalnum() or c in "-_." for c in name):
        raise ConfigError(
            where, f"a server name is letters, digits, '-', '_' or '.', without {SEPARATOR!r}"
        )
    doc = _mapping(raw, where)
    _no_unknown(doc, _SERVER, where)
    url = _str(doc.get("url", ""), f"{where}.url")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{where}.url", f"must be an http(s) URL of an MCP endpoint, not {url!r}")
    guarded = doc.get("guarded", True)
    if not isinstance(guarded, bool):
        raise ConfigError(f"{where}.guarded", "must be true or false")
    return UpstreamConfig(
        name=name,
        url=url,
        guarded=guarded,
        server=_str(doc.get("server", ""), f"{where}.server"),
        timeout=_number(doc.get("timeout", 60), f"{where}.timeout", positive=True),
    )


def _plan_step(i: int, raw: Any, names: set[str]) -> tuple[str, str]:
    where = f"plan[{i}]"
    if isinstance(raw, str):
        server, _, tool = raw.partition(SEPARATOR)
    elif isinstance(raw, dict):
        _no_unknown(raw, {"server", "tool"}, where)
        server, tool = str(raw.get("server", "")), str(raw.get("tool", "") or "")
    else:
        raise ConfigError(where, "is SERVER, SERVER__TOOL or {server: SERVER, tool: TOOL}")
    if server not in names:
        raise ConfigError(where, f"names {server!r}, which is not one of servers: {sorted(names)}")
    return server, tool


def _broker(raw: Any, base: Path) -> BrokerSettings:
    doc = _mapping(raw, "broker")
    _no_unknown(doc, _BROKER, "broker")

    return BrokerSettings(
        addr=_str(doc.get("addr", ""), "broker.addr"),
        ca=_path(doc.get("ca"), "broker.ca", base),
        cert=_path(doc.get("cert"), "broker.cert", base),
        key=_path(doc.get("key"), "broker.key", base),
    )


def _path(value: Any, where: str, base: Path) -> Path | None:
    if not value:
        return None
    p = Path(_str(value, where)).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def _mapping(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(where, "must be a mapping")
    return raw


def _no_unknown(doc: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(map(str, doc)) - known)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"{prefix}{unknown[0]}", f"unknown key (known: {', '.join(sorted(known))})"
        )


def _str(raw: Any, where: str) -> str:
    if not isinstance(raw, str):
        raise ConfigError(where, "must be a string")
    return raw.strip()


def _number(raw: Any, where: str, *, positive: bool = False) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or raw < 0:
        raise ConfigError(where, "must be a number of seconds, 0 or more")
    if positive and raw == 0:
        raise ConfigError(where, "must be more than 0")
    return float(raw)
