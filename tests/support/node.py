"""The npm MCP servers and the TypeScript SDK client, for tests (issues 11 and 12).

Installed by ``make node-deps`` (``npm ci`` from package-lock.json) into the repo's
``node_modules``; nothing is fetched at test time. What is here:

- ``filesystem_server_command(root)`` / ``everything_server_command()``: stdio commands of the real
  @modelcontextprotocol/server-filesystem and server-everything (give them to a guard, or to the
  MCP Python SDK's ``StdioServerParameters``).
- ``start_everything_http()``: server-everything over streamable HTTP on 127.0.0.1 and a free
  port (``.url`` ends in ``/mcp``); ``.stop()`` ends it. A context manager too.
- ``run_ts_client(script)``: runs tests/node/mcp_client.mjs (the official TypeScript SDK client)
  with a script dict and returns its parsed lines (``TsRun``); see that file for the script.

    run = await run_ts_client({"url": url, "steps": [
        {"op": "call_tool", "name": "echo", "arguments": {"message": "hi"},
         "headers": {"Authorization": f"Bearer {token}"}}]})
    assert run.connected and run.steps[0].text == "Echo: hi"

No node or no node_modules: ``NodeMissing``, saying what to run (tests fail with it, never skip).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
NODE_MODULES = ROOT / "node_modules"
NODE_DIR = ROOT / "tests" / "node"
CLIENT_SCRIPT = NODE_DIR / "mcp_client.mjs"
LOOPBACK_PRELOAD = NODE_DIR / "loopback.mjs"
FILESYSTEM_ENTRY = NODE_MODULES / "@modelcontextprotocol/server-filesystem/dist/index.js"
EVERYTHING_ENTRY = NODE_MODULES / "@modelcontextprotocol/server-everything/dist/index.js"
TS_SDK_DIR = NODE_MODULES / "@modelcontextprotocol/sdk"
START_TIMEOUT = 15.0


class NodeMissing(RuntimeError):
    """node or the npm packages are not installed; the message says how to install them."""


def node_binary() -> str:
    """The path of ``node``."""
    found = shutil.which("node")
    if found is None:
        raise NodeMissing(
            "node is not installed: run `make node-deps` (apt-get install nodejs npm)"
        )
    return found


def _require(path: Path) -> Path:
    if not path.exists():
        raise NodeMissing(f"{path.relative_to(ROOT)} is missing: run `make node-deps` (npm ci)")
    return path


def filesystem_server_command(*roots: Path | str) -> list[str]:
    """server-filesystem over stdio, allowed to touch ``roots`` (at least one) only."""
    if not roots:
        raise ValueError("server-filesystem needs at least one allowed directory")
    return [node_binary(), str(_require(FILESYSTEM_ENTRY)), *(str(r) for r in roots)]


def everything_server_command() -> list[str]:
    """server-everything over stdio."""
    return [node_binary(), str(_require(EVERYTHING_ENTRY)), "stdio"]


def everything_http_command() -> list[str]:
    """server-everything over streamable HTTP. It would listen on all interfaces on env PORT;
    the loopback preload binds it to 127.0.0.1 and prints ``LISTENING 127.0.0.1:PORT`` to stderr,
    so PORT=0 is fine."""
    return [
        node_binary(),
        "--import",
        LOOPBACK_PRELOAD.as_uri(),
        str(_require(EVERYTHING_ENTRY)),
        "streamableHttp",
    ]


@dataclass
class NodeServer:
    """A node MCP server on streamable HTTP at ``url``; its stderr is kept in ``stderr_lines``."""

    proc: subprocess.Popen[bytes]
    port: int
    stderr_lines: list[str] = field(default_factory=list)
    _drainer: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self._drainer is not None:
            self._drainer.join(timeout=5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def __enter__(self) -> NodeServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _drain(proc: subprocess.Popen[bytes], lines: list[str], ready: threading.Event) -> None:
    assert proc.stderr is not None
    for raw in proc.stderr:
        lines.append(raw.decode(errors="replace").rstrip("\n"))
        del lines[:-200]
        if lines[-1].startswith("LISTENING "):
            ready.set()
    ready.set()  # exited: the waiter sees why


def start_everything_http(env: Mapping[str, str] | None = None) -> NodeServer:
    """Start server-everything on streamable HTTP (127.0.0.1, a free port) and wait until it
    listens. Its stdout (a line per request) goes to /dev/null, its stderr to ``stderr_lines``."""
    proc = subprocess.Popen(
        everything_http_command(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {}), "PORT": "0"},
        cwd=ROOT,
    )
    lines: list[str] = []
    ready = threading.Event()
    drainer = threading.Thread(target=_drain, args=(proc, lines, ready), daemon=True)
    drainer.start()
    deadline = time.monotonic() + START_TIMEOUT
    while not ready.wait(0.05):
        if time.monotonic() > deadline:
            break
    listening = [line for line in lines if line.startswith("LISTENING ")]
    if not listening:
        NodeServer(proc, 0, lines, drainer).stop()
        raise RuntimeError("server-everything did not start: " + " | ".join(lines[-10:]))
    port = int(listening[-1].rsplit(":", 1)[1])
    return NodeServer(proc, port, lines, drainer)


@dataclass(frozen=True)
class TsStep:
    """One line of the TS client: the connection (``op`` "connect") or a step's outcome."""

    op: str
    ok: bool
    index: int = -1
    result: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] = field(default_factory=dict)

    @property
    def is_error(self) -> bool:
        """A tool result with isError (the call reached the server and failed there)."""
        return bool(self.result.get("isError"))

    @property
    def text(self) -> str:
        """The text contents of a tool result, joined by newlines."""
        return "\n".join(
            c.get("text", "") for c in self.result.get("content", []) if c.get("type") == "text"
        )

    @property
    def status(self) -> int | None:
        """The HTTP status when the server refused the request (401, 403, ...)."""
        value = self.error.get("status") if self.error.get("kind") == "http" else None
        return int(value) if value is not None else None

    @property
    def www_authenticate(self) -> str | None:
        value = self.error.get("www_authenticate")
        return str(value) if value is not None else None

    @property
    def body(self) -> Any:
        """The refused response's body (parsed when JSON, else text)."""
        return self.error.get("body")

    @property
    def code(self) -> int | None:
        """The JSON-RPC error code when the server answered with a JSON-RPC error."""
        value = self.error.get("code") if self.error.get("kind") == "jsonrpc" else None
        return int(value) if value is not None else None

    @property
    def message(self) -> str:
        return str(self.error.get("message", ""))


@dataclass
class TsRun:
    """All the lines of one run: ``connect``, then ``steps`` (none when connecting failed), and
    with ``"trace": true`` the HTTP exchanges in ``http`` (Authorization shown as a digest)."""

    connect: TsStep
    steps: list[TsStep]
    http: list[dict[str, Any]]
    stderr: str
    returncode: int

    @property
    def connected(self) -> bool:
        return self.connect.ok

    @property
    def protocol_version(self) -> str | None:
        value = self.connect.result.get("protocol_version")
        return str(value) if value is not None else None


def parse_ts_output(stdout: str, stderr: str = "", returncode: int = 0) -> TsRun:
    connect: TsStep | None = None
    steps: list[TsStep] = []
    http: list[dict[str, Any]] = []
    for line in stdout.splitlines():
        if not line.strip():
            continue
        obj = json.loads(line)
        kind = obj.get("type")
        if kind == "http":
            http.append(obj)
        elif kind == "connect":
            info = {
                k: obj.get(k) for k in ("server", "protocol_version", "session_id", "capabilities")
            }
            connect = TsStep("connect", bool(obj["ok"]), result=info, error=obj.get("error") or {})
        elif kind == "step":
            steps.append(
                TsStep(
                    obj["op"],
                    bool(obj["ok"]),
                    int(obj["index"]),
                    obj.get("result") or {},
                    obj.get("error") or {},
                )
            )
    if connect is None:
        raise RuntimeError(
            f"TS client printed no connect line (exit {returncode}): {stderr[-2000:]}"
        )
    return TsRun(connect, steps, http, stderr, returncode)


async def run_ts_client(script: Mapping[str, Any], *, time_limit: float = 30.0) -> TsRun:
    """Run tests/node/mcp_client.mjs with ``script`` (paths may be ``Path``s) and parse its lines.
    Times out (kills node, raises ``TimeoutError``) after ``time_limit`` seconds."""
    _require(TS_SDK_DIR)
    proc = await asyncio.create_subprocess_exec(
        node_binary(),
        str(CLIENT_SCRIPT),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    payload = json.dumps(dict(script), default=str).encode()
    try:
        out, err = await asyncio.wait_for(proc.communicate(payload), time_limit)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    returncode = proc.returncode if proc.returncode is not None else -1
    return parse_ts_output(out.decode(), err.decode(errors="replace"), returncode)
