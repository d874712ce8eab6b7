"""SecretBroker: a tool's downstream secret for one verified call, and the revocation of every
lease of a task.

When VerifyCredential succeeds for a tool with a ``secret:`` source, the core calls ``issue``:

- ``kv``: the KV v2 secret (its fields) is read and handed out; static, so no lease.
- ``dynamic``: ``MOUNT/creds/ROLE`` is read; the lease is recorded with ``revoke_at`` = the
  credential's exp. Vault's database engine cannot issue one shorter than the role's TTL on
  request, so the reaper (``reap``) revokes it at that time: the secret never outlives its
  credential by more than the reap interval.

Leases are revoked when due (``reap``), when the task ends (``revoke_tasks``, called by EndTask)
and on every event of the store's revocation feed (``on_revocation``: an operator's revoke of a
task, agent, server, tier or "issued before", sub-tasks ended with their parent). A revocation
that fails is not lost: the lease goes back to the tracker with exponential backoff, and each
failure is logged, counted (``stats``) and audited, until Vault's own lease TTL has passed (Vault
has then revoked it itself) which is reported as ``abandoned``.

Secret values never reach a log line or an audit record: ``SecretData`` prints ``[secure]`` and
the records carry the source, lease id and field names only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from broker.app.audit import Auditor
from broker.app.leases import LeaseRecord, LeaseSelector, LeaseTracker
from broker.app.ports import Store
from broker.core.audit.record import AuditEvent, AuditEventName
from broker.core.clock import Clock
from broker.core.errors import BrokerError, Reason, Unauthenticated, VaultUnavailable
from broker.core.model import RevocationEvent, RevocationKind
from broker.core.secret import IssuedSecret, SecretData, SecretKind, SecretSource
from broker.core.tokens.claims import TokenClaims

log = logging.getLogger("broker.app.secrets")


@dataclass(frozen=True)
class DynamicLease:
    data: SecretData
    lease_id: str
    lease_duration: float
    renewable: bool = False


class SecretBackend(Protocol):
    """Where secrets come from (Vault). Every method raises ``VaultUnavailable`` on failure."""

    async def read_kv(self, source: SecretSource) -> SecretData: ...

    async def issue_dynamic(self, source: SecretSource) -> DynamicLease: ...

    async def revoke_lease(self, lease_id: str) -> None: ...


@dataclass
class SecretStats:
    """Counters for metrics and tests."""

    issued_leases: int = 0
    kv_reads: int = 0
    issue_failures: int = 0
    revoked: int = 0
    revoke_failures: int = 0
    abandoned: int = 0  # gave up retrying: Vault's own lease TTL had passed


class SecretBroker:
    def __init__(
        self,
        backend: SecretBackend,
        leases: LeaseTracker,
        *,
        store: Store,
        auditor: Auditor,
        clock: Clock,
        actor: str,
        retry_initial: float = 1.0,
        retry_max: float = 60.0,
    ) -> None:
        self.backend = backend
        self.leases = leases
        self.stats = SecretStats()
        self._store = store
        self._auditor = auditor
        self._clock = clock
        self._actor = actor  # the broker's own SPIFFE ID, for what it does on its own
        self._retry_initial = retry_initial
        self._retry_max = retry_max

    # -- issuing -------------------------------------------------------------------------------

    async def issue(self, source: SecretSource, claims: TokenClaims, now: float) -> IssuedSecret:
        """The secret for the verified call ``claims``; ``VaultUnavailable`` (fail closed) if
        Vault cannot give it, ``Unauthenticated(REVOKED)`` if the task ended meanwhile."""
        if claims.exp <= now:  # accepted within the leeway, but no life left for a secret
            raise Unauthenticated(
                "the credential has expired: no secret is issued for it", Reason.TOKEN_EXPIRED
            )
        try:
            if source.kind is SecretKind.KV:
                data = await self.backend.read_kv(source)
                self.stats.kv_reads += 1
                issued = IssuedSecret(data, "", float(claims.exp), source.describe)
                self._audit_issue(claims, issued, source)
                return issued
            lease = await self.backend.issue_dynamic(source)
        except VaultUnavailable as exc:
            self.stats.issue_failures += 1
            self._record(
                AuditEventName.SECRET_ISSUE,
                claims.aud,
                task=claims.task,
                server=claims.aud,
                tool=claims.tool,
                jti=claims.jti,
                outcome="failed",
                reason=exc.message,
                extra={"source": source.describe},
            )
            raise
        revoke_at = min(float(claims.exp), now + lease.lease_duration)
        issued = IssuedSecret(lease.data, lease.lease_id, revoke_at, source.describe)
        if not lease.lease_id:  # e.g. static credentials: nothing to revoke
            self._audit_issue(claims, issued, source)
            return issued
        record = LeaseRecord(
            lease_id=lease.lease_id,
            task_id=claims.task,
            agent=claims.sub,
            server=claims.aud,
            tool=claims.tool,
            tier=claims.tier,
            source=source.describe,
            issued_at=now,
            revoke_at=revoke_at,
            vault_expires_at=now + lease.lease_duration,
        )
        try:
            await self.leases.add(record)
            # EndTask flips the task's state before it takes the task's leases: either it took
            # this one, or the state read here shows the task is over.
            task = await self._store.get_task(claims.task)
            if task is None or not task.is_live(self._clock.now()):
                raise Unauthenticated(
                    f"task {claims.task} ended while its secret was issued", Reason.REVOKED
                )
            self._audit_issue(claims, issued, source)
        except BaseException:
            try:
                taken = await self.leases.take_lease(record.lease_id)
            except BrokerError:
                taken = record  # the tracker is down: revoke it anyway
            if taken is not None:  # None: EndTask took it and revoked it
                await self._revoke([taken], "not handed out")
            raise
        self.stats.issued_leases += 1
        return issued

    def _audit_issue(self, claims: TokenClaims, issued: IssuedSecret, source: SecretSource) -> None:
        extra: dict[str, Any] = {"source": source.describe, "fields": ",".join(issued.data.fields)}
        if issued.lease_id:
            extra["lease_id"] = issued.lease_id
            extra["expires_at"] = issued.expires_at
        self._record(
            AuditEventName.SECRET_ISSUE,
            claims.aud,
            task=claims.task,
            server=claims.aud,
            tool=claims.tool,
            jti=claims.jti,
            outcome="issued",
            extra=extra,
        )

    # -- revoking ------------------------------------------------------------------------------

    async def revoke_tasks(self, task_ids: Iterable[str], reason: str) -> int:
        """Revoke every lease of these tasks now; failures are retried later. Returns how many
        were revoked now."""
        leases: list[LeaseRecord] = []
        for task_id in dict.fromkeys(task_ids):
            leases.extend(await self.leases.take_task(task_id))
        return await self._revoke(leases, reason)

    async def reap(self, now: float) -> int:
        """Revoke the leases that are due (credential expired, or a retry's time has come)."""
        count = 0
        while batch := await self.leases.take_due(now):
            expired = [lease for lease in batch if lease.attempts == 0]
            retries = [lease for lease in batch if lease.attempts > 0]
            count += await self._revoke(expired, "credential expired", now)
            count += await self._revoke(retries, "retry of a failed revocation", now)
            if len(batch) < 256:
                break
        return count

    async def on_revocation(self, event: RevocationEvent) -> int:
        """Revoke what an event of the store's revocation feed covers."""
        reason = f"revoked ({event.kind}): {event.reason}".rstrip(": ")
        if event.kind == RevocationKind.TASK:
            return await self.revoke_tasks([event.subject], reason)
        selector = _selector(event)
        if selector is None:
            return 0
        return await self._revoke(list(await self.leases.take_matching(selector)), reason)

    async def revoke_all(self, reason: str) -> int:
        return await self._revoke(list(await self.leases.take_all()), reason)

    async def _revoke(
        self, leases: Sequence[LeaseRecord], reason: str, now: float | None = None
    ) -> int:
        """Revoke ``leases`` concurrently; a failure goes back to the tracker for a retry."""
        if not leases:
            return 0
        results = await asyncio.gather(
            *(self.backend.revoke_lease(lease.lease_id) for lease in leases),
            return_exceptions=True,
        )
        now = self._clock.now() if now is None else now
        revoked = 0
        for lease, result in zip(leases, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result  # CancelledError, KeyboardInterrupt
            if isinstance(result, Exception):
                await self._failed(lease, result, now)
                continue
            revoked += 1
            self.stats.revoked += 1
            log.debug(
                "vault: revoked lease %s of task %s (%s)", lease.lease_id, lease.task_id, reason
            )
            self._audit_revoke(lease, "revoked", reason, lease.attempts + 1)
        return revoked

    async def _failed(self, lease: LeaseRecord, exc: Exception, now: float) -> None:
        self.stats.revoke_failures += 1
        why = exc.message if isinstance(exc, BrokerError) else type(exc).__name__
        if now >= lease.vault_expires_at:
            self.stats.abandoned += 1
            log.error(
                "vault: lease %s of task %s could not be revoked (%d attempts, last: %s); its "
                "Vault TTL has passed, so Vault ends it itself",
                lease.lease_id,
                lease.task_id,
                lease.attempts + 1,
                why,
            )
            self._audit_revoke(lease, "abandoned", why, lease.attempts + 1)
            return
        delay = min(self._retry_initial * 2**lease.attempts, self._retry_max)
        retry = lease.retry_at(now + delay)
        log.warning(
            "vault: lease %s of task %s failed to revoke (attempt %d: %s); retrying in %gs",
            lease.lease_id,
            lease.task_id,
            retry.attempts,
            why,
            delay,
        )
        self._audit_revoke(lease, "failed", why, retry.attempts, retry_in=delay)
        try:
            await self.leases.add(retry)
        except BrokerError as store_exc:
            log.error(
                "vault: lease %s could not be re-queued for retry (%s); Vault's TTL will end it",
                lease.lease_id,
                store_exc.message,
            )

    # -- feed ------------------------------------------------------------------------------------

    async def follow(self, store: Store, *, retry: float = 1.0) -> None:
        """Follow the store's revocation feed from now on, forever (cancel to stop)."""
        cursor = "$"
        while True:
            try:
                async for event in store.watch_revocations(cursor):
                    cursor = event.cursor
                    try:
                        await self.on_revocation(event)
                    except BrokerError as exc:  # e.g. the lease tracker is down
                        log.warning("vault: revocation event %s: %s", event.cursor, exc.message)
            except BrokerError as exc:
                log.warning("vault: revocation feed unavailable (%s); retrying", exc.message)
                await asyncio.sleep(retry)
            except Exception:  # the follower must survive anything (logged with its traceback)
                log.exception("vault: revocation feed: unexpected error; retrying")
                await asyncio.sleep(retry)

    def _audit_revoke(
        self, lease: LeaseRecord, outcome: str, reason: str, attempts: int, **extra: Any
    ) -> None:
        """One ``secret.revoke`` audit record for a lease (never its secret)."""
        self._record(
            AuditEventName.SECRET_REVOKE,
            self._actor,
            task=lease.task_id,
            server=lease.server,
            tool=lease.tool,
            outcome=outcome,
            reason=reason,
            extra={"lease_id": lease.lease_id, "attempts": attempts, **extra},
        )

    def _record(self, event: AuditEventName, actor: str, **fields: Any) -> None:
        try:
            self._auditor.record(
                AuditEvent(event=event, time=self._clock.now(), actor=actor, **fields)
            )
        except BrokerError as exc:  # AuditUnavailable: the action already happened
            log.error("vault: audit of %s failed: %s", event, exc.message)


def _selector(event: RevocationEvent) -> LeaseSelector | None:
    if event.kind == RevocationKind.AGENT:
        return LeaseSelector(agent=event.subject, issued_before=event.revoked_at)
    if event.kind == RevocationKind.SERVER:
        return LeaseSelector(server=event.subject, issued_before=event.revoked_at)
    if event.kind == RevocationKind.TIER and event.subject.isdigit():
        return LeaseSelector(tier=int(event.subject), issued_before=event.revoked_at)
    if event.kind == RevocationKind.ISSUED_BEFORE:
        return LeaseSelector(issued_before=event.revoked_at)
    return None  # CREDENTIAL events: one token consumed or revoked; its lease keeps its exp
