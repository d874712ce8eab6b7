"""TransitKeyProvider: the broker's signing keys in Vault/OpenBao Transit; the private key never
leaves Vault.

- https://openbao.org/api-docs/secret/transit/ (keys, rotate, config, trim, sign)
- ES256 is Transit's ``ecdsa-p256`` signed with ``marshaling_algorithm=jws`` (raw ``r || s``,
  base64url: RFC 7518 §3.4 as is); EdDSA is ``ed25519`` (RFC 8037). Keys must be
  non-exportable and not derived; the provider refuses others.

Versions are the rotation: version N's public key is a JWK whose kid is its RFC 7638 thumbprint,
as for every key of the broker. The active version is the newest one (or, with an
``activation_delay``, the newest one older than that delay: replicas and verifiers see a new
version before it signs). A retired version stays published until ``retired_at + max_token_ttl
+ publish_margin``, where ``retired_at`` is when its successor became active, derived from the
successor's ``creation_time`` in Vault: every replica computes the same windows from Vault
alone, and a rotation by another replica or by Transit's ``auto_rotate_period`` is picked up
by the next ``refresh``, which then raises ``min_decryption_version`` and trims the
versions whose window has passed. Versions below ``min_decryption_version`` are never
published, so an operator who raises it in Vault withdraws a compromised version everywhere.

Signing (``sign``, ``broker.adapters.vault.transit_sign``) never blocks the event loop: requests
run in the Vault client's threads, and concurrent mints are coalesced into one Transit
``batch_input`` request. ``public_jwks``, ``list_keys``, ``alg`` and ``active_kid`` read memory
only; ``rotate`` and ``refresh`` talk to Vault from the client's threads (their ``*_blocking``
twins are for tools). The broker calls ``refresh`` every ``vault.transit.refresh_seconds``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import logging
import re
from dataclasses import dataclass
from typing import Any

import hvac
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from broker.adapters.vault.client import VaultClient, response_data
from broker.adapters.vault.config import TransitConfig
from broker.adapters.vault.transit_sign import TransitSigner
from broker.core.clock import Clock
from broker.core.errors import ConfigError, Reason, VaultUnavailable
from broker.core.tokens.jwk import PublicKey
from broker.core.tokens.jws import EDDSA, ES256
from broker.core.tokens.keys import DEFAULT_PUBLISH_MARGIN, KeyInfo

log = logging.getLogger("broker.adapters.vault.transit")

KEY_TYPES = {ES256: "ecdsa-p256", EDDSA: "ed25519"}
ALG_OF_TYPE = {v: k for k, v in KEY_TYPES.items()}
_FRACTION = re.compile(r"(\.\d{6})\d+")


@dataclass(frozen=True)
class KeyVersion:
    version: int
    key: PublicKey
    created_at: float  # seconds since the epoch, Vault's creation_time

    @property
    def kid(self) -> str:
        return self.key.kid


@dataclass(frozen=True)
class _KeyState:
    """What Vault said about the key at the last refresh."""

    alg: str
    versions: tuple[KeyVersion, ...]  # every available version >= min_decryption_version
    min_decryption_version: int
    min_encryption_version: int


@dataclass(frozen=True)
class _View:
    state: _KeyState
    active: KeyVersion
    infos: tuple[KeyInfo, ...]  # published keys, the active one first
    jwks: tuple[dict[str, str], ...]

    @property
    def alg(self) -> str:
        return self.state.alg


def plan_publication(
    versions: tuple[KeyVersion, ...],
    *,
    now: float,
    alg: str,
    activation_delay: float,
    max_token_ttl: float,
    publish_margin: float,
    min_encryption_version: int = 0,
) -> tuple[KeyVersion, tuple[KeyInfo, ...]]:
    """Which version signs and which are published at ``now`` (pure). ``versions`` ascending."""
    if not versions:
        raise ValueError("no key versions")
    eligible = [v for v in versions if v.version >= min_encryption_version]
    ready = [v for v in eligible if activation_delay <= 0 or v.created_at + activation_delay <= now]
    active = (ready or eligible or list(versions))[-1]
    infos: list[KeyInfo] = [
        KeyInfo(active.kid, alg, active.created_at, active=True, transit_version=active.version)
    ]
    for i, v in enumerate(versions):
        if v.version > active.version:  # pre-published: signs once its delay has passed
            infos.append(KeyInfo(v.kid, alg, v.created_at, False, transit_version=v.version))
        elif v.version < active.version:
            retired_at = versions[i + 1].created_at + max(activation_delay, 0.0)
            until = retired_at + max_token_ttl + publish_margin
            if until > now:
                infos.append(KeyInfo(v.kid, alg, v.created_at, False, retired_at, until, v.version))
    return active, tuple(infos)


class TransitKeyProvider:
    """A ``KeyProvider`` (broker.app.ports) whose keys live in a Transit key of Vault."""

    def __init__(
        self,
        client: VaultClient,
        config: TransitConfig,
        *,
        clock: Clock,
        alg: str = ES256,
        max_token_ttl: float = 300.0,
        publish_margin: float = DEFAULT_PUBLISH_MARGIN,
        max_batch: int = 64,
        max_in_flight: int = 2,
    ) -> None:
        if alg not in KEY_TYPES:
            raise ConfigError("tokens.alg", f"Transit signs {sorted(KEY_TYPES)}, not {alg!r}")
        if config.refresh_interval >= publish_margin:
            raise ConfigError(
                "vault.transit.refresh_seconds",
                f"must be below the publication margin ({publish_margin:g}s), so that a replica "
                "sees a rotation before the old version leaves the JWKS",
            )
        self._client = client
        self._config = config
        self._clock = clock
        self._want_alg = alg
        self._max_ttl = max_token_ttl
        self._margin = publish_margin
        self._tasks: set[asyncio.Task[Any]] = set()
        self._view = self._plan(self._read_state(), clock.now())
        self._signer = TransitSigner(
            client,
            config,
            alg=alg,
            on_stale=lambda: self.refresh_blocking(clock.now()),
            max_batch=max_batch,
            max_in_flight=max_in_flight,
        )

    # -- KeyProvider (broker.app.ports) ---------------------------------------------------------

    @property
    def alg(self) -> str:
        return self._view.alg

    @property
    def shared(self) -> bool:
        return True  # every replica reads the same key from Vault: nothing to publish

    @property
    def refresh_interval(self) -> float:
        return self._config.refresh_interval  # vault.transit.refresh_seconds

    def active_kid(self) -> str:
        return self._view.active.kid

    def public_jwks(self) -> list[dict[str, str]]:
        return [dict(jwk) for jwk in self._view.jwks]

    def list_keys(self) -> list[KeyInfo]:
        """Metadata of every published key, the active one first, with its Transit version."""
        return list(self._view.infos)

    async def sign(self, kid: str, signing_input: bytes) -> bytes:
        """The JWS signature by the active version, without blocking the event loop. Raises
        ``LookupError`` if ``kid`` is not (or no longer) the active key: mint again."""
        active = self._view.active
        if kid != active.kid:
            raise LookupError(f"key {kid!r} is not the active signing key")
        return await self._signer.sign(active.version, signing_input)

    async def rotate(self, now: float, max_token_ttl: float) -> str:
        return await self._client.in_thread(lambda: self.rotate_blocking(now, max_token_ttl))

    async def refresh(self, now: float) -> bool:
        """Re-read the key's versions (rotations by other replicas or ``auto_rotate_period``)
        and, with ``trim``, trim the versions no longer published; in the Vault client's
        threads. Returns whether the active key changed."""
        before = self._view.active.kid
        self._view = self._plan(self._view.state, now)  # windows pass even when Vault is down
        await self._client.in_thread(lambda: self.maintain_blocking(now))
        return self._view.active.kid != before

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._signer.aclose()

    # -- blocking steps (tools, and the threads of the coroutines above) ----------------------

    def sign_blocking(self, kid: str, signing_input: bytes) -> bytes:
        """One Transit request from the calling thread (tools; the broker awaits ``sign``)."""
        active = self._view.active
        if kid != active.kid:
            raise LookupError(f"key {kid!r} is not the active signing key")
        return self._signer.sign_blocking(active.version, signing_input)

    def rotate_blocking(self, now: float, max_token_ttl: float) -> str:
        """Rotate the Transit key and return the new version's kid (it signs at once, or after
        ``activation_delay``)."""
        self._max_ttl = max(self._max_ttl, max_token_ttl)
        cfg = self._config
        self._client.call(
            "transit key rotation",
            lambda c: c.secrets.transit.rotate_key(cfg.key, mount_point=cfg.mount),
            Reason.SIGNING_UNAVAILABLE,
        )
        self._view = self._plan(self._read_state(), now)
        log.info("transit: rotated %s/%s", cfg.mount, cfg.key)
        return self._view.state.versions[-1].kid

    def refresh_blocking(self, now: float) -> bool:
        """Re-read the key's versions; return whether the active key changed."""
        before = self._view.active.kid
        self._view = self._plan(self._read_state(), now)
        return self._view.active.kid != before

    def maintain_blocking(self, now: float) -> list[str]:
        """Refresh, then (with ``trim``) raise ``min_decryption_version`` and trim the versions
        no longer published, so they can never verify or sign again. Returns the kids trimmed
        in Vault."""
        self.refresh_blocking(now)
        state = self._view.state
        published = {info.kid for info in self._view.infos}
        gone = [v for v in state.versions if v.kid not in published]
        if not gone or not self._config.trim:
            return []
        self._trim(min(v.version for v in state.versions if v.kid in published), state)
        self.refresh_blocking(now)
        log.info("transit: trimmed %d retired version(s)", len(gone))
        return [v.kid for v in gone]

    def versions(self) -> dict[str, int]:
        """kid -> Transit key version, for operators."""
        return {v.kid: v.version for v in self._view.state.versions}

    def __repr__(self) -> str:
        v = self._view
        return (
            f"TransitKeyProvider(key={self._config.mount}/{self._config.key!s}, "
            f"active=v{v.active.version} {v.active.kid!r}, alg={v.alg!r})"
        )

    # -- the key in Vault ----------------------------------------------------------------------

    def _read_state(self) -> _KeyState:
        """Blocking: the key as Vault has it now, checked to be a usable signing key."""
        cfg = self._config
        data = self._read_key()
        key_type = data.get("type")
        alg = ALG_OF_TYPE.get(str(key_type))
        where = f"vault.transit.key ({cfg.mount}/{cfg.key})"
        if alg is None:
            raise ConfigError(
                where, f"is of type {key_type!r}; use {' or '.join(KEY_TYPES.values())}"
            )
        if alg != self._want_alg:
            raise ConfigError(where, f"is {key_type} ({alg}) but tokens.alg is {self._want_alg}")
        if data.get("exportable") or data.get("allow_plaintext_backup"):
            raise ConfigError(where, "is exportable: its private key could leave Vault")
        if data.get("derived"):
            raise ConfigError(where, "is a derived key; the broker needs a plain signing key")
        min_dec = int(data.get("min_decryption_version") or 1)
        min_avail = int(data.get("min_available_version") or 0)
        raw_versions = data.get("keys")
        if not isinstance(raw_versions, dict):
            raise VaultUnavailable(
                "transit key: no versions in Vault's answer", Reason.SIGNING_UNAVAILABLE
            )
        versions = sorted(
            (
                _version(int(n), info, alg)
                for n, info in raw_versions.items()
                if int(n) >= max(min_dec, min_avail)
            ),
            key=lambda v: v.version,
        )
        if not versions:
            raise ConfigError(where, "has no version at or above min_decryption_version")
        return _KeyState(
            alg=alg,
            versions=tuple(versions),
            min_decryption_version=min_dec,
            min_encryption_version=int(data.get("min_encryption_version") or 0),
        )

    def _plan(self, state: _KeyState, now: float) -> _View:
        active, infos = plan_publication(
            state.versions,
            now=now,
            alg=state.alg,
            activation_delay=self._config.activation_delay,
            max_token_ttl=self._max_ttl,
            publish_margin=self._margin,
            min_encryption_version=state.min_encryption_version,
        )
        by_kid = {v.kid: v for v in state.versions}
        return _View(
            state=state,
            active=active,
            infos=infos,
            jwks=tuple(by_kid[info.kid].key.to_jwk() for info in infos),
        )

    def _read_key(self) -> dict[str, Any]:
        cfg = self._config

        def read(c: hvac.Client) -> Any:
            try:
                return c.secrets.transit.read_key(cfg.key, mount_point=cfg.mount)
            except hvac.exceptions.InvalidPath:
                if not cfg.create:
                    raise
            c.secrets.transit.create_key(
                cfg.key,
                key_type=KEY_TYPES[self._want_alg],
                exportable=False,
                allow_plaintext_backup=False,
                auto_rotate_period=cfg.auto_rotate_period or None,
                mount_point=cfg.mount,
            )
            log.info("transit: created key %s/%s (%s)", cfg.mount, cfg.key, self._want_alg)
            return c.secrets.transit.read_key(cfg.key, mount_point=cfg.mount)

        resp = self._client.call(
            f"transit key {cfg.mount}/{cfg.key}", read, Reason.SIGNING_UNAVAILABLE
        )
        return response_data(resp, "transit key")

    def _trim(self, keep: int, state: _KeyState) -> None:
        cfg = self._config
        min_enc = state.min_encryption_version
        params = {
            "min_decryption_version": keep,
            "min_encryption_version": keep if min_enc < keep else min_enc,
        }

        def trim(c: hvac.Client) -> None:
            c.adapter.post(f"/v1/{cfg.mount}/keys/{cfg.key}/config", json=params)
            c.adapter.post(
                f"/v1/{cfg.mount}/keys/{cfg.key}/trim", json={"min_available_version": keep}
            )

        self._client.call("transit key trim", trim, Reason.SIGNING_UNAVAILABLE)
        log.info("transit: trimmed %s/%s below version %d", cfg.mount, cfg.key, keep)


def _version(number: int, info: Any, alg: str) -> KeyVersion:
    if not isinstance(info, dict):
        raise VaultUnavailable("transit key: malformed version", Reason.SIGNING_UNAVAILABLE)
    material = str(info.get("public_key", ""))
    try:
        if alg == ES256:
            loaded = serialization.load_pem_public_key(material.encode())
            if not isinstance(loaded, ec.EllipticCurvePublicKey):
                raise ValueError("not an EC key")
            key = PublicKey(loaded)
        else:
            key = PublicKey(ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(material)))
    except (ValueError, binascii.Error) as exc:
        raise VaultUnavailable(
            f"transit key version {number}: unusable public key ({exc})", Reason.SIGNING_UNAVAILABLE
        ) from None
    return KeyVersion(number, key, _timestamp(str(info.get("creation_time", ""))))


def _timestamp(text: str) -> float:
    """Vault's RFC 3339 creation_time (nanoseconds, ``Z``) as seconds since the epoch."""
    try:
        when = dt.datetime.fromisoformat(_FRACTION.sub(r"\1", text).replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()
