"""Wiring of the Vault edge from the ``vault:`` config, and its background loops.

``build_vault`` makes the client, the Transit key provider (when ``vault.transit`` is set: it
reads, or creates, the key at once, so a broker whose signing keys are unreachable refuses to
start) and the secret broker (when the registry has tools with a ``secret:``; Vault may be down
at start: those tools fail closed until it is back, the others work).

``VaultRuntime.start`` runs, until ``stop``:

- token renewal (at two thirds of its TTL; log in again when it cannot be renewed);
- the lease reaper every ``leases.reap_interval_seconds`` (expiry, retries);
- the store's revocation feed (operator revokes, sub-tasks ended with their parent).

The Transit key is refreshed by the broker's key housekeeping (``broker.app.keyring``), every
``transit.refresh_seconds``, from the Vault client's threads.

``stop`` revokes every lease still tracked when the tracker is not durable (in memory): a
stopped broker leaves nothing behind but what Vault's TTLs end anyway.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field

from broker.adapters.vault.backend import HvacSecretBackend
from broker.adapters.vault.client import VaultClient
from broker.adapters.vault.config import VaultConfig
from broker.adapters.vault.transit import TransitKeyProvider
from broker.app.audit import Auditor
from broker.app.leases import InMemoryLeaseTracker, LeaseTracker
from broker.app.ports import Store
from broker.app.secrets import SecretBroker
from broker.core.clock import Clock
from broker.core.errors import BrokerError

log = logging.getLogger("broker.adapters.vault")

STOP_TIMEOUT = 10.0
MAX_BACKOFF = 30.0


@dataclass
class VaultRuntime:
    config: VaultConfig
    client: VaultClient
    clock: Clock
    keys: TransitKeyProvider | None = None
    secrets: SecretBroker | None = None
    store: Store | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        loops: list[tuple[str, Callable[[], Coroutine[None, None, None]]]] = [
            ("renewal", self._renew_loop)
        ]
        if self.secrets is not None:
            loops.append(("lease reaper", self._reap_loop))
            if self.store is not None:
                loops.append(("revocation feed", self._follow))
        for name, loop in loops:
            self._tasks.append(asyncio.create_task(loop(), name=f"vault {name}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.secrets is not None and not self.secrets.leases.durable:
            try:
                await asyncio.wait_for(self.secrets.revoke_all("broker stopping"), STOP_TIMEOUT)
            except (TimeoutError, BrokerError) as exc:
                log.error("vault: leases left to their Vault TTL at stop: %s", exc)
        if self.keys is not None:
            await self.keys.aclose()
        await asyncio.to_thread(self.client.close)

    async def _renew_loop(self) -> None:
        backoff = 1.0
        while True:
            due = self.client.renew_due_in()
            if due is None:
                return  # a token that never expires (dev root token)
            await asyncio.sleep(max(due, 0.05))
            try:
                await self.client.in_thread(self.client.renew)
                backoff = 1.0
            except Exception as exc:  # noqa: BLE001 - the loop must survive anything
                log.warning("vault: token renewal failed: %s (retry in %gs)", _why(exc), backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    async def _reap_loop(self) -> None:
        assert self.secrets is not None
        while True:
            await asyncio.sleep(self.config.leases.reap_interval)
            try:
                await self.secrets.reap(self.clock.now())
            except Exception as exc:  # noqa: BLE001 - the loop must survive anything
                log.warning("vault: lease reaper: %s", _why(exc))

    async def _follow(self) -> None:
        assert self.secrets is not None and self.store is not None
        await self.secrets.follow(self.store)


def _why(exc: Exception) -> str:
    """What went wrong, for a log line: a BrokerError's message, or the unexpected with its
    traceback (logged here at error)."""
    if isinstance(exc, BrokerError):
        return exc.message
    log.error("vault: unexpected error in a background loop", exc_info=exc)
    return type(exc).__name__


def build_vault(
    config: VaultConfig,
    *,
    clock: Clock,
    auditor: Auditor,
    store: Store,
    actor: str,
    alg: str,
    max_token_ttl: float,
    with_secrets: bool,
    leases: LeaseTracker | None = None,
    env: Mapping[str, str] | None = None,
) -> VaultRuntime:
    """The Vault edge for this config. Raises ConfigError / VaultUnavailable when Transit is
    configured and its key cannot be read (or created)."""
    client = VaultClient(config, env=env)
    runtime = VaultRuntime(config=config, client=client, clock=clock, store=store)
    try:
        if config.transit is not None:
            runtime.keys = TransitKeyProvider(
                client, config.transit, clock=clock, alg=alg, max_token_ttl=max_token_ttl
            )
        if with_secrets:
            runtime.secrets = SecretBroker(
                HvacSecretBackend(client),
                leases or InMemoryLeaseTracker(),
                store=store,
                auditor=auditor,
                clock=clock,
                actor=actor,
                retry_initial=config.leases.retry_initial,
                retry_max=config.leases.retry_max,
            )
    except BaseException:
        client.close()
        raise
    return runtime
