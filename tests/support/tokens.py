"""Helpers for token tests: fixed TEST-ONLY keys, a claims factory, a one-key provider, verify().

The fixed keys are derived from public labels: anyone can recompute them. They exist so that the
token vectors are reproducible; nothing outside the tests may ever trust them.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from broker.core.canonical import args_sha256
from broker.core.tokens import (
    ES256,
    AuthorizationDetail,
    KeySet,
    SigningKey,
    TokenClaims,
    verify_token,
    x5t_s256,
)

ISSUER = "spiffe://test.example/broker"
AGENT = "spiffe://test.example/agent/coder"
PARENT_AGENT = "spiffe://test.example/agent/planner"
AUDIENCE = "spiffe://test.example/mcp/repo"
OTHER_AUDIENCE = "spiffe://test.example/mcp/deploy"
TOOL = "read_file"
TASK = "t_AAAAAAAAAAAAAAAAAAAAAA"
JTI = "t_AAAAAAAAAAAAAAAAAAAAAA.BBBBBBBBBBBBBBBBBBBBBB"
T0 = 1_800_000_000
TTL = 60
CERT_DER = b"0\x82TEST-ONLY agent certificate stand-in"
X5T = x5t_s256(CERT_DER)
# 20.0 as google.protobuf.Struct would deliver it: it must digest like 20.
ARGUMENTS: dict[str, Any] = {"path": "README.md", "max_lines": 20.0, "ranges": [[1, 5]]}
ARGS_SHA256 = args_sha256(ARGUMENTS)
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def fixed_private_key(
    alg: str, label: str
) -> ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey:
    """A TEST-ONLY private key derived from ``label`` (public, so never a secret)."""
    seed = hashlib.sha256(f"broker TEST-ONLY {alg} key: {label}".encode()).digest()
    if alg == ES256:
        return ec.derive_private_key(
            int.from_bytes(seed, "big") % (P256_ORDER - 1) + 1, ec.SECP256R1()
        )
    return ed25519.Ed25519PrivateKey.from_private_bytes(seed)


def fixed_key(alg: str = ES256, label: str = "primary") -> SigningKey:
    return SigningKey(fixed_private_key(alg, label))


def make_claims(**changes: Any) -> TokenClaims:
    """Claims of a well-formed token for TOOL at AUDIENCE, issued at T0; ``changes`` override."""
    detail_changes = {
        name: changes.pop(name)
        for name in ("server", "tool", "action", "args", "resource")
        if name in changes
    }
    detail = AuthorizationDetail(
        server=detail_changes.get("server", AUDIENCE),
        tool=detail_changes.get("tool", TOOL),
        action=detail_changes.get("action", "read"),
        args_sha256=detail_changes.get("args", ARGS_SHA256),
        resource=detail_changes.get("resource"),
    )
    claims = TokenClaims(
        iss=ISSUER,
        sub=AGENT,
        aud=AUDIENCE,
        iat=T0,
        nbf=T0,
        exp=T0 + TTL,
        jti=JTI,
        task=TASK,
        authorization_details=(detail,),
        cnf_x5t_s256=X5T,
        tier=1,
        taint="clean",
    )
    return dataclasses.replace(claims, **changes)


class OneKeyProvider:
    """A KeyProvider over one fixed key (no rotation), for tests that need a known key."""

    def __init__(self, key: SigningKey) -> None:
        self.key = key

    @property
    def alg(self) -> str:
        return self.key.alg

    def active_kid(self) -> str:
        return self.key.kid

    def sign(self, kid: str, signing_input: bytes) -> bytes:
        if kid != self.key.kid:
            raise LookupError(kid)
        return self.key.sign(signing_input)

    def public_jwks(self) -> list[dict[str, str]]:
        return [self.key.public_key.to_jwk()]

    def rotate(self, now: float, max_token_ttl: float) -> str:
        raise NotImplementedError

    def prune(self, now: float) -> list[str]:
        return []


def keyset(*keys: SigningKey) -> KeySet:
    return KeySet(key.public_key for key in keys)


def verify(token: str, keys: KeySet, **changes: Any) -> TokenClaims:
    """verify_token with the defaults every test shares: a call of TOOL with ARGUMENTS at T0+1."""
    context: dict[str, Any] = {
        "keys": keys,
        "allowed_algs": frozenset({"ES256", "EdDSA"}),
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "now": T0 + 1.0,
        "tool": TOOL,
        "args_sha256": ARGS_SHA256,
        "presenter_x5t_s256": X5T,
    }
    context.update(changes)
    return verify_token(token, **context)
