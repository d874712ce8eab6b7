"""What Transit signing costs per mint, against a real OpenBao dev server: the figures of
docs/performance.md ("Vault Transit vs local key"). Skipped unless BROKER_BENCH=1:

    BROKER_BENCH=1 .venv/bin/pytest tests/integration/test_vault_perf.py -s -p no:randomly

Measures, in one process (no gRPC, so that the difference is the signature):
- the signature alone: local key, Transit via the broker's path (``sign``: http.client in
  the Vault threads, concurrent requests batched), and Transit via hvac (requests), 1 and 16 in
  flight;
- a whole core mint (``Broker.request_credential``: policy, sign, store) with each provider.
"""

from __future__ import annotations

import asyncio
import base64
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from broker.adapters.vault.transit import TransitKeyProvider
from broker.core.canonical import args_sha256
from broker.core.requests import BeginTask, CredentialRequest
from broker.core.spiffe import identity_from_pem
from tests.integration.conftest import Running, start_broker
from tests.support.openbao import OpenBao, enable_engine, start_openbao, token_auth, vault_section

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("BROKER_BENCH") != "1", reason="a benchmark: set BROKER_BENCH=1 to run it"
    ),
]

SECONDS = 2.0
RUNS = 3
QUOTAS = {"quotas.per_task": 1_000_000, "quotas.per_agent": 1_000_000}


async def rate(op: Callable[[], Awaitable[object]], in_flight: int) -> tuple[float, float]:
    """Operations per second and median latency (ms) over SECONDS, ``in_flight`` at a time."""
    latencies: list[float] = []
    stop = time.perf_counter() + SECONDS

    async def worker() -> None:
        while time.perf_counter() < stop:
            t = time.perf_counter()
            await op()
            latencies.append(time.perf_counter() - t)

    for _ in range(20):  # warm up connections and caches
        await op()
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return len(latencies) / (time.perf_counter() - start), statistics.median(latencies) * 1e3


async def best(op: Callable[[], Awaitable[object]], in_flight: int) -> str:
    runs = sorted([await rate(op, in_flight) for _ in range(RUNS)])
    per_s, p50 = runs[len(runs) // 2]
    return f"{per_s:8.0f}/s  p50 {p50:6.2f} ms  ({1e6 / per_s:7.0f} us/op)"


async def test_transit_vs_local_cost(pki: Path, tmp_path: Path) -> None:
    bao: OpenBao = start_openbao(tmp_path / "openbao")
    results: list[str] = []
    try:
        with bao.admin() as client:
            enable_engine(client, "transit", "transit")
        local = await start_broker(pki, **QUOTAS)
        transit = await start_broker(
            pki,
            **QUOTAS,
            vault=vault_section(bao.addr, token_auth(bao, tmp_path), transit={"key": "bench"}),
        )
        try:
            results += await measure(pki, bao, local, transit)
        finally:
            await local.close()
            await transit.close()
    finally:
        bao.stop()
    print("\n" + "\n".join(results))


async def measure(pki: Path, bao: OpenBao, local: Running, transit: Running) -> list[str]:
    provider = transit.broker.keys
    assert isinstance(provider, TransitKeyProvider)
    data = b"x" * 600  # about the signing input of a task token
    out: list[str] = []

    async def local_sign() -> bytes:
        return await local.broker.keys.sign(local.broker.keys.active_kid(), data)

    async def transit_sign() -> bytes:
        return await provider.sign(provider.active_kid(), data)

    hvac_client = bao.client()
    version = provider.versions()[provider.active_kid()]

    def hvac_sign_blocking() -> object:
        return hvac_client.secrets.transit.sign_data(
            "bench",
            hash_input=base64.b64encode(data).decode(),
            key_version=version,
            marshaling_algorithm="jws",
        )

    async def hvac_sign() -> object:
        return await asyncio.to_thread(hvac_sign_blocking)

    peer = identity_from_pem((pki / "agent-demo.crt").read_bytes(), "dev.local")

    def minter(running: Running) -> Callable[[], Awaitable[object]]:
        """Mints; every 50 a new task and the clock moved past the credentials' expiry, so the
        in-memory store's quota scans stay small, as they are with a real mix of traffic."""
        state: dict[str, object] = {"n": 0}

        async def mint() -> object:
            n = int(state["n"])  # type: ignore[call-overload]
            state["n"] = n + 1
            if n % 50 == 0:
                running.clock.advance(121)
                task = await running.broker.begin_task(peer, BeginTask("bench"))
                state["task"] = task.task_id
            return await running.broker.request_credential(
                peer,
                CredentialRequest(
                    task_id=str(state["task"]),
                    server="repo",
                    tool="read_file",
                    args_sha256=args_sha256({"path": "README.md"}),
                ),
            )

        return mint

    try:
        for name, op in (
            ("sign, local P-256", local_sign),
            ("sign, Transit (broker path)", transit_sign),
            ("sign, Transit via hvac/requests", hvac_sign),
            ("mint, local key", minter(local)),
            ("mint, Transit", minter(transit)),
        ):
            for in_flight in (1, 16):
                out.append(f"{name:34s} {in_flight:2d} in flight: {await best(op, in_flight)}")
    finally:
        hvac_client.adapter.close()
    return out
