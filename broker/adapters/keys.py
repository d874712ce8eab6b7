"""LocalKeyProvider: the broker's signing keys in memory or in a directory (the async
``KeyProvider`` port of ``broker.app.ports``).

LocalKeyProvider holds its keys in process memory. Without a directory they are ephemeral
(``broker dev``, tests): a restart means a new key, and tokens signed before it stop verifying.
With a directory the layout is:

    DIR/                 0700
      KID.pem            0600  the ACTIVE private key only (PKCS#8, unencrypted)
      keyring.json       0600  metadata and the public JWK of every published key:
                               {"version": 1, "keys": [{"kid", "alg", "created_at", "retired_at",
                                "publish_until", "active", "jwk"}]}

Every file is written atomically (a 0600 temporary file, fsync, ``os.replace``). On rotation the
old private key is deleted: a retired key never signs again, only its public half stays published
until ``retired_at + max_token_ttl + publish_margin`` (the margin covers verifier leeway and JWKS
refresh lag), after which a ``refresh`` drops it. All times come from the caller (``now``).

The port's coroutines never block the event loop: with a directory, ``rotate`` and ``refresh``
(flock, reads, fsync) run in a thread; signing is a CPU-only call (~30 us) done in place. The
``*_blocking`` methods are the same steps for start-up code and tools.

A new key's algorithm is the provider's configured ``alg``; a keyring loaded with an active key of
another algorithm keeps signing with it until the next rotation.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import math
import os
import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from broker.core.errors import ConfigError
from broker.core.tokens.jwk import PublicKey, SigningKey
from broker.core.tokens.jws import ES256, SUPPORTED_ALGS
from broker.core.tokens.keys import DEFAULT_PUBLISH_MARGIN, KeyInfo, Signer

__all__ = ["LocalKeyProvider"]

KEYRING_FILE = "keyring.json"
LOCK_FILE = ".lock"
KEYRING_VERSION = 1
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_KID_FILENAME = re.compile(r"[A-Za-z0-9_-]{43}")  # an RFC 7638 SHA-256 thumbprint


@dataclass(frozen=True)
class _Entry:
    info: KeyInfo
    jwk: dict[str, str]


@dataclass(frozen=True)
class _State:
    entries: tuple[_Entry, ...]  # the active key first
    signer: SigningKey  # the active key


class LocalKeyProvider:
    """A ``KeyProvider`` holding its keys in process memory (and in ``directory`` if given)."""

    def __init__(
        self,
        *,
        now: float,
        alg: str = ES256,
        directory: str | os.PathLike[str] | None = None,
        publish_margin: float = DEFAULT_PUBLISH_MARGIN,
    ) -> None:
        if alg not in SUPPORTED_ALGS:
            raise ConfigError("alg", f"must be one of {sorted(SUPPORTED_ALGS)}, not {alg!r}")
        if not (math.isfinite(publish_margin) and publish_margin >= 0):
            raise ConfigError("publish_margin", "must be a non-negative number of seconds")
        self._new_alg = alg
        self._margin = publish_margin
        self._dir = Path(directory) if directory is not None else None
        self._lock = threading.Lock()  # writers; readers take one snapshot of self._state
        with self._exclusive():
            self._state = self._fresh(now) if self._dir is None else self._on_disk(self._dir, now)
        self.prune_blocking(now)

    # -- KeyProvider --------------------------------------------------------------------------

    refresh_interval = 2.0  # re-read a shared directory this often (well within the margin)

    @property
    def alg(self) -> str:
        return self._state.signer.alg

    @property
    def shared(self) -> bool:
        return False  # a directory is shared by one host's processes at most: publish

    def active_kid(self) -> str:
        return self._state.signer.kid

    async def sign(self, kid: str, signing_input: bytes) -> bytes:
        return self.sign_blocking(kid, signing_input)

    def public_jwks(self) -> list[dict[str, str]]:
        return [dict(entry.jwk) for entry in self._state.entries]

    def list_keys(self) -> list[KeyInfo]:
        return [entry.info for entry in self._state.entries]

    async def rotate(self, now: float, max_token_ttl: float) -> str:
        if self._dir is None:
            return self.rotate_blocking(now, max_token_ttl)
        return await asyncio.to_thread(self.rotate_blocking, now, max_token_ttl)

    async def refresh(self, now: float) -> bool:
        if self._dir is None:
            return self.reload_blocking(now)
        return await asyncio.to_thread(self.reload_blocking, now)

    async def aclose(self) -> None:
        return None

    # -- blocking steps -----------------------------------------------------------------------

    def rotate_blocking(self, now: float, max_token_ttl: float) -> str:
        """Make a new key active (written to the directory first, if any); return its kid."""
        if not (math.isfinite(max_token_ttl) and max_token_ttl >= 0):
            raise ValueError("max_token_ttl must be a non-negative number of seconds")
        with self._exclusive():
            old = self._current(now)
            signer = SigningKey.generate(self._new_alg)
            retired = dataclasses.replace(
                old.entries[0].info,
                active=False,
                retired_at=now,
                publish_until=now + max_token_ttl + self._margin,
            )
            entries = (
                _new_entry(signer, now),
                _Entry(retired, old.entries[0].jwk),
                *old.entries[1:],
            )
            state = _State(_unexpired(entries, now), signer)
            self._persist(state)
            self._state = state
            return signer.kid

    def prune_blocking(self, now: float) -> list[str]:
        """Drop retired keys whose publication window has passed; return their kids."""
        with self._exclusive():
            old = self._current(now)
            entries = _unexpired(old.entries, now)
            state = _State(entries, old.signer)
            if len(entries) != len(old.entries):
                self._persist(state)
            self._state = state
        kept = {entry.info.kid for entry in entries}
        return [entry.info.kid for entry in old.entries if entry.info.kid not in kept]

    def sign_blocking(self, kid: str, signing_input: bytes) -> bytes:
        """``sign`` for synchronous tools (``blocking_signer``): CPU only, no I/O."""
        signer = self._state.signer
        if kid != signer.kid:
            raise LookupError(f"key {kid!r} is not the active signing key")
        return signer.sign(signing_input)

    def blocking_signer(self) -> Signer:
        """This provider as the synchronous ``Signer`` of ``mint_token`` (tools, benchmarks)."""
        return _BlockingSigner(self)

    def reload_blocking(self, now: float) -> bool:
        """Pick up what another process sharing the directory did (rotation, pruning) and prune;
        return whether the active key changed. Processes that share a directory call this
        periodically, well within ``publish_margin``: until then they sign with a retired key."""
        before = self._state.signer.kid
        self.prune_blocking(now)
        return self._state.signer.kid != before

    @property
    def keys_dir(self) -> Path | None:
        """The directory of the key ring, or None for keys in memory only."""
        return self._dir

    def __repr__(self) -> str:
        where = str(self._dir) if self._dir is not None else "memory"
        return f"LocalKeyProvider(active={self.active_kid()!r}, alg={self.alg!r}, in={where!r})"

    # -- persistence --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """One writer at a time: in this process (a lock) and among the processes sharing the
        directory (an advisory ``flock`` on ``DIR/.lock``), so that workers starting together
        agree on one first key and no rotation overwrites another."""
        with self._lock:
            if self._dir is None:
                yield
                return
            self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self._dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | _O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # releases the flock

    def _current(self, now: float) -> _State:
        """Inside ``_exclusive``: the latest state, which another process may have written."""
        return self._state if self._dir is None else self._on_disk(self._dir, now)

    def _on_disk(self, directory: Path, now: float) -> _State:
        """Inside ``_exclusive``: the keyring in the directory, created with a first key if none."""
        loaded = _load(directory)
        if loaded is None:
            loaded = self._fresh(now)
            self._persist(loaded)
        else:
            _remove_stale_private_keys(directory, loaded.signer.kid)
        return loaded

    def _fresh(self, now: float) -> _State:
        signer = SigningKey.generate(self._new_alg)
        return _State((_new_entry(signer, now),), signer)

    def _persist(self, state: _State) -> None:
        """Write the active key (if new), then the keyring, then delete private keys no longer
        active: a crash at any point leaves a keyring whose active key is on disk."""
        if self._dir is None:
            return
        pem = self._dir / f"{state.signer.kid}.pem"
        if not pem.exists():
            _write_private(pem, state.signer.hazmat_private_pem())
        doc = {
            "version": KEYRING_VERSION,
            "keys": [
                {**dataclasses.asdict(entry.info), "jwk": entry.jwk} for entry in state.entries
            ],
        }
        _write_private(self._dir / KEYRING_FILE, orjson.dumps(doc, option=orjson.OPT_INDENT_2))
        _remove_stale_private_keys(self._dir, state.signer.kid)


class _BlockingSigner:
    def __init__(self, provider: LocalKeyProvider) -> None:
        self._provider = provider

    @property
    def alg(self) -> str:
        return self._provider.alg

    def active_kid(self) -> str:
        return self._provider.active_kid()

    def sign(self, kid: str, signing_input: bytes) -> bytes:
        return self._provider.sign_blocking(kid, signing_input)


def _load(directory: Path) -> _State | None:
    """The keyring in ``directory`` with its active private key, or None if there is none yet."""
    path = directory / KEYRING_FILE
    try:
        doc = orjson.loads(_read_private(path))
    except FileNotFoundError:
        return None
    except orjson.JSONDecodeError:
        raise ConfigError(str(path), "is not JSON") from None
    if not isinstance(doc, dict) or doc.get("version") != KEYRING_VERSION:
        raise ConfigError(str(path), f"expected a version {KEYRING_VERSION} keyring")
    records = doc.get("keys")
    if not isinstance(records, list) or not records:
        raise ConfigError(str(path), "has no keys")
    entries = [_parse_entry(record, f"{path}: keys[{i}]") for i, record in enumerate(records)]
    if len({entry.info.kid for entry in entries}) != len(entries):
        raise ConfigError(str(path), "lists a kid twice")
    active = [entry for entry in entries if entry.info.active]
    if len(active) != 1:
        raise ConfigError(str(path), f"must have exactly one active key, has {len(active)}")
    kid = active[0].info.kid
    pem_path = directory / f"{kid}.pem"
    try:
        signer = SigningKey.from_pem(_read_private(pem_path))
    except FileNotFoundError:
        raise ConfigError(str(pem_path), "the active private key is missing") from None
    except ValueError as exc:
        raise ConfigError(str(pem_path), f"not a usable private key: {exc}") from None
    if signer.kid != kid:
        raise ConfigError(str(pem_path), "the private key does not match its kid")
    return _State((active[0], *(e for e in entries if not e.info.active)), signer)


def _remove_stale_private_keys(directory: Path, active_kid: str) -> None:
    """Delete every private key file but the active one (left by a rotation or a crash)."""
    for path in directory.glob("*.pem"):
        if path.stem != active_kid and _KID_FILENAME.fullmatch(path.stem):
            path.unlink(missing_ok=True)


def _new_entry(signer: SigningKey, now: float) -> _Entry:
    info = KeyInfo(kid=signer.kid, alg=signer.alg, created_at=now, active=True)
    return _Entry(info, signer.public_key.to_jwk())


def _unexpired(entries: tuple[_Entry, ...], now: float) -> tuple[_Entry, ...]:
    return tuple(e for e in entries if e.info.publish_until is None or e.info.publish_until > now)


def _parse_entry(record: Any, where: str) -> _Entry:
    if not isinstance(record, dict):
        raise ConfigError(where, "must be an object")
    try:
        key = PublicKey.from_jwk(record["jwk"])
        info = KeyInfo(
            kid=record["kid"],
            alg=record["alg"],
            created_at=float(record["created_at"]),
            active=record["active"] is True,
            retired_at=_opt_float(record.get("retired_at")),
            publish_until=_opt_float(record.get("publish_until")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(where, f"malformed entry: {exc}") from None
    if not (isinstance(info.kid, str) and _KID_FILENAME.fullmatch(info.kid)):
        raise ConfigError(where, "kid must be an RFC 7638 thumbprint")
    if key.kid != info.kid or key.alg != info.alg:
        raise ConfigError(where, "kid/alg do not match the entry's JWK")
    if not info.active and info.publish_until is None:
        raise ConfigError(where, "a retired key needs publish_until")
    return _Entry(info, key.to_jwk())


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _read_private(path: Path) -> bytes:
    """Read a file we wrote 0600, refusing symlinks and files readable by group or others."""
    fd = os.open(path, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode & 0o777
        if mode & 0o077:
            raise ConfigError(
                str(path), f"mode is {mode:04o}; must not be readable by others (0600)"
            )
        return f.read()


def _write_private(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` by a 0600 file holding ``data``."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
