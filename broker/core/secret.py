"""Downstream secrets: the value type that never prints, and where a tool's secret comes from.

Pure: no I/O. The registry attaches a ``SecretSource`` to a tool (``secret:`` in the registry
YAML); when an MCP server's VerifyCredential succeeds for that tool, the broker reads the source
in Vault and hands the server an ``IssuedSecret`` for that one call.

Registry syntax (one of)::

    secret: {type: kv, mount: secret, path: app/search, fields: [api_key]}   # KV version 2
    secret: {type: dynamic, mount: database, role: readonly}                 # MOUNT/creds/ROLE

``kv``: the latest version of a KV v2 secret (all fields, or only ``fields``); a static value,
so it has no lease and cannot be revoked: rotate it in Vault. ``dynamic``: a lease read from
``MOUNT/creds/ROLE`` (the database engine, and the same shape in rabbitmq, consul, nomad...), which
the broker revokes when the credential expires, when the task ends or is revoked.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import NoReturn

from broker.core.errors import ConfigError

SECURE = "[secure]"

_SEGMENT = re.compile(r"[A-Za-z0-9_.-]+")
_FIELD = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_KEYS = ("type", "mount", "path", "fields", "role")


class SecretData:
    """The values of one downstream secret (field name -> value).

    ``repr`` and ``str`` print ``[secure]``, it refuses to be pickled, and ``reveal()`` is the one
    way to the values: call it only where they go on the wire to the MCP server.
    """

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values: Mapping[str, str] = MappingProxyType(dict(values))

    def reveal(self) -> Mapping[str, str]:
        """The values themselves. Never log them, never put them in an error or audit record."""
        return self._values

    @property
    def fields(self) -> tuple[str, ...]:
        """The field names (not secret), sorted."""
        return tuple(sorted(self._values))

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return SECURE

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("SecretData is never pickled")


class SecretKind(StrEnum):
    KV = "kv"
    DYNAMIC = "dynamic"


@dataclass(frozen=True, slots=True)
class SecretSource:
    """Where a tool's secret comes from (registry ``secret:``). Paths are relative to ``mount``."""

    kind: SecretKind
    mount: str
    path: str = ""  # kv: the secret's path under the KV v2 mount
    fields: tuple[str, ...] = ()  # kv: the fields to hand out; () = all
    role: str = ""  # dynamic: the role read at MOUNT/creds/ROLE

    @property
    def describe(self) -> str:
        """A short, non-secret name of the source for logs and audit records."""
        if self.kind is SecretKind.KV:
            return f"kv:{self.mount}/{self.path}"
        return f"{self.mount}/creds/{self.role}"


@dataclass(frozen=True, slots=True)
class IssuedSecret:
    """A secret handed to an MCP server for one verified call.

    ``lease_id`` is empty for a KV secret (static, nothing to revoke). ``expires_at`` is never
    later than the credential's exp: the broker revokes a lease at that time if Vault issued it
    for longer.
    """

    data: SecretData
    lease_id: str
    expires_at: float
    source: str


def parse_secret_source(raw: object, key: str) -> SecretSource:
    """Validate a tool's ``secret:`` mapping; ConfigError names the offending key."""
    if not isinstance(raw, dict):
        raise ConfigError(key, "must be a mapping such as {type: kv, mount: secret, path: app/x}")
    for k in raw:
        if k not in _KEYS:
            raise ConfigError(f"{key}.{k}", f"unknown key; allowed: {', '.join(_KEYS)}")
    kinds = ", ".join(k.value for k in SecretKind)
    try:
        kind = SecretKind(str(raw.get("type")))
    except ValueError:
        raise ConfigError(f"{key}.type", f"{raw.get('type')!r} is not one of: {kinds}") from None
    default_mount = "secret" if kind is SecretKind.KV else "database"
    mount = _path(raw.get("mount", default_mount), f"{key}.mount")
    if kind is SecretKind.KV:
        if "role" in raw:
            raise ConfigError(f"{key}.role", "only for type dynamic; a kv secret has a path")
        path = _path(raw.get("path"), f"{key}.path")
        fields = _fields(raw.get("fields", []), f"{key}.fields")
        return SecretSource(kind, mount, path=path, fields=fields)
    for only_kv in ("path", "fields"):
        if only_kv in raw:
            raise ConfigError(f"{key}.{only_kv}", "only for type kv; a dynamic secret has a role")
    role = raw.get("role")
    if not isinstance(role, str) or not _SEGMENT.fullmatch(role) or role in (".", ".."):
        raise ConfigError(f"{key}.role", "missing or invalid: letters, digits, '_', '-', '.'")
    return SecretSource(kind, mount, role=role)


def _path(value: object, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(key, "missing or not a string, e.g. app/search")
    segments = value.split("/")
    if not all(_SEGMENT.fullmatch(s) and s not in (".", "..") for s in segments):
        raise ConfigError(
            key, f"{value!r}: '/'-separated segments of letters, digits, '_', '-', '.'"
        )
    return value


def _fields(value: object, key: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigError(key, "must be a list of field names")
    fields: list[str] = []
    for i, name in enumerate(value):
        if not isinstance(name, str) or not _FIELD.fullmatch(name):
            raise ConfigError(f"{key}[{i}]", "a field name: letters, digits, '_', '-', '.'")
        if name in fields:
            raise ConfigError(f"{key}[{i}]", f"duplicate field {name!r}")
        fields.append(name)
    return tuple(fields)
