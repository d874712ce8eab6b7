"""The online verifier: every tool call is checked and consumed by the broker (VerifyCredential).

Single use holds across every replica of the server (the broker's store consumes atomically),
revocation is exact, and ``VerifiedCall.taint`` is the task's taint now rather than when the
credential was minted. The cost is a round trip to the broker per tool call (see docs/mcp.md).

``authenticate`` (the HTTP layer, before the tool call is known) checks the signature, issuer,
audience and time against the cached keys, then asks the broker without consuming
(``check_only``): a used credential, an ended task's or a blocked subject's is refused at every
request of a session, not only at the tool call. If the broker cannot be reached, both fail
closed with ``STALE``: revocation cannot be confirmed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from broker._proto.broker.v1 import verifier_pb2
from broker.client.sdk.errors import BrokerUnavailable
from broker.client.verifier.base import (
    TAINT_OF_PB,
    BaseVerifier,
    VerifiedCall,
    call_digest,
    rejected,
)
from broker.core.errors import BrokerError, Reason, Unauthenticated
from broker.core.model import Taint
from broker.core.tokens.claims import TokenClaims


class OnlineVerifier(BaseVerifier):
    mode = "online"

    async def authenticate(self, token: str) -> TokenClaims:
        return await self._counted(self._authenticate(token))

    async def _authenticate(self, token: str) -> TokenClaims:
        """Local checks, then the broker's, without consuming (``check_only``): a credential
        already used, of an ended or revoked task, or under a kill switch is refused here too,
        so that no request of a session outlives it."""
        claims = await self._authenticated(token)
        self._maybe_refresh_keys()
        detail = claims.authorization_details[0]
        try:
            await self._rpc(
                "VerifyCredential",
                self.stub.VerifyCredential,
                verifier_pb2.VerifyCredentialRequest(
                    token=token, tool=detail.tool, args_sha256=detail.args_sha256, check_only=True
                ),
            )
        except BrokerUnavailable as exc:
            raise Unauthenticated(
                f"the broker cannot be reached to check the credential: {exc.message}",
                Reason.STALE,
            ) from None
        except BrokerError as exc:
            raise rejected(exc) from None
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
        digest = call_digest(arguments, args_sha256)
        try:
            resp = await self._rpc(
                "VerifyCredential",
                self.stub.VerifyCredential,
                verifier_pb2.VerifyCredentialRequest(
                    token=token,
                    tool=tool,
                    args_sha256=digest,
                    presenter_cert_sha256=presenter_cert_sha256 or "",
                ),
            )
        except BrokerUnavailable as exc:
            raise Unauthenticated(
                f"the broker cannot be reached to verify the credential: {exc.message}",
                Reason.STALE,
            ) from None
        except BrokerError as exc:
            raise rejected(exc) from None
        return VerifiedCall(
            task_id=str(resp.task_id),
            agent=str(resp.agent),
            server=self.identity,
            tool=str(resp.tool),
            args_sha256=digest,
            tier=int(resp.tier),
            taint=TAINT_OF_PB.get(resp.taint, Taint.SUSPECT),
            jti=str(resp.jti),
            expires_at=float(resp.expires_at.ToNanoseconds()) / 1e9,
            mode=self.mode,
        )
