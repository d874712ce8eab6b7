"""`broker gateway` in tests: its config, its command line, a registry that knows the npm servers.

The gateway always runs as a real subprocess (the `broker` console script), as an assistant
would start it: over stdio for the MCP Python SDK's ``stdio_client``, or with ``--listen`` for
HTTP clients (``start_http_gateway``). Its stderr (the decision lines) is kept for assertions.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from broker.adapters.pki import issue

ROOT = Path(__file__).resolve().parents[2]
DEV_REGISTRY = ROOT / "examples" / "dev" / "registry.yaml"
BROKER = str(Path(sys.executable).parent / "broker")

# What the gateway tests need the registry to know (added when the dev registry lacks them).
FILES_TOOLS = {
    **{
        t: {"risk": "read"}
        for t in (
            "read_file",
            "read_text_file",
            "read_media_file",
            "read_multiple_files",
            "list_directory",
            "list_directory_with_sizes",
            "directory_tree",
            "search_files",
            "get_file_info",
            "list_allowed_directories",
        )
    },
    **{t: {"risk": "write"} for t in ("write_file", "edit_file", "create_directory", "move_file")},
}
EXTRA_SERVERS: list[dict[str, Any]] = [
    {
        "spiffe_id": "spiffe://dev.local/mcp/files",
        "name": "files",
        "tier": 1,
        "content_trust": "trusted",
        "tools": FILES_TOOLS,
    },
    {
        "spiffe_id": "spiffe://dev.local/mcp/everything",
        "name": "everything",
        "tier": 0,
        "content_trust": "untrusted",
        "tools": {
            "echo": {"risk": "read"},
            "get-sum": {"risk": "read"},
            "get-tiny-image": {"risk": "read"},
            "get-env": {"risk": "read"},
        },
    },
    # A production stand-in: server-everything's get-sum and toggle-simulated-logging as tier 3
    # tools (every call needs an operator's approval; a suspect task may not write at all).
    # Reached unguarded, so the gateway itself reports what it returns.
    {
        "spiffe_id": "spiffe://dev.local/mcp/ops",
        "name": "ops",
        "tier": 3,
        "content_trust": "trusted",
        "tools": {"get-sum": {"risk": "read"}, "toggle-simulated-logging": {"risk": "write"}},
    },
]


def write_registry(directory: Path) -> Path:
    """The dev registry plus EXTRA_SERVERS it does not have yet."""
    doc = yaml.safe_load(DEV_REGISTRY.read_text())
    names = {s.get("name") or s["spiffe_id"].rsplit("/", 1)[1] for s in doc["servers"]}
    doc["servers"].extend(s for s in EXTRA_SERVERS if s["name"] not in names)
    path = directory / "registry.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def ensure_identity(pki: Path, name: str) -> None:
    """An X.509-SVID ``NAME.crt``/``NAME.key`` in the test PKI (``mcp-NAME``: spiffe://dev.local/mcp/NAME)."""
    if not (pki / f"{name}.crt").exists():
        role, _, rest = name.partition("-")
        issue(pki, f"spiffe://dev.local/{role}/{rest}", pki / name)


def write_config(directory: Path, servers: Mapping[str, Mapping[str, Any]], **keys: Any) -> Path:
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump({"servers": dict(servers), **keys}, sort_keys=False))
    return path


def gateway_argv(
    port: int, pki: Path, config: Path, *, agent: str = "agent-demo", listen: str | None = None
) -> list[str]:
    argv = [
        BROKER,
        "--addr",
        f"127.0.0.1:{port}",
        "--ca",
        str(pki / "ca.crt"),
        "--cert",
        str(pki / f"{agent}.crt"),
        "--key",
        str(pki / f"{agent}.key"),
        "gateway",
        "--config",
        str(config),
    ]
    return [*argv, "--listen", listen] if listen else argv


def gateway_env(**extra: str) -> dict[str, str]:
    """The environment of a gateway subprocess: no BROKER_* from the test runner's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    return {**env, **extra}


@dataclass
class StderrLog:
    """A subprocess's stderr, read as it comes (decision lines, warnings)."""

    lines: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def text(self) -> str:
        return "\n".join(self.lines)

    async def follow(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.lines.append(line.decode(errors="replace").rstrip("\n"))
            self.changed.set()

    async def wait_for(self, pattern: str, within: float = 10.0) -> re.Match[str]:
        regex = re.compile(pattern)
        async with asyncio.timeout(within):
            while True:
                for line in self.lines:
                    m = regex.search(line)
                    if m:
                        return m
                self.changed.clear()
                await self.changed.wait()


@dataclass
class HttpGateway:
    proc: asyncio.subprocess.Process
    url: str
    log: StderrLog

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)


@contextlib.asynccontextmanager
async def start_http_gateway(argv: list[str], env: Mapping[str, str]) -> AsyncIterator[HttpGateway]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env),
    )
    assert proc.stderr is not None
    log = StderrLog()
    reader = asyncio.get_running_loop().create_task(log.follow(proc.stderr))
    try:
        m = await log.wait_for(r"listening on (http://\S+/mcp)", within=15)
        yield HttpGateway(proc, m.group(1), log)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
