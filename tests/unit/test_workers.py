"""How many processes `broker serve` runs, and the `workers` setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.adapters.config import Config, TlsConfig, load_config
from broker.core.errors import ConfigError
from broker.rpc.workers import cgroup_cpu_limit, resolve_workers, usable_cores


def _config(store: str, workers: int | None) -> Config:
    tls = TlsConfig(cert=Path("c"), key=Path("k"), bundle=Path("b"))
    return Config(
        listen="127.0.0.1:0",
        trust_domain="dev.local",
        tls=tls,
        registry=Path("r"),
        policies=Path("p"),
        store=store,
        workers=workers,
    )


def test_default_is_every_core_with_a_shared_store() -> None:
    assert resolve_workers(_config("redis://localhost:6379", None)) == usable_cores()
    assert resolve_workers(_config("redis-cluster://a:1,b:2", None)) == usable_cores()


def test_default_is_one_with_the_memory_store() -> None:
    assert resolve_workers(_config("memory://", None)) == 1
    assert resolve_workers(_config("memory://", 1)) == 1


def test_explicit_count_is_kept() -> None:
    assert resolve_workers(_config("redis://localhost", 3)) == 3


def test_memory_store_refuses_several_workers() -> None:
    with pytest.raises(ConfigError) as exc:
        resolve_workers(_config("memory://", 2))
    assert exc.value.key == "workers"
    assert "memory://" in exc.value.message and "--workers 1" in exc.value.message


def _load(tmp_path: Path, **over: object) -> Config:
    for name in ("c", "k", "b", "r"):
        (tmp_path / name).write_text("x")
    (tmp_path / "p").mkdir(exist_ok=True)
    base: dict[str, object] = {
        "trust_domain": "dev.local",
        "registry": str(tmp_path / "r"),
        "policies": str(tmp_path / "p"),
        "tls.cert": str(tmp_path / "c"),
        "tls.key": str(tmp_path / "k"),
        "tls.bundle": str(tmp_path / "b"),
    }
    return load_config(None, env={}, overrides={**base, **over})


@pytest.mark.parametrize(("value", "expected"), [(None, None), ("auto", None), (4, 4), ("2", 2)])
def test_workers_setting(tmp_path: Path, value: object, expected: int | None) -> None:
    assert _load(tmp_path, workers=value).workers == expected


@pytest.mark.parametrize("value", [0, -1, 1.5, "many"])
def test_bad_workers_setting_names_the_key(tmp_path: Path, value: object) -> None:
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, workers=value)
    assert exc.value.key == "workers"


def test_workers_from_the_environment(tmp_path: Path) -> None:
    for name in ("c", "k", "b", "r"):
        (tmp_path / name).write_text("x")
    (tmp_path / "p").mkdir()
    env = {
        "BROKER_TRUST_DOMAIN": "dev.local",
        "BROKER_REGISTRY": str(tmp_path / "r"),
        "BROKER_POLICIES": str(tmp_path / "p"),
        "BROKER_TLS_CERT": str(tmp_path / "c"),
        "BROKER_TLS_KEY": str(tmp_path / "k"),
        "BROKER_TLS_BUNDLE": str(tmp_path / "b"),
        "BROKER_WORKERS": "3",
    }
    assert load_config(None, env=env).workers == 3


@pytest.mark.parametrize(
    ("files", "limit"),
    [
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu/cpu.cfs_quota_us": "200000", "cpu/cpu.cfs_period_us": "100000"}, 2.0),
        ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None),
        ({}, None),
    ],
)
def test_cgroup_cpu_limit(tmp_path: Path, files: dict[str, str], limit: float | None) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_limit(tmp_path) == limit


def test_a_container_cpu_limit_caps_the_default(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("50000 100000")  # half a core: one worker
    assert usable_cores(tmp_path) == 1
