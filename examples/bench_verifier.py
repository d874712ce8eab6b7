"""What an MCP server pays per tool call to check a broker credential.

    .venv/bin/python examples/bench_verifier.py [-n 5000]

Measures (offline: CPU time of one thread, best of 7 interleaved rounds; the rest: wall time):
- ``verify_token`` alone (signature and claims: the floor, see PERF-NOTES.md);
- ``OfflineVerifier.verify`` (freshness, verify_token, revocations, single use);
- ``OfflineVerifier.authenticate`` (the HTTP layer's check: the same minus single use);
- ``OnlineVerifier.verify`` against a broker on this machine (VerifyCredential over mTLS; the
  broker runs in this process, so its CPU time is included);
- a whole guarded tool call from the agent SDK (credential from the broker, then an MCP call
  over streamable HTTP: discovery, call, listing) against the example docs server.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from broker.adapters.audit.sinks import MemorySink  # noqa: E402
from broker.adapters.config import load_config  # noqa: E402
from broker.adapters.keys import LocalKeyProvider  # noqa: E402
from broker.adapters.pki import ensure_dev_pki  # noqa: E402
from broker.adapters.store.memory import MemoryStore  # noqa: E402
from broker.app.audit import Auditor  # noqa: E402
from broker.client.sdk.channel import WorkloadCredentials  # noqa: E402
from broker.client.sdk.client import BrokerClient  # noqa: E402
from broker.client.sdk.mcp import McpTools  # noqa: E402
from broker.client.verifier import OfflineVerifier, OnlineVerifier, VerifierSettings  # noqa: E402
from broker.core.canonical import args_sha256  # noqa: E402
from broker.core.clock import SystemClock  # noqa: E402
from broker.core.model import RevocationEvent  # noqa: E402
from broker.core.tokens import AuthorizationDetail, TokenClaims, mint_token  # noqa: E402
from broker.core.tokens.verify import verify_token  # noqa: E402
from broker.rpc.app import BrokerServer, build_components  # noqa: E402
from examples.mcp_servers import run_servers  # noqa: E402

AUD = "spiffe://dev.local/mcp/docs"
ARGS = {"query": "retry policy", "limit": 5}
DIGEST = args_sha256(ARGS)


def tokens(provider: LocalKeyProvider, n: int) -> list[str]:
    now = int(time.time())
    out = []
    for i in range(n):
        claims = TokenClaims(
            iss="spiffe://dev.local/broker",
            sub="spiffe://dev.local/agent/demo",
            aud=AUD,
            iat=now,
            nbf=now,
            exp=now + 300,
            jti=f"t_{'A' * 22}.{i:022d}",
            task=f"t_{'A' * 22}",
            authorization_details=(
                AuthorizationDetail(
                    type="tool_call",
                    server=AUD,
                    tool="search_docs",
                    action="read",
                    args_sha256=DIGEST,
                ),
            ),
            cnf_x5t_s256="A" * 43,
            tier=0,
            taint="clean",
        )
        out.append(mint_token(claims, provider.blocking_signer()))
    return out


async def rate(
    fn: Callable[[str], Awaitable[Any]], batch: list[str], clock: Callable[[], float]
) -> float:
    """Microseconds per call over ``batch``, on ``clock``."""
    start = clock()
    for token in batch:
        await fn(token)
    return (clock() - start) / len(batch) * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=5000)
    args = parser.parse_args()
    n = args.n
    pki = Path(tempfile.mkdtemp(prefix="bench-pki-"))
    ensure_dev_pki(pki)
    provider = LocalKeyProvider(now=time.time())
    keys = provider.public_jwks()
    from broker.core.tokens import KeySet

    keyset = KeySet.from_jwks({"keys": keys})
    clock = SystemClock()

    async def raw(token: str) -> Any:
        return verify_token(
            token,
            keys=keyset,
            allowed_algs=frozenset({"ES256"}),
            issuer="spiffe://dev.local/broker",
            audience=AUD,
            now=clock.now(),
            tool="search_docs",
            args_sha256=DIGEST,
        )

    offline = OfflineVerifier(
        "127.0.0.1:1",
        credentials=WorkloadCredentials.from_dev_dir(pki, "mcp-docs"),
        settings=VerifierSettings(stale_after=3600),
    )
    offline.keys.keys = keyset
    offline.keys.fetched_at = offline.keys._attempted_at = time.monotonic()
    offline.apply(RevocationEvent("1", "heartbeat", "", clock.now()))
    for i in range(100):  # a feed that has seen some revocations
        offline.apply(RevocationEvent(str(i), "task", f"t_{i:022d}", clock.now()))

    # interleaved rounds, so that load from elsewhere hits all three alike
    rounds = 7
    pool = iter(tokens(provider, n * (rounds + 1)))
    same = [next(pool) for _ in range(n)]
    times: dict[str, list[float]] = {"raw": [], "authenticate": [], "verify": []}
    for _ in range(rounds):
        fresh = [next(pool) for _ in range(n)]
        times["raw"].append(await rate(raw, same, time.thread_time))
        times["authenticate"].append(await rate(offline.authenticate, same, time.thread_time))
        it = iter(fresh)

        async def consume(_: str, it: Any = it) -> Any:
            return await offline.verify(next(it), tool="search_docs", args_sha256=DIGEST)

        times["verify"].append(await rate(consume, fresh, time.thread_time))
    # CPU time of this thread, best of the rounds: the least disturbed by other processes
    raw_us, auth_us, verify_us = (min(times[k]) for k in times)
    ratio = statistics.median(v / r for v, r in zip(times["verify"], times["raw"], strict=True))
    print(f"verify_token (ES256, claims)      {raw_us:7.1f} us/call  {1e6 / raw_us:8.0f}/s")
    print(f"OfflineVerifier.authenticate      {auth_us:7.1f} us/call  {1e6 / auth_us:8.0f}/s")
    print(f"OfflineVerifier.verify (consumes) {verify_us:7.1f} us/call  {1e6 / verify_us:8.0f}/s")
    print(f"  verify / verify_token, median over {rounds} interleaved rounds: {ratio:.2f}x")

    # online, and whole tool calls, against a broker in this process
    config = load_config(
        None,
        env={},
        overrides={
            "listen": "127.0.0.1:0",
            "trust_domain": "dev.local",
            "registry": str(ROOT / "examples/dev/registry.yaml"),
            "policies": str(ROOT / "examples/dev/policies"),
            "tls.cert": str(pki / "broker.crt"),
            "tls.key": str(pki / "broker.key"),
            "tls.bundle": str(pki / "ca.crt"),
        },
    )
    components = build_components(
        config, store=MemoryStore(), auditor=Auditor("bench", [MemorySink()]), keys=provider
    )
    server = BrokerServer(config, components)
    port = await server.start()
    address = f"127.0.0.1:{port}"
    try:
        agent_creds = WorkloadCredentials.from_dev_dir(pki, "agent-demo")
        async with (
            BrokerClient(address, credentials=agent_creds) as agent,
            OnlineVerifier(
                address, credentials=WorkloadCredentials.from_dev_dir(pki, "mcp-docs")
            ) as online,
        ):
            # a task holds at most 64 live credentials: mint and verify in batches
            spent, verified = 0.0, 0
            async with agent.task("bench") as task:
                for _ in range(max(4, n // 500)):
                    batch = [
                        (await task.credential("docs", "search_docs", ARGS)).token
                        for _ in range(50)
                    ]
                    start = time.perf_counter()
                    for token in batch:
                        await online.verify(token, tool="search_docs", args_sha256=DIGEST)
                    spent += time.perf_counter() - start
                    verified += len(batch)
            online_us = spent / verified * 1e6
            print(
                f"OnlineVerifier.verify (RPC)       {online_us:7.1f} us/call  "
                f"{1e6 / online_us:8.0f}/s   (broker in this process)"
            )
            async with (
                run_servers(address, pki, port=0, only=("docs",)) as servers,
                agent.task("bench calls") as task,
                McpTools(task, "docs", servers["docs"][0]) as docs,
            ):
                calls = 100
                start = time.perf_counter()
                for _ in range(calls):
                    await docs.call_tool("search_docs", ARGS)
                per_call_ms = (time.perf_counter() - start) / calls * 1e3
            print(
                f"guarded MCP tool call, end to end {per_call_ms * 1000:7.0f} us/call  "
                "(credential + streamable HTTP, all in this process)"
            )
    finally:
        await server.stop(0)


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main())
