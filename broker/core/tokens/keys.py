"""The KeyProvider port: whatever holds the broker's signing keys (the file key ring of
``broker.adapters.keys``, or Vault Transit in ``broker.adapters.vault.transit``), and the metadata
of a published key. The key types themselves (``SigningKey``, ``PublicKey``, ``KeySet``) live in
``broker.core.tokens.jwk`` and are re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from broker.core.tokens.jwk import KeySet, PublicKey, SigningKey

DEFAULT_PUBLISH_MARGIN = 60.0  # seconds a retired key stays published past its last token

__all__ = ["AsyncSigning", "KeyInfo", "KeyProvider", "KeySet", "PublicKey", "SigningKey"]


class KeyProvider(Protocol):
    """The port to whatever holds the broker's signing keys: memory and files
    (``LocalKeyProvider`` below) or Vault Transit (``broker.adapters.vault.transit``), which also
    offers ``sign_async`` (see ``AsyncSigning``) so that a mint never blocks the event loop.

    Keys rotate: the active key signs; a retired key is no longer used to sign but stays in
    ``public_jwks`` until every token it signed has expired, then ``prune`` drops it.
    """

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

    def public_jwks(self) -> list[dict[str, str]]:
        """Every public key still published (active and retired-not-yet-pruned), as JWKs."""
        ...

    def rotate(self, now: float, max_token_ttl: float) -> str:
        """Make a new key active and return its kid; the old one stays published until
        ``now + max_token_ttl`` plus a safety margin."""
        ...

    def prune(self, now: float) -> list[str]:
        """Drop retired keys whose publication window has passed; return their kids."""
        ...


class AsyncSigning(Protocol):
    """The optional async signature path of a provider whose ``sign`` is a network call (Vault
    Transit: ``TransitKeyProvider.sign_async``). The core mints with ``mint_token_async``, which
    awaits it when the provider has it; same contract as ``KeyProvider.sign``."""

    async def __call__(self, kid: str, signing_input: bytes) -> bytes: ...


@dataclass(frozen=True)
class KeyInfo:
    """Metadata of one published key (what ``ListSigningKeys`` shows)."""

    kid: str
    alg: str
    created_at: float
    active: bool
    retired_at: float | None = None
    publish_until: float | None = None
