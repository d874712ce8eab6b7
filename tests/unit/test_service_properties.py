"""Properties of the core service, checked with hypothesis against the in-memory store.

- A granted TTL never exceeds its tier's cap, the request, or the task's remaining life.
- A credential minted for one call never verifies for another (tool, arguments, server).
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.adapters.audit.sinks import MemorySink
from broker.adapters.files import load_registry, policy_engine
from broker.adapters.keys import LocalKeyProvider
from broker.adapters.store.memory import MemoryStore
from broker.app.audit import Auditor
from broker.app.credentials import Broker, Limits
from broker.core.canonical import args_sha256
from broker.core.clock import FakeClock
from broker.core.errors import FailedPrecondition, Unauthenticated
from broker.core.registry import tier_ttl_cap
from broker.core.requests import BeginTask, CredentialRequest, VerifyRequest
from broker.core.spiffe import PeerIdentity, parse_spiffe_id

DEV = Path(__file__).resolve().parents[2] / "examples" / "dev"
REGISTRY = load_registry(DEV / "registry.yaml", "dev.local")
POLICY = policy_engine(DEV / "policies", REGISTRY)
START = 1_800_000_000.0


def peer(ref: str) -> PeerIdentity:
    return PeerIdentity.of(parse_spiffe_id(ref), hashlib.sha256(ref.encode()).hexdigest())


AGENT = peer("spiffe://dev.local/agent/demo")
# Tools the clean dev agent may call without approval, with their server's tier.
CALLS = [(s.name, t, s.tier) for s in REGISTRY.servers for t in s.tools if s.tier < 3]


def make_broker(clock: FakeClock) -> Broker:
    return Broker(
        issuer="spiffe://dev.local/broker",
        policy=POLICY,
        keys=LocalKeyProvider(now=clock.now()),
        store=MemoryStore(),
        audit=Auditor("test", [MemorySink()]),
        clock=clock,
        limits=Limits(task_max_ttl=3600),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    call=st.sampled_from(CALLS),
    task_ttl=st.integers(min_value=1, max_value=7200),
    requested=st.integers(min_value=0, max_value=1000),
    elapsed=st.floats(min_value=0, max_value=400, allow_nan=False),
)
def test_granted_ttl_never_exceeds_tier_request_or_task(
    call: tuple[str, str, int], task_ttl: int, requested: int, elapsed: float
) -> None:
    server, tool, tier = call
    clock = FakeClock(START)
    broker = make_broker(clock)

    async def scenario() -> None:
        task = await broker.begin_task(AGENT, BeginTask(intent="prop", ttl_seconds=task_ttl))
        clock.advance(elapsed)
        now = clock.now()
        request = CredentialRequest(
            task_id=task.task_id,
            server=server,
            tool=tool,
            args_sha256="0" * 64,
            ttl_seconds=requested,
        )
        if task.expires_at - now < 1:  # nothing left to grant: refused, never a 0-second token
            with pytest.raises(FailedPrecondition):
                await broker.request_credential(AGENT, request)
            return
        granted = await broker.request_credential(AGENT, request)
        ttl = granted.expires_at - int(now)
        assert 1 <= ttl <= tier_ttl_cap(tier)
        assert granted.expires_at <= task.expires_at
        if requested:
            assert ttl <= requested

    asyncio.run(scenario())


ARG_VALUES = st.dictionaries(
    st.text(min_size=1, max_size=8),
    st.one_of(st.integers(-1000, 1000), st.text(max_size=10), st.booleans()),
    max_size=3,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    minted=st.sampled_from(CALLS),
    presented=st.sampled_from(CALLS),
    args_a=ARG_VALUES,
    args_b=ARG_VALUES,
)
def test_a_token_for_one_call_never_verifies_for_another(
    minted: tuple[str, str, int],
    presented: tuple[str, str, int],
    args_a: dict[str, object],
    args_b: dict[str, object],
) -> None:
    clock = FakeClock(START)
    broker = make_broker(clock)
    same_call = minted[:2] == presented[:2] and args_sha256(args_a) == args_sha256(args_b)

    async def scenario() -> None:
        task = await broker.begin_task(AGENT, BeginTask(intent="prop"))
        granted = await broker.request_credential(
            AGENT,
            CredentialRequest(
                task_id=task.task_id,
                server=minted[0],
                tool=minted[1],
                args_sha256=args_sha256(args_a),
            ),
        )
        verifier = peer(REGISTRY.server(presented[0]).spiffe_id)
        request = VerifyRequest(
            token=granted.token, tool=presented[1], args_sha256=args_sha256(args_b)
        )
        if same_call:
            await broker.verify_credential(verifier, request)
        else:
            with pytest.raises(Unauthenticated):
                await broker.verify_credential(verifier, request)

    asyncio.run(scenario())
