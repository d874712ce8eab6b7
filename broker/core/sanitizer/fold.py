"""The matching copy of a text for the phrase rules: one character for one, so offsets carry over.

Compatibility forms (fullwidth, mathematical, circled and other NFKD letters, their accents
dropped), Latin small capitals, the Cyrillic and Greek letters that look Latin, and typographic
quotes and dashes fold to ASCII; then the copy is lower-cased. Only targets the rules can use
(letters, digits, spaces, the punctuation of markers) are folded, and only when the text holds a
character that folds, so plain ASCII and most other scripts pay nothing.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Iterable
from functools import cache
from typing import Final

_FOLD_RANGES: Final = (
    (0x00A0, 0x024F),
    (0x1D00, 0x1DBF),
    (0x1E00, 0x1EFF),
    (0x2000, 0x218F),
    (0x2460, 0x24FF),
    (0x3000, 0x3000),
    (0xFF00, 0xFFEF),
    (0x1D400, 0x1D7FF),
    (0x1F100, 0x1F1FF),
)
# Latin small capitals, Cyrillic and Greek look-alikes, typographic quotes and dashes.
_LOOKALIKES: Final = {
    **dict.fromkeys("\u2018\u2019\u201b\u2032\uff07", "'"),
    **dict.fromkeys("\u201c\u201d\u201f\u2033", '"'),
    **dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2212", "-"),
    **dict(
        zip(
            "\u1d00\u0299\u1d04\u1d05\u1d07\ua730\u0262\u029c\u026a\u1d0a\u1d0b\u029f\u1d0d"
            "\u0274\u1d0f\u1d18\u0280\ua731\u1d1b\u1d1c\u1d20\u1d21\u028f\u1d22",
            "abcdefghijklmnoprstuvwyz",
            strict=True,
        )
    ),
    **dict(
        zip(
            "\u0430\u0435\u043e\u0440\u0441\u0443\u0445\u0456\u0458\u0455\u0501\u04bb\u04cf"
            "\u051b\u051d\u0410\u0412\u0415\u041a\u041c\u041d\u041e\u0420\u0421\u0422\u0425"
            "\u0406\u0408\u0405",
            "aeopcyxijsdhlqwABEKMHOPCTXIJS",
            strict=True,
        )
    ),
    **dict(
        zip(
            "\u03b1\u03bf\u03b9\u03bd\u03c1\u03ba\u03c5\u0391\u0392\u0395\u0396\u0397\u0399"
            "\u039a\u039c\u039d\u039f\u03a1\u03a4\u03a5\u03a7",
            "aoivpkuABEZHIKMNOPTYX",
            strict=True,
        )
    ),
    "\u0131": "i",
    "\u0130": "I",
}


# Only what the rules can use: letters, digits, spaces and the punctuation of markers.
_FOLD_TARGETS: Final = frozenset(string.ascii_letters + string.digits + " :|<>[]#/.@'\"-_")


@cache
def _fold_table() -> tuple[dict[int, str], re.Pattern[str], re.Pattern[str]]:
    """The one-for-one fold table, and patterns finding a BMP or an astral character it folds."""
    table: dict[int, str] = {}
    for lo, hi in _FOLD_RANGES:
        for cp in range(lo, hi + 1):
            decomposed = unicodedata.normalize("NFKD", chr(cp))
            base = "".join(c for c in decomposed if not unicodedata.combining(c))
            if len(base) == 1 and base in _FOLD_TARGETS and base != chr(cp):
                table[cp] = base
    table.update({ord(k): v for k, v in _LOOKALIKES.items()})
    # Two classes: the engine tests BMP characters against a bitmap (fast), but an astral class
    # range by range (slow), so that one runs only on text that has astral characters.
    bmp = _char_class(cp for cp in table if cp <= 0xFFFF)
    astral = "[" + "".join(f"{chr(lo)}-{chr(hi)}" for lo, hi in _FOLD_RANGES if lo > 0xFFFF) + "]"
    return table, re.compile(bmp), re.compile(astral)  # astral: whole blocks, two ranges


def _char_class(codepoints: Iterable[int]) -> str:
    """A regex character class of the code points, consecutive runs written as ranges."""
    runs: list[list[int]] = []
    for cp in sorted(codepoints):
        if runs and cp == runs[-1][1] + 1:
            runs[-1][1] = cp
        else:
            runs.append([cp, cp])
    if not runs:
        return ""
    body = "".join(
        re.escape(chr(lo)) if lo == hi else f"{re.escape(chr(lo))}-{re.escape(chr(hi))}"
        for lo, hi in runs
    )
    return f"[{body}]"


def fold(text: str) -> str:
    """The matching copy: same length as ``text``, folded to ASCII look-alikes, lower-cased."""
    if not text.isascii():
        table, bmp, astral = _fold_table()
        if bmp.search(text) or (max(text) > "\uffff" and astral.search(text)):
            text = text.translate(table)
    lowered = text.lower()
    return lowered if len(lowered) == len(text) else text
