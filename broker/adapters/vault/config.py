"""The ``vault:`` section of the broker config (pure: validates, reads no secret).

    vault:
      addr: https://vault.example.internal:8200   # required (env BROKER_VAULT_ADDR)
      ca_cert: /etc/broker/vault-ca.pem           # CA bundle for an https addr (default: system)
      namespace: ""                               # Vault Enterprise / OpenBao namespace
      timeout_seconds: 2                          # per request; an unreachable Vault fails closed
      workers: 8                                  # threads running hvac calls
      auth:
        method: token | approle | cert
        # token (dev):  token_file: PATH, else the environment variable VAULT_TOKEN
        # approle:      mount: approle, role_id: ID (or role_id_file), secret_id_file: PATH
        #               (else the environment variable BROKER_VAULT_SECRET_ID)
        # cert:         mount: cert, cert: PATH, key: PATH, role: NAME (optional); https only
      transit:                                    # present: sign tokens in Transit
        mount: transit
        key: broker-tokens
        create: true                              # create the key if missing (non-exportable)
        auto_rotate_period: 720h                  # only used when creating the key
        activation_delay_seconds: 0               # a new version signs only after this long
        refresh_seconds: 30                       # re-read versions (other replicas' rotations)
        trim: true                                # delete versions whose last token expired
      leases:
        reap_interval_seconds: 1                  # how often due leases are revoked
        retry_initial_seconds: 1                  # backoff of a failed revocation...
        retry_max_seconds: 60                     # ...doubling up to this

Every problem is a ``ConfigError`` naming the dotted key. Relative paths are resolved against the
config file's folder. Secret material (tokens, secret ids, private keys) is read only when the
broker logs in, never kept in this object.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from broker.core.errors import ConfigError

TOKEN_ENV = "VAULT_TOKEN"  # noqa: S105 - the name of an environment variable
SECRET_ID_ENV = "BROKER_VAULT_SECRET_ID"  # noqa: S105 - the name of an environment variable

_TOP = ("addr", "ca_cert", "namespace", "timeout_seconds", "workers", "auth", "transit", "leases")
_AUTH = ("method", "mount", "token_file", "role_id", "role_id_file", "secret_id_file")
_AUTH_CERT = ("cert", "key", "role")
_TRANSIT = (
    "mount",
    "key",
    "create",
    "auto_rotate_period",
    "activation_delay_seconds",
    "refresh_seconds",
    "trim",
)
_LEASES = ("reap_interval_seconds", "retry_initial_seconds", "retry_max_seconds")
_MOUNT = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")
_DURATION = re.compile(r"(\d+[smhd])+|\d+")


class AuthMethod(StrEnum):
    TOKEN = "token"  # noqa: S105 - a method name
    APPROLE = "approle"
    CERT = "cert"


@dataclass(frozen=True)
class VaultAuth:
    method: AuthMethod
    mount: str = ""  # approle / cert: where the auth method is mounted
    token_file: Path | None = None  # token: else $VAULT_TOKEN
    role_id: str = ""  # approle: not a secret on its own
    role_id_file: Path | None = None
    secret_id_file: Path | None = None  # approle: else $BROKER_VAULT_SECRET_ID
    cert: Path | None = None  # cert: client certificate and key presented over TLS
    key: Path | None = None
    role: str = ""  # cert: the cert role to log in against ("" = any that matches)


@dataclass(frozen=True)
class TransitConfig:
    mount: str = "transit"
    key: str = "broker-tokens"
    create: bool = True
    auto_rotate_period: str = ""
    activation_delay: float = 0.0
    refresh_interval: float = 30.0
    trim: bool = True


@dataclass(frozen=True)
class LeaseConfig:
    reap_interval: float = 1.0
    retry_initial: float = 1.0
    retry_max: float = 60.0


@dataclass(frozen=True)
class VaultConfig:
    addr: str
    auth: VaultAuth
    ca_cert: Path | None = None
    namespace: str = ""
    timeout: float = 2.0
    workers: int = 8
    transit: TransitConfig | None = None
    leases: LeaseConfig = field(default_factory=LeaseConfig)

    @property
    def tls(self) -> bool:
        return self.addr.startswith("https://")


def parse_vault_config(data: Mapping[str, Any], base: Path) -> VaultConfig:
    """Validate the ``vault:`` mapping; ``base`` is the folder relative paths start from."""
    _known(data, "vault", _TOP)
    addr = _str(data, "addr", "vault.addr")
    if not re.fullmatch(r"https?://[^/\s]+/?", addr):
        raise ConfigError("vault.addr", f"must be http(s)://HOST:PORT, got {addr!r}")
    ca_cert = _file(data, "ca_cert", "vault.ca_cert", base)
    auth = _auth(_mapping(data.get("auth"), "vault.auth", required=True), base, addr)
    transit_raw = data.get("transit")
    transit = None
    if transit_raw is not None:
        transit = _transit(_mapping(transit_raw, "vault.transit", required=True))
    leases_raw = _mapping(data.get("leases"), "vault.leases", required=False)
    _known(leases_raw, "vault.leases", _LEASES)
    retry_initial = _num(leases_raw, "retry_initial_seconds", "vault.leases", 1.0, 0.01)
    leases = LeaseConfig(
        reap_interval=_num(leases_raw, "reap_interval_seconds", "vault.leases", 1.0, 0.01),
        retry_initial=retry_initial,
        retry_max=max(
            retry_initial, _num(leases_raw, "retry_max_seconds", "vault.leases", 60.0, 0.01)
        ),
    )
    namespace = data.get("namespace", "") or ""
    if not isinstance(namespace, str):
        raise ConfigError("vault.namespace", "must be a string")
    return VaultConfig(
        addr=addr.rstrip("/"),
        auth=auth,
        ca_cert=ca_cert,
        namespace=namespace.strip("/"),
        timeout=_num(data, "timeout_seconds", "vault", 2.0, 0.05),
        workers=int(_num(data, "workers", "vault", 8, 1)),
        transit=transit,
        leases=leases,
    )


def _auth(raw: Mapping[str, Any], base: Path, addr: str) -> VaultAuth:
    _known(raw, "vault.auth", _AUTH + _AUTH_CERT)
    methods = ", ".join(m.value for m in AuthMethod)
    try:
        method = AuthMethod(str(raw.get("method")))
    except ValueError:
        raise ConfigError(
            "vault.auth.method", f"{raw.get('method')!r} is not one of: {methods}"
        ) from None
    allowed = {
        AuthMethod.TOKEN: ("method", "token_file"),
        AuthMethod.APPROLE: ("method", "mount", "role_id", "role_id_file", "secret_id_file"),
        AuthMethod.CERT: ("method", "mount", "cert", "key", "role"),
    }[method]
    for k in raw:
        if k not in allowed:
            raise ConfigError(f"vault.auth.{k}", f"not used by auth method {method.value}")
    if method is AuthMethod.TOKEN:
        return VaultAuth(method, token_file=_file(raw, "token_file", "vault.auth.token_file", base))
    mount = _mount(raw.get("mount", method.value), "vault.auth.mount")
    if method is AuthMethod.APPROLE:
        role_id = raw.get("role_id", "") or ""
        role_id_file = _file(raw, "role_id_file", "vault.auth.role_id_file", base)
        if not isinstance(role_id, str) or bool(role_id) == (role_id_file is not None):
            raise ConfigError("vault.auth.role_id", "give exactly one of role_id, role_id_file")
        return VaultAuth(
            method,
            mount=mount,
            role_id=role_id,
            role_id_file=role_id_file,
            secret_id_file=_file(raw, "secret_id_file", "vault.auth.secret_id_file", base),
        )
    if not addr.startswith("https://"):
        raise ConfigError("vault.auth.method", "cert auth needs an https:// vault.addr")
    cert = _file(raw, "cert", "vault.auth.cert", base)
    key = _file(raw, "key", "vault.auth.key", base)
    if cert is None or key is None:
        raise ConfigError("vault.auth.cert", "cert auth needs both cert and key")
    role = raw.get("role", "") or ""
    if not isinstance(role, str):
        raise ConfigError("vault.auth.role", "must be a string")
    return VaultAuth(method, mount=mount, cert=cert, key=key, role=role)


def _transit(raw: Mapping[str, Any]) -> TransitConfig:
    _known(raw, "vault.transit", _TRANSIT)
    period = raw.get("auto_rotate_period", "") or ""
    if not isinstance(period, str) or (period and not _DURATION.fullmatch(period)):
        raise ConfigError("vault.transit.auto_rotate_period", "a duration such as 720h or 30d")
    key = _str(raw, "key", "vault.transit.key", "broker-tokens")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", key):
        raise ConfigError("vault.transit.key", "letters, digits, '_', '-', '.'")
    return TransitConfig(
        mount=_mount(raw.get("mount", "transit"), "vault.transit.mount"),
        key=key,
        create=_bool(raw, "create", "vault.transit.create", True),
        auto_rotate_period=period,
        activation_delay=_num(raw, "activation_delay_seconds", "vault.transit", 0.0, 0),
        refresh_interval=_num(raw, "refresh_seconds", "vault.transit", 30.0, 0.1),
        trim=_bool(raw, "trim", "vault.transit.trim", True),
    )


def _known(raw: Mapping[str, Any], where: str, keys: tuple[str, ...]) -> None:
    for k in raw:
        if k not in keys:
            raise ConfigError(f"{where}.{k}", f"unknown key; known keys: {', '.join(keys)}")


def _mapping(value: object, where: str, *, required: bool) -> Mapping[str, Any]:
    if value is None:
        if required:
            raise ConfigError(where, "is required")
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(where, "must be a mapping")
    return value


def _str(raw: Mapping[str, Any], key: str, dotted: str, default: str | None = None) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(dotted, "is required (a non-empty string)")
    return value.strip()


def _mount(value: object, dotted: str) -> str:
    if not isinstance(value, str) or not _MOUNT.fullmatch(value.strip("/")):
        raise ConfigError(dotted, f"{value!r} is not a mount path such as transit or auth/x")
    return value.strip("/")


def _bool(raw: Mapping[str, Any], key: str, dotted: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(dotted, f"must be true or false, got {value!r}")
    return value


def _num(raw: Mapping[str, Any], key: str, where: str, default: float, lo: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}.{key}", f"must be a number, got {value!r}")
    if value < lo:
        raise ConfigError(f"{where}.{key}", f"must be at least {lo:g}, got {value}")
    return float(value)


def _file(raw: Mapping[str, Any], key: str, dotted: str, base: Path) -> Path | None:
    value = raw.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str | Path):
        raise ConfigError(dotted, "must be a file path")
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = (base / path).resolve()
    if not path.is_file():
        raise ConfigError(dotted, f"file not found: {path}")
    return path
