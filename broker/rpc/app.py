"""Assemble and run the broker's gRPC server: mTLS, identity, the three services, health and
reflection. ``BrokerServer`` is used by ``broker serve`` and, on port 0, by the tests."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import _async as health_async
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from broker._proto.broker.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    agent_pb2,
    agent_pb2_grpc,
    verifier_pb2,
    verifier_pb2_grpc,
)
from broker.adapters.config import Config
from broker.adapters.files import load_registry, policy_engine
from broker.adapters.keys import LocalKeyProvider
from broker.app.admin import Admin
from broker.app.audit import Auditor
from broker.app.credentials import Broker, Limits
from broker.app.keyring import SigningKeys
from broker.app.ports import KeyProvider, Quotas, Store
from broker.app.toolpins import ToolPins
from broker.core.clock import Clock, SystemClock
from broker.core.errors import ConfigError
from broker.core.registry import TIER_MAX_TTL, Registry
from broker.rpc.admin_servicer import AdminServicer, audit_source_for
from broker.rpc.identity import IdentityInterceptor
from broker.rpc.metrics import MetricsInterceptor, sample_live_tasks
from broker.rpc.servicers import AgentServicer, VerifierServicer
from broker.rpc.tls import ReloadingServerCredentials
from broker.rpc.tracing import TracingInterceptor

if TYPE_CHECKING:
    from broker.adapters.vault.runtime import VaultRuntime

log = logging.getLogger("broker.rpc")
LIVE_SAMPLE = 15.0  # seconds between two samples of broker_live_tasks

SERVICE_NAMES = (
    agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name,
    verifier_pb2.DESCRIPTOR.services_by_name["VerifierService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
)


@dataclass
class Components:
    broker: Broker
    tls: ReloadingServerCredentials
    vault: VaultRuntime | None = None  # Transit keys, downstream secrets (broker.adapters.vault)


def build_components(
    config: Config,
    *,
    store: Store,
    auditor: Auditor,
    clock: Clock | None = None,
    keys: KeyProvider | None = None,
) -> Components:
    """Load registry, policy and keys (each refusing to start on a problem) and wire the core."""
    clock = clock or SystemClock()
    registry = load_registry(config.registry, config.trust_domain)
    policy = policy_engine(config.policies, registry)
    vault = _build_vault(config, registry_needs_secrets(registry), clock, auditor, store)
    if keys is None and vault is not None and vault.keys is not None:
        keys = vault.keys
    if keys is None:
        keys = LocalKeyProvider(alg=config.token_alg, directory=config.keys_dir, now=clock.now())
    broker = Broker(
        issuer=config.issuer_id,
        policy=policy,
        keys=keys,
        store=store,
        audit=auditor,
        clock=clock,
        limits=Limits(
            task_max_ttl=config.task_max_ttl,
            task_default_ttl=config.task_default_ttl,
            task_retention=config.task_retention,
            quotas=Quotas(per_task=config.quota_per_task, per_agent=config.quota_per_agent),
            leeway=config.leeway_seconds,
            max_delegation_depth=config.max_delegation_depth,
            approval_ttl=config.approval_ttl,
            max_pending_per_agent=config.max_pending_per_agent,
            max_live_tasks_per_agent=config.max_live_tasks_per_agent,
            require_registered_agents=config.require_registered_agents,
        ),
        secrets=vault.secrets if vault is not None else None,
        keyring=SigningKeys(
            keys,
            store,
            clock,
            max_token_ttl=float(max(TIER_MAX_TTL.values())),
            replica=replica_name(),
            share=config.share_keys,
        ),
    )
    return Components(broker=broker, tls=ReloadingServerCredentials(config.tls), vault=vault)


def replica_name() -> str:
    """How this process names itself where replicas meet (published keys): HOST-PID."""
    return f"{socket.gethostname()}-{os.getpid()}"


def registry_needs_secrets(registry: Registry) -> bool:
    return any(t.secret is not None for s in registry.servers for t in s.tools.values())


def _build_vault(
    config: Config, with_secrets: bool, clock: Clock, auditor: Auditor, store: Store
) -> VaultRuntime | None:
    """The Vault edge (docs/vault.md), if configured; hvac is imported only then."""
    if config.vault is None:
        if with_secrets:
            raise ConfigError(
                "vault", "registry tools have a secret: configure vault (docs/vault.md)"
            )
        return None
    if config.vault.transit is not None and config.keys_dir is not None:
        raise ConfigError("tokens.keys_dir", "not used with vault.transit: the keys live in Vault")
    from broker.adapters.vault.runtime import build_vault

    return build_vault(
        config.vault,
        clock=clock,
        auditor=auditor,
        store=store,
        actor=config.issuer_id,
        alg=config.token_alg,
        max_token_ttl=float(max(TIER_MAX_TTL.values())),
        with_secrets=with_secrets,
    )


class BrokerServer:
    def __init__(
        self, config: Config, components: Components, *, sample_live_tasks: bool = True
    ) -> None:
        self.config = config
        self.sample_live_tasks = sample_live_tasks  # broker_live_tasks: one worker samples
        self.components = components
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._health = health_async.HealthServicer()
        self._maintenance: asyncio.Task[None] | None = None

    async def start(self, *, reuse_port: bool = False) -> int:
        c = self.components
        options = [("grpc.so_reuseport", 1 if reuse_port else 0)]
        server = grpc.aio.server(
            interceptors=[
                MetricsInterceptor(),
                TracingInterceptor(),
                IdentityInterceptor(
                    self.config.trust_domain, c.broker.audit.record, c.broker.clock.now
                ),
            ],
            options=options,
        )
        # the generated registration functions are untyped
        add_agent = agent_pb2_grpc.add_AgentServiceServicer_to_server
        add_verifier = verifier_pb2_grpc.add_VerifierServiceServicer_to_server
        add_admin = admin_pb2_grpc.add_AdminServiceServicer_to_server
        add_agent(AgentServicer(c.broker), server)  # type: ignore[no-untyped-call]
        add_verifier(VerifierServicer(c.broker), server)  # type: ignore[no-untyped-call]
        admin = Admin(c.broker, audit_source_for(c.broker.audit))
        add_admin(AdminServicer(admin, ToolPins(c.broker)), server)  # type: ignore[no-untyped-call]
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (
                *SERVICE_NAMES,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        # publish this replica's keys before its first token, and learn the others'
        await c.broker.keyring.maintain(c.broker.clock.now())
        self.port = server.add_secure_port(self.config.listen, c.tls.credentials())
        if self.port == 0:
            raise OSError(f"cannot listen on {self.config.listen}")
        await server.start()
        for name in ("", *SERVICE_NAMES):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._server = server
        self._maintenance = asyncio.create_task(self._maintain())
        if c.vault is not None:
            await c.vault.start()
        return self.port

    async def _maintain(self, interval: float = 2.0, sample_every: float = LIVE_SAMPLE) -> None:
        """Housekeeping: refresh the key provider (at its own interval: Transit's
        ``refresh_seconds``), publish this replica's keys, read the other replicas'; sample the
        live tasks for ``broker_live_tasks`` every ``sample_every`` seconds."""
        broker = self.components.broker
        sampled = -sample_every
        while True:
            try:
                due = asyncio.get_running_loop().time() - sampled >= sample_every
                if self.sample_live_tasks and due:
                    sampled = asyncio.get_running_loop().time()
                    await sample_live_tasks(broker.store, broker.clock.now())
            except Exception as exc:  # noqa: BLE001 - a metric is not worth a log storm
                log.warning("sampling live tasks failed: %s", exc)
            await asyncio.sleep(interval)
            try:
                await broker.keyring.maintain(broker.clock.now())
            except Exception:  # housekeeping must not die; the next round retries
                log.exception("key housekeeping failed")

    async def stop(self, grace: float = 2.0) -> None:
        if self._maintenance is not None:
            self._maintenance.cancel()
            self._maintenance = None
        if self._server is not None:
            await self._health.enter_graceful_shutdown()
            await self._server.stop(grace)
            self._server = None
        if self.components.vault is not None:
            await self.components.vault.stop()

    async def wait(self) -> None:
        assert self._server is not None
        await self._server.wait_for_termination()


async def run_until_signalled(server: BrokerServer) -> None:
    import signal

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await server.stop()
