"""RFC 8785 JSON Canonicalization Scheme, with a fast path (https://www.rfc-editor.org/rfc/rfc8785).

``dumps`` returns exactly what the reference implementation ``rfc8785.dumps`` returns, and raises
what it raises. Audit records are hashed on every append, and the pure-Python reference costs
more than the rest of the broker's work per record, so values whose JCS form the C ``json``
encoder provably writes take the fast path:

- object keys are ASCII, so sorting by code point (``sort_keys``) is sorting by UTF-16 code unit;
- strings: with ``ensure_ascii=False`` the encoder escapes exactly ``"``, ``\\`` and the C0
  controls, with the same short forms (``\\n`` ...) and lowercase ``\\u00xx`` as JCS, and writes
  everything else as UTF-8 (a lone surrogate fails the UTF-8 encoding and falls back);
- integers within +-(2**53 - 1); integral floats within that range are written as integers, as
  ECMAScript does; non-integral floats only in [1e-4, 1e16), where ``repr`` (shortest round-trip
  digits, no exponent) is the ECMAScript form.

Anything else (other keys, numbers, types) goes to ``rfc8785.dumps``. A property test holds the
two to byte-for-byte equality.
"""

from __future__ import annotations

import json
import math
from typing import Any

import rfc8785

_MAX_EXACT = 2**53 - 1


class _Slow(Exception):
    """The value needs the reference implementation."""


def dumps(value: Any) -> bytes:
    """The RFC 8785 canonical JSON of ``value`` as UTF-8 bytes.

    Raises ``rfc8785.CanonicalizationError`` (a ``ValueError``) for what JCS cannot carry.
    """
    try:
        prepared = _prepare(value)
    except _Slow:
        return rfc8785.dumps(value)
    text = json.dumps(
        prepared, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return rfc8785.dumps(value)  # raises for the lone surrogate


def _prepare(value: Any) -> Any:
    # Exact type checks: subclasses (enums, bool-like ints) take the reference path.
    kind = type(value)
    if value is None or kind is bool or kind is str:
        return value
    if kind is int:
        if -_MAX_EXACT <= value <= _MAX_EXACT:
            return value
        raise _Slow
    if kind is float:
        if value.is_integer():
            if abs(value) <= _MAX_EXACT:
                return int(value)
            raise _Slow
        if math.isfinite(value) and 1e-4 <= abs(value) < 1e16:
            return value
        raise _Slow
    if kind is dict:
        out = {}
        for key, item in value.items():
            if type(key) is not str or not key.isascii():
                raise _Slow
            # Strings are most values: skip the call for them.
            out[key] = item if type(item) is str else _prepare(item)
        return out
    if kind is list or kind is tuple:
        return [item if type(item) is str else _prepare(item) for item in value]
    raise _Slow
