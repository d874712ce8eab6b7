"""Broker configuration: a YAML file, then environment overrides, validated at start.

Every problem is a ``ConfigError`` naming the key (``tls.cert: file not found: ...``), so a
broker with a bad config refuses to start with a message a person can act on. Relative paths
are resolved against the config file's folder. Environment overrides (``BROKER_LISTEN`` and
friends, table ``ENV_OVERRIDES``) win over the file; command-line flags win over both.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from broker.adapters.vault.config import VaultConfig, parse_vault_config
from broker.core.errors import ConfigError

ENV_OVERRIDES: dict[str, str] = {
    "BROKER_LISTEN": "listen",
    "BROKER_STORE": "store",
    "BROKER_TRUST_DOMAIN": "trust_domain",
    "BROKER_TLS_CERT": "tls.cert",
    "BROKER_TLS_KEY": "tls.key",
    "BROKER_TLS_BUNDLE": "tls.bundle",
    "BROKER_REGISTRY": "registry",
    "BROKER_POLICIES": "policies",
    "BROKER_TOKEN_ALG": "tokens.alg",
    "BROKER_KEYS_DIR": "tokens.keys_dir",
    "BROKER_LOG_LEVEL": "log_level",
    "BROKER_AUDIT_SINKS": "audit.sinks",
    "BROKER_VAULT_ADDR": "vault.addr",
    "BROKER_WORKERS": "workers",
    "BROKER_METRICS_LISTEN": "metrics.listen",
    "BROKER_LOG_FORMAT": "log_format",
}
# Variables whose empty value means something ("" turns the metrics listener off).
EMPTY_MEANS_OFF = frozenset({"BROKER_METRICS_LISTEN"})

ALGORITHMS = ("ES256", "EdDSA")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")


@dataclass(frozen=True)
class TlsConfig:
    cert: Path
    key: Path
    bundle: Path


@dataclass(frozen=True)
class Config:
    listen: str
    trust_domain: str
    tls: TlsConfig
    registry: Path
    policies: Path
    store: str = "memory://"
    issuer: str = ""  # default: spiffe://TRUST_DOMAIN/broker
    token_alg: str = "ES256"  # noqa: S105 - an algorithm name, not a secret
    keys_dir: Path | None = None  # None: ephemeral keys (dev only)
    share_keys: bool = True  # publish/read public keys through the store (broker.app.keyring)
    leeway_seconds: float = 5.0
    task_max_ttl: float = 3600.0
    task_default_ttl: float = 900.0
    task_retention: float = 600.0  # tasks.retention_seconds: kept past expiry (tombstones, lists)
    quota_per_task: int = 64
    quota_per_agent: int = 1024
    max_delegation_depth: int = 3
    max_live_tasks_per_agent: int = 256
    require_registered_agents: bool = False
    max_pending_per_agent: int = 64
    store_timeout: float = 0.5
    audit_sinks: tuple[str, ...] = ("stdout",)
    approval_ttl: float = 600.0  # approvals.ttl_seconds: to decide, then to use, an approval
    log_level: str = "info"
    log_format: str = "text"  # "json": one JSON object per line (broker.adapters.logs)
    metrics_listen: str = ""  # HOST:PORT of the Prometheus listener; "": none
    workers: int | None = None  # processes sharing the port; None: the cores (1 with memory://)
    extra: Mapping[str, Any] = field(default_factory=dict)
    vault: VaultConfig | None = None  # the vault: section (broker.adapters.vault.config)

    @property
    def issuer_id(self) -> str:
        return self.issuer or f"spiffe://{self.trust_domain}/broker"


_KNOWN: dict[str, tuple[str, ...] | None] = {
    "listen": None,
    "trust_domain": None,
    "issuer": None,
    "store": None,
    "registry": None,
    "policies": None,
    "log_level": None,
    "log_format": None,
    "workers": None,
    "metrics": ("listen",),
    "tls": ("cert", "key", "bundle"),
    "tokens": ("alg", "keys_dir", "leeway_seconds", "share_keys"),
    "tasks": (
        "max_ttl_seconds",
        "default_ttl_seconds",
        "max_delegation_depth",
        "max_live_per_agent",
        "require_registered_agents",
        "retention_seconds",
    ),
    "quotas": ("per_task", "per_agent"),
    "store_options": ("timeout_seconds",),
    "audit": ("sinks",),
    "vault": None,  # validated by broker.adapters.vault.config
    "approvals": ("ttl_seconds", "max_pending_per_agent"),
}


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def load_config(
    path: Path | None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    overlays: Sequence[Path] = (),
) -> Config:
    """Read ``path`` (optional), merge the overlays (``overlays``, then the files named in
    ``BROKER_OVERLAY``, separated by ``os.pathsep``) over it, apply environment then explicit
    overrides, validate. Relative paths resolve against the main file's folder."""
    data: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        data = _read_yaml(path)
        base = path.resolve().parent
    env = os.environ if env is None else env
    named = [Path(p) for p in env.get("BROKER_OVERLAY", "").split(os.pathsep) if p.strip()]
    for overlay in (*overlays, *named):
        data = _merged(data, _read_yaml(overlay))
    for var, dotted in ENV_OVERRIDES.items():
        if env.get(var) or (var in EMPTY_MEANS_OFF and var in env):
            value: Any = env[var]
            if dotted == "audit.sinks":
                value = [s.strip() for s in env[var].split(",") if s.strip()]
            _set_dotted(data, dotted, value)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(data, dotted, value)
    return _validate(data, base)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError("config", f"file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError("config", f"{path} is not valid YAML: {exc}") from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError("config", f"{path} must hold a mapping at the top level")
    return loaded


def _merged(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """``overlay`` over ``base``: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in overlay.items():
        old = out.get(key)
        out[key] = (
            _merged(old, value)
            if isinstance(old, Mapping) and isinstance(value, Mapping)
            else value
        )
    return out


def _section(data: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = data.get(name, {})
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(name, "must be a mapping")
    return value


def _str(data: Mapping[str, Any], key: str, dotted: str, default: str | None = None) -> str:
    value = data.get(key, default)
    if value is None:
        raise ConfigError(dotted, "is required")
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(dotted, f"must be a non-empty string, got {value!r}")
    return value.strip()


def _bool(data: Mapping[str, Any], key: str, dotted: str, default: bool) -> bool:
    value = data.get(key, default)
    if isinstance(value, str) and value.lower() in ("true", "false"):  # from --set / env
        return value.lower() == "true"
    if not isinstance(value, bool):
        raise ConfigError(dotted, f"must be true or false, got {value!r}")
    return value


def _num(data: Mapping[str, Any], key: str, dotted: str, default: float, lo: float) -> float:
    value = data.get(key, default)
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(dotted, f"must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(dotted, f"must be a number, got {value!r}")
    if value < lo:
        raise ConfigError(dotted, f"must be at least {lo}, got {value}")
    return float(value)


def _path(base: Path, value: str, dotted: str, *, must_exist: bool, is_dir: bool = False) -> Path:
    p = Path(value).expanduser()
    if not p.is_absolute():
        p = (base / p).resolve()
    if must_exist:
        if not p.exists():
            raise ConfigError(dotted, f"{'folder' if is_dir else 'file'} not found: {p}")
        if is_dir and not p.is_dir():
            raise ConfigError(dotted, f"must be a folder: {p}")
    return p


def _validate_listen(value: str, key: str = "listen") -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(key, f"must be HOST:PORT (e.g. 127.0.0.1:7443), got {value!r}")
    return value


def _validate(data: Mapping[str, Any], base: Path) -> Config:
    for key, value in data.items():
        if key not in _KNOWN:
            raise ConfigError(str(key), f"unknown key; known keys: {', '.join(sorted(_KNOWN))}")
        subkeys = _KNOWN[key]
        if subkeys is not None and isinstance(value, Mapping):
            for sub in value:
                if sub not in subkeys:
                    raise ConfigError(
                        f"{key}.{sub}", f"unknown key; known keys: {', '.join(subkeys)}"
                    )

    trust_domain = _str(data, "trust_domain", "trust_domain")
    if not re.fullmatch(r"[a-z0-9._-]+", trust_domain):
        raise ConfigError(
            "trust_domain", f"must be lowercase letters, digits, '.', '-', '_': {trust_domain!r}"
        )
    tls = _section(data, "tls")
    tls_cfg = TlsConfig(
        cert=_path(base, _str(tls, "cert", "tls.cert"), "tls.cert", must_exist=True),
        key=_path(base, _str(tls, "key", "tls.key"), "tls.key", must_exist=True),
        bundle=_path(base, _str(tls, "bundle", "tls.bundle"), "tls.bundle", must_exist=True),
    )
    tokens = _section(data, "tokens")
    alg = _str(tokens, "alg", "tokens.alg", "ES256")
    if alg not in ALGORITHMS:
        raise ConfigError("tokens.alg", f"must be one of {', '.join(ALGORITHMS)}, got {alg!r}")
    keys_dir_raw = tokens.get("keys_dir") or None
    keys_dir = (
        _path(base, str(keys_dir_raw), "tokens.keys_dir", must_exist=False)
        if keys_dir_raw
        else None
    )
    share_keys = tokens.get("share_keys", True)
    if not isinstance(share_keys, bool):
        raise ConfigError("tokens.share_keys", f"must be true or false, got {share_keys!r}")
    tasks = _section(data, "tasks")
    max_ttl = _num(tasks, "max_ttl_seconds", "tasks.max_ttl_seconds", 3600, 1)
    default_ttl = _num(tasks, "default_ttl_seconds", "tasks.default_ttl_seconds", 900, 1)
    if default_ttl > max_ttl:
        raise ConfigError(
            "tasks.default_ttl_seconds", f"must not exceed tasks.max_ttl_seconds ({max_ttl:g})"
        )
    quotas = _section(data, "quotas")
    audit = _section(data, "audit")
    sinks = audit.get("sinks", ["stdout"])
    if not isinstance(sinks, list) or not all(isinstance(s, str) for s in sinks):
        raise ConfigError(
            "audit.sinks",
            "must be a list such as [stdout, 'jsonl:/var/log/broker/audit.jsonl', redis]",
        )
    for s in sinks:
        if s not in ("stdout", "redis") and not s.startswith("jsonl:"):
            raise ConfigError("audit.sinks", f"unknown sink {s!r}; use stdout, jsonl:PATH or redis")
    log_level = _str(data, "log_level", "log_level", "info").lower()
    if log_level not in LOG_LEVELS:
        raise ConfigError("log_level", f"must be one of {', '.join(LOG_LEVELS)}")
    log_format = _str(data, "log_format", "log_format", "text").lower()
    if log_format not in LOG_FORMATS:
        raise ConfigError("log_format", f"must be one of {', '.join(LOG_FORMATS)}")
    metrics_listen = str(_section(data, "metrics").get("listen") or "").strip()
    if metrics_listen:
        _validate_listen(metrics_listen, "metrics.listen")
    store_opts = _section(data, "store_options")
    return Config(
        listen=_validate_listen(_str(data, "listen", "listen", "127.0.0.1:7443")),
        trust_domain=trust_domain,
        issuer=str(data.get("issuer") or ""),
        tls=tls_cfg,
        registry=_path(base, _str(data, "registry", "registry"), "registry", must_exist=True),
        policies=_path(
            base, _str(data, "policies", "policies"), "policies", must_exist=True, is_dir=True
        ),
        store=_str(data, "store", "store", "memory://"),
        token_alg=alg,
        keys_dir=keys_dir,
        share_keys=share_keys,
        leeway_seconds=_num(tokens, "leeway_seconds", "tokens.leeway_seconds", 5, 0),
        task_max_ttl=max_ttl,
        task_default_ttl=default_ttl,
        task_retention=_num(tasks, "retention_seconds", "tasks.retention_seconds", 600, 0),
        max_delegation_depth=int(
            _num(tasks, "max_delegation_depth", "tasks.max_delegation_depth", 3, 0)
        ),
        max_live_tasks_per_agent=int(
            _num(tasks, "max_live_per_agent", "tasks.max_live_per_agent", 256, 1)
        ),
        require_registered_agents=_bool(
            tasks, "require_registered_agents", "tasks.require_registered_agents", False
        ),
        max_pending_per_agent=int(
            _num(
                _section(data, "approvals"),
                "max_pending_per_agent",
                "approvals.max_pending_per_agent",
                64,
                1,
            )
        ),
        quota_per_task=int(_num(quotas, "per_task", "quotas.per_task", 64, 1)),
        quota_per_agent=int(_num(quotas, "per_agent", "quotas.per_agent", 1024, 1)),
        store_timeout=_num(
            store_opts, "timeout_seconds", "store_options.timeout_seconds", 0.5, 0.01
        ),
        audit_sinks=tuple(sinks),
        approval_ttl=_num(
            _section(data, "approvals"), "ttl_seconds", "approvals.ttl_seconds", 600, 1
        ),
        log_level=log_level,
        log_format=log_format,
        metrics_listen=metrics_listen,
        vault=parse_vault_config(_section(data, "vault"), base) if data.get("vault") else None,
        workers=_workers(data.get("workers")),
    )


def _workers(value: Any) -> int | None:
    """``workers``: a count of at least 1, or absent / "auto" (decided at start, see
    ``broker.rpc.workers.resolve_workers``)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto")):
        return None
    count = _num({"workers": value}, "workers", "workers", 1, 1)
    if count != int(count):
        raise ConfigError("workers", f"must be a whole number of processes, got {value!r}")
    return int(count)


def with_listen(config: Config, listen: str) -> Config:
    return replace(config, listen=_validate_listen(listen))
