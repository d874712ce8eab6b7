"""Human durations for the CLI and config: ``"90s"``, ``"30m"``, ``"24h"``, ``"7d"``, ``"1h30m"``.

The grammar is a strict subset of Go's ``time.ParseDuration`` (which SPIRE and most cloud-native
tooling use for TTLs), restricted to whole numbers and the units a credential TTL needs::

    duration = digits                                  ; whole seconds, e.g. "3600"
             | [digits "d"] [digits "h"] [digits "m"] [digits "s"]   ; at least one, in this order

``format_duration`` writes the same grammar: ``parse_duration(format_duration(n)) == n`` for every
whole number of seconds ``n >= 0``.
"""

from __future__ import annotations

import math
import re

__all__ = ["format_duration", "parse_duration"]

_UNITS: tuple[tuple[str, int], ...] = (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1))

# [0-9], not \d: \d also matches non-ASCII digits such as "٣". At most 15 digits per number keeps
# every result exactly representable as a float.
_PLAIN = re.compile(r"[0-9]{1,15}")
_WITH_UNITS = re.compile(
    r"(?:(?P<d>[0-9]{1,15})d)?(?:(?P<h>[0-9]{1,15})h)?(?:(?P<m>[0-9]{1,15})m)?(?:(?P<s>[0-9]{1,15})s)?"
)

_ACCEPTED = (
    'expected whole seconds ("3600") or whole numbers with units d, h, m, s in that order '
    '("90s", "30m", "24h", "7d", "1h30m")'
)


def parse_duration(text: str) -> float:
    """Return the number of seconds ``text`` stands for.

    Raises ``ValueError`` naming the accepted forms when ``text`` is not one of them (empty,
    negative, fractional, an unknown unit, units out of order or repeated).
    """
    stripped = text.strip()
    if _PLAIN.fullmatch(stripped):
        return float(int(stripped))
    match = _WITH_UNITS.fullmatch(stripped)
    if not stripped or match is None:
        raise ValueError(f"invalid duration {text!r}: {_ACCEPTED}")
    total = 0
    for unit, seconds in _UNITS:
        value = match.group(unit)
        if value is not None:
            total += int(value) * seconds
    return float(total)


def format_duration(seconds: float) -> str:
    """Write ``seconds``, rounded to whole seconds, as ``parse_duration`` reads it: ``"1h30m"``.

    Raises ``ValueError`` for a negative or non-finite number.
    """
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"cannot format duration {seconds!r}: expected a finite number >= 0")
    remaining = round(seconds)
    if remaining == 0:
        return "0s"
    parts: list[str] = []
    for unit, size in _UNITS:
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
