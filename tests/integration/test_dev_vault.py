"""Issue 18 items 6 and 7: `make run-vault`'s launcher (tools/dev_vault.py) starts a real
OpenBao dev server and the dev broker with the examples/dev/vault.yaml overlay, nothing else
configured; the broker signs with Transit and `broker keys list` shows the Transit version of
each kid; stopping the launcher stops both."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from broker._proto.broker.v1 import admin_pb2, admin_pb2_grpc
from broker.cli.main import cli
from tests.integration.conftest import DEV, channel
from tests.redis_procs import free_port
from tests.support.serve import serve_env, serving

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


async def test_run_vault_signs_with_transit_and_shows_the_versions(pki: Path) -> None:
    port = free_port()
    launcher = [sys.executable, str(ROOT / "tools" / "dev_vault.py"), "--port", str(port), "--"]
    env = serve_env(pki)
    overlay = str(DEV / "vault.yaml")
    with serving(DEV / "broker.yaml", env, "--overlay", overlay, wrapper=launcher) as served:
        assert _listening(port)
        async with channel(served.port, pki, "operator-admin") as ch:
            stub = admin_pb2_grpc.AdminServiceStub(ch)  # type: ignore[no-untyped-call]
            keys = (await stub.ListSigningKeys(admin_pb2.ListSigningKeysRequest())).keys
            assert [(k.active, k.transit_version) for k in keys] == [(True, 1)]
            await stub.RotateSigningKey(admin_pb2.RotateSigningKeyRequest())
        result = await _cli(served.port, pki, "keys", "list")
        assert result.exit_code == 0, result.output
        header, *rows = result.output.splitlines()
        assert header.split()[:3] == ["KID", "TRANSIT", "ALG"]
        assert sorted(row.split()[1] for row in rows) == ["v1", "v2"]
    assert served.proc.returncode == 0
    assert not _listening(port), "OpenBao outlived the launcher"


async def _cli(port: int, pki: Path, *args: str) -> Result:
    import asyncio

    argv = ["--addr", f"127.0.0.1:{port}", "--ca", str(pki / "ca.crt")]
    argv += ["--cert", str(pki / "operator-admin.crt"), "--key", str(pki / "operator-admin.key")]
    return await asyncio.to_thread(CliRunner().invoke, cli, [*argv, *args])
