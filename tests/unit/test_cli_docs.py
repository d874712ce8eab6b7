"""docs/cli.md is generated from the real commands (tools/gen_cli_docs.py) and kept current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_cli_docs_are_current() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen_cli_docs.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_operator_command_is_documented() -> None:
    text = (ROOT / "docs" / "cli.md").read_text()
    for command in (
        "broker tasks list",
        "broker tasks show",
        "broker tasks revoke",
        "broker agents revoke",
        "broker servers revoke",
        "broker revoke",
        "broker approvals list",
        "broker approvals approve",
        "broker approvals deny",
        "broker audit tail",
        "broker audit verify",
        "broker audit export",
        "broker keys list",
        "broker keys rotate",
        "broker policy reload",
        "broker token inspect",
        "broker completion",
    ):
        assert f"### `{command}`" in text, command
