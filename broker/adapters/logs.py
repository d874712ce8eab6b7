"""Logging set-up. The broker never logs a token, key or secret: code logs ids and reasons only,
and, as a safety net, the formatters mask anything shaped like a compact JWS, a Vault token or a
PEM private key before a line is written, tracebacks included (a test runs a whole flow and
checks the logs).

Two formats (``log_format``): ``text`` (one line per record, for people) and ``json`` (one JSON
object per line, for log pipelines) with the correlation ids of the call being served:

    {"time": "2026-12-03T08:46:01.123Z", "level": "warning", "logger": "broker.rpc",
     "message": "...", "pid": 123, "worker": 0, "method": "AgentService/RequestCredential",
     "trace_id": "4bf9...", "span_id": "00f0...", "correlation_id": "9c1e..."}

``method``, ``trace_id`` and ``span_id`` come from ``log_context`` (set by the gRPC edge for the
duration of a call); ``correlation_id`` (an INTERNAL error's, as the client was told), ``task``
and ``jti`` from a record's ``extra``; ``worker`` from ``set_process_fields``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re
import sys
from collections.abc import Iterator
from contextvars import ContextVar

import orjson

from broker.core.text import printable

_JWS = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")
_VAULT_TOKEN = re.compile(r"\b(?:hv[sbr]\.[A-Za-z0-9_-]{20,}|s\.[A-Za-z0-9]{24})\b")
_PEM = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S)

_CONTEXT: ContextVar[dict[str, str]] = ContextVar("broker_log_context", default={})  # noqa: B039 - never mutated
_PROCESS: dict[str, object] = {}
EXTRA_FIELDS = ("correlation_id", "task", "jti")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def redact(text: str) -> str:
    return _PEM.sub("[secure]", _VAULT_TOKEN.sub("[secure]", _JWS.sub("[secure]", text)))


@contextlib.contextmanager
def log_context(**fields: str) -> Iterator[None]:
    """Add ``fields`` (ids, never secrets) to every JSON log line written inside the block."""
    token = _CONTEXT.set({**_CONTEXT.get(), **{k: v for k, v in fields.items() if v}})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def set_process_fields(**fields: object) -> None:
    """Fields of every line of this process (``worker=N``)."""
    _PROCESS.update(fields)


class RedactingFormatter(logging.Formatter):
    """Redacts the finished line, tracebacks included (the filter sees only the message), and
    escapes control, bidi and zero-width characters in the message (``broker.core.text``):
    text an agent wrote cannot start a forged log line or act on the terminal."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line, redacted like the text lines."""

    def format(self, record: logging.LogRecord) -> str:
        when = dt.datetime.fromtimestamp(record.created, dt.UTC)
        doc: dict[str, object] = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
            **_PROCESS,
            **_CONTEXT.get(),
        }
        for name in EXTRA_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                doc[name] = str(value)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return redact(orjson.dumps(doc, default=str).decode())


def formatter(log_format: str = "text", text_format: str = TEXT_FORMAT) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else RedactingFormatter(text_format)


def setup_logging(level: str = "info", log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("grpc").setLevel(logging.WARNING)
