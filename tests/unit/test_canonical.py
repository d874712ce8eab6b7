"""RFC 8785 canonical JSON and the arguments digest that agent, broker and MCP server must share."""

from __future__ import annotations

import hashlib
import json
import math
from types import MappingProxyType
from typing import Any

import pytest
from google.protobuf import json_format, struct_pb2
from hypothesis import given
from hypothesis import strategies as st

from broker.core.canonical import MAX_ARGUMENTS_BYTES, args_sha256, canonical_json, check_sha256_hex
from broker.core.errors import InvalidRequest, Reason

# The examples of RFC 8785 §3.2.2 (numbers, escapes, literals) and §3.2.3 (sorting of properties).
RFC8785_INPUT = (
    '{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],'
    ' "string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",'
    ' "literals": [null, true, false]}'
)
RFC8785_OUTPUT = (
    '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
    '"string":"\u20ac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
)
RFC8785_SORTING = {
    "\u20ac": "Euro Sign",
    "\r": "Carriage Return",
    "\ufb33": "Hebrew Letter Dalet With Dagesh",
    "1": "One",
    "\U0001f600": "Emoji: Grinning Face",
    "\u0080": "Control",
    "\u00f6": "Latin Small Letter O With Diaeresis",
}
RFC8785_SORTED_VALUES = [
    "Carriage Return",
    "One",
    "Control",
    "Latin Small Letter O With Diaeresis",
    "Euro Sign",
    "Emoji: Grinning Face",
    "Hebrew Letter Dalet With Dagesh",
]


def test_rfc8785_example() -> None:
    assert canonical_json(json.loads(RFC8785_INPUT)) == RFC8785_OUTPUT.encode()


def test_rfc8785_keys_sort_by_utf16_code_units() -> None:
    # the emoji (a surrogate pair, D83D...) sorts before U+FB33 although its code point is larger
    out = json.loads(canonical_json(RFC8785_SORTING))
    assert list(out.values()) == RFC8785_SORTED_VALUES


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1.0, b"1"),
        (-0.0, b"0"),
        (20.0, b"20"),
        (1e21, b"1e+21"),
        (1e20, b"100000000000000000000"),
        (0.1, b"0.1"),
        (1e-7, b"1e-7"),
        ({"b": 1.0, "a": [2.0, {"c": 3.5}]}, b'{"a":[2,{"c":3.5}],"b":1}'),
        ("\u00e9\n", b'"\xc3\xa9\\n"'),
    ],
)
def test_numbers_and_strings(value: Any, expected: bytes) -> None:
    assert canonical_json(value) == expected


def test_struct_doubles_digest_like_integers() -> None:
    """google.protobuf.Struct turns every number into a double: the digest must not change."""
    arguments = {"path": "a.txt", "count": 3, "nested": {"ids": [1, 2, 3]}, "ratio": 0.5}
    struct = struct_pb2.Struct()
    struct.update(arguments)
    via_struct = json_format.MessageToDict(struct)
    assert via_struct["count"] == 3.0
    assert isinstance(via_struct["count"], float)
    assert args_sha256(via_struct) == args_sha256(arguments)


def test_big_integers_are_the_doubles_that_hold_them() -> None:
    assert canonical_json({"a": 2**53, "b": [10**21, -(2**60)]}) == (
        b'{"a":9007199254740992,"b":[1e+21,-1152921504606847000]}'
    )
    assert args_sha256({"n": 2**53}) == args_sha256({"n": float(2**53)})


def test_args_sha256_known_values() -> None:
    assert args_sha256({}) == hashlib.sha256(b"{}").hexdigest()
    assert args_sha256({"b": 1, "a": 2.0}) == hashlib.sha256(b'{"a":2,"b":1}').hexdigest()
    assert args_sha256(MappingProxyType({"a": 1})) == hashlib.sha256(b'{"a":1}').hexdigest()


@pytest.mark.parametrize(
    "arguments",
    [
        {"x": math.nan},
        {"x": math.inf},
        {"x": 2**53 + 1},
        {"x": {1: "non-string key"}},
        {"x": object()},
        {"x": "\ud800"},
        {"x": b"bytes"},
    ],
    ids=["nan", "inf", "int-no-double-holds", "int-key", "object", "lone-surrogate", "bytes"],
)
def test_unrepresentable_arguments(arguments: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest) as caught:
        args_sha256(arguments)
    assert caught.value.field == "arguments"
    assert caught.value.reason is Reason.INVALID_REQUEST


@pytest.mark.parametrize("arguments", [[1, 2], "text", 3, None])
def test_arguments_must_be_an_object(arguments: Any) -> None:
    with pytest.raises(InvalidRequest, match="arguments: must be a JSON object"):
        args_sha256(arguments)


def test_deep_nesting_is_refused_not_a_crash() -> None:
    deep: Any = {}
    for _ in range(5000):
        deep = {"a": deep}
    with pytest.raises(InvalidRequest, match="arguments: nested too deeply"):
        args_sha256(deep)


def test_size_limit_counts_canonical_bytes() -> None:
    overhead = len(b'{"x":""}')
    at_limit = {"x": "a" * (MAX_ARGUMENTS_BYTES - overhead)}
    assert len(canonical_json(at_limit)) == MAX_ARGUMENTS_BYTES
    args_sha256(at_limit)
    with pytest.raises(InvalidRequest, match="larger than the 65536-byte limit") as caught:
        args_sha256({"x": "a" * (MAX_ARGUMENTS_BYTES - overhead + 1)})
    assert caught.value.field == "arguments"


def test_size_limit_stops_early_on_huge_input() -> None:
    huge = {f"k{i}": "v" * 100 for i in range(200_000)}  # ~22 MB if fully rendered
    with pytest.raises(InvalidRequest, match="larger than"):
        args_sha256(huge)


def test_canonical_json_names_the_field() -> None:
    with pytest.raises(InvalidRequest) as caught:
        canonical_json({"x": math.nan}, field="extra")
    assert caught.value.field == "extra"


@pytest.mark.parametrize(
    "value",
    ["0" * 64, hashlib.sha256(b"x").hexdigest()],
)
def test_check_sha256_hex_accepts(value: str) -> None:
    assert check_sha256_hex(value, "args_sha256") == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "0" * 63,
        "0" * 65,
        "A" * 64,
        hashlib.sha256(b"x").hexdigest() + "\n",
        "g" * 64,
        " " + "0" * 63,
        "\u0660" * 64,  # Arabic-Indic digit zero: a Unicode digit, not a hex digit
        None,
        b"0" * 64,
    ],
)
def test_check_sha256_hex_rejects(value: Any) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_sha256_hex(value, "prompt_sha256")
    assert caught.value.field == "prompt_sha256"
    assert "64 lowercase hex characters (SHA-256)" in caught.value.message


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    # below 2**53: beyond it JCS writes a double as an integer that Python's json reads as an int
    # other than the double (canonical_json then refuses it rather than guess)
    | st.floats(min_value=-(2.0**53), max_value=2.0**53)
    | st.text(st.characters(exclude_categories=("Cs",)), max_size=20),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.text(st.characters(exclude_categories=("Cs",)), max_size=8), children, max_size=5
        )
    ),
    max_leaves=30,
)


@given(json_values)
def test_canonical_form_is_a_fixed_point(value: Any) -> None:
    once = canonical_json(value)
    assert canonical_json(json.loads(once)) == once


@given(st.dictionaries(st.text(max_size=8), st.integers(-(2**53) + 1, 2**53 - 1), max_size=8))
def test_digest_ignores_key_order_and_int_float_spelling(arguments: dict[str, int]) -> None:
    reordered = dict(reversed(list(arguments.items())))
    as_floats = {k: float(v) for k, v in arguments.items() if abs(v) < 2**52}
    as_ints = {k: v for k, v in arguments.items() if abs(v) < 2**52}
    assert args_sha256(reordered) == args_sha256(arguments)
    assert args_sha256(as_floats) == args_sha256(as_ints)
