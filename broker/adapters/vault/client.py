"""VaultClient: the broker's one connection to Vault or OpenBao, over hvac.

hvac is synchronous (requests), the broker is asyncio: every call runs in a small thread pool
(``run``), each worker thread with its own hvac client (requests sessions are not shared across
threads), all using the token this object holds.

Authentication (https://openbao.org/docs/auth/):

- ``token`` (dev): a token from ``auth.token_file`` or ``$VAULT_TOKEN``; looked up once
  (``auth/token/lookup-self``) to learn its TTL, renewed with ``renew-self`` if renewable.
- ``approle``: ``POST auth/MOUNT/login {role_id, secret_id}``; renewed, and logged in again when
  it reaches its max TTL or renewal fails.
- ``cert``: TLS certificate auth, ``POST auth/MOUNT/login`` over a connection presenting the
  broker's client certificate (its SVID works: a Vault cert role can pin the SPIFFE URI SAN).

Renewal happens at two thirds of the token's TTL (``renew_due_in`` tells the runtime's loop when).
A request answered 403 makes the client log in again once and retry, in case the token was
revoked or expired under it. Every failure reaches callers as ``VaultUnavailable`` whose message
says what failed (unreachable, sealed, denied, not found) and never carries a secret.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import hvac
import requests

from broker.adapters.vault.config import SECRET_ID_ENV, TOKEN_ENV, AuthMethod, VaultConfig
from broker.core.errors import ConfigError, Reason, VaultUnavailable

log = logging.getLogger("broker.adapters.vault")

T = TypeVar("T")

RENEW_AT = 2 / 3  # of the TTL
MIN_RENEW_DELAY = 1.0


class Sensitive:
    """A string that must not be printed (a Vault token, a secret id)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "[secure]"

    __str__ = __repr__


@dataclass(frozen=True)
class _Login:
    token: Sensitive
    ttl: float  # seconds; 0 = never expires (a root token)
    renewable: bool
    at: float  # monotonic time it was obtained or last renewed


class VaultClient:
    """hvac in a thread pool, logged in with the configured method and kept logged in."""

    def __init__(
        self,
        config: VaultConfig,
        *,
        env: Mapping[str, str] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._env = os.environ if env is None else env
        self._monotonic = monotonic
        self._executor = ThreadPoolExecutor(config.workers, thread_name_prefix="vault")
        self._local = threading.local()
        self._clients: list[hvac.Client] = []
        self._lock = threading.Lock()  # guards _login and _clients
        self._login_lock = threading.Lock()  # one login at a time
        self._login: _Login | None = None
        self._closed = False
        self.logins = 0  # counters, for metrics and tests
        self.renewals = 0

    def __repr__(self) -> str:
        return f"VaultClient(addr={self.config.addr!r}, auth={self.config.auth.method.value!r})"

    # -- calls ---------------------------------------------------------------------------------

    async def run(
        self,
        what: str,
        fn: Callable[[hvac.Client], T],
        reason: Reason = Reason.SECRET_UNAVAILABLE,
    ) -> T:
        """``call`` in the thread pool, so the event loop never waits on Vault."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.call, what, fn, reason)

    async def in_thread(self, fn: Callable[[], T]) -> T:
        """Run any blocking Vault work (e.g. the Transit fast path) in the pool."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def call(
        self,
        what: str,
        fn: Callable[[hvac.Client], T],
        reason: Reason = Reason.SECRET_UNAVAILABLE,
    ) -> T:
        """Run ``fn`` with this thread's logged-in hvac client (blocking); errors are translated
        to ``VaultUnavailable`` naming ``what``. A 403 triggers one fresh login and one retry."""
        try:
            client = self._thread_client()
            denied = client.token
            try:
                return fn(client)
            except hvac.exceptions.Forbidden:
                if self.config.auth.method is AuthMethod.TOKEN:
                    raise
                log.info("vault: %s was denied; logging in again and retrying once", what)
                self.login(replacing=denied)
                return fn(self._thread_client())
        except VaultUnavailable as exc:
            raise _with_reason(exc, reason) from None
        except ConfigError as exc:  # a re-login could not read its credentials file
            raise _cannot_log_in(exc, reason) from None
        except (hvac.exceptions.VaultError, requests.RequestException, OSError) as exc:
            raise translate(what, exc, reason, self.config) from exc

    def token(self, reason: Reason = Reason.SECRET_UNAVAILABLE) -> str:
        """The current token (logging in first if needed), for the Transit fast path."""
        try:
            return self._current().token.reveal()
        except VaultUnavailable as exc:
            raise _with_reason(exc, reason) from None
        except ConfigError as exc:
            raise _cannot_log_in(exc, reason) from None

    def _current(self) -> _Login:
        current = self._login
        if current is None:
            self.login(replacing=None)
            current = self._login
            assert current is not None
        return current

    def _thread_client(self) -> hvac.Client:
        token = self._current().token.reveal()
        client: hvac.Client | None = getattr(self._local, "client", None)
        if client is None:
            client = self._new_hvac(token)
            self._local.client = client
            with self._lock:
                if self._closed:
                    client.adapter.close()
                    raise VaultUnavailable("the Vault client is closed")
                self._clients.append(client)
        elif client.token != token:
            client.token = token
        return client

    def _new_hvac(self, token: str) -> hvac.Client:
        cfg = self.config
        cert = None
        if cfg.auth.method is AuthMethod.CERT and cfg.auth.cert and cfg.auth.key:
            cert = (str(cfg.auth.cert), str(cfg.auth.key))
        return hvac.Client(
            url=cfg.addr,
            token=token,
            verify=str(cfg.ca_cert) if cfg.ca_cert else True,
            timeout=cfg.timeout,
            namespace=cfg.namespace or None,
            cert=cert,
        )

    # -- authentication ------------------------------------------------------------------------

    def login(self, *, replacing: str | None = "") -> None:
        """Obtain a token with the configured method (blocking). One login at a time: a caller
        that saw token ``replacing`` fail (None: saw no token) logs in only if no other thread
        has replaced it meanwhile; the default always logs in."""
        with self._login_lock:
            current = self._login
            if replacing is None and current is not None:
                return
            if replacing and current is not None and current.token.reveal() != replacing:
                return
            self._do_login()

    def _do_login(self) -> None:
        auth = self.config.auth
        client = self._new_hvac("")
        try:
            if auth.method is AuthMethod.TOKEN:
                token = self._token_material()
                client.token = token
                data = client.auth.token.lookup_self()["data"]
                login = _Login(
                    Sensitive(token),
                    float(data.get("ttl") or 0),
                    bool(data.get("renewable")),
                    self._monotonic(),
                )
            else:
                params: dict[str, str] = {}
                if auth.method is AuthMethod.APPROLE:
                    params = {"role_id": self._role_id(), "secret_id": self._secret_id()}
                elif auth.role:
                    params = {"name": auth.role}
                resp = client.adapter.login(url=f"/v1/auth/{auth.mount}/login", json=params)
                info = resp["auth"]
                login = _Login(
                    Sensitive(info["client_token"]),
                    float(info.get("lease_duration") or 0),
                    bool(info.get("renewable")),
                    self._monotonic(),
                )
        except (hvac.exceptions.VaultError, requests.RequestException, OSError) as exc:
            raise translate(
                f"login ({auth.method.value})", exc, Reason.SECRET_UNAVAILABLE, self.config
            ) from exc
        finally:
            client.adapter.close()
        with self._lock:
            self._login = login
            self.logins += 1
        log.info(
            "vault: logged in with %s (token ttl %s)",
            auth.method.value,
            f"{login.ttl:g}s" if login.ttl else "unlimited",
        )

    def renew_due_in(self) -> float | None:
        """Seconds until the token should be renewed; None if it never expires."""
        current = self._login
        if current is None:
            return 0.0
        if current.ttl <= 0:
            return None
        due = current.at + current.ttl * RENEW_AT - self._monotonic()
        return max(due, 0.0)

    def renew(self) -> None:
        """Renew the token, or log in again when it cannot be renewed (blocking).

        A token whose renewal comes back shorter than asked has hit its max TTL: the next
        renewal will log in again (AppRole, cert); a plain token cannot, which is logged."""
        current = self._login
        if current is None:
            self.login(replacing=None)
            return
        if current.ttl <= 0:
            return
        method = self.config.auth.method
        if current.renewable:
            try:
                resp = self.call(
                    "token renewal",
                    lambda c: c.auth.token.renew_self(increment=int(current.ttl)),
                )
                ttl = float(resp["auth"].get("lease_duration") or 0)
                if ttl >= current.ttl * RENEW_AT or method is AuthMethod.TOKEN:
                    with self._lock:
                        self._login = _Login(
                            current.token, ttl, current.renewable, self._monotonic()
                        )
                        self.renewals += 1
                    if method is AuthMethod.TOKEN and ttl < current.ttl * RENEW_AT:
                        log.error(
                            "vault: the broker's token is near its max TTL (%gs left) and a "
                            "token cannot log in again: give the broker a new token",
                            ttl,
                        )
                    return
            except VaultUnavailable as exc:
                if method is AuthMethod.TOKEN:
                    raise
                log.warning("vault: token renewal failed (%s); logging in again", exc.message)
        if method is AuthMethod.TOKEN:
            log.error("vault: the broker's token is not renewable and will expire")
            return
        self.login()

    def _token_material(self) -> str:
        path = self.config.auth.token_file
        if path is not None:
            return _read_secret_file(path, "vault.auth.token_file")
        token = self._env.get(TOKEN_ENV, "")
        if not token:
            raise ConfigError("vault.auth.token_file", f"no token: set token_file or ${TOKEN_ENV}")
        return token

    def _role_id(self) -> str:
        auth = self.config.auth
        if auth.role_id_file is not None:
            return _read_secret_file(auth.role_id_file, "vault.auth.role_id_file")
        return auth.role_id

    def _secret_id(self) -> str:
        path = self.config.auth.secret_id_file
        if path is not None:
            return _read_secret_file(path, "vault.auth.secret_id_file")
        secret_id = self._env.get(SECRET_ID_ENV, "")
        if not secret_id:
            raise ConfigError(
                "vault.auth.secret_id_file", f"no secret id: set secret_id_file or ${SECRET_ID_ENV}"
            )
        return secret_id

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the pool (waiting for running calls) and close every connection."""
        with self._lock:
            self._closed = True
        self._executor.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.adapter.close()


def _with_reason(exc: VaultUnavailable, reason: Reason) -> VaultUnavailable:
    """A login failure reported with the reason of what needed the login."""
    return exc if exc.reason is reason else VaultUnavailable(exc.message, reason)


def _read_secret_file(path: Path, key: str) -> str:
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror}") from None
    if not value:
        raise ConfigError(key, f"{path} is empty")
    return value


def translate(
    what: str, exc: BaseException, reason: Reason, config: VaultConfig
) -> VaultUnavailable:
    """A Vault or network failure as ``VaultUnavailable`` with a message an operator can act on.
    Vault's own error text goes to the log (at warning), not to the client."""
    if isinstance(exc, requests.Timeout | TimeoutError):
        message = f"{what}: Vault did not answer within {config.timeout:g}s"
    elif isinstance(exc, requests.ConnectionError | ConnectionError):
        message = f"{what}: Vault at {config.addr} is unreachable"
    elif isinstance(exc, hvac.exceptions.VaultDown | hvac.exceptions.VaultNotInitialized):
        message = f"{what}: Vault is sealed or not ready"
    elif isinstance(exc, hvac.exceptions.Forbidden | hvac.exceptions.Unauthorized):
        message = f"{what}: permission denied by Vault (the broker's token or policy)"
    elif isinstance(exc, hvac.exceptions.InvalidPath):
        message = f"{what}: not found in Vault"
    elif isinstance(exc, hvac.exceptions.RateLimitExceeded):
        message = f"{what}: rate limited by Vault"
    else:
        message = f"{what}: Vault refused the request ({type(exc).__name__}; see the broker log)"
    log.warning("vault: %s (%s)", message, _describe(exc))
    return VaultUnavailable(message, reason)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, hvac.exceptions.VaultError):
        return "; ".join(exc.errors or []) or type(exc).__name__
    return type(exc).__name__


def response_data(resp: Any, what: str) -> dict[str, Any]:
    """The ``data`` object of a Vault response, or VaultUnavailable if it has none."""
    if not isinstance(resp, dict) or not isinstance(resp.get("data"), dict):
        raise VaultUnavailable(f"{what}: Vault's answer has no data")
    data: dict[str, Any] = resp["data"]
    return data


def _cannot_log_in(exc: ConfigError, reason: Reason) -> VaultUnavailable:
    """A login failure at request time: the path and detail go to the log, not to a client."""
    log.error("vault: cannot log in: %s", exc.message)
    return VaultUnavailable("the broker cannot log in to Vault (see the broker log)", reason)
