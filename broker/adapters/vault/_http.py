"""A lean JSON-over-HTTP path to Vault for the per-mint Transit sign.

hvac (requests) costs about 1 ms of client CPU per call on the reference machine, more than
Vault's own work for a sign; stdlib ``http.client`` costs a fraction of that (docs/performance.md).
So the hot path uses this: one keep-alive connection per worker thread, the same TLS settings,
namespace and token as the hvac client. Everything else (login, key management, secrets,
leases) goes through hvac.
"""

from __future__ import annotations

import http.client
import ssl
import threading
from typing import Any
from urllib.parse import urlsplit

import orjson

from broker.adapters.vault.config import AuthMethod, VaultConfig

_RETRYABLE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class HttpError(Exception):
    """Vault answered with a non-2xx status; ``errors`` are Vault's messages."""

    def __init__(self, status: int, errors: list[str]) -> None:
        super().__init__(f"HTTP {status}: {'; '.join(errors) or 'no detail'}")
        self.status = status
        self.errors = errors


class FastJson:
    """POST JSON to Vault and parse the JSON answer (blocking; call it from a worker thread)."""

    def __init__(self, config: VaultConfig) -> None:
        parts = urlsplit(config.addr)
        self._host = parts.hostname or "127.0.0.1"
        self._tls = parts.scheme == "https"
        self._port = parts.port or (443 if self._tls else 80)
        self._timeout = config.timeout
        self._namespace = config.namespace
        self._context: ssl.SSLContext | None = None
        if self._tls:
            ctx = ssl.create_default_context(cafile=str(config.ca_cert) if config.ca_cert else None)
            auth = config.auth
            if auth.method is AuthMethod.CERT and auth.cert and auth.key:
                ctx.load_cert_chain(str(auth.cert), str(auth.key))
            self._context = ctx
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list[http.client.HTTPConnection] = []

    def post(self, path: str, body: dict[str, Any], token: str) -> dict[str, Any]:
        """POST ``body`` to ``/v1/PATH``; the parsed answer, or HttpError / OSError."""
        payload = orjson.dumps(body)
        headers = {"X-Vault-Token": token, "Content-Type": "application/json"}
        if self._namespace:
            headers["X-Vault-Namespace"] = self._namespace
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request("POST", f"/v1/{path}", body=payload, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
            except _RETRYABLE:
                # a keep-alive connection Vault closed while idle: once more on a fresh one
                self._drop(conn)
                if attempt == 2:
                    raise
                continue
            except BaseException:
                self._drop(conn)
                raise
            if resp.status >= 300:
                raise HttpError(resp.status, _errors(raw))
            answer = orjson.loads(raw) if raw else {}
            if not isinstance(answer, dict):
                raise HttpError(resp.status, ["not a JSON object"])
            return answer
        raise AssertionError("unreachable")  # pragma: no cover

    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self._tls:
                conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self._timeout, context=self._context
                )
            else:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    def _drop(self, conn: http.client.HTTPConnection) -> None:
        conn.close()
        self._local.conn = None
        with self._lock:
            if conn in self._conns:
                self._conns.remove(conn)

    def close(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()


def _errors(raw: bytes) -> list[str]:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return []
    errors = doc.get("errors") if isinstance(doc, dict) else None
    return [str(e) for e in errors] if isinstance(errors, list) else []
