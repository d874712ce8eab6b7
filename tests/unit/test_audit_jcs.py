"""The fast canonical JSON path writes exactly what the RFC 8785 reference writes."""

from __future__ import annotations

import math
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core.audit import jcs

_keys = st.text(max_size=6) | st.sampled_from(["seq", "a", "é", "\U0001f600", "\ufb01", "\x7f"])
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**60), 2**60)
    | st.floats()
    | st.sampled_from([0.0, -0.0, 1e-4, 9.99e-5, 1e-7, 2.0**53, 2.0**53 - 1, 1e16, 1e21, 0.1])
    | st.text()
    | st.text(st.characters(codec="utf-8"))
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4),
    max_leaves=12,
)


def _outcome(fn: Any, value: Any) -> bytes | type[BaseException]:
    try:
        result: bytes = fn(value)
    except (ValueError, TypeError) as exc:
        return type(exc)
    return result


@settings(max_examples=1500, deadline=None)
@given(value=_json)
def test_fast_path_matches_the_reference(value: Any) -> None:
    assert _outcome(jcs.dumps, value) == _outcome(rfc8785.dumps, value)


@pytest.mark.parametrize(
    "value",
    [
        {"b": 1, "a": [1.0, 1.5, -0.0, 1e-5, 123456789.125]},
        {"\ufb01": 1, "\U0001f600": 2},  # UTF-16 order differs from code point order
        {"s": 'quote" backslash\\ nl\n tab\t ctl\x01 del\x7f é \u2028'},
        {"n": 2**53},
        {"f": math.inf},
        {"s": "\ud800"},
    ],
)
def test_fast_path_examples(value: Any) -> None:
    assert _outcome(jcs.dumps, value) == _outcome(rfc8785.dumps, value)
