"""Showing text that someone else wrote (an agent's intent, a justification, an outcome) to a
person, on a terminal or in a log line, without letting it act on the terminal or the log.

``printable`` escapes every character that could move the cursor, hide or recolour text, start
a new (forged) line, reorder what is displayed, or hide between visible characters: the C0 and C1
controls (ESC, CR, LF, BEL...), DEL, Unicode format characters (bidi overrides and isolates,
zero-width spaces and joiners, the BOM, tag characters), line and paragraph separators,
surrogates, private-use and unassigned code points. Each becomes a visible escape (``\\x1b``,
``\\u202e``), and a backslash is doubled so that an escape cannot be faked. Everything else,
accents and scripts included, is shown as it is.

Pure: no I/O.
"""

from __future__ import annotations

import unicodedata

_HIDDEN = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def _escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: str, limit: int | None = None) -> str:
    """``text`` with control, bidi, zero-width and other invisible characters escaped; cut to
    ``limit`` characters of input (with "…") when given."""
    cut = limit is not None and len(text) > limit
    if cut:
        text = text[:limit]
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif unicodedata.category(ch) in _HIDDEN:
            out.append(_escape(ch))
        else:
            out.append(ch)
    return "".join(out) + ("…" if cut else "")


def json_safe(document: str) -> str:
    """A JSON document with the same characters escaped as JSON escapes (``\\u202e``): the
    same value for a parser, nothing invisible for a person reading it on a terminal."""
    out = []
    for ch in document:
        if unicodedata.category(ch) in _HIDDEN:
            code = ord(ch)
            if code < 0x10000:
                out.append(f"\\u{code:04x}")
            else:
                code -= 0x10000
                out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
        else:
            out.append(ch)
    return "".join(out)
