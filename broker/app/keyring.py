"""The signing keys of a broker replica as verifiers see them: its own provider's keys plus the
public keys every other replica published in the shared store.

Why: replicas behind one Service each sign with their own key unless something shares them (a
key directory on one host, Vault Transit). So that a token minted by any replica verifies on
every replica, and an offline verifier fed by any replica trusts every replica's keys, each
replica publishes the PUBLIC half of its keys in the store (``Store.publish_keys``), with the
time until which each must stay published:

- its active (and pre-published) keys until ``now + max_token_ttl + margin``, renewed every
  ``REPUBLISH`` seconds (a replica that dies leaves its key published until its last token has
  expired, then the store drops it);
- a retired key until its ``publish_until`` (retired_at + max_token_ttl + margin).

Private keys never leave their process (or Vault). A provider whose keys are already shared
(``KeyProvider.shared``: Vault Transit) publishes nothing: every replica reads Vault, and an
operator who withdraws a version there withdraws it everywhere. ``tokens.share_keys: false``
turns sharing off (replicas then need one key source: a shared ``keys_dir`` or Transit).

Trust: whoever can write the store can add a verification key (as they can already end tasks
or un-consume nothing: the store is part of the trusted base; docs/operations.md says how to
protect it). Every published key is checked (a JWK whose RFC 7638 thumbprint is its kid); a
malformed one is skipped and logged, never trusted, and never breaks the others.
"""

from __future__ import annotations

import base64
import logging
import math
import time
from collections.abc import Callable

import orjson

from broker.app.ports import KeyProvider, Store
from broker.core.clock import Clock
from broker.core.errors import BrokerError
from broker.core.tokens.jwk import KeySet, PublicKey
from broker.core.tokens.keys import DEFAULT_PUBLISH_MARGIN, KeyInfo, PublishedKey

log = logging.getLogger("broker.app.keyring")

REPUBLISH = 30.0  # seconds between two publications of unchanged keys (renews the lease)
SYNC_MIN_AGE = 1.0  # seconds: an unknown kid re-reads the store at most this often (monotonic)


class SigningKeys:
    """The union key set of this replica (own keys first) and its publication in the store."""

    def __init__(
        self,
        provider: KeyProvider,
        store: Store,
        clock: Clock,
        *,
        max_token_ttl: float,
        margin: float = DEFAULT_PUBLISH_MARGIN,
        replica: str = "",
        monotonic: Callable[[], float] = time.monotonic,
        share: bool = True,
    ) -> None:
        self.provider = provider
        # publish and read keys through the store: not for a shared provider (Transit), nor
        # when the operator turned it off (tokens.share_keys: false)
        self.sharing = share and not provider.shared
        self._monotonic = monotonic
        self._store = store
        self._clock = clock
        self._lease = max_token_ttl + margin
        self.replica = replica
        self._others: tuple[tuple[PublishedKey, PublicKey], ...] = ()
        self._bad: set[str] = set()  # kids of malformed entries already logged
        self._cache: tuple[tuple[str, ...], KeySet] | None = None
        self._published: tuple[tuple[str, bool], ...] = ()  # what we published last
        self._published_at = -math.inf
        self._synced_at = -math.inf  # self._monotonic() of the last read of the store
        self._looked_up_at = -math.inf  # ... of the last look-up of an unknown kid
        self._refresh_due = -math.inf  # self._monotonic() of the next provider refresh

    # -- reads (memory only) ----------------------------------------------------------------

    def keyset(self) -> KeySet:
        """Every key a token of this broker may be signed with, now."""
        now = self._clock.now()
        own = self.provider.public_jwks()
        others = [key for pub, key in self._others if pub.until > now]
        kids = (*(str(k["kid"]) for k in own), *(k.kid for k in others))
        if self._cache is None or self._cache[0] != kids:
            own_kids = {str(k["kid"]) for k in own}
            keys = [PublicKey.from_jwk(k) for k in own]
            keys += [k for k in others if k.kid not in own_kids]
            self._cache = (kids, KeySet(keys))
        return self._cache[1]

    def public_jwks(self) -> list[dict[str, str]]:
        """The JWKS ``GetSigningKeys`` serves: this replica's keys and every other one's."""
        return self.keyset().to_jwks()["keys"]

    def list_keys(self) -> list[KeyInfo]:
        """Metadata of every key: this replica's (the active one first), then the others'."""
        own = self.provider.list_keys()
        mine = {info.kid for info in own}
        now = self._clock.now()
        return [
            *own,
            *(
                KeyInfo(
                    kid=pub.kid,
                    alg=key.alg,
                    created_at=pub.created_at,
                    active=False,
                    publish_until=pub.until,
                    replica=pub.replica or "another replica",
                )
                for pub, key in self._others
                if pub.until > now and pub.kid not in mine
            ),
        ]

    # -- I/O ----------------------------------------------------------------------------------

    async def keyset_for(self, token: str) -> KeySet:
        """The key set, re-read from the provider and the store first when the token names a
        key not known here yet (another replica rotated). At most once a second."""
        keys = self.keyset()
        kid = _peek_kid(token)
        if kid is None or kid in keys:
            return keys
        if self._monotonic() - self._looked_up_at < SYNC_MIN_AGE:
            return keys
        self._looked_up_at = self._monotonic()
        now = self._clock.now()
        try:
            if self.sharing:
                await self.sync(now)
            if kid not in self.keyset():
                await self.provider.refresh(now)
        except Exception:  # a client's kid must not surface the store's or the ring's errors
            log.exception("re-reading the signing keys failed; using the keys in memory")
        return self.keyset()

    async def current_keys(self) -> list[KeyInfo]:
        """``list_keys`` after reading the store (operators: ``broker keys list``)."""
        await self._sync_for_reader()
        return self.list_keys()

    async def current_jwks(self) -> list[dict[str, str]]:
        """``public_jwks`` after reading the store, so that a verifier fetching keys right after
        another replica started or rotated gets them. One store read per call: verifiers fetch
        rarely (at start, then on an unknown kid at most every few seconds)."""
        await self._sync_for_reader()
        return self.public_jwks()

    async def _sync_for_reader(self) -> None:
        if self.sharing:
            try:
                await self.sync(self._clock.now())
            except BrokerError as exc:  # answer with what is known; the next call retries
                log.warning("reading the published signing keys failed: %s", exc.message)

    async def rotate(self, now: float, max_token_ttl: float) -> str:
        """Rotate the provider's key and publish the new one at once."""
        kid = await self.provider.rotate(now, max_token_ttl)
        try:
            await self.publish(now)
        except BrokerError as exc:  # rotated all the same; housekeeping publishes it again
            log.warning("publishing the new signing key failed (retried): %s", exc.message)
        return kid

    async def maintain(self, now: float) -> None:
        """Housekeeping (every few seconds): refresh the provider when its interval is due,
        publish this replica's keys when they changed or their lease needs renewing, read the
        other replicas' keys. Each step's failure is logged; the next round retries."""
        if self._monotonic() >= self._refresh_due:
            self._refresh_due = self._monotonic() + self.provider.refresh_interval
            try:
                await self.provider.refresh(now)
            except Exception as exc:  # noqa: BLE001 - housekeeping survives anything
                log.warning("refreshing the signing keys failed: %s", _why(exc))
        if not self.sharing:
            return
        try:
            await self.publish(now)
            await self.sync(now)
        except BrokerError as exc:
            log.warning("sharing signing keys through the store failed: %s", exc.message)

    async def publish(self, now: float, *, force: bool = False) -> None:
        """Publish this replica's public keys (nothing for a shared provider)."""
        if not self.sharing:
            return
        infos = self.provider.list_keys()
        shape = tuple((info.kid, info.retired_at is None) for info in infos)
        if not force and shape == self._published and now - self._published_at < REPUBLISH:
            return
        by_kid = {str(jwk["kid"]): jwk for jwk in self.provider.public_jwks()}
        entries = [
            PublishedKey.of(
                PublicKey.from_jwk(by_kid[info.kid]),
                until=info.publish_until
                if info.retired_at is not None and info.publish_until
                else now + self._lease,
                created_at=info.created_at,
                replica=self.replica,
            )
            for info in infos
            if info.kid in by_kid
        ]
        await self._store.publish_keys(entries, now=now)
        self._published, self._published_at = shape, now

    async def sync(self, now: float) -> None:
        """Read every replica's published keys from the store."""
        found: list[tuple[PublishedKey, PublicKey]] = []
        for pub in await self._store.published_keys(now):
            try:
                found.append((pub, pub.public_key()))
            except ValueError as exc:
                if pub.kid not in self._bad:
                    self._bad.add(pub.kid)
                    log.warning("ignoring a malformed published signing key: %s", exc)
        self._others = tuple(found)
        self._synced_at = self._monotonic()


def _peek_kid(token: str) -> str | None:
    """The ``kid`` of a token's header, unverified, or None: only to pick a key set."""
    head = token.split(".", 1)[0]
    if len(head) > 512:
        return None
    try:
        header = orjson.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        return None
    kid = header.get("kid") if isinstance(header, dict) else None
    return kid if isinstance(kid, str) else None


def _why(exc: Exception) -> str:
    if isinstance(exc, BrokerError):
        return exc.message
    log.error("unexpected error in key housekeeping", exc_info=exc)
    return type(exc).__name__
