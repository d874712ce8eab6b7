"""What signs a token and what a published key is: pure types, no I/O.

- ``Signer`` / ``AsyncSigner``: the signing half that ``mint_token`` / ``mint_token_async`` need.
  The broker's full key port (rotate, refresh, list, publish) is ``broker.app.ports.KeyProvider``,
  an ``AsyncSigner``; its implementations are the file key ring (``broker.adapters.keys``) and
  Vault Transit (``broker.adapters.vault.transit``).
- ``KeyInfo``: the metadata of one key as ``ListSigningKeys`` shows it.
- ``PublishedKey``: a public key as replicas share it through the store, with the time until
  which it must stay published (its last token's expiry plus a margin).

The key types themselves (``SigningKey``, ``PublicKey``, ``KeySet``) live in
``broker.core.tokens.jwk`` and are re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import orjson

from broker.core.tokens.jwk import KeySet, PublicKey, SigningKey, jwk_thumbprint

DEFAULT_PUBLISH_MARGIN = 60.0  # seconds a retired key stays published past its last token

__all__ = [
    "AsyncSigner",
    "KeyInfo",
    "KeySet",
    "PublicKey",
    "PublishedKey",
    "Signer",
    "SigningKey",
]


class Signer(Protocol):
    """Signs in place (a key in memory): what ``mint_token`` needs."""

    @property
    def alg(self) -> str:
        """The JWS algorithm of the active key (ES256 or EdDSA)."""
        ...

    def active_kid(self) -> str:
        """The kid of the key that signs new tokens."""
        ...

    def sign(self, kid: str, signing_input: bytes) -> bytes:
        """The JWS signature bytes of ``signing_input`` by key ``kid``. Raises ``LookupError`` if
        ``kid`` is not the active key (e.g. a rotation happened in between: ask again)."""
        ...


class AsyncSigner(Protocol):
    """Signs without blocking the event loop: what ``mint_token_async`` needs. Same contract as
    ``Signer``; ``sign`` may be a network call (Vault Transit)."""

    @property
    def alg(self) -> str: ...

    def active_kid(self) -> str: ...

    async def sign(self, kid: str, signing_input: bytes) -> bytes: ...


@dataclass(frozen=True)
class KeyInfo:
    """Metadata of one published key (what ``ListSigningKeys`` shows)."""

    kid: str
    alg: str
    created_at: float
    active: bool
    retired_at: float | None = None
    publish_until: float | None = None
    transit_version: int | None = None  # the Vault Transit key version, for Transit keys
    replica: str = ""  # "": this replica's own key; else the replica that published it


@dataclass(frozen=True)
class PublishedKey:
    """A public key shared through the store so that every replica and every verifier trusts
    it: ``jwk`` (a JSON object, public members only) is published until ``until``."""

    kid: str
    jwk: str  # JSON text of the public JWK
    until: float  # seconds since the epoch; dropped from the store after that
    created_at: float = 0.0
    replica: str = ""  # who published it (host-pid), for operators

    @classmethod
    def of(
        cls, key: PublicKey, *, until: float, created_at: float = 0.0, replica: str = ""
    ) -> PublishedKey:
        return cls(key.kid, orjson.dumps(key.to_jwk()).decode(), until, created_at, replica)

    def public_key(self) -> PublicKey:
        """The key, checked: a JWK that does not parse, or whose RFC 7638 thumbprint is not
        ``kid``, raises ValueError (whoever wrote the store is not trusted to name keys)."""
        try:
            doc = orjson.loads(self.jwk)
        except orjson.JSONDecodeError:
            raise ValueError(f"published key {self.kid!r}: not JSON") from None
        if not isinstance(doc, dict):
            raise ValueError(f"published key {self.kid!r}: not a JWK object")
        key = PublicKey.from_jwk(doc)
        if key.kid != self.kid or jwk_thumbprint(doc) != self.kid:
            raise ValueError(f"published key {self.kid!r}: kid is not its thumbprint")
        return key
