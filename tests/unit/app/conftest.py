"""A broker assembled from in-memory ports, for the use cases' unit tests (no gRPC, no network).

``Harness`` wires ``Broker`` and ``Admin`` to the memory store, the dev registry and policies
(examples/dev, read through ``broker.adapters.files``), a ``LocalKeyProvider`` that lives in
memory and a ``FakeClock``; the audit trail goes to a ``MemorySink`` (``events``) and to the
``RecentRecords`` that ``Admin`` tails. Build one with the ``harness`` fixture, or with
``make_harness(...)`` for other limits or another policy engine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from broker.adapters.audit.sinks import MemorySink
from broker.adapters.files import load_registry, policy_engine
from broker.adapters.keys import LocalKeyProvider
from broker.adapters.store.memory import MemoryStore
from broker.app.admin import Admin
from broker.app.audit import Auditor
from broker.app.credentials import Broker, Limits
from broker.core.audit.recent import RecentRecords
from broker.core.audit.record import AuditEventName
from broker.core.canonical import args_sha256
from broker.core.clock import FakeClock
from broker.core.model import RevocationEvent, TaskRecord
from broker.core.policy.engine import PolicyEngine
from broker.core.requests import (
    BeginTask,
    CredentialRequest,
    Granted,
    Pending,
    Verified,
    VerifyRequest,
)
from broker.core.spiffe import PeerIdentity, parse_spiffe_id
from broker.core.tokens.claims import TokenClaims
from broker.core.tokens.verify import verify_token

DEV = Path(__file__).resolve().parents[3] / "examples" / "dev"
REGISTRY = load_registry(DEV / "registry.yaml", "dev.local")
POLICIES = DEV / "policies"
START = 1_800_000_000.0
ISSUER = "spiffe://dev.local/broker"


def peer(ref: str) -> PeerIdentity:
    """A caller as the gRPC edge would pass it: SPIFFE ID and the SHA-256 of its certificate."""
    return PeerIdentity.of(parse_spiffe_id(ref), hashlib.sha256(ref.encode()).hexdigest())


AGENT = peer("spiffe://dev.local/agent/demo")  # registered; the dev policy permits every tool
STRANGER = peer("spiffe://dev.local/agent/stranger")  # not in the registry: policy denies it
OPERATOR = peer("spiffe://dev.local/operator/alice")


def server_peer(name: str) -> PeerIdentity:
    return peer(REGISTRY.server(name).spiffe_id)


def digest(args: Mapping[str, Any] | None = None) -> str:
    return args_sha256(dict(args or {}))


@dataclass
class Harness:
    broker: Broker
    admin: Admin
    clock: FakeClock
    store: MemoryStore
    sink: MemorySink

    async def task(
        self, who: PeerIdentity = AGENT, *, plan: tuple[tuple[str, str], ...] = (), **kw: Any
    ) -> TaskRecord:
        return await self.broker.begin_task(who, BeginTask(intent="test", plan=plan, **kw))

    async def ask(
        self,
        task: TaskRecord | str,
        server: str,
        tool: str,
        args: Mapping[str, Any] | None = None,
        who: PeerIdentity = AGENT,
        **kw: Any,
    ) -> Granted | Pending:
        task_id = task if isinstance(task, str) else task.task_id
        req = CredentialRequest(
            task_id=task_id, server=server, tool=tool, args_sha256=digest(args), **kw
        )
        return await self.broker.request_credential(who, req)

    async def grant(self, *args: Any, **kw: Any) -> Granted:
        got = await self.ask(*args, **kw)
        assert isinstance(got, Granted), got
        return got

    async def verify(
        self, granted: Granted, server: str, tool: str, args: Mapping[str, Any] | None = None
    ) -> Verified:
        """Online verification by the server the token is for (as its verifier would)."""
        req = VerifyRequest(token=granted.token, tool=tool, args_sha256=digest(args))
        return await self.broker.verify_credential(server_peer(server), req)

    def claims(
        self, granted: Granted, server: str, tool: str, args: Mapping[str, Any] | None = None
    ) -> TokenClaims:
        """The token's claims, checked as an offline verifier would (consumes nothing)."""
        return verify_token(
            granted.token,
            keys=self.broker.keyring.keyset(),
            allowed_algs=frozenset({self.broker.keys.alg}),
            issuer=ISSUER,
            audience=REGISTRY.server(server).spiffe_id,
            now=self.clock.now(),
            tool=tool,
            args_sha256=digest(args),
        )

    def events(self, name: AuditEventName) -> list[Mapping[str, Any]]:
        """The audit records named ``name``, oldest first, as their JSON bodies."""
        return [r.body for r in self.sink.records if r.body["event"] == name]

    async def feed(self) -> list[RevocationEvent]:
        return list(await self.store.revocations_since("", 1000))


def make_harness(*, limits: Limits | None = None, policy: PolicyEngine | None = None) -> Harness:
    clock = FakeClock(START)
    store = MemoryStore()
    sink, recent = MemorySink(), RecentRecords()
    broker = Broker(
        issuer=ISSUER,
        policy=policy or policy_engine(POLICIES, REGISTRY, check_requests=True),
        keys=LocalKeyProvider(now=clock.now()),
        store=store,
        audit=Auditor("test", [sink, recent]),
        clock=clock,
        limits=limits or Limits(),
    )
    return Harness(broker, Admin(broker, recent), clock, store, sink)


@pytest.fixture
def harness() -> Harness:
    return make_harness()
