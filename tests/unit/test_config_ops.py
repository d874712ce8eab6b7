"""The operations settings of the config: the metrics listener and the log format, from the file
and from the environment (where an empty BROKER_METRICS_LISTEN turns the listener off)."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.adapters.config import load_config
from broker.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
DEV = ROOT / "examples" / "dev" / "broker.yaml"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    for name in ("c", "k", "b"):
        (tmp_path / name).write_text("x")
    return {
        "BROKER_TLS_CERT": str(tmp_path / "c"),
        "BROKER_TLS_KEY": str(tmp_path / "k"),
        "BROKER_TLS_BUNDLE": str(tmp_path / "b"),
        **extra,
    }


def test_the_dev_config_serves_metrics_on_9464_and_the_environment_overrides(
    tmp_path: Path,
) -> None:
    assert load_config(DEV, env=_env(tmp_path)).metrics_listen == "127.0.0.1:9464"
    moved = _env(tmp_path, BROKER_METRICS_LISTEN="0.0.0.0:9100")
    assert load_config(DEV, env=moved).metrics_listen == "0.0.0.0:9100"
    off = _env(tmp_path, BROKER_METRICS_LISTEN="")
    assert load_config(DEV, env=off).metrics_listen == ""


def test_log_format(tmp_path: Path) -> None:
    assert load_config(DEV, env=_env(tmp_path)).log_format == "text"
    assert load_config(DEV, env=_env(tmp_path, BROKER_LOG_FORMAT="json")).log_format == "json"
    with pytest.raises(ConfigError) as exc:
        load_config(DEV, env=_env(tmp_path, BROKER_LOG_FORMAT="xml"))
    assert exc.value.key == "log_format"


def test_a_bad_metrics_address_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(DEV, env=_env(tmp_path, BROKER_METRICS_LISTEN="9464"))
    assert exc.value.key == "metrics.listen"
