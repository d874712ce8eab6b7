from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.core.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0),
        ("3600", 3600),
        ("90s", 90),
        ("30m", 1800),
        ("24h", 86_400),
        ("7d", 604_800),
        ("1h30m", 5400),
        ("1d2h3m4s", 93_784),
        ("0s", 0),
        ("  15m ", 900),
        ("90m", 5400),
    ],
)
def test_parse_accepts(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds
    assert isinstance(parse_duration(text), float)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "s",
        "-5s",
        "+5s",
        "1.5h",
        "10y",
        "10ms",
        "1H",
        "30m1h",  # units out of order
        "1h1h",  # repeated unit
        "1h 30m",
        "٣s",  # a non-ASCII digit
        "1" * 16,
        "abc",
    ],
)
def test_parse_rejects_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError, match="expected whole seconds") as caught:
        parse_duration(text)
    assert '"1h30m"' in str(caught.value)
    assert repr(text) in str(caught.value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.4, "0s"),
        (59, "59s"),
        (60, "1m"),
        (5400, "1h30m"),
        (86_400, "1d"),
        (93_784, "1d2h3m4s"),
        (3650 * 86_400, "3650d"),
        (89.6, "1m30s"),
    ],
)
def test_format(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds", [-1, math.inf, math.nan])
def test_format_rejects(seconds: float) -> None:
    with pytest.raises(ValueError, match="finite number >= 0"):
        format_duration(seconds)


@given(st.integers(min_value=0, max_value=10**12))
def test_round_trip(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.integers(0, 999), st.integers(0, 999), st.integers(0, 999), st.integers(0, 999))
def test_units_add_up(days: int, hours: int, minutes: int, seconds: int) -> None:
    text = f"{days}d{hours}h{minutes}m{seconds}s"
    assert parse_duration(text) == days * 86_400 + hours * 3600 + minutes * 60 + seconds
