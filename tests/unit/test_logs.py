"""The log safety net: tokens, Vault tokens and private keys are masked in every written line,
tracebacks included."""

from __future__ import annotations

import io
import logging

import pytest

from broker.adapters.logs import RedactingFormatter, redact

JWS = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhZ2VudCJ9.c2lnbmF0dXJlLWJ5dGVz"
VAULT = "hvs.CAESIJ3x9abcdefghijklmnopqrstuvwxyz"
PEM = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMG\n-----END PRIVATE KEY-----"


@pytest.mark.parametrize("secret", [JWS, VAULT, PEM])
def test_redact_masks_secrets(secret: str) -> None:
    out = redact(f"before {secret} after")
    assert secret not in out
    assert out == "before [secure] after"


def test_ordinary_text_is_untouched() -> None:
    text = "task t_abc.def ended: 3 credentials revoked (kid Y3ZSBhyy90RpwGR8)"
    assert redact(text) == text


def test_formatter_redacts_messages_and_tracebacks() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactingFormatter("%(message)s"))
    log = logging.getLogger("test.redaction")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("got %s", JWS)
        try:
            raise ValueError(f"bad token {JWS} and {VAULT}")
        except ValueError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
    written = stream.getvalue()
    assert "ValueError" in written  # the traceback was written...
    assert JWS not in written and VAULT not in written  # ...without the secrets
    assert written.count("[secure]") == 3
