"""The agent's X.509-SVID on disk, re-read when it is rotated.

SVIDs are short-lived: whatever writes them (SPIRE's helper, cert-manager, ``broker ca issue``)
replaces the files. The gateway looks at their modification times at most once a second and,
when they changed and the new pair loads, bumps ``generation``: the broker channel and the
upstream HTTP clients are rebuilt from the new files (open connections finish their calls).
A half-written pair (the key does not match the certificate) is ignored until it is whole.
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from pathlib import Path

from broker.client.sdk.channel import WorkloadCredentials

log = logging.getLogger("broker.gateway")

CHECK_EVERY = 1.0


class TlsFiles:
    def __init__(self, ca: Path, cert: Path, key: Path) -> None:
        self.paths = (ca, cert, key)
        self.generation = 0
        self._stamp = self._mtimes()
        self.credentials = WorkloadCredentials.from_files(ca, cert, key)
        self._context = self._build(self.credentials, cert, key)
        self._checked = time.monotonic()

    def _mtimes(self) -> tuple[int, ...]:
        out = []
        for p in self.paths:
            try:
                out.append(os.stat(p).st_mtime_ns)
            except OSError:
                out.append(-1)
        return tuple(out)

    @staticmethod
    def _build(creds: WorkloadCredentials, cert: Path, key: Path) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=creds.ca.decode())
        # X.509-SVIDs name a SPIFFE ID, not a host: the upstream checks the ID (upstream.py).
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_cert_chain(cert, key)  # raises ssl.SSLError when the pair does not match
        return ctx

    def refresh(self) -> bool:
        """Re-read the files if they changed (checked at most once a second). True when a new
        SVID is in use."""
        now = time.monotonic()
        if now - self._checked < CHECK_EVERY:
            return False
        self._checked = now
        stamp = self._mtimes()
        if stamp == self._stamp:
            return False
        try:
            creds = WorkloadCredentials.from_files(*self.paths)
            context = self._build(creds, self.paths[1], self.paths[2])
            creds.identity()
        except Exception as exc:  # noqa: BLE001 - ConfigError and kin: keep the working one
            log.warning("the SVID files changed but do not load yet (%s); keeping the old one", exc)
            return False
        self._stamp = stamp
        self.credentials = creds
        self._context = context
        self.generation += 1
        log.info("SVID rotated: using the new certificate from %s", self.paths[1])
        return True

    def context(self) -> ssl.SSLContext:
        return self._context
