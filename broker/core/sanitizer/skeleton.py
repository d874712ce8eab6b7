"""The second matching copy of a text for the phrase rules: what a reader sees, spelled plainly.

The first copy (:mod:`broker.core.sanitizer.fold`) keeps every character. Attacks that split a
phrase with something a renderer or a reader ignores got past it: markdown emphasis inside a
word (``ig**no**re``), empty or formatting-only inline tags (``ig<b></b>nore``), combining marks
stacked on letters (``i`` U+0336 ``g`` U+0336 ...), and letters of other scripts that look Latin
(Cherokee U+13A5 for ``i``, Armenian U+0585 for ``o``). This copy removes the first three and
maps the last to their Latin skeleton, a subset of the Unicode confusables (UTS #39) for the
scripts such attacks use, beside the Cyrillic and Greek look-alikes ``fold`` already maps.
Offsets map back to the original text.

Pure: no I/O.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

from broker.core.sanitizer.common import Edit, OffsetMap, apply_edits

# Markdown emphasis and code marks inside or around words; inline tags that only format.
_MARKUP: Final = re.compile(
    r"(?<=\w)[*_~`]+(?=\w)"
    r"|</?(?:b|i|u|s|em|strong|span|mark|code|small|sub|sup|del|ins|font|kbd|q|tt)\b[^<>]{0,200}>"
    r"|<(\w{1,20})\b[^<>]{0,200}>\s*</\1\s*>"
    r"|<\w{1,20}\s*/>",
    re.I,
)
# Cherokee (and its small letters), Armenian and Latin extensions that pass for Latin letters.
_CHEROKEE: Final = {
    "\u13a0": "D", "\u13a1": "R", "\u13a2": "T", "\u13a5": "i", "\u13a9": "Y", "\u13aa": "A",
    "\u13ab": "J", "\u13ac": "E", "\u13b3": "W", "\u13b7": "M", "\u13bb": "H", "\u13bd": "Y",
    "\u13c0": "G", "\u13c2": "h", "\u13c3": "Z", "\u13cf": "b", "\u13d2": "R", "\u13d4": "W",
    "\u13d5": "S", "\u13d9": "V", "\u13da": "S", "\u13de": "L", "\u13df": "C", "\u13e2": "P",
    "\u13e6": "K", "\u13f4": "B",
}  # fmt: skip
_CONFUSABLES: Final = {
    **_CHEROKEE,
    # Cherokee small letters (U+AB70..U+ABBF) are the capitals U+13A0..U+13EF in lower case
    **{chr(ord(k) - 0x13A0 + 0xAB70): v.lower() for k, v in _CHEROKEE.items() if k < "\u13f0"},
    "\u0555": "O", "\u0585": "o", "\u057d": "u", "\u0581": "g", "\u0570": "h", "\u0578": "n",
    "\u057c": "n", "\u0561": "w", "\u0566": "q", "\u054d": "U", "\u054f": "S", "\u053c": "L",
    "\u0251": "a", "\u0261": "g", "\u0237": "j", "\u026a": "i", "\u0269": "i", "\u01c0": "l",
    "\u0399": "I", "\u04c0": "I", "\u2170": "i", "\u217c": "l",
}  # fmt: skip
_TABLE: Final = str.maketrans(_CONFUSABLES)
_HAS_CONFUSABLE: Final = re.compile("[" + "".join(sorted(_CONFUSABLES)) + "]")


def skeleton(text: str) -> tuple[str, OffsetMap] | None:
    """The plain copy of ``text`` and its offset map back, or None when it would be ``text``."""
    edits: list[Edit] = [(m.start(), m.end(), "") for m in _MARKUP.finditer(text)]
    if not text.isascii():
        edits.extend((i, i + 1, "") for i, ch in enumerate(text) if unicodedata.combining(ch))
        edits = _disjoint(edits)
    confusable = not text.isascii() and _HAS_CONFUSABLE.search(text) is not None
    if not edits and not confusable:
        return None
    plain, back = apply_edits(text, edits)
    return (plain.translate(_TABLE) if confusable else plain), back


def _disjoint(edits: list[Edit]) -> list[Edit]:
    out: list[Edit] = []
    for edit in sorted(edits):
        if not out or edit[0] >= out[-1][1]:
            out.append(edit)
    return out
