"""`pip install 'broker[client]'` must be enough for MCP servers and agents: the verifiers,
ToolGuard, `broker guard`, `broker gateway` and the agent SDK run without the broker server's
dependencies (cedarpy, redis). Checked two ways: what pyproject.toml declares, and a process in
which importing cedarpy, redis or hvac fails, as it would where they are not installed."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVER_ONLY = ("cedarpy", "redis", "hiredis", "hvac", "prometheus_client")


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_the_client_install_declares_no_server_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    client = _names(project["dependencies"]) | _names(project["optional-dependencies"]["client"])
    assert not client & set(SERVER_ONLY)
    assert {"cedarpy", "redis"} <= _names(project["optional-dependencies"]["server"])


_PROBE = """
import importlib, pkgutil, sys
for name in {blocked!r}:
    sys.modules[name] = None  # import fails with ModuleNotFoundError, as if not installed
import broker.client
for info in pkgutil.walk_packages(broker.client.__path__, "broker.client."):
    importlib.import_module(info.name)
from click.testing import CliRunner
from broker.cli.main import cli
runner = CliRunner()
for args in (["--help"], ["token", "--help"], ["serve"], ["policy", "validate"]):
    result = runner.invoke(cli, args)
    print("EXIT", " ".join(args), result.exit_code, result.output.replace(chr(10), " ")[:300])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
print("IMPORTED", len(sys.modules))
"""


def test_client_modules_and_cli_run_without_server_dependencies() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(blocked=SERVER_ONLY)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    lines = {
        line.split(" ", 2)[1]: line for line in out.stdout.splitlines() if line.startswith("EXIT")
    }
    assert " 0 " in lines["--help"]
    assert " 0 " in lines["token"]
    # A server command says what to install instead of a traceback.
    for command in ("serve", "policy"):
        assert " 1 " in lines[command] and "pip install 'broker[server]'" in lines[command]
