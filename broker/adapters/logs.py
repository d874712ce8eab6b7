"""Logging set-up. The broker never logs a token, key or secret: code logs ids and reasons only,
and, as a safety net, this filter masks anything shaped like a compact JWS or a PEM block before
a line is written, tracebacks included (a test runs a whole flow and checks the logs)."""

from __future__ import annotations

import logging
import re
import sys

_JWS = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")
_VAULT_TOKEN = re.compile(r"\b(?:hv[sbr]\.[A-Za-z0-9_-]{20,}|s\.[A-Za-z0-9]{24})\b")
_PEM = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S)


def redact(text: str) -> str:
    return _PEM.sub("[secure]", _VAULT_TOKEN.sub("[secure]", _JWS.sub("[secure]", text)))


class RedactingFormatter(logging.Formatter):
    """Redacts the finished line, tracebacks included (the filter sees only the message)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("grpc").setLevel(logging.WARNING)
