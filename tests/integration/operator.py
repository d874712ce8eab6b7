"""Operator-side helpers for integration tests: the real `broker` click commands against the
in-process broker (run in a worker thread, since the server lives on the test's event loop), and
an AdminService client over the generated stubs."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from click.testing import CliRunner

from broker._proto.broker.v1 import admin_pb2_grpc
from broker.cli.main import cli
from tests.integration.conftest import Running


@dataclass
class CliResult:
    code: int
    out: str  # stdout
    err: str  # stderr

    def json(self) -> Any:
        return json.loads(self.out)


async def broker_cli(running: Running, *args: str, identity: str = "operator-admin") -> CliResult:
    """``broker --addr ... --ca ... --cert ... --key ... ARGS`` against ``running``."""
    pki = running.pki
    argv = [
        "--addr",
        f"127.0.0.1:{running.port}",
        "--ca",
        str(pki / "ca.crt"),
        "--cert",
        str(pki / f"{identity}.crt"),
        "--key",
        str(pki / f"{identity}.key"),
        *args,
    ]
    result = await asyncio.to_thread(CliRunner().invoke, cli, argv, catch_exceptions=False)
    return CliResult(result.exit_code, result.stdout, result.stderr)


def admin(running: Running) -> admin_pb2_grpc.AdminServiceStub:
    return admin_pb2_grpc.AdminServiceStub(running.channel("operator-admin"))  # type: ignore[no-untyped-call]
