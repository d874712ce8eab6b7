"""What both verifiers share: settings, the verified call, the broker connection, the keys.

A verifier belongs to one MCP server: it connects to the broker over mutual TLS with that
server's X.509-SVID, and the SPIFFE ID in it is the audience every token must name. Token checks
are ``broker.core.tokens.verify.verify_token``, the broker's own, so an offline verifier rejects
what the broker rejects, with the same reasons.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Self, TypeVar

import grpc

from broker._proto.broker.v1 import common_pb2, verifier_pb2, verifier_pb2_grpc
from broker.client.sdk.channel import PathLike, WorkloadCredentials, secure_channel
from broker.client.sdk.errors import error_from_rpc
from broker.client.verifier.keys import KeyCache
from broker.client.verifier.metrics import VerifierMetrics
from broker.core.canonical import args_sha256 as digest_of
from broker.core.canonical import check_sha256_hex
from broker.core.clock import Clock, SystemClock
from broker.core.errors import BrokerError, InvalidRequest, Reason, Unauthenticated
from broker.core.model import Taint
from broker.core.registry import TIER_MAX_TTL
from broker.core.tokens.claims import TokenClaims
from broker.core.tokens.jws import ES256, decode_unverified
from broker.core.tokens.keys import KeySet
from broker.core.tokens.verify import verify_token
from broker.core.tooldefs import PinStatus, ServerPolicy, SyncResult
from broker.rpc.convert import PIN_STATUS_OF_PB

T = TypeVar("T")
log = logging.getLogger("broker.client.verifier")

TAINT_OF_PB = {
    common_pb2.TAINT_CLEAN: Taint.CLEAN,
    common_pb2.TAINT_UNTRUSTED: Taint.UNTRUSTED,
    common_pb2.TAINT_SUSPECT: Taint.SUSPECT,
}
_TRUST_TO_PB = {
    None: verifier_pb2.CONTENT_TRUST_UNSPECIFIED,
    True: verifier_pb2.TRUSTED,
    False: verifier_pb2.UNTRUSTED,
}


@dataclass(frozen=True)
class VerifierSettings:
    """Knobs of a verifier; the defaults suit production.

    ``stale_after``: the offline verifier fails every verification with ``STALE`` once the
    revocation feed has delivered nothing (event or heartbeat) for this long. The broker sends a
    heartbeat every second when idle.
    """

    issuer: str = ""  # default: spiffe://<this server's trust domain>/broker
    algorithms: frozenset[str] = frozenset({ES256})
    leeway: float = 5.0
    stale_after: float = 5.0
    jwks_min_interval: float = 5.0  # unknown kid: refetch the JWKS at most this often
    jwks_max_age: float = 300.0
    backoff_initial: float = 0.1  # reconnecting the revocation feed
    backoff_max: float = 2.0
    max_token_ttl: float = float(max(TIER_MAX_TTL.values()))
    rpc_timeout: float = 3.0
    start_timeout: float = 10.0


@dataclass(frozen=True)
class VerifiedCall:
    """A tool call whose credential verified (and, for ``verify``, was consumed)."""

    task_id: str
    agent: str  # the agent's SPIFFE ID (sub)
    server: str  # this server's SPIFFE ID (aud)
    tool: str
    args_sha256: str
    tier: int
    taint: Taint  # offline: as minted; online: the task's taint now
    jti: str
    expires_at: float
    actors: tuple[str, ...] = ()  # delegation chain (RFC 8693 act), nearest first
    mode: str = "offline"


def call_of(claims: TokenClaims, mode: str) -> VerifiedCall:
    return VerifiedCall(
        task_id=claims.task,
        agent=claims.sub,
        server=claims.aud,
        tool=claims.tool,
        args_sha256=claims.args_sha256,
        tier=claims.tier,
        taint=Taint.from_label(claims.taint),
        jti=claims.jti,
        expires_at=float(claims.exp),
        actors=claims.actors,
        mode=mode,
    )


def call_digest(arguments: Mapping[str, Any] | None, args_sha256: str | None) -> str:
    """The args digest of a call given by its arguments or by their digest (exactly one)."""
    if (arguments is None) == (args_sha256 is None):
        raise TypeError("give exactly one of arguments and args_sha256")
    try:
        if arguments is not None:
            return digest_of(arguments)
        return check_sha256_hex(args_sha256 or "", "args_sha256")
    except InvalidRequest as exc:
        raise Unauthenticated(
            f"the call's {exc.field} cannot match any credential: {exc.message}",
            Reason.ARGS_MISMATCH,
        ) from None


def presenter_thumbprint(presenter_cert_sha256: str | None) -> str | None:
    """RFC 8705 ``x5t#S256`` (base64url) from a hex SHA-256 of the presenter's certificate."""
    if presenter_cert_sha256 is None:
        return None
    try:
        raw = bytes.fromhex(check_sha256_hex(presenter_cert_sha256, "presenter_cert_sha256"))
    except InvalidRequest as exc:
        raise Unauthenticated(exc.message, Reason.CERT_MISMATCH) from None
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class BaseVerifier:
    """Connection, identity and key cache; ``OfflineVerifier`` and ``OnlineVerifier`` add
    ``verify`` (consumes) on top of ``authenticate`` (does not)."""

    mode = "base"

    def __init__(
        self,
        address: str,
        *,
        ca: PathLike | None = None,
        cert: PathLike | None = None,
        key: PathLike | None = None,
        credentials: WorkloadCredentials | None = None,
        settings: VerifierSettings | None = None,
        metrics: VerifierMetrics | None = None,
        clock: Clock | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if credentials is None:
            if ca is None or cert is None or key is None:
                raise TypeError("give ca, cert and key, or credentials")
            credentials = WorkloadCredentials.from_files(ca, cert, key)
        identity = credentials.identity()
        self.address = address
        self.identity = str(identity.spiffe_id)
        self.settings = settings or VerifierSettings()
        self.metrics = metrics  # opt-in counters (broker.client.verifier.metrics)
        self.issuer = self.settings.issuer or f"spiffe://{identity.spiffe_id.trust_domain}/broker"
        self.clock: Clock = clock or SystemClock()
        self.monotonic = monotonic
        self._credentials = credentials
        self._channel: grpc.aio.Channel | None = None
        self._stub: verifier_pb2_grpc.VerifierServiceStub | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self.keys = KeyCache(
            self._fetch_keys,
            monotonic=monotonic,
            min_interval=self.settings.jwks_min_interval,
            max_age=self.settings.jwks_max_age,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.identity!r}, broker={self.address!r})"

    async def _counted(self, step: Awaitable[T]) -> T:
        """Await one verification, telling the metrics hook how it ended."""
        try:
            result = await step
        except BaseException as exc:
            self._count(exc)
            raise
        self._count(None)
        return result

    def _count(self, exc: BaseException | None) -> None:
        """Tell the metrics hook (if any) how one verification ended."""
        if self.metrics is None:
            return
        if exc is None:
            self.metrics.verification(self.mode, "accepted", "")
        elif isinstance(exc, BrokerError):
            self.metrics.verification(self.mode, "rejected", exc.reason.value)

    # -- life cycle --------------------------------------------------------------------------

    @property
    def stub(self) -> verifier_pb2_grpc.VerifierServiceStub:
        if self._stub is None:
            raise RuntimeError(f"{type(self).__name__} is not started: use `async with` or start()")
        return self._stub

    async def start(self) -> None:
        """Connect to the broker and load its signing keys. Call from the event loop that will
        verify (the MCP server's)."""
        if self._channel is None:
            self._channel = secure_channel(self.address, self._credentials)
            self._stub = verifier_pb2_grpc.VerifierServiceStub(self._channel)  # type: ignore[no-untyped-call]
        await self.keys.refresh(force=True)

    async def aclose(self) -> None:
        if self._background:
            for task in self._background:
                task.cancel()
            await asyncio.wait(set(self._background))
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._stub = None

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- broker calls --------------------------------------------------------------------------

    async def _rpc(self, what: str, rpc: Any, request: Any) -> Any:
        try:
            return await rpc(request, timeout=self.settings.rpc_timeout)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, what=what) from None

    async def _fetch_keys(self) -> KeySet:
        resp = await self._rpc(
            "GetSigningKeys", self.stub.GetSigningKeys, verifier_pb2.GetSigningKeysRequest()
        )
        return KeySet.from_jwks(resp.jwks_json, allowed_algs=self.settings.algorithms)

    async def report_outcome(
        self,
        call: VerifiedCall | str,
        *,
        succeeded: bool = True,
        result_sha256: str = "",
        trusted: bool | None = None,
        findings: Iterable[tuple[str, str]] = (),
    ) -> Taint:
        """ReportOutcome for a verified call (or its jti). ``trusted`` None: the registry's
        content trust of this server applies. ``findings``: ``(kind, detail)`` of the
        sanitizer's suspect findings; any finding makes the task suspect. Returns the task's
        taint after the report. Raises the broker's typed errors."""
        jti = call.jti if isinstance(call, VerifiedCall) else call
        resp = await self._rpc(
            "ReportOutcome",
            self.stub.ReportOutcome,
            verifier_pb2.ReportOutcomeRequest(
                jti=jti,
                status=verifier_pb2.SUCCEEDED if succeeded else verifier_pb2.FAILED,
                result_sha256=result_sha256,
                content_trust=_TRUST_TO_PB[trusted],
                findings=[common_pb2.Finding(kind=k, detail=d) for k, d in findings],
            ),
        )
        return TAINT_OF_PB.get(resp.taint, Taint.SUSPECT)

    async def sync_tool_definitions(self, observed: Mapping[str, str]) -> SyncResult:
        """SyncToolDefinitions (``broker guard``): report the digests of the tool definitions
        the upstream lists (tool -> sha256, ``broker.core.tooldefs.tool_digest``); learn which
        may be listed and called, and what the registry says of this server."""
        resp = await self._rpc(
            "SyncToolDefinitions",
            self.stub.SyncToolDefinitions,
            verifier_pb2.SyncToolDefinitionsRequest(
                tools=[verifier_pb2.ObservedTool(name=n, sha256=d) for n, d in observed.items()]
            ),
        )
        return SyncResult(
            ServerPolicy(
                name=resp.server,
                trusted={verifier_pb2.TRUSTED: True, verifier_pb2.UNTRUSTED: False}.get(
                    resp.content_trust
                ),
                allow_resources=resp.allow_resources,
                allow_prompts=resp.allow_prompts,
            ),
            {t.name: PIN_STATUS_OF_PB.get(t.status, PinStatus.UNKNOWN) for t in resp.tools},
        )

    # -- token checks --------------------------------------------------------------------------

    async def _checked(
        self, token: str, tool: str, digest: str, presenter: str | None
    ) -> TokenClaims:
        """``verify_token`` against the cached keys; on an unknown kid, refresh the keys
        (rate-limited) and try once more."""
        before = self.keys.keys
        try:
            return self._verify_with(before, token, tool, digest, presenter)
        except Unauthenticated as exc:
            if exc.reason is not Reason.UNKNOWN_KEY:
                raise
            await self.keys.refresh()
            if self.keys.keys is before:
                raise
        return self._verify_with(self.keys.keys, token, tool, digest, presenter)

    def _verify_with(
        self, keys: KeySet, token: str, tool: str, digest: str, presenter: str | None
    ) -> TokenClaims:
        return verify_token(
            token,
            keys=keys,
            allowed_algs=self.settings.algorithms,
            issuer=self.issuer,
            audience=self.identity,
            now=self.clock.now(),
            leeway=self.settings.leeway,
            tool=tool,
            args_sha256=digest,
            presenter_x5t_s256=presenter,
        )

    async def _authenticated(self, token: str) -> TokenClaims:
        """Every check of ``verify_token`` but the call binding, which the HTTP layer cannot
        know: the token is checked against the tool and digest it names itself (read before
        the signature is checked, but believed only after ``verify_token`` checked it)."""
        details = decode_unverified(token).payload.get("authorization_details")
        first = details[0] if isinstance(details, list) and details else None
        named: dict[str, Any] = first if isinstance(first, dict) else {}
        tool, digest = named.get("tool"), named.get("args_sha256")
        return await self._checked(
            token,
            tool if isinstance(tool, str) else "",
            digest if isinstance(digest, str) else "",
            presenter=None,
        )

    def _maybe_refresh_keys(self) -> None:
        """Refresh an old key set in the background (verification goes on meanwhile)."""
        if self.keys.old() and self.keys.due():
            self._spawn(self.keys.refresh())

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def rejected(exc: BrokerError) -> Unauthenticated:
    """Any failure to verify as ``Unauthenticated`` with the reason preserved."""
    if isinstance(exc, Unauthenticated):
        return exc
    return Unauthenticated(exc.message, exc.reason)
