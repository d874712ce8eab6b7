"""The offline verifier: an MCP server checks credentials itself, without a broker round trip.

Per verification (no I/O unless the token names a kid not yet seen):

1. the revocation feed is fresh: it delivered an event or a heartbeat within ``stale_after``
   seconds, else ``STALE`` (fail closed; see below);
2. ``verify_token``, the broker's own checks: type, algorithm, known kid, signature, issuer, this
   server's audience, time, this tool, these arguments, the presenter's certificate if known;
3. the revocations the feed delivered: task ended or revoked, credential revoked, and the floors
   (agent, server, tier, issued before T) -> ``REVOKED``;
4. single use in this process (``verify`` only): a jti accepted before -> ``REPLAYED``.

Every refusal is kept in a bounded buffer and reported to the broker in batches in the
background (``ReportRefusals``, ``broker.client.verifier.refusals``): the broker's audit trail
shows what its offline verifiers refused, without a verification ever waiting for it.

The feed: a background task follows ``WatchRevocations`` from the last cursor it saw, reading
with a watchdog of ``stale_after`` seconds, and reconnects with exponential back-off (jittered,
``backoff_initial`` to ``backoff_max``) after an error, an end of stream or a silent stream. If
the broker refuses the cursor (its feed was reset), the verifier resubscribes from now and
refuses every token issued up to then (plus leeway): it cannot know what it missed.

Staleness: while the feed is down, a revocation may happen that this process does not hear of.
So once the feed has been silent longer than ``stale_after`` (default 5 s, the broker sending a
heartbeat every second), EVERY verification fails with ``Unauthenticated(Reason.STALE)`` until
the feed is back. This bounds how long a revoked credential can still be accepted here:
``stale_after`` plus the feed's delivery delay, never more.

Single use is per process: several replicas of one MCP server each keep their own cache, so a
credential could be replayed once per replica; use the online verifier (the broker consumes
atomically), or route one task to one replica, where that matters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Mapping
from typing import Any

import grpc

from broker._proto.broker.v1 import verifier_pb2
from broker.client.sdk.errors import BrokerUnavailable, error_from_rpc
from broker.client.verifier.base import (
    BaseVerifier,
    VerifiedCall,
    call_digest,
    call_of,
    presenter_thumbprint,
)
from broker.client.verifier.refusals import BATCH as REFUSAL_BATCH
from broker.client.verifier.refusals import NotedRefusal, RefusalBuffer
from broker.client.verifier.state import Freshness, ReplayCache, RevocationState
from broker.core.errors import BrokerError, InvalidRequest, Reason, Unauthenticated
from broker.core.model import RevocationEvent, RevocationKind
from broker.core.text import printable
from broker.core.tokens.claims import TokenClaims
from broker.rpc.convert import timestamp

log = logging.getLogger("broker.client.verifier")

KIND_OF_PB = {
    verifier_pb2.REVOCATION_KIND_HEARTBEAT: "heartbeat",
    verifier_pb2.REVOCATION_KIND_TASK: RevocationKind.TASK,
    verifier_pb2.REVOCATION_KIND_AGENT: RevocationKind.AGENT,
    verifier_pb2.REVOCATION_KIND_SERVER: RevocationKind.SERVER,
    verifier_pb2.REVOCATION_KIND_TIER: RevocationKind.TIER,
    verifier_pb2.REVOCATION_KIND_ISSUED_BEFORE: RevocationKind.ISSUED_BEFORE,
    verifier_pb2.REVOCATION_KIND_CREDENTIAL: RevocationKind.CREDENTIAL,
}
PRUNE_EVERY = 1.0  # seconds between prunings of the revocation state
REPORT_EVERY = 1.0  # seconds between reports of refusals to the broker


class OfflineVerifier(BaseVerifier):
    """Verifies credentials locally; follows the broker's revocation feed in the background."""

    mode = "offline"

    def __init__(self, address: str, **kwargs: Any) -> None:
        super().__init__(address, **kwargs)
        s = self.settings
        self.replay = ReplayCache(s.leeway)
        self.revocations = RevocationState(retention=s.max_token_ttl + 2 * s.leeway)
        self.freshness = Freshness(s.stale_after)
        self.cursor = ""
        self.events = 0  # revocation events applied (not heartbeats)
        self.reconnects = 0
        self.last_error = ""
        self._follower: asyncio.Task[None] | None = None
        self.refusals = RefusalBuffer()
        self.report_every = REPORT_EVERY
        self._reporter: asyncio.Task[None] | None = None
        self._closing = False
        self._progress = asyncio.Event()
        self._pruned_at = float("-inf")

    # -- life cycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, load the keys and follow the feed; return once the feed is live. Raises
        ``BrokerUnavailable`` if it is not live within ``start_timeout`` seconds."""
        await super().start()
        if self._follower is None:
            self._follower = asyncio.get_running_loop().create_task(
                self._follow(), name=f"revocation-feed {self.identity}"
            )
        if self._reporter is None:
            self._reporter = asyncio.get_running_loop().create_task(
                self._report_refusals(), name=f"refusal-reports {self.identity}"
            )
        if not await self.wait_fresh(self.settings.start_timeout):
            raise BrokerUnavailable(
                f"the revocation feed from {self.address} did not start within "
                f"{self.settings.start_timeout:g} s: {self.last_error or 'no answer'}"
            )

    async def aclose(self) -> None:
        self._closing = True
        reporter, self._reporter = self._reporter, None
        if reporter is not None:
            reporter.cancel()
            await asyncio.wait({reporter}, timeout=1.0)
            with contextlib.suppress(TimeoutError):  # the last batch, best effort
                async with asyncio.timeout(1.0):
                    await self.flush_refusals()
        follower, self._follower = self._follower, None
        # A cancellation can be lost (a read that completes as it is cancelled): insist.
        while follower is not None and not follower.done():
            follower.cancel()
            await asyncio.wait({follower}, timeout=0.1)
        await super().aclose()

    def fresh(self) -> bool:
        return self.freshness.fresh(self.monotonic())

    async def wait_fresh(self, within: float) -> bool:
        """Wait until the feed is fresh (for start-up and tests); false on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not self.fresh():
            left = deadline - loop.time()
            if left <= 0:
                return False
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, 0.05)):
                    await self._progress.wait()
        return True

    # -- verification --------------------------------------------------------------------------

    async def authenticate(self, token: str) -> TokenClaims:
        return await self._counted(self._authenticate(token))

    async def _authenticate(self, token: str) -> TokenClaims:
        """All checks but the call binding (for the HTTP layer, which does not know the tool call
        yet); a credential this process already accepted is refused. Does not consume it."""
        claims: TokenClaims | None = None
        try:
            self.freshness.check(self.monotonic())
            claims = await self._authenticated(token)
            self.revocations.check(claims, self.clock.now())
            if claims.jti in self.replay:  # used here already: no request of a session outlives
                raise Unauthenticated(
                    "credential was already used: it verifies once", Reason.REPLAYED
                )
        except Unauthenticated as exc:
            self._note(exc, claims, "")
            raise
        self._maybe_refresh_keys()
        return claims

    async def verify(
        self,
        token: str,
        *,
        tool: str,
        arguments: Mapping[str, Any] | None = None,
        args_sha256: str | None = None,
        presenter_cert_sha256: str | None = None,
    ) -> VerifiedCall:
        return await self._counted(
            self._verify(token, tool, arguments, args_sha256, presenter_cert_sha256)
        )

    async def _verify(
        self,
        token: str,
        tool: str,
        arguments: Mapping[str, Any] | None,
        args_sha256: str | None,
        presenter_cert_sha256: str | None,
    ) -> VerifiedCall:
        """Verify ``token`` for this call of ``tool`` with ``arguments`` (or their
        ``args_sha256``) and consume it. Raises ``Unauthenticated`` with the reason."""
        claims: TokenClaims | None = None
        try:
            self.freshness.check(self.monotonic())
            digest = call_digest(arguments, args_sha256)
            presenter = presenter_thumbprint(presenter_cert_sha256)
            claims = await self._checked(token, tool, digest, presenter)
            self.revocations.check(claims, self.clock.now())
            if not self.replay.consume(claims.jti, float(claims.exp), self.clock.now()):
                raise Unauthenticated(
                    "credential was already used: it verifies once", Reason.REPLAYED
                )
        except Unauthenticated as exc:
            self._note(exc, claims, tool)
            raise
        self._maybe_refresh_keys()
        return call_of(claims, self.mode)

    # -- refusals, to the broker's audit trail ---------------------------------------------------

    def _note(self, exc: Unauthenticated, claims: TokenClaims | None, tool: str) -> None:
        """Keep a refusal for the next report: never blocks, never the token."""
        if claims is None and isinstance(exc.claims, TokenClaims):
            claims = exc.claims  # the signature had verified
        if claims is not None:
            noted = NotedRefusal(
                reason=exc.reason.value,
                refused_at=self.clock.now(),
                tool=tool or claims.authorization_details[0].tool,
                jti=claims.jti,
                task_id=claims.task,
                agent=claims.sub,
            )
        else:
            noted = NotedRefusal(reason=exc.reason.value, refused_at=self.clock.now(), tool=tool)
        self.refusals.note(noted)

    async def flush_refusals(self) -> int:
        """Send what is buffered, in batches; what fails stays for the next round."""
        sent = 0
        while len(self.refusals) or self.refusals.dropped:
            batch = self.refusals.take(REFUSAL_BATCH)
            dropped = self.refusals.dropped
            request = verifier_pb2.ReportRefusalsRequest(
                refusals=[
                    verifier_pb2.Refusal(
                        reason=r.reason,
                        jti=r.jti,
                        task_id=r.task_id,
                        tool=r.tool,
                        agent=r.agent,
                        refused_at=timestamp(r.refused_at),
                        mode=self.mode,
                    )
                    for r in batch
                ],
                dropped=dropped,
            )
            try:
                await self._rpc("ReportRefusals", self.stub.ReportRefusals, request)
            except BrokerError as exc:
                self.refusals.put_back(batch)
                log.warning("could not report %d refusals to the broker: %s", len(batch), exc)
                break
            self.refusals.dropped -= dropped
            sent += len(batch)
        return sent

    async def _report_refusals(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.report_every)
            try:
                await self.flush_refusals()
            except Exception:  # the reporter must survive anything
                log.exception("reporting refusals failed")

    # -- the revocation feed -------------------------------------------------------------------

    def apply(self, event: RevocationEvent) -> None:
        """Take one feed message (event or heartbeat): the feed is alive, the cursor moves."""
        if event.cursor:
            self.cursor = event.cursor
        if event.kind != "heartbeat":
            self.revocations.apply(event)
            self.events += 1
            log.info(  # fields from the feed are escaped: a log line cannot be forged
                "revocation: %s %s (%s)",
                printable(event.kind, 32),
                printable(event.subject, 600),
                printable(event.reason, 600),
            )
        now = self.monotonic()
        self.freshness.touch(now)
        if self.metrics is not None:
            lag = self.clock.now() - event.revoked_at if event.kind != "heartbeat" else None
            self.metrics.feed_message(event.kind, lag)
        if now - self._pruned_at >= PRUNE_EVERY:
            self._pruned_at = now
            self.revocations.prune(self.clock.now())
            self.replay.prune(self.clock.now())
        self._progress.set()

    async def _follow(self) -> None:
        s = self.settings
        backoff = s.backoff_initial
        while not self._closing:
            try:
                got_any = await self._follow_once()
            except Exception as exc:  # the follower must survive anything
                log.exception("revocation feed: unexpected error")
                self.last_error, got_any = f"unexpected error: {exc!r}", False
            if got_any:
                backoff = s.backoff_initial
            await asyncio.sleep(backoff * (0.5 + random.random() / 2))  # noqa: S311 - jitter
            backoff = min(backoff * 2, s.backoff_max)
            self.reconnects += 1
            if self.metrics is not None:
                self.metrics.feed_reconnect()

    async def _follow_once(self) -> bool:
        """One subscription, until it fails or goes silent; whether it delivered anything."""
        if self.keys.fetched_at is None:  # dropped by a reset: load them before accepting
            await self.keys.refresh()
        call = self.stub.WatchRevocations(verifier_pb2.WatchRevocationsRequest(since=self.cursor))
        got_any = False
        try:
            while not self._closing:
                async with asyncio.timeout(self.settings.stale_after):
                    msg = await call.read()
                if msg is grpc.aio.EOF:
                    self.last_error = "the broker ended the revocation feed"
                    return got_any
                self.apply(
                    RevocationEvent(
                        cursor=msg.cursor,
                        kind=KIND_OF_PB.get(msg.kind, "unknown"),
                        subject=msg.subject,
                        revoked_at=float(msg.revoked_at.ToNanoseconds()) / 1e9,
                        reason=msg.reason,
                        blocked=msg.blocked,
                        until=(
                            float(msg.blocked_until.ToNanoseconds()) / 1e9
                            if msg.HasField("blocked_until")
                            else 0.0
                        ),
                    )
                )
                got_any = True
        except TimeoutError:
            self.last_error = f"the revocation feed was silent for {self.settings.stale_after:g} s"
        except grpc.aio.AioRpcError as exc:
            self._feed_failed(error_from_rpc(exc, what="WatchRevocations"))
        finally:
            call.cancel()
        if not self._closing:
            log.warning("revocation feed: %s; reconnecting", self.last_error)
        return got_any

    def _feed_failed(self, err: BrokerError) -> None:
        self.last_error = str(err)
        if isinstance(err, InvalidRequest) and err.field == "since":
            # The broker's feed was reset: what happened in between is unknown. Refuse every
            # token issued up to now (plus leeway for clock skew) and follow from now on.
            floor = self.clock.now() + self.settings.leeway
            self.revocations.revoke_issued_before(floor)
            self.keys.forget()  # a restarted broker may sign with other keys: load them again
            log.warning(
                "revocation feed reset (cursor %r refused): refusing tokens issued before %.0f",
                self.cursor,
                floor,
            )
            self.cursor = ""
