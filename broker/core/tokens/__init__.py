"""Task tokens: compact JWS (ES256 or EdDSA) carrying one tool call's authorization.

One implementation serves the broker (mint, VerifyCredential) and offline verifiers in MCP servers.
The short path is the safe one: ``mint_token`` to sign, ``verify_token`` to check.

    jws.py      RFC 7515 compact JWS, RFC 7518/8037 signatures, decode_unverified
    jwk.py      SigningKey, PublicKey (JWK, RFC 7638 kid), KeySet (what verifiers trust)
    keys.py     Signer, AsyncSigner, KeyInfo, PublishedKey (the key port is broker.app.ports)
    claims.py   TokenClaims, AuthorizationDetail, mint_token
    verify.py   verify_token
"""

from broker.core.tokens.claims import (
    ACTIONS,
    TAINTS,
    TOKEN_TYPE,
    AuthorizationDetail,
    TokenClaims,
    mint_token,
    x5t_s256,
)
from broker.core.tokens.jwk import KeySet, PublicKey, SigningKey
from broker.core.tokens.jws import EDDSA, ES256, MAX_TOKEN_BYTES, SUPPORTED_ALGS
from broker.core.tokens.keys import AsyncSigner, KeyInfo, PublishedKey, Signer
from broker.core.tokens.verify import DEFAULT_LEEWAY, verify_token

__all__ = [
    "ACTIONS",
    "DEFAULT_LEEWAY",
    "EDDSA",
    "ES256",
    "MAX_TOKEN_BYTES",
    "SUPPORTED_ALGS",
    "TAINTS",
    "TOKEN_TYPE",
    "AsyncSigner",
    "AuthorizationDetail",
    "KeyInfo",
    "KeySet",
    "PublicKey",
    "PublishedKey",
    "Signer",
    "SigningKey",
    "TokenClaims",
    "mint_token",
    "verify_token",
    "x5t_s256",
]
