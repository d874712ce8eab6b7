"""Signing with a Transit key, batched: the hot path of a mint with ``TransitKeyProvider``.

- https://openbao.org/api-docs/secret/transit/#sign-data (``batch_input``, ``key_version``,
  ``marshaling_algorithm=jws``: ECDSA as raw ``r || s`` base64url, as JWS wants it)

Concurrent mints are coalesced: a mint queues its signing input; while fewer than
``max_in_flight`` requests are out, one more starts and takes every queued input of the same key
version (up to ``max_batch``). Requests run in the Vault client's threads over ``FastJson``
(stdlib http.client), so the event loop never waits on Vault.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from broker.adapters.vault._http import FastJson, HttpError
from broker.adapters.vault.client import VaultClient, response_data
from broker.adapters.vault.config import AuthMethod, TransitConfig
from broker.core.errors import ConfigError, Reason, VaultUnavailable
from broker.core.tokens.jws import ES256, SIGNATURE_BYTES, b64url_decode, es256_low_s

log = logging.getLogger("broker.adapters.vault.transit")

_SIGNATURE = re.compile(r"vault:v(\d+):(.+)")


@dataclass
class _Pending:
    version: int
    data: bytes
    future: asyncio.Future[bytes]


class TransitSigner:
    def __init__(
        self,
        client: VaultClient,
        config: TransitConfig,
        *,
        alg: str,
        on_stale: Callable[[], object],
        max_batch: int = 64,
        max_in_flight: int = 2,
    ) -> None:
        self._client = client
        self._path = f"{config.mount}/sign/{config.key}"
        self._alg = alg
        self._on_stale = on_stale  # re-read the key: a version may no longer sign
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._http = FastJson(client.config)
        self._queue: deque[_Pending] = deque()
        self._workers = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def sign(self, version: int, data: bytes) -> bytes:
        """The JWS signature of ``data`` by key ``version``; LookupError if that version may
        no longer sign (the key was re-read: mint again), VaultUnavailable otherwise."""
        loop = asyncio.get_running_loop()
        pending = _Pending(version, data, loop.create_future())
        self._queue.append(pending)
        if self._workers < self._max_in_flight:
            self._workers += 1
            task = loop.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await pending.future

    def sign_blocking(self, version: int, data: bytes) -> bytes:
        result = self._request(version, [data])[0]
        if isinstance(result, BaseException):
            raise result
        return result

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        while self._queue:  # mints still waiting: fail them rather than leave them hanging
            pending = self._queue.popleft()
            if not pending.future.done():
                pending.future.set_exception(
                    VaultUnavailable("the broker is stopping", Reason.SIGNING_UNAVAILABLE)
                )
        self._http.close()

    async def _drain(self) -> None:
        try:
            while self._queue:
                first = self._queue.popleft()
                batch = [first]
                while (
                    self._queue
                    and len(batch) < self._max_batch
                    and self._queue[0].version == first.version
                ):
                    batch.append(self._queue.popleft())
                sign = partial(self._request, first.version, [p.data for p in batch])
                try:
                    results = await self._client.in_thread(sign)
                except asyncio.CancelledError:
                    for pending in batch:
                        pending.future.cancel()
                    raise
                except Exception as exc:  # noqa: BLE001 - handed to every waiting mint
                    results = [exc] * len(batch)
                for pending, result in zip(batch, results, strict=True):
                    if pending.future.done():  # the mint was cancelled
                        continue
                    if isinstance(result, BaseException):
                        pending.future.set_exception(_copy(result))
                    else:
                        pending.future.set_result(result)
        finally:
            self._workers -= 1

    def _request(self, version: int, inputs: list[bytes]) -> list[bytes | BaseException]:
        body: dict[str, Any] = {"key_version": version}
        if self._alg == ES256:
            body["marshaling_algorithm"] = "jws"
        if len(inputs) == 1:
            body["input"] = base64.b64encode(inputs[0]).decode("ascii")
        else:
            body["batch_input"] = [{"input": base64.b64encode(x).decode("ascii")} for x in inputs]
        path = self._path
        try:
            token = self._client.token(Reason.SIGNING_UNAVAILABLE)
            try:
                answer = self._http.post(path, body, token)
            except HttpError as exc:
                if exc.status != 403 or self._client.config.auth.method is AuthMethod.TOKEN:
                    raise
                self._client.login(replacing=token)  # it may have expired under us: once more
                answer = self._http.post(path, body, self._client.token(Reason.SIGNING_UNAVAILABLE))
        except HttpError as exc:
            if any("version" in e for e in exc.errors):  # e.g. below min_encryption_version
                self._on_stale()
                raise LookupError(f"key version {version} may no longer sign") from None
            log.warning("transit: sign failed: %s", exc)
            why = "permission denied by Vault" if exc.status == 403 else f"HTTP {exc.status}"
            raise VaultUnavailable(
                f"Transit signing failed ({why})", Reason.SIGNING_UNAVAILABLE
            ) from None
        except VaultUnavailable as exc:  # a login that failed
            raise VaultUnavailable(exc.message, Reason.SIGNING_UNAVAILABLE) from None
        except ConfigError as exc:  # its credentials file could not be read: log, not client
            log.error("transit: cannot log in to Vault: %s", exc.message)
            raise VaultUnavailable(
                "the broker cannot log in to Vault (see the broker log)",
                Reason.SIGNING_UNAVAILABLE,
            ) from None
        except OSError as exc:
            log.warning("transit: sign failed: %s", type(exc).__name__)
            what = "did not answer in time" if isinstance(exc, TimeoutError) else "is unreachable"
            raise VaultUnavailable(
                f"Transit signing: Vault at {self._client.config.addr} {what}",
                Reason.SIGNING_UNAVAILABLE,
            ) from None
        data = response_data(answer, "transit sign")
        if len(inputs) == 1:
            return [self._signature(data, version)]
        results = data.get("batch_results")
        if not isinstance(results, list) or len(results) != len(inputs):
            raise VaultUnavailable(
                "Transit sign: malformed batch answer", Reason.SIGNING_UNAVAILABLE
            )
        return [self._signature(r, version) for r in results]

    def _signature(self, item: Any, version: int) -> bytes | BaseException:
        if not isinstance(item, dict) or item.get("error"):
            error = item.get("error") if isinstance(item, dict) else "malformed"
            log.warning("transit: sign failed: %s", error)
            return VaultUnavailable("Transit signing failed", Reason.SIGNING_UNAVAILABLE)
        match = _SIGNATURE.fullmatch(str(item.get("signature", "")))
        if match is None or int(match.group(1)) != version:
            return VaultUnavailable(
                "Transit returned a signature of another key version", Reason.SIGNING_UNAVAILABLE
            )
        text = match.group(2)
        try:
            raw = (
                b64url_decode(text) if self._alg == ES256 else base64.b64decode(text, validate=True)
            )
        except (ValueError, binascii.Error):
            return VaultUnavailable(
                "Transit returned a malformed signature", Reason.SIGNING_UNAVAILABLE
            )
        if len(raw) != SIGNATURE_BYTES:
            return VaultUnavailable(
                "Transit returned a malformed signature", Reason.SIGNING_UNAVAILABLE
            )
        return es256_low_s(raw) if self._alg == ES256 else raw  # verifiers require low-S


def _copy(exc: BaseException) -> BaseException:
    """A fresh exception per waiting mint (one object raised in several tasks would share a
    traceback)."""
    if isinstance(exc, VaultUnavailable):
        return VaultUnavailable(exc.message, exc.reason)
    if isinstance(exc, LookupError):
        return LookupError(*exc.args)
    return exc
