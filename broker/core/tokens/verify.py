"""The one token verification used everywhere: the broker's VerifyCredential and offline verifiers.

Checks run cheapest first and stop at the first failure, raising ``Unauthenticated`` with the
API.md reason. The signature is checked before any claim is believed; the header is only used to
pick the key, and only from the allow-list of algorithms and the caller's key set (no ``jku``,
``jwk`` or ``x5u``: any header parameter other than alg, typ and kid is refused).

Revocation and single-use consumption need state and are NOT done here: callers do them after a
successful ``verify_token``.
"""

from __future__ import annotations

import hmac

from broker.core.errors import Reason, Unauthenticated
from broker.core.tokens.claims import TOKEN_TYPE, TokenClaims
from broker.core.tokens.jws import SUPPORTED_ALGS, decode_unverified
from broker.core.tokens.keys import KeySet

DEFAULT_LEEWAY = 5.0
_HEADER_MEMBERS = frozenset({"alg", "typ", "kid"})


def _show(value: object) -> str:
    """A bounded, escaped rendering of an attacker-controlled value for an error message."""
    text = repr(value)
    return text if len(text) <= 64 else text[:60] + "...'"


def _ct_equal(expected: str, given: str) -> bool:
    return hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8", "backslashreplace"))


def verify_token(
    token: str,
    *,
    keys: KeySet,
    allowed_algs: frozenset[str],
    issuer: str,
    audience: str,
    now: float,
    leeway: float = DEFAULT_LEEWAY,
    tool: str,
    args_sha256: str,
    presenter_x5t_s256: str | None = None,
) -> TokenClaims:
    """Verify a task token for THIS tool call at THIS server and return its claims.

    ``audience`` is the verifying MCP server's own SPIFFE ID, ``tool`` and ``args_sha256`` describe
    the call being made (the digest as lowercase hex, see ``broker.core.canonical.args_sha256``),
    and ``presenter_x5t_s256`` is the RFC 8705 thumbprint of the presenter's client certificate when
    known (checked against ``cnf.x5t#S256``). ``now`` and ``leeway`` are seconds.
    """
    header, payload, signing_input, signature = decode_unverified(token)

    typ = header.get("typ")
    if typ != TOKEN_TYPE:
        seen = "missing" if typ is None else _show(typ)
        raise Unauthenticated(
            f"token type (typ) is {seen}, expected {TOKEN_TYPE!r}", Reason.BAD_TOKEN_TYPE
        )
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in allowed_algs or alg not in SUPPORTED_ALGS:
        raise Unauthenticated(
            f"algorithm {_show(alg)} is not accepted; accepted: "
            f"{', '.join(sorted(allowed_algs & SUPPORTED_ALGS))}",
            Reason.BAD_TOKEN_TYPE,
        )
    if not header.keys() <= _HEADER_MEMBERS:
        extra = sorted(header.keys() - _HEADER_MEMBERS)
        raise Unauthenticated(
            f"header parameters {_show(extra)} are not accepted (only alg, typ, kid)",
            Reason.BAD_TOKEN_TYPE,
        )

    kid = header.get("kid")
    if not isinstance(kid, str):
        raise Unauthenticated("token header has no kid (key id)", Reason.UNKNOWN_KEY)
    key = keys.get(kid)
    if key is None:
        raise Unauthenticated(f"no published signing key has kid {_show(kid)}", Reason.UNKNOWN_KEY)
    if key.alg != alg:
        raise Unauthenticated(
            f"key {_show(kid)} is an {key.alg} key, the token says {alg}", Reason.BAD_SIGNATURE
        )
    key.verify(signing_input, signature)

    claims = TokenClaims.from_payload(payload)
    try:  # the signature verified: a refusal from here on carries what the token says
        if claims.iss != issuer:
            raise Unauthenticated(
                f"issuer is {_show(claims.iss)}, expected {issuer!r}", Reason.WRONG_ISSUER
            )
        if claims.aud != audience:
            raise Unauthenticated(
                f"token is for {_show(claims.aud)}, not for {audience!r}", Reason.WRONG_AUDIENCE
            )
        if claims.nbf > now + leeway or claims.iat > now + leeway:
            raise Unauthenticated(
                f"token is valid from {max(claims.nbf, claims.iat)}; now is {now:.0f} "
                f"(leeway {leeway:g} s)",
                Reason.NOT_YET_VALID,
            )
        if claims.exp <= now - leeway:
            raise Unauthenticated(
                f"token expired at {claims.exp}; now is {now:.0f} (leeway {leeway:g} s)",
                Reason.TOKEN_EXPIRED,
            )
        detail = claims.authorization_details[0]
        if detail.tool != tool:
            raise Unauthenticated(
                f"token is for tool {_show(detail.tool)}, not {_show(tool)}", Reason.TOOL_MISMATCH
            )
        if not _ct_equal(detail.args_sha256, args_sha256):
            raise Unauthenticated(
                "the arguments of this call do not match the token's args_sha256",
                Reason.ARGS_MISMATCH,
            )
        if presenter_x5t_s256 is not None and not _ct_equal(
            claims.cnf_x5t_s256, presenter_x5t_s256
        ):
            raise Unauthenticated(
                "the presenter's certificate is not the one the token is bound to (cnf.x5t#S256)",
                Reason.CERT_MISMATCH,
            )
    except Unauthenticated as exc:
        exc.claims = claims
        raise
    return claims
