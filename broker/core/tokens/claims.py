"""The claims of a task token (a JWT, explicitly typed ``task+jwt``) and minting.

- https://www.rfc-editor.org/rfc/rfc7519#section-4.1 (iss, sub, aud, exp, nbf, iat, jti)
- https://www.rfc-editor.org/rfc/rfc8725#section-3.11 (explicit typing: ``typ: task+jwt``)
- https://www.rfc-editor.org/rfc/rfc9396 (authorization_details: one ``tool_call`` detail)
- https://www.rfc-editor.org/rfc/rfc8705#section-3.1 (``cnf: {"x5t#S256": ...}``, certificate-bound)
- https://www.rfc-editor.org/rfc/rfc8693#section-4.1 (``act``: the delegation chain of sub-agents)

Validation lives in ``__post_init__`` (types and values, ``ValueError`` naming the claim), so a
claims object that exists is well-formed whether the broker built it or a verifier parsed it;
``from_payload`` turns those errors into ``Unauthenticated(MALFORMED_TOKEN)``. Unknown top-level
claims are ignored (RFC 7519 §4); unknown members inside ``authorization_details``, ``cnf`` or
``act`` are rejected, because there they could narrow the grant in a way this code would not
enforce.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from broker.core.errors import Reason, Unauthenticated
from broker.core.tokens.jws import b64url_encode, sign_compact, sign_compact_async
from broker.core.tokens.keys import AsyncSigner, Signer

TOKEN_TYPE = "task+jwt"  # noqa: S105 - a media type, not a password
DETAIL_TYPE = "tool_call"
ACTIONS = frozenset({"read", "write", "exec", "secret", "deploy"})
TAINTS = frozenset({"clean", "untrusted", "suspect"})
MAX_TIER = 3
MAX_DELEGATION_DEPTH = 8
MAX_TIMESTAMP = 2**53 - 1  # the largest integer every JSON implementation reads exactly

_JTI = re.compile(r"[A-Za-z0-9._-]{16,128}")  # e.g. broker.core.ids: "<task id>.<128 random bits>"
_X5T_S256 = re.compile(r"[A-Za-z0-9_-]{43}")  # 32-byte SHA-256, base64url
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_DETAIL_MEMBERS = frozenset({"type", "server", "tool", "action", "args_sha256", "resource"})
_ACT_MEMBERS = frozenset({"sub", "act"})


def x5t_s256(cert_der: bytes) -> str:
    """RFC 8705 certificate thumbprint: base64url SHA-256 of the DER certificate."""
    return b64url_encode(hashlib.sha256(cert_der).digest())


def _text(name: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name}: must be a non-empty string")


def _integer(name: str, value: object, high: int) -> None:
    if type(value) is not int or not 0 <= value <= high:
        raise ValueError(f"{name}: must be an integer from 0 to {high}")


@dataclass(frozen=True, slots=True)
class AuthorizationDetail:
    """One RFC 9396 authorization detail of type ``tool_call``: this tool, these arguments."""

    server: str
    tool: str
    action: str  # the tool's risk: read, write, exec, secret or deploy
    args_sha256: str  # lowercase hex SHA-256 of the RFC 8785 canonical arguments
    resource: str | None = None
    type: str = DETAIL_TYPE  # the only type there is

    def __post_init__(self) -> None:
        if self.type != DETAIL_TYPE:
            raise ValueError(f"authorization_details.type: must be {DETAIL_TYPE!r}")
        _text("authorization_details.server", self.server)
        _text("authorization_details.tool", self.tool)
        if not isinstance(self.action, str) or self.action not in ACTIONS:
            raise ValueError(f"authorization_details.action: must be one of {sorted(ACTIONS)}")
        if not isinstance(self.args_sha256, str) or not _SHA256_HEX.fullmatch(self.args_sha256):
            raise ValueError("authorization_details.args_sha256: must be 64 lowercase hex")
        if self.resource is not None:
            _text("authorization_details.resource", self.resource)

    def to_json(self) -> dict[str, str]:
        detail = {
            "type": DETAIL_TYPE,
            "server": self.server,
            "tool": self.tool,
            "action": self.action,
            "args_sha256": self.args_sha256,
        }
        if self.resource is not None:
            detail["resource"] = self.resource
        return detail

    @classmethod
    def from_json(cls, detail: object) -> AuthorizationDetail:
        """Parse one detail; raise ``ValueError`` naming the member."""
        if not isinstance(detail, dict):
            raise ValueError("authorization_details[0]: must be an object")
        if not detail.keys() <= _DETAIL_MEMBERS:
            unknown = sorted(detail.keys() - _DETAIL_MEMBERS)[:4]
            raise ValueError(f"authorization_details: unknown members {unknown}")
        try:
            return cls(
                server=detail["server"],
                tool=detail["tool"],
                action=detail["action"],
                args_sha256=detail["args_sha256"],
                resource=_present_or_none(detail, "resource"),
                type=detail["type"],
            )
        except KeyError as exc:
            raise ValueError(f"authorization_details.{exc.args[0]}: missing") from None


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """What a task token says: who (sub, cnf), for whom (aud), what (authorization_details),
    when (iat, nbf, exp), within which task, at which tier and taint."""

    iss: str  # the broker
    sub: str  # the agent's SPIFFE ID
    aud: str  # exactly one MCP server's SPIFFE ID
    iat: int
    nbf: int
    exp: int
    jti: str
    task: str
    authorization_details: tuple[AuthorizationDetail]
    cnf_x5t_s256: str  # RFC 8705 thumbprint of the agent's certificate
    tier: int
    taint: str
    act: dict[str, Any] | None = None  # RFC 8693: {"sub": parent agent, "act": {...}}, or None

    def __post_init__(self) -> None:
        _text("iss", self.iss)
        _text("sub", self.sub)
        if isinstance(self.aud, list):
            raise ValueError("aud: must be exactly one audience, a string")
        _text("aud", self.aud)
        _integer("iat", self.iat, MAX_TIMESTAMP)
        _integer("nbf", self.nbf, MAX_TIMESTAMP)
        _integer("exp", self.exp, MAX_TIMESTAMP)
        if self.exp <= self.nbf or self.exp <= self.iat:
            raise ValueError("exp: must be after iat and nbf")
        if not isinstance(self.jti, str) or not _JTI.fullmatch(self.jti):
            raise ValueError("jti: must be 16 to 128 characters of [A-Za-z0-9._-]")
        _text("task", self.task)
        details = self.authorization_details
        if (
            not isinstance(details, tuple)
            or len(details) != 1
            or not isinstance(details[0], AuthorizationDetail)
        ):
            raise ValueError("authorization_details: must hold exactly one tool_call detail")
        if not isinstance(self.cnf_x5t_s256, str) or not _X5T_S256.fullmatch(self.cnf_x5t_s256):
            raise ValueError("cnf.x5t#S256: must be a base64url SHA-256 (43 characters)")
        _integer("tier", self.tier, MAX_TIER)
        if not isinstance(self.taint, str) or self.taint not in TAINTS:
            raise ValueError(f"taint: must be one of {sorted(TAINTS)}")
        if self.act is not None:
            _delegation_chain(self.act)

    @property
    def detail(self) -> AuthorizationDetail:
        return self.authorization_details[0]

    @property
    def tool(self) -> str:
        return self.authorization_details[0].tool

    @property
    def args_sha256(self) -> str:
        return self.authorization_details[0].args_sha256

    @property
    def actors(self) -> tuple[str, ...]:
        """The delegation chain from ``act``: the parent agent first, then its parent, ..."""
        return () if self.act is None else _delegation_chain(self.act)

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "iss": self.iss,
            "sub": self.sub,
            "aud": self.aud,
            "iat": self.iat,
            "nbf": self.nbf,
            "exp": self.exp,
            "jti": self.jti,
            "task": self.task,
            "authorization_details": [self.authorization_details[0].to_json()],
            "cnf": {"x5t#S256": self.cnf_x5t_s256},
            "tier": self.tier,
            "taint": self.taint,
        }
        if self.act is not None:
            payload["act"] = self.act
        return payload

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> TokenClaims:
        """Parse a JWT payload; raise ``Unauthenticated(MALFORMED_TOKEN)`` naming the bad claim."""
        try:
            details = payload["authorization_details"]
            if not isinstance(details, list) or len(details) != 1:
                raise ValueError("authorization_details: must be a list of exactly one detail")
            cnf = payload["cnf"]
            if not isinstance(cnf, dict) or cnf.keys() != {"x5t#S256"}:
                raise ValueError('cnf: must be {"x5t#S256": thumbprint}')
            return cls(
                iss=payload["iss"],
                sub=payload["sub"],
                aud=payload["aud"],
                iat=payload["iat"],
                nbf=payload["nbf"],
                exp=payload["exp"],
                jti=payload["jti"],
                task=payload["task"],
                authorization_details=(AuthorizationDetail.from_json(details[0]),),
                cnf_x5t_s256=cnf["x5t#S256"],
                tier=payload["tier"],
                taint=payload["taint"],
                act=_present_or_none(payload, "act"),
            )
        except KeyError as exc:
            raise Unauthenticated(
                f"missing claim {exc.args[0]!r}", Reason.MALFORMED_TOKEN
            ) from None
        except ValueError as exc:
            raise Unauthenticated(f"bad claim {exc}", Reason.MALFORMED_TOKEN) from None


def _present_or_none(payload: Mapping[str, Any], name: str) -> Any:
    """An optional claim: absent is None, an explicit null is refused (one spelling per value)."""
    value = payload.get(name)
    if value is None and name in payload:
        raise ValueError(f"{name}: omit it rather than null")
    return value


def _delegation_chain(act: object) -> tuple[str, ...]:
    """Validate an RFC 8693 ``act`` claim; return its subjects, outermost (nearest) first."""
    chain: list[str] = []
    while True:
        if not isinstance(act, dict) or not act.keys() <= _ACT_MEMBERS:
            raise ValueError('act: must be {"sub": ..., "act": {...}} (RFC 8693)')
        if len(chain) == MAX_DELEGATION_DEPTH:
            raise ValueError(f"act: at most {MAX_DELEGATION_DEPTH} levels of delegation")
        _text("act.sub", act.get("sub"))
        chain.append(act["sub"])
        if "act" not in act:
            return tuple(chain)
        act = act["act"]


def mint_token(claims: TokenClaims, signer: Signer) -> str:
    """Sign ``claims`` with the signer's active key: header ``{alg, typ: task+jwt, kid}``."""
    payload = claims.to_payload()
    try:
        return _sign_with_active_key(payload, signer)
    except LookupError:  # a rotation between active_kid() and sign(): once more, with the new key
        return _sign_with_active_key(payload, signer)


def _sign_with_active_key(payload: dict[str, Any], signer: Signer) -> str:
    kid = signer.active_kid()
    header = {"alg": signer.alg, "typ": TOKEN_TYPE, "kid": kid}
    return sign_compact(header, payload, partial(signer.sign, kid))


async def mint_token_async(claims: TokenClaims, signer: AsyncSigner) -> str:
    """``mint_token`` for the event loop: the signature is awaited (the broker's key port,
    ``broker.app.ports.KeyProvider``; Vault Transit signs over the network)."""
    payload = claims.to_payload()
    try:
        return await _sign_with_active_key_async(payload, signer)
    except LookupError:  # a rotation between active_kid() and the signature: once more
        return await _sign_with_active_key_async(payload, signer)


async def _sign_with_active_key_async(payload: dict[str, Any], signer: AsyncSigner) -> str:
    kid = signer.active_kid()
    header = {"alg": signer.alg, "typ": TOKEN_TYPE, "kid": kid}
    return await sign_compact_async(header, payload, partial(signer.sign, kid))
