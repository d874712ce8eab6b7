"""The broker's published signing keys (JWKS), cached by a verifier.

Fetched at start and again when a token names a kid the cache does not hold (the broker rotated),
at most once per ``min_interval`` seconds however many such tokens arrive (an attacker sending
random kids cannot make the verifier hammer the broker), and in the background when older than
``max_age`` (so that a key the broker stopped publishing is dropped here too).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from broker.core.errors import BrokerError
from broker.core.tokens.keys import KeySet

log = logging.getLogger("broker.client.verifier")


class KeyCache:
    def __init__(
        self,
        fetch: Callable[[], Awaitable[KeySet]],
        *,
        monotonic: Callable[[], float],
        min_interval: float = 5.0,
        max_age: float = 300.0,
    ) -> None:
        self._fetch = fetch
        self._monotonic = monotonic
        self.min_interval = min_interval
        self.max_age = max_age
        self.keys = KeySet()
        self.fetched_at: float | None = None  # last successful fetch
        self._attempted_at: float | None = None  # last attempt, successful or not
        self._lock = asyncio.Lock()
        self.fetches = 0

    def forget(self) -> None:
        """Drop the cached keys (the broker's feed was reset: a restarted broker may sign with
        other keys); the next verification or refresh loads them again."""
        self.keys = KeySet()
        self.fetched_at = None
        self._attempted_at = None

    def due(self) -> bool:
        """Whether a rate-limited refresh would be allowed now."""
        last = self._attempted_at
        return last is None or self._monotonic() - last >= self.min_interval

    def old(self) -> bool:
        return self.fetched_at is None or self._monotonic() - self.fetched_at > self.max_age

    async def refresh(self, *, force: bool = False) -> bool:
        """Fetch the key set unless one was attempted less than ``min_interval`` ago (``force``
        ignores that). Returns whether a new set was loaded; a failure is logged, not raised,
        unless ``force``."""
        async with self._lock:
            if not force and not self.due():
                return False
            self._attempted_at = self._monotonic()
            try:
                keys = await self._fetch()
            except BrokerError as exc:
                if force:
                    raise
                log.warning("could not refresh the broker's signing keys: %s", exc)
                return False
            self.keys = keys
            self.fetched_at = self._monotonic()
            self.fetches += 1
            return True
