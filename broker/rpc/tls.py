"""Server TLS credentials that follow their files: rotate certificate, key and bundle with no
restart. gRPC asks ``fetch`` at every new handshake; it re-reads the files only when one of them
changed (a stat per handshake), and a half-rotated or unreadable set keeps the last good one.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import grpc

from broker.adapters.config import TlsConfig
from broker.core.errors import ConfigError

log = logging.getLogger("broker.tls")


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"tls.{what}", f"cannot read {path}: {exc.strerror}") from None


def _check_pair(cert: bytes, key: bytes) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        leaf = x509.load_pem_x509_certificate(cert)
        private = serialization.load_pem_private_key(key, password=None)
    except ValueError as exc:
        raise ConfigError("tls", f"certificate or key is not valid PEM: {exc}") from None
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    if leaf.public_key().public_bytes(enc, pub) != private.public_key().public_bytes(enc, pub):
        raise ConfigError("tls", "the key does not belong to the certificate")


class ReloadingServerCredentials:
    def __init__(self, tls: TlsConfig) -> None:
        self._tls = tls
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self._config = self._load()
        self.reloads = 0

    def _stat(self) -> tuple[tuple[int, int], ...]:
        out = []
        for p in (self._tls.cert, self._tls.key, self._tls.bundle):
            try:
                st = os.stat(p)
                out.append((st.st_mtime_ns, st.st_size))
            except OSError:
                out.append((0, 0))
        return tuple(out)

    def _load(self) -> grpc.ServerCertificateConfiguration:
        cert = _read(self._tls.cert, "cert")
        key = _read(self._tls.key, "key")
        bundle = _read(self._tls.bundle, "bundle")
        _check_pair(cert, key)
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=bundle)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC before each handshake: a new configuration, or None for no change."""
        stamp = self._stat()
        if stamp == self._stamp:
            return None
        with self._lock:
            if stamp == self._stamp:
                return None
            try:
                config = self._load()
            except ConfigError as exc:  # keep serving with the last good files
                log.warning("TLS files changed but cannot be used yet: %s", exc.message)
                return None
            self._stamp = stamp
            self._config = config
            self.reloads += 1
            log.info("TLS certificate, key and bundle reloaded from disk")
            return config

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._config, self.fetch, require_client_authentication=True
        )
