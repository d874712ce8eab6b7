"""One function per measurement. Each repeats its run ``runs`` times after a warm-up and returns
the per-run summaries; ``report`` takes the median of the runs.

The calls: Health/Check as agent-demo (the mTLS ceiling); RequestCredential for
``docs/search_docs`` with a small arguments object (the broker computes the RFC 8785 digest);
VerifyCredential by mcp-docs of those tokens (each verifies once); the offline verifier of
``broker.client.verifier`` on tokens signed with the broker's own key; EndTask seen by 10 offline
verifiers; and OpenBao ``auth/token/create`` with a TTL and ``num_uses`` 1.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.load import (
    Exhausted,
    Sample,
    balanced_channels,
    close_all,
    closed_loop,
    cpu_seconds,
    credentials,
    open_channel,
    timed_loop,
)
from bench.procs import BrokerProc, OpenBao, RedisServer
from broker._proto.broker.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    verifier_pb2,
    verifier_pb2_grpc,
)

ARGS = {"query": "retry policy", "limit": 5}
SERVER, TOOL = "docs", "search_docs"
AUDIENCE = "spiffe://dev.local/mcp/docs"
PER_TASK = 60  # mints per task (the per-task quota of live credentials is 64)
VERIFIERS = 10


@dataclass
class Settings:
    duration: float = 3.0  # seconds per run
    runs: int = 3
    warmup: float = 0.5
    revocation_trials: int = 20  # EndTasks per run
    channels: int = 4  # TCP connections for 16 in flight, spread evenly over the workers


@dataclass
class Context:
    broker: BrokerProc
    redis: RedisServer
    settings: Settings
    tokens: list[str] = field(default_factory=list)  # minted, not yet verified
    log: Callable[[str], None] = print

    @property
    def pki(self) -> Path:
        return self.broker.pki


def _struct(args: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(args)
    return s


async def _repeat(
    ctx: Context, name: str, run: Callable[[float], Awaitable[Sample]], *, cpu: bool = True
) -> list[dict[str, float]]:
    """Warm up, then ``runs`` timed runs. With ``cpu``: also the CPU time per call of the
    broker (all workers), of redis-server and of this load generator."""
    await run(ctx.settings.warmup)
    out = []
    pids = ctx.broker.worker_pids() if cpu else []
    for i in range(ctx.settings.runs):
        broker0 = sum(cpu_seconds(p) for p in pids)
        redis0 = cpu_seconds(ctx.redis.proc.pid)
        me0 = time.process_time()
        sample = await run(ctx.settings.duration)
        summary = sample.summary()
        if cpu and sample.count:
            per = 1e6 / sample.count
            summary["broker_cpu_us"] = round((sum(cpu_seconds(p) for p in pids) - broker0) * per)
            summary["redis_cpu_us"] = round((cpu_seconds(ctx.redis.proc.pid) - redis0) * per)
            summary["client_cpu_us"] = round((time.process_time() - me0) * per)
        out.append(summary)
        ctx.log(
            f"  {name} run {i + 1}: {sample.rps:,.0f}/s p50 {sample.percentile_ms(50):.2f} ms "
            f"p99 {sample.percentile_ms(99):.2f} ms"
            + (f" ({sample.errors} errors)" * bool(sample.errors))
        )
    return out


async def _channels(ctx: Context, identity: str, inflight: int) -> list[grpc.aio.Channel]:
    """One channel at 1 in flight; else ``settings.channels`` (one TCP connection each), spread
    evenly over the worker processes. Callers use ``channels[i % len(channels)]``."""
    creds = credentials(ctx.pki, identity)
    count = 1 if inflight == 1 else min(inflight, ctx.settings.channels)
    if count == 1:
        return [await open_channel(ctx.broker.target, creds)]
    return await balanced_channels(
        ctx.broker.target, ctx.broker.port, creds, count, ctx.broker.worker_pids()
    )


# -- the mTLS ceiling ---------------------------------------------------------------------------


async def echo(ctx: Context, inflight: int) -> list[dict[str, float]]:
    channels = await _channels(ctx, "agent-demo", inflight)
    stubs = [health_pb2_grpc.HealthStub(ch) for ch in channels]
    request = health_pb2.HealthCheckRequest()

    async def call(i: int) -> None:
        await stubs[i % len(stubs)].Check(request, timeout=10)

    try:
        return await _repeat(ctx, f"echo@{inflight}", lambda d: closed_loop(call, inflight, d))
    finally:
        await close_all(channels)


# -- mint ---------------------------------------------------------------------------------------


class TaskPool:
    """Tasks to mint in, each used for ``PER_TASK`` credentials (under the per-task quota)."""

    def __init__(self, stub: agent_pb2_grpc.AgentServiceStub) -> None:
        self._stub = stub
        self._ready: list[str] = []
        self.current: dict[int, tuple[str, int]] = {}

    async def fill(self, count: int, inflight: int = 16) -> None:
        async def one() -> None:
            resp = await self._stub.BeginTask(
                agent_pb2.BeginTaskRequest(intent="benchmark", ttl_seconds=3600), timeout=10
            )
            self._ready.append(resp.task_id)

        for start in range(0, count, inflight):
            await asyncio.gather(*(one() for _ in range(min(inflight, count - start))))

    async def task_for(self, worker: int) -> str:
        task, used = self.current.get(worker, ("", PER_TASK))
        if used >= PER_TASK:
            if not self._ready:
                await self.fill(1)
            task, used = self._ready.pop(), 0
        self.current[worker] = (task, used + 1)
        return task


async def mint(ctx: Context, inflight: int, *, keep: bool = True) -> list[dict[str, float]]:
    channels = await _channels(ctx, "agent-demo", inflight)
    stubs = [agent_pb2_grpc.AgentServiceStub(ch) for ch in channels]  # type: ignore[no-untyped-call]
    pool = TaskPool(stubs[0])
    arguments = _struct(ARGS)
    tokens = ctx.tokens
    expected = [600.0 * inflight]  # mints per second, refined after each run

    async def call(i: int) -> None:
        task = await pool.task_for(i)
        resp = await stubs[i % len(stubs)].RequestCredential(
            agent_pb2.RequestCredentialRequest(
                task_id=task, server=SERVER, tool=TOOL, arguments=arguments
            ),
            timeout=10,
        )
        if keep:
            tokens.append(resp.credential.token)

    async def run(duration: float) -> Sample:
        # Tasks for the whole run are begun beforehand: BeginTask is not part of the figure.
        await pool.fill(int(expected[0] * duration * 1.3 / PER_TASK) + inflight)
        sample = await closed_loop(call, inflight, duration)
        expected[0] = max(sample.rps, 100.0)
        return sample

    try:
        return await _repeat(ctx, f"mint@{inflight}", run)
    finally:
        await close_all(channels)


async def ensure_tokens(ctx: Context, count: int) -> None:
    """Mint until ``ctx.tokens`` holds ``count`` tokens (for the online verify runs)."""
    missing = count - len(ctx.tokens)
    if missing <= 0:
        return
    ctx.log(f"  minting {missing:,} more tokens for the online verify runs")
    channels = await _channels(ctx, "agent-demo", 16)
    stubs = [agent_pb2_grpc.AgentServiceStub(ch) for ch in channels]  # type: ignore[no-untyped-call]
    pool = TaskPool(stubs[0])
    await pool.fill(missing // PER_TASK + 17)
    arguments = _struct(ARGS)
    left = [missing]

    async def worker(i: int) -> None:
        while left[0] > 0:
            left[0] -= 1
            task = await pool.task_for(i)
            resp = await stubs[i % len(stubs)].RequestCredential(
                agent_pb2.RequestCredentialRequest(
                    task_id=task, server=SERVER, tool=TOOL, arguments=arguments
                ),
                timeout=10,
            )
            ctx.tokens.append(resp.credential.token)

    try:
        await asyncio.gather(*(worker(i) for i in range(16)))
    finally:
        await close_all(channels)


# -- online verify ------------------------------------------------------------------------------


async def verify_online(ctx: Context, inflight: int, expect_rps: float) -> list[dict[str, float]]:
    """VerifyCredential of tokens minted beforehand (each verifies once; topped up between
    runs, outside the timed window)."""
    channels = await _channels(ctx, "mcp-docs", inflight)
    stubs = [verifier_pb2_grpc.VerifierServiceStub(ch) for ch in channels]  # type: ignore[no-untyped-call]
    arguments = _struct(ARGS)
    tokens = ctx.tokens
    expected = [expect_rps]

    async def call(i: int) -> None:
        if not tokens:
            raise Exhausted
        await stubs[i % len(stubs)].VerifyCredential(
            verifier_pb2.VerifyCredentialRequest(
                token=tokens.pop(), tool=TOOL, arguments=arguments
            ),
            timeout=10,
        )

    async def run(duration: float) -> Sample:
        await ensure_tokens(ctx, int(expected[0] * duration * 1.3) + 64)
        sample = await closed_loop(call, inflight, duration)
        expected[0] = max(sample.rps, 100.0)
        return sample

    try:
        return await _repeat(ctx, f"verify@{inflight}", run)
    finally:
        await close_all(channels)


# -- offline verify and the raw signature verify ------------------------------------------------


@dataclass
class SignedTokens:
    tokens: list[str]
    digest: str
    public_key: Any  # cryptography EllipticCurvePublicKey
    inputs: list[tuple[bytes, bytes]]  # (signing input, DER signature)


def sign_tokens(ctx: Context, count: int) -> SignedTokens:
    """Tokens signed with the broker's active key (from its keys directory), shaped exactly like
    the broker's, each with its own task and jti: the offline verifier accepts each once."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    from broker.adapters.keys import LocalKeyProvider
    from broker.core.canonical import args_sha256
    from broker.core.ids import new_jti, new_task_id
    from broker.core.tokens.claims import AuthorizationDetail, TokenClaims, mint_token, x5t_s256
    from broker.core.tokens.jws import b64url_decode

    keys = LocalKeyProvider(directory=ctx.broker.keys_dir, now=time.time())
    agent_cert = x509.load_pem_x509_certificate((ctx.pki / "agent-demo.crt").read_bytes())
    cnf = x5t_s256(agent_cert.public_bytes(serialization.Encoding.DER))
    digest = args_sha256(ARGS)
    now = int(time.time())
    tokens, inputs = [], []
    for _ in range(count):
        task = new_task_id()
        claims = TokenClaims(
            iss="spiffe://dev.local/broker",
            sub="spiffe://dev.local/agent/demo",
            aud=AUDIENCE,
            iat=now,
            nbf=now,
            exp=now + 300,
            jti=new_jti(task),
            task=task,
            authorization_details=(
                AuthorizationDetail(server=AUDIENCE, tool=TOOL, action="read", args_sha256=digest),
            ),
            cnf_x5t_s256=cnf,
            tier=0,
            taint="clean",
        )
        token = mint_token(claims, keys.blocking_signer())
        tokens.append(token)
        head, payload, sig = token.split(".")
        raw = b64url_decode(sig)
        der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
        inputs.append((f"{head}.{payload}".encode(), der))
    pem = (ctx.broker.keys_dir / f"{keys.active_kid()}.pem").read_bytes()
    public = serialization.load_pem_private_key(pem, password=None).public_key()
    return SignedTokens(tokens, digest, public, inputs)


def timed_loop_rate(signed: SignedTokens, seconds: float) -> float:
    """Signature verifications per second on this core (to size the token supply)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    algorithm = ec.ECDSA(hashes.SHA256())
    inputs = signed.inputs

    def call(i: int) -> None:
        data, der = inputs[i % len(inputs)]
        signed.public_key.verify(der, data, algorithm)

    return timed_loop(call, seconds).rps


async def raw_and_offline_verify(
    ctx: Context, signed: SignedTokens
) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """On one core (this process), run after run in turn, so that both see the same machine:

    - the floor: ECDSA P-256 SHA-256 verify of the same signatures (DER-encoded beforehand),
      nothing else;
    - ``OfflineVerifier.verify`` (every check, single use, revocations), each run with a
      verifier of its own (a fresh single-use cache), so the runs can reuse the tokens."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    from broker.client.verifier import OfflineVerifier

    algorithm = ec.ECDSA(hashes.SHA256())
    verify_signature = signed.public_key.verify
    inputs = signed.inputs
    n = len(inputs)

    def floor(i: int) -> None:
        data, der = inputs[i % n]
        verify_signature(der, data, algorithm)

    pki = ctx.pki
    digest = signed.digest

    async def offline(duration: float) -> Sample:
        verifier = OfflineVerifier(
            ctx.broker.target,
            ca=pki / "ca.crt",
            cert=pki / "mcp-docs.crt",
            key=pki / "mcp-docs.key",
        )
        verify = verifier.verify
        async with verifier:
            tokens = signed.tokens
            count = 0
            start = time.perf_counter()
            end = start + duration
            now = start
            while now < end and count + 64 <= len(tokens):
                for token in tokens[count : count + 64]:
                    await verify(token, tool=TOOL, args_sha256=digest)
                count += 64
                await asyncio.sleep(0)  # let the revocation feed in, as a server between calls
                now = time.perf_counter()
            if now < end:
                ctx.log("  offline verify: ran out of tokens, run cut short")
            return Sample(count, now - start)

    s = ctx.settings
    timed_loop(floor, s.warmup)
    await offline(s.warmup)
    raw_runs, offline_runs = [], []
    for i in range(s.runs):
        raw = timed_loop(floor, s.duration)
        off = await offline(s.duration)
        raw_runs.append(raw.summary())
        offline_runs.append(off.summary())
        ctx.log(
            f"  run {i + 1}: raw verify {raw.rps:,.0f}/s, offline verify {off.rps:,.0f}/s "
            f"({off.rps / raw.rps:.2f}x)"
        )
    return raw_runs, offline_runs


# -- revocation propagation ---------------------------------------------------------------------


async def revocation(ctx: Context) -> tuple[list[dict[str, float]], list[float]]:
    """EndTask, then the time until each of ``VERIFIERS`` offline verifiers (each its own
    WatchRevocations stream) has applied the task's revocation event. Per run: p50/p99 over
    trials x verifiers; also returns every latency (ms)."""
    from broker.client.verifier import OfflineVerifier
    from broker.core.model import RevocationEvent

    seen: dict[str, list[float]] = {}
    wanted: dict[str, asyncio.Event] = {}

    class TimedVerifier(OfflineVerifier):
        def apply(self, event: RevocationEvent) -> None:
            super().apply(event)
            if event.kind == "task" and event.subject in seen:
                seen[event.subject].append(time.perf_counter())
                if len(seen[event.subject]) == VERIFIERS:
                    wanted[event.subject].set()

    pki = ctx.pki
    verifiers = [
        TimedVerifier(
            ctx.broker.target,
            ca=pki / "ca.crt",
            cert=pki / "mcp-docs.crt",
            key=pki / "mcp-docs.key",
        )
        for _ in range(VERIFIERS)
    ]
    for v in verifiers:
        await v.start()
    channel = await open_channel(ctx.broker.target, credentials(pki, "agent-demo"))
    agent = agent_pb2_grpc.AgentServiceStub(channel)  # type: ignore[no-untyped-call]
    arguments = _struct(ARGS)
    every: list[float] = []
    runs: list[dict[str, float]] = []
    try:
        for run in range(ctx.settings.runs + 1):  # the first is a warm-up
            latencies: list[float] = []
            for _ in range(ctx.settings.revocation_trials):
                begun = await agent.BeginTask(
                    agent_pb2.BeginTaskRequest(intent="benchmark"), timeout=10
                )
                task = begun.task_id
                await agent.RequestCredential(
                    agent_pb2.RequestCredentialRequest(
                        task_id=task, server=SERVER, tool=TOOL, arguments=arguments
                    ),
                    timeout=10,
                )
                seen[task], wanted[task] = [], asyncio.Event()
                await asyncio.sleep(0.02)  # idle feeds, as between real tool calls
                t0 = time.perf_counter()
                await agent.EndTask(agent_pb2.EndTaskRequest(task_id=task), timeout=10)
                await asyncio.wait_for(wanted[task].wait(), 10)
                latencies.extend((t - t0) * 1000 for t in seen.pop(task))
                del wanted[task]
            if run == 0:
                continue
            sample = Sample(len(latencies), 1.0, [ms / 1000 for ms in latencies])
            runs.append({"p50_ms": sample.percentile_ms(50), "p99_ms": sample.percentile_ms(99)})
            every.extend(latencies)
            ctx.log(
                f"  revocation run {run}: p50 {sample.percentile_ms(50):.2f} ms "
                f"p99 {sample.percentile_ms(99):.2f} ms ({len(latencies)} deliveries)"
            )
    finally:
        await channel.close()
        for v in verifiers:
            await v.aclose()
    return runs, every


# -- Redis bytes per live credential ------------------------------------------------------------


async def redis_bytes(ctx: Context, tasks: int = 20, per_task: int = 50) -> dict[str, float]:
    """MEMORY USAGE (exact: SAMPLES 0) of every key of the broker's namespace before and after
    minting ``tasks * per_task`` credentials into tasks begun beforehand, per credential; and the
    same from INFO used_memory as a cross-check. Run first, on a near-empty Redis."""
    import redis

    client = redis.Redis(port=ctx.redis.port)

    def usage() -> tuple[int, int]:
        total = 0
        for key in client.scan_iter(match="bench:*", count=1000):
            total += int(client.memory_usage(key, samples=0) or 0)
        return total, int(client.info("memory")["used_memory"])

    channel = await open_channel(ctx.broker.target, credentials(ctx.pki, "agent-demo"))
    stub = agent_pb2_grpc.AgentServiceStub(channel)  # type: ignore[no-untyped-call]
    arguments = _struct(ARGS)
    try:
        ids = []
        for _ in range(tasks):
            resp = await stub.BeginTask(agent_pb2.BeginTaskRequest(intent="memory"), timeout=10)
            ids.append(resp.task_id)
        # one credential per task first: the per-task first-mint bookkeeping is not counted
        for task in ids:
            await stub.RequestCredential(
                agent_pb2.RequestCredentialRequest(
                    task_id=task, server=SERVER, tool=TOOL, arguments=arguments
                ),
                timeout=10,
            )
        keys_before, used_before = usage()
        for task in ids:
            for _ in range(per_task):
                await stub.RequestCredential(
                    agent_pb2.RequestCredentialRequest(
                        task_id=task, server=SERVER, tool=TOOL, arguments=arguments
                    ),
                    timeout=10,
                )
        keys_after, used_after = usage()
    finally:
        await channel.close()
        client.close()
    n = tasks * per_task
    return {
        "memory_usage_per_credential": (keys_after - keys_before) / n,
        "used_memory_per_credential": (used_after - used_before) / n,
        "credentials": n,
        "credentials_per_task": per_task + 1,
    }


# -- OpenBao ------------------------------------------------------------------------------------


async def openbao_create(ctx: Context, bao: OpenBao, inflight: int) -> list[dict[str, float]]:
    """POST auth/token/create {ttl: 60s, num_uses: 1} with the root token, ``inflight`` at once
    over as many keep-alive HTTP/1.1 connections."""
    import httpx

    limits = httpx.Limits(max_connections=inflight, max_keepalive_connections=inflight)
    body = {"ttl": "60s", "num_uses": 1}
    async with httpx.AsyncClient(
        base_url=bao.addr, headers={"X-Vault-Token": bao.root_token}, limits=limits, timeout=30
    ) as http:

        async def call(i: int) -> None:
            resp = await http.post("/v1/auth/token/create", json=body)
            if resp.status_code != 200:
                raise RuntimeError(f"token create: HTTP {resp.status_code}: {resp.text[:200]}")

        return await _repeat(
            ctx, f"openbao create@{inflight}", lambda d: closed_loop(call, inflight, d), cpu=False
        )


def median(runs: list[dict[str, float]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))
