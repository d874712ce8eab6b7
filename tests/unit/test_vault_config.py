"""The vault: config section, the registry's secret: sources, and the secret value type."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest

from broker.adapters.vault.config import AuthMethod, parse_vault_config
from broker.core.errors import ConfigError
from broker.core.model import Taint
from broker.core.registry import parse_registry
from broker.core.requests import Verified
from broker.core.secret import IssuedSecret, SecretData, SecretKind, parse_secret_source

# -- the secret value type ------------------------------------------------------------------------


def test_secret_data_never_prints() -> None:
    data = SecretData({"password": "hunter2-xyz"})
    issued = IssuedSecret(data, "database/creds/ro/abc", 10.0, "database/creds/ro")
    verified = Verified("t", "a", "s", "tool", 2, Taint.CLEAN, "j", 10.0, secret=issued)
    for text in (repr(data), str(data), f"{data}", f"{data!r}", repr(issued), repr(verified)):
        assert "hunter2" not in text
    assert repr(data) == "[secure]"
    assert data.fields == ("password",) and data.reveal() == {"password": "hunter2-xyz"}
    with pytest.raises(TypeError):
        pickle.dumps(data)


# -- registry secret: ----------------------------------------------------------------------------


def test_secret_sources_parse() -> None:
    kv = parse_secret_source({"type": "kv", "path": "app/x", "fields": ["a", "b"]}, "k")
    assert (kv.kind, kv.mount, kv.path, kv.fields) == (SecretKind.KV, "secret", "app/x", ("a", "b"))
    assert kv.describe == "kv:secret/app/x"
    db = parse_secret_source({"type": "dynamic", "role": "ro"}, "k")
    assert (db.kind, db.mount, db.role, db.describe) == (
        SecretKind.DYNAMIC,
        "database",
        "ro",
        "database/creds/ro",
    )


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("kv", "k"),
        ({"type": "vault"}, "k.type"),
        ({"type": "kv"}, "k.path"),
        ({"type": "kv", "path": "a/../b"}, "k.path"),
        ({"type": "kv", "path": "/a"}, "k.path"),
        ({"type": "kv", "path": "a", "fields": "x"}, "k.fields"),
        ({"type": "kv", "path": "a", "fields": ["x", "x"]}, "k.fields[1]"),
        ({"type": "kv", "path": "a", "role": "r"}, "k.role"),
        ({"type": "dynamic"}, "k.role"),
        ({"type": "dynamic", "role": "r", "path": "p"}, "k.path"),
        ({"type": "dynamic", "role": "r", "mount": "a b"}, "k.mount"),
        ({"type": "dynamic", "role": "r", "ttl": 5}, "k.ttl"),
    ],
)
def test_bad_secret_sources_name_the_key(raw: Any, key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_secret_source(raw, "k")
    assert exc.value.key == key


def _registry(secret: object) -> dict[str, Any]:
    return {
        "servers": [
            {
                "spiffe_id": "spiffe://dev.local/mcp/secrets",
                "tier": 2,
                "content_trust": "trusted",
                "tools": {"read": {"risk": "secret", "secret": secret}, "plain": {"risk": "read"}},
            }
        ]
    }


def test_a_tool_carries_its_secret_source() -> None:
    registry = parse_registry(_registry({"type": "dynamic", "role": "ro"}), "dev.local")
    server = registry.server("secrets")
    assert server.tools["read"].secret is not None
    assert server.tools["read"].secret.role == "ro"
    assert server.tools["plain"].secret is None


def test_a_bad_secret_in_the_registry_names_its_path() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_registry(_registry({"type": "kv"}), "dev.local")
    assert exc.value.key == "servers[0].tools.read.secret.path"


# -- vault: ----------------------------------------------------------------------------------------


def test_vault_config_defaults(tmp_path: Path) -> None:
    cfg = parse_vault_config(
        {"addr": "http://127.0.0.1:8200/", "auth": {"method": "token"}}, tmp_path
    )
    assert cfg.addr == "http://127.0.0.1:8200" and cfg.auth.method is AuthMethod.TOKEN
    assert cfg.transit is None and cfg.timeout == 2.0 and cfg.leases.retry_max == 60.0


def test_vault_config_full(tmp_path: Path) -> None:
    for name in ("ca.pem", "c.crt", "c.key"):
        (tmp_path / name).write_text("x")
    cfg = parse_vault_config(
        {
            "addr": "https://vault:8200",
            "ca_cert": "ca.pem",
            "auth": {"method": "cert", "cert": "c.crt", "key": "c.key", "role": "broker"},
            "transit": {"key": "k", "activation_delay_seconds": 30, "trim": False},
            "leases": {"retry_initial_seconds": 2, "retry_max_seconds": 1},
        },
        tmp_path,
    )
    assert cfg.ca_cert == tmp_path / "ca.pem" and cfg.auth.mount == "cert"
    assert cfg.transit is not None and cfg.transit.key == "k" and cfg.transit.trim is False
    assert cfg.leases.retry_max == 2  # never below the first retry


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"auth": {"method": "token"}}, "vault.addr"),
        ({"addr": "vault:8200", "auth": {"method": "token"}}, "vault.addr"),
        ({"addr": "http://v:1"}, "vault.auth"),
        ({"addr": "http://v:1", "auth": {"method": "ldap"}}, "vault.auth.method"),
        ({"addr": "http://v:1", "auth": {"method": "token", "role_id": "x"}}, "vault.auth.role_id"),
        ({"addr": "http://v:1", "auth": {"method": "approle"}}, "vault.auth.role_id"),
        ({"addr": "http://v:1", "auth": {"method": "cert"}}, "vault.auth.method"),
        ({"addr": "https://v:1", "auth": {"method": "cert"}}, "vault.auth.cert"),
        (
            {"addr": "http://v:1", "auth": {"method": "token", "token_file": "nope"}},
            "vault.auth.token_file",
        ),
        (
            {"addr": "http://v:1", "auth": {"method": "token"}, "transit": {"key": "a/b"}},
            "vault.transit.key",
        ),
        (
            {"addr": "http://v:1", "auth": {"method": "token"}, "transit": {"trim": "yes"}},
            "vault.transit.trim",
        ),
        (
            {"addr": "http://v:1", "auth": {"method": "token"}, "timeout_seconds": 0},
            "vault.timeout_seconds",
        ),
        ({"addr": "http://v:1", "auth": {"method": "token"}, "extra": 1}, "vault.extra"),
    ],
)
def test_bad_vault_config_names_the_key(section: dict[str, Any], key: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_vault_config(section, tmp_path)
    assert exc.value.key == key


def test_the_broker_config_reads_the_vault_section(tmp_path: Path) -> None:
    from broker.adapters.config import load_config

    root = Path(__file__).resolve().parents[2] / "examples" / "dev"
    for name in ("c.crt", "c.key", "ca.crt"):
        (tmp_path / name).write_text("x")
    config = load_config(
        None,
        env={"BROKER_VAULT_ADDR": "http://127.0.0.1:8200"},
        overrides={
            "trust_domain": "dev.local",
            "registry": str(root / "registry.yaml"),
            "policies": str(root / "policies"),
            "tls.cert": str(tmp_path / "c.crt"),
            "tls.key": str(tmp_path / "c.key"),
            "tls.bundle": str(tmp_path / "ca.crt"),
            "vault.auth": {"method": "token"},
        },
    )
    assert config.vault is not None and config.vault.addr == "http://127.0.0.1:8200"
