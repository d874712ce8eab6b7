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


def test_log_fields_are_escaped_no_forged_lines() -> None:
    """Issue 13 item 5: an agent's text in a log message cannot start a new line or act on
    the terminal."""
    import logging

    from broker.adapters.logs import RedactingFormatter

    formatter = RedactingFormatter("%(levelname)s %(name)s: %(message)s")
    record = logging.LogRecord(
        "broker", logging.INFO, __file__, 1, "ended: %s", ("ok\nERROR broker: forged\x1b[2J",), None
    )
    line = formatter.format(record)
    assert "\n" not in line and "\x1b" not in line
    assert line == "INFO broker: ended: ok\\x0aERROR broker: forged\\x1b[2J"


def test_json_lines_are_one_object_each_with_correlation_ids_and_redacted() -> None:
    import orjson

    from broker.adapters.logs import JsonFormatter, log_context

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("test.json")
    log.addHandler(handler)
    log.propagate = False
    try:
        with log_context(method="AgentService/BeginTask", trace_id="ab" * 16):
            try:
                raise ValueError(f"bad key {PEM}")
            except ValueError:
                log.exception("failed with %s", VAULT, extra={"correlation_id": "c0ffee"})
        log.warning("outside any call")
    finally:
        log.removeHandler(handler)
    first, second = (orjson.loads(line) for line in stream.getvalue().splitlines())
    assert first["method"] == "AgentService/BeginTask" and first["trace_id"] == "ab" * 16
    assert first["correlation_id"] == "c0ffee" and first["level"] == "error"
    assert "ValueError" in first["exception"] and "[secure]" in first["exception"]
    assert first["message"] == "failed with [secure]"
    assert "method" not in second and second["logger"] == "test.json"
    assert VAULT not in stream.getvalue() and "PRIVATE KEY" not in stream.getvalue()
