"""Canonical JSON (RFC 8785, JSON Canonicalization Scheme) and the tool-call arguments digest.

https://www.rfc-editor.org/rfc/rfc8785

``args_sha256`` is the lowercase hex SHA-256 of the JCS form of a tool call's arguments object: the
agent, the broker and the MCP server compute it independently and must agree byte for byte. JCS
writes numbers the way ECMAScript does, so ``1.0`` and ``1`` have the same canonical form; this
matters because ``google.protobuf.Struct`` carries every number as a double.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import rfc8785

from broker.core.errors import InvalidRequest

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

MAX_ARGUMENTS_BYTES = 64 * 1024
"""Upper bound of the canonical JSON of a tool call's arguments."""

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_MAX_SAFE_INT = 2**53 - 1


class _TooLarge(Exception):
    pass


class _BoundedSink(io.BytesIO):
    """A sink that gives up as soon as more than ``limit`` bytes are written (no full render)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self._room = limit

    def write(self, data: ReadableBuffer, /) -> int:
        n = super().write(data)
        self._room -= n
        if self._room < 0:
            raise _TooLarge
        return n


def canonical_json(value: Any, *, field: str = "value", max_bytes: int | None = None) -> bytes:
    """Return the RFC 8785 canonical JSON of ``value`` (UTF-8 bytes).

    Raises ``InvalidRequest(field, ...)`` for what JSON cannot carry exactly (NaN, infinities,
    integers no double holds exactly, non-string keys, lone surrogates, unsupported types, absurd
    nesting) and, when ``max_bytes`` is given, for a canonical form longer than that.
    """
    sink = _BoundedSink(max_bytes) if max_bytes is not None else io.BytesIO()
    try:
        try:
            rfc8785.dump(value, sink)
        except rfc8785.IntegerDomainError:
            sink = _BoundedSink(max_bytes) if max_bytes is not None else io.BytesIO()
            rfc8785.dump(_big_ints_as_doubles(value), sink)
    except _TooLarge:
        raise InvalidRequest(
            field, f"canonical JSON is larger than the {max_bytes}-byte limit"
        ) from None
    except rfc8785.CanonicalizationError as exc:
        raise InvalidRequest(field, f"not representable as canonical JSON: {exc}") from None
    except RecursionError:
        raise InvalidRequest(field, "nested too deeply") from None
    return sink.getvalue()


def _big_ints_as_doubles(value: Any) -> Any:
    """JSON numbers are IEEE doubles (RFC 8785 §3.2.2.3): an integer beyond 2**53 that a double
    holds exactly (2**53 itself, 10**21) is that double, as ``google.protobuf.Struct`` would carry
    it; one that no double holds exactly stays an int, which the canonicalizer then refuses."""
    if isinstance(value, dict):
        return {k: _big_ints_as_doubles(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_big_ints_as_doubles(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _MAX_SAFE_INT:
        try:
            as_double = float(value)
        except OverflowError:
            return value
        return as_double if as_double == value else value
    return value


def args_sha256(arguments: Mapping[str, Any]) -> str:
    """Lowercase hex SHA-256 of the canonical JSON of a tool call's arguments object.

    Raises ``InvalidRequest("arguments", ...)`` when ``arguments`` is not an object, cannot be
    canonicalized, or its canonical form exceeds ``MAX_ARGUMENTS_BYTES``.
    """
    if not isinstance(arguments, Mapping):
        raise InvalidRequest("arguments", "must be a JSON object")
    if not isinstance(arguments, dict):
        arguments = dict(arguments)
    data = canonical_json(arguments, field="arguments", max_bytes=MAX_ARGUMENTS_BYTES)
    return hashlib.sha256(data).hexdigest()


def check_sha256_hex(value: str, field: str) -> str:
    """Return ``value`` if it is a lowercase hex SHA-256 digest; raise ``InvalidRequest`` if not."""
    if not isinstance(value, str) or _SHA256_HEX.fullmatch(value) is None:
        raise InvalidRequest(field, "must be 64 lowercase hex characters (SHA-256)")
    return value
