"""Stage 1: characters a reader cannot see, and terminal escape sequences.

Everything here is removed. What a run of removed characters spelled is decoded into the finding
when it is a known smuggling channel: Unicode tag characters (U+E0000..U+E007F, "ASCII
smuggling") and long runs of variation selectors (one byte per selector).

Context-dependent characters, decided from their neighbours in the input so that a second pass
changes nothing:

* ZWNJ/ZWJ (U+200C/U+200D) stay only alone between two visible non-ASCII characters: emoji ZWJ
  sequences, Persian, Indic scripts. Next to ASCII they split keywords, so they go.
* Variation selectors stay only alone after a base that takes one: U+FE0E/U+FE0F after a visible
  non-ASCII character or a keycap base (0-9 # *), U+FE00..U+FE0D after a visible non-ASCII
  character, U+E0100..U+E01EF (ideographic variation) after a CJK ideograph. One selector per
  visible character is a four-bit channel at most; runs of four or more are reported as smuggling.
* Tag characters stay only inside the three RGI subdivision flags (England, Scotland, Wales).
* A byte order mark stays only as the first character.

Every other format character (Unicode category Cf) is removed, except the ones that render as
visible signs: the Arabic, Syriac and Kaithi number and end-of-ayah marks (U+0600..U+0605,
U+06DD, U+070F, U+0890, U+0891, U+08E2, U+110BD, U+110CD). Private-use characters and lone
surrogates are removed too; spaces (Zs), line and paragraph separators are left alone.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from typing import Final

from broker.core.sanitizer.common import Sink, SplitMap, snippet

_CTL = "\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"  # C0 but tab, LF, CR; DEL; C1
_ESC_START = "\x1b\x90\x98\x9b\x9d\x9e\x9f"  # ESC and the C1 introducers of CSI, OSC, DCS...
_BIDI_OVERRIDE = "\u202d\u202e"
_BIDI = "\u061c\u200e\u200f\u202a-\u202c\u2066-\u2069"
_INVISIBLE = (
    "\u00ad\u034f\u115f\u1160\u17b4\u17b5\u180e\u200b\u2060-\u2064\u206a-\u206f\u3164\uffa0"
    "\ufff9-\ufffb\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
    "\ue000-\uf8ff\U000f0000-\U0010ffff"  # private use (Co)
    "\ud800-\udfff"  # lone surrogates (Cs)
)
_TAGS = "\U000e0000-\U000e007f"
_VS = "\ufe00-\ufe0f\U000e0100-\U000e01ef"
_JOINERS = "\u200c\u200d"
# A visible non-ASCII character: never removed by this stage.
_KEEP = f"[^\x00-\x7f\\s\x80-\x9f{_BIDI_OVERRIDE}{_BIDI}{_INVISIBLE}{_TAGS}{_VS}{_JOINERS}\ufeff]"
_CJK = "[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]"
_FLAGS: Final = tuple(
    "\U0001f3f4" + "".join(chr(0xE0000 + ord(c)) for c in code) + "\U000e007f"
    for code in ("gbeng", "gbsct", "gbwls")
)

# Each alternative tests its character first and looks around second: the cheap test fails fast.
_SIMPLE = f"[{_CTL}{_BIDI_OVERRIDE}{_BIDI}{_INVISIBLE}]+"
_STRAY_VS = (
    f"[\ufe0e\ufe0f](?<![0-9#*][\ufe0e\ufe0f])(?<!{_KEEP}[\ufe0e\ufe0f])"
    f"|[\ufe00-\ufe0d](?<!{_KEEP}[\ufe00-\ufe0d])"
    f"|[\U000e0100-\U000e01ef](?<!{_CJK}[\U000e0100-\U000e01ef])"
    f"|[{_VS}](?=[{_VS}])"
)
_STRAY_JOINER = (
    f"[{_JOINERS}](?!{_KEEP})"
    f"|[{_JOINERS}](?<!{_KEEP}[{_JOINERS}])(?<!{_KEEP}[\ufe0e\ufe0f][{_JOINERS}])"
)
_LATE_BOM = "\ufeff(?<=[\\s\\S]\ufeff)"
# A tag character that is not part of one of the kept flags, whichever position it holds in it.
_STRAY_TAG = f"[{_TAGS}]" + "".join(
    f"(?!(?<={re.escape(flag[: i + 1])}){re.escape(flag[i + 1 :])})"
    for flag in _FLAGS
    for i in range(1, len(flag))
)
_ANY = f"[{_CTL}{_BIDI_OVERRIDE}{_BIDI}{_INVISIBLE}{_TAGS}{_VS}{_JOINERS}\ufeff]"
_ANY_RE = re.compile(_ANY)
# re.split with one group: [kept, removed, kept, removed, ..., kept], all in C.
_REMOVE = re.compile(
    f"(?={_ANY})((?:{_SIMPLE}|{_STRAY_JOINER}|{_STRAY_VS}|{_LATE_BOM}|[{_TAGS}]+)+)"
)
_REMOVE_KEEPING_FLAGS = re.compile(
    f"(?={_ANY})((?:{_SIMPLE}|{_STRAY_JOINER}|{_STRAY_VS}|{_LATE_BOM}|{_STRAY_TAG})+)"
)
_ESCAPE_START = re.compile(f"[{_ESC_START}]")
_ESCAPE = re.compile(
    f"(?=[{_ESC_START}])("
    "(?:\x1b\\[|\x9b)[0-?]{0,64}[ -/]{0,16}[@-~]"  # CSI
    "|(?:\x1b\\]|\x9d)[^\x07\x1b\x9c]{0,4096}(?:\x07|\x1b\\\\|\x9c)?"  # OSC
    "|(?:\x1b[PX^_]|[\x90\x98\x9e\x9f])[^\x1b\x9c]{0,4096}(?:\x1b\\\\|\x9c)?"  # DCS SOS PM APC
    "|\x1b[ -/]{0,8}[0-~]"  # other ESC sequences
    ")"
)
_SGR_WITH_8 = re.compile(r"(?:\x1b\[|\x9b)([0-9;:]*8[0-9;:]*)m")
_OSC_SUSPECT = re.compile("(?:\x1b\\]|\x9d)(52|1337|5113)[;\x07]")
_OSC_NAMES: Final = {"52": "OSC 52 clipboard write", "1337": "OSC 1337", "5113": "OSC 5113"}

# Kinds of removed characters: the class that counts them among what was removed, and the
# pattern that finds the first one in the text (in context, as the removal decided it).
_KINDS: Final[Sequence[tuple[str, re.Pattern[str], re.Pattern[str]]]] = tuple(
    (kind, re.compile(cls), re.compile(first))
    for kind, cls, first in (
        ("control_chars", f"[{_CTL}]+", f"[{_CTL}]"),
        ("bidi_override", f"[{_BIDI_OVERRIDE}]+", f"[{_BIDI_OVERRIDE}]"),
        ("bidi_control", f"[{_BIDI}]+", f"[{_BIDI}]"),
        ("tag_chars", f"[{_TAGS}]+", _STRAY_TAG),
        (
            "invisible_chars",
            f"[{_INVISIBLE}{_VS}{_JOINERS}\ufeff]+",
            f"[{_INVISIBLE}]|{_STRAY_JOINER}|{_STRAY_VS}|{_LATE_BOM}",
        ),
    )
)
_VS_RUN = re.compile(f"[{_VS}]{{4,}}")
_VS_ANY = re.compile(f"[{_VS}]")
_DECODE_LIMIT: Final = 200


def _codepoint(c: str) -> str:
    return f"U+{ord(c):04X} {unicodedata.name(c, '')}".rstrip()


def _conceals(params: str) -> bool:
    """Whether an SGR parameter list turns on concealed text (parameter 8, not a colour index)."""
    items = params.split(";")
    i = 0
    while i < len(items):
        item = items[i]
        if item in ("38", "48", "58") and i + 1 < len(items):
            i += 3 if items[i + 1] == "5" else 5 if items[i + 1] == "2" else 1
            continue
        if item.isdigit() and int(item) == 8:
            return True
        i += 1
    return False


def _tag_text(run: str) -> str:
    """What a run of tag characters spells (its printable ASCII)."""
    return "".join(chr(ord(c) - 0xE0000) for c in run if 0xE0020 <= ord(c) <= 0xE007E)


def _selector_bytes(run: str) -> str:
    """A run of variation selectors read as bytes (U+FE00.. is 0-15, U+E0100.. is 16-255)."""
    data = bytes(ord(c) - 0xFE00 if ord(c) <= 0xFE0F else ord(c) - 0xE0100 + 16 for c in run)
    return data.decode("utf-8", errors="replace")


def _escape_name(seq: str) -> str:
    body = seq[2:] if seq[0] == "\x1b" else seq[1:]
    if seq[:2] == "\x1b[" or seq[0] == "\x9b":
        return f"CSI {snippet(body, 16)}"
    if seq[:2] == "\x1b]" or seq[0] == "\x9d":
        return f"OSC {snippet(body.split(';', 1)[0], 8)}"
    if seq[0] in "\x90\x98\x9e\x9f" or seq[1:2] in ("P", "X", "^", "_"):
        return "DCS/SOS/PM/APC string"
    return f"ESC {snippet(seq[1:], 8)}"


def _same(pos: int) -> int:
    return pos


def _offset_of_piece(parts: Sequence[str], piece: int) -> int:
    """Offset in the input of removed piece number ``piece`` (parts[2 * piece + 1])."""
    return sum(map(len, parts[: 2 * piece + 1]))


def _escape_is_suspect(seq: str) -> bool:
    conceal = _SGR_WITH_8.fullmatch(seq)
    return bool(conceal and _conceals(conceal.group(1))) or bool(_OSC_SUSPECT.match(seq))


def _strip_escapes(text: str, sink: Sink) -> tuple[str, Callable[[int], int]]:
    if _ESCAPE_START.search(text) is None:
        return text, _same
    parts = _ESCAPE.split(text)
    if len(parts) == 1:
        return text, _same
    removed = parts[1::2]
    # Most sequences are colours: look for the suspect ones with two scans over all of them.
    joined = "\x00".join(removed)
    suspect = [m.start() for m in _SGR_WITH_8.finditer(joined) if _conceals(m.group(1))]
    suspect += [m.start() for m in _OSC_SUSPECT.finditer(joined)]
    if suspect:
        piece = joined.count("\x00", 0, min(suspect))
        what = _OSC_SUSPECT.match(removed[piece])
        sink.add(
            "terminal_control",
            f"removed {len(suspect)} terminal control sequence(s), first: "
            + (
                _OSC_NAMES[what.group(1)] if what else "SGR 8 (conceal) hides the text that follows"
            ),
            _offset_of_piece(parts, piece),
        )
    if len(removed) > len(suspect):
        piece = 0
        while _escape_is_suspect(removed[piece]):  # the first one that is not suspect
            piece += 1
        sink.add(
            "ansi_style",
            f"removed {len(removed) - len(suspect)} terminal escape sequence(s), "
            f"first: {_escape_name(removed[piece])}",
            _offset_of_piece(parts, piece),
        )
    return "".join(parts[::2]), SplitMap(parts)


def _strip_characters(text: str, sink: Sink) -> tuple[str, Callable[[int], int]]:
    if _ANY_RE.search(text) is None:
        return text, _same
    remove = _REMOVE_KEEPING_FLAGS if _FLAGS[0][0] in text else _REMOVE
    parts = remove.split(text)
    if len(parts) == 1:
        return text, _same
    removed = "".join(parts[1::2])
    for kind, cls, first in _KINDS:
        run = cls.search(removed)
        if run is None:
            continue
        count = len(removed) - len(cls.sub("", removed))
        at = first.search(text)
        offset = at.start() if at is not None else 0
        if kind == "tag_chars":
            spelled: list[str] = []
            for tags in cls.finditer(removed):
                spelled.append(_tag_text(tags.group()[:_DECODE_LIMIT]))
                if sum(map(len, spelled)) >= _DECODE_LIMIT:
                    break
            detail = (
                f'removed {count} Unicode tag character(s) spelling "{snippet("".join(spelled))}"'
            )
        elif kind == "bidi_override":
            detail = f"removed {count} bidi override(s) that reorder displayed text"
        else:
            label = {"control_chars": "control", "bidi_control": "bidi control"}.get(
                kind, "invisible or format"
            )
            detail = f"removed {count} {label} character(s), first {_codepoint(run.group()[0])}"
        sink.add(kind, detail, offset)
    if _VS_ANY.search(removed) is not None:
        _report_selector_runs(text, sink)
    return "".join(parts[::2]), SplitMap(parts)


def _report_selector_runs(text: str, sink: Sink) -> None:
    first = _VS_RUN.search(text)
    if first is None:
        return
    runs = len(_VS_RUN.findall(text, first.start()))
    decoded = _selector_bytes(first.group()[: _DECODE_LIMIT * 2])
    sink.add(
        "variation_smuggling",
        f'removed {runs} run(s) of 4+ variation selectors, the first encoding "{snippet(decoded)}"',
        first.start(),
    )


def strip_chars(text: str, sink: Sink) -> tuple[str, Callable[[int], int]]:
    """Stage 1: the cleaned text and a map from its offsets to ``text``'s."""
    no_escapes, escapes = _strip_escapes(text, sink)
    clean, chars = _strip_characters(no_escapes, sink.through(escapes))
    return clean, lambda pos: escapes(chars(pos))
