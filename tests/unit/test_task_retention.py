"""tasks.retention_seconds: how long a task is kept past its expiry (default 600 s)."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.app.credentials import Limits
from broker.core.errors import ConfigError
from tests.unit.app.conftest import make_harness
from tests.unit.test_workers import _load


def test_default_and_setting(tmp_path: Path) -> None:
    assert _load(tmp_path).task_retention == 600
    assert _load(tmp_path, **{"tasks.retention_seconds": 30}).task_retention == 30


@pytest.mark.parametrize("value", [-1, "long"])
def test_a_bad_value_names_the_key(tmp_path: Path, value: object) -> None:
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, **{"tasks.retention_seconds": value})
    assert exc.value.key == "tasks.retention_seconds"


async def test_a_task_is_kept_for_the_retention_past_its_expiry() -> None:
    h = make_harness(limits=Limits(task_retention=30))
    task = await h.task(ttl_seconds=60)
    h.clock.advance(60 + 29)
    assert await h.store.list_tasks(now=h.clock.now()) == [task]
    h.clock.advance(2)
    assert await h.store.list_tasks(now=h.clock.now()) == []
