"""``make demo``: the whole story against ``make run``'s broker, narrated.

1. Uses the broker on ``BROKER_ADDR`` (default 127.0.0.1:7443) if one answers there; otherwise
   starts one (``broker serve --config examples/dev/broker.yaml``) and stops it at the end.
2. Starts the dev MCP servers (examples/mcp_servers.py, ports 8101-8104, ``DEMO_MCP_PORT``
   moves them), each verifying credentials offline with its own certificate.
3. Runs the agent (examples/agent_demo.py) through one task, step by step.
4. Starts `broker guard` in front of the npm server-filesystem (a scratch folder) and
   server-everything (``make node-deps`` installs them) and runs part two
   (examples/guard_demo.py): the same rules for servers nobody changed.
5. Runs an unmodified MCP client through `broker gateway` and two `broker guard`s in front of
   the npm servers (examples/gateway_demo.py).

Logs of what it started: .broker-dev/demo-broker.log, demo-mcp.log, demo-guard-*.log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from broker.client.sdk.channel import WorkloadCredentials, secure_channel  # noqa: E402
from examples.agent_demo import run_story, urls_from_port  # noqa: E402
from examples.gateway_demo import run_act as run_gateway_act  # noqa: E402
from examples.guard_demo import run_guard_story  # noqa: E402

NODE = ROOT / "node_modules" / "@modelcontextprotocol"

PKI = ROOT / ".broker-dev"
BIN = Path(sys.executable).parent


async def broker_answers(address: str, wait: float = 1.0) -> bool:
    creds = WorkloadCredentials.from_dev_dir(PKI, "agent-demo")
    channel = secure_channel(address, creds)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        resp = await stub.Check(health_pb2.HealthCheckRequest(), timeout=wait)
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.aio.AioRpcError:
        return False
    finally:
        await channel.close()


def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes] | subprocess.Popen[str], name: str) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    print(f"   stopped {name} (pid {proc.pid})")


@contextlib.asynccontextmanager
async def a_broker(address: str) -> AsyncIterator[None]:
    if await broker_answers(address):
        print(f"   using the broker already answering on {address} (make run)")
        yield
        return
    print(f"   no broker on {address}: starting one (log: .broker-dev/demo-broker.log)")
    proc = start(
        [
            str(BIN / "broker"),
            "serve",
            "--config",
            "examples/dev/broker.yaml",
            "--listen",
            address,
        ],
        PKI / "demo-broker.log",
    )
    try:
        deadline = time.monotonic() + 20
        while not await broker_answers(address, wait=0.5):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the broker did not start: see {PKI / 'demo-broker.log'}")
            await asyncio.sleep(0.2)
        yield
    finally:
        stop(proc, "the broker")


def spawn_servers(address: str, port: int, log: Path) -> subprocess.Popen[str]:
    with log.open("w") as err:
        return subprocess.Popen(
            [sys.executable, "examples/mcp_servers.py", "--broker", address, "--port", str(port)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )


@contextlib.asynccontextmanager
async def mcp_servers(address: str, port: int) -> AsyncIterator[None]:
    print(f"   starting the dev MCP servers on ports {port}-{port + 3} (log: demo-mcp.log)")
    log = PKI / "demo-mcp.log"
    proc = spawn_servers(address, port, log)
    try:
        assert proc.stdout is not None
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + 30
        while True:
            line = await asyncio.wait_for(
                loop.run_in_executor(None, proc.stdout.readline), deadline - time.monotonic()
            )
            if not line:
                raise SystemExit(f"the MCP servers did not start: see {log}")
            if line.strip() == "ready":
                break
            print(f"     {line.rstrip()}")
        yield
    finally:
        stop(proc, "the MCP servers")


@contextlib.asynccontextmanager
async def a_guard(address: str, name: str, upstream: list[str]) -> AsyncIterator[str]:
    """`broker guard` as mcp-NAME on a free port in front of ``upstream``; yields its URL."""
    log = PKI / f"demo-guard-{name}.log"
    args = [
        str(BIN / "broker"),
        "--addr",
        address,
        "--ca",
        str(PKI / "ca.crt"),
        "--cert",
        str(PKI / f"mcp-{name}.crt"),
        "--key",
        str(PKI / f"mcp-{name}.key"),
        "guard",
        "--listen",
        "127.0.0.1:0",
        "--",
        *upstream,
    ]
    proc = start(args, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            found = [ln for ln in log.read_text().splitlines() if "listening on " in ln]
            if found:
                url = found[0].rsplit("listening on ", 1)[1].strip()
                print(f"   broker guard for mcp-{name} on {url} (log: {log.name})")
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"broker guard for {name} did not start: see {log}")
            await asyncio.sleep(0.1)
        yield url
    finally:
        stop(proc, f"the {name} guard and its server")


@contextlib.asynccontextmanager
async def guards(address: str) -> AsyncIterator[dict[str, str]]:
    entry = NODE / "server-filesystem" / "dist" / "index.js"
    if not entry.exists():
        raise SystemExit("the npm MCP servers are missing: run `make node-deps`")
    scratch = PKI / "demo-files"
    scratch.mkdir(exist_ok=True)
    (scratch / "notes.md").write_text("# Notes\n- retry with exponential backoff\n")
    fs = ["node", str(entry), str(scratch)]
    everything = ["node", str(NODE / "server-everything" / "dist" / "index.js"), "stdio"]
    async with (
        a_guard(address, "files", fs) as files,
        a_guard(address, "everything", everything) as every,
    ):
        yield {"files": files, "everything": every}


async def main() -> None:
    address = os.environ.get("BROKER_ADDR", "127.0.0.1:7443")
    port = int(os.environ.get("DEMO_MCP_PORT", "8101"))
    started = time.monotonic()
    print("== 0. Setting up")
    async with a_broker(address):
        async with mcp_servers(address, port):
            await run_story(address, PKI, urls_from_port(port))
        print("\n== Setting up part two: broker guard in front of the npm servers")
        async with guards(address) as urls:
            await run_guard_story(address, PKI, urls)
        print("\n== 11. An unmodified MCP client (the MCP Python SDK's) through broker gateway")
        await run_gateway_act(address, PKI)
    print(f"\ndemo finished in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    asyncio.run(main())
