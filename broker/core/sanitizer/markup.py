"""Stage 2: HTML a reader of the rendered page does not see.

Removed: comments (``<!-- -->``, including the abrupt ``<!-->`` forms) and elements hidden by a
``hidden`` attribute, ``type="hidden"``, or an inline style with ``display:none``,
``visibility:hidden|collapse``, ``font-size`` of zero (or at most 1px/1pt) or ``opacity:0``;
``aria-hidden="true"`` elements only when they hold 20 or more visible characters (short ones
are decorative icons). A hidden element is removed up to its matching end tag, counting nested
elements of the same name; an element that is never closed is hidden to the end of the text, as
a browser renders it. An unterminated comment is left in place: the model reads it and the
phrase detector still sees it.

This is a scanner, not an HTML parser: attributes are read by a tolerant regex, ``<script>`` and
``<style>`` bodies are not special, and CSS from stylesheets or classes is not evaluated.
"""

from __future__ import annotations

import re
from functools import lru_cache

from broker.core.sanitizer.common import Edit, Sink, snippet

_TAG = r"<(?P<name>[a-z][\w:-]{0,63}+)(?P<attrs>(?=[\s/])[^<>]*+)>"
_SCAN = re.compile(rf"<!--|{_TAG}", re.I)
_SCAN_TAGS = re.compile(_TAG, re.I)
_HIDING_HINT = re.compile(r"hidden|display|visibility|font-size|opacity", re.I)
_COMMENT_END = re.compile(r"--!?>")
ATTRIBUTE = re.compile(r"""([^\s"'<>/=]+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'=<>`]+)))?""")
_STYLE_HIDDEN = re.compile(
    r"display\s*:\s*none"
    r"|visibility\s*:\s*(?:hidden|collapse)"
    r"|font-size\s*:\s*(?:0+(?:\.0+)?|0?\.\d+(?=px|pt)|1(?=px|pt))(?![\d.])"
    r"|opacity\s*:\s*(?:0+(?:\.0*)?|\.0+)(?![\d.])",
    re.I,
)
_ANY_TAG = re.compile(r"<[^<>]*>")
_VOID = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param"}
    | {"source", "track", "wbr"}
)
_ARIA_MIN_CHARS = 20


def attribute_values(attrs: str) -> list[tuple[str, str | None, int]]:
    """(lower-case name, value or None, offset of the value within ``attrs``) per attribute."""
    out: list[tuple[str, str | None, int]] = []
    for m in ATTRIBUTE.finditer(attrs):
        for group in (2, 3, 4):
            if m.group(group) is not None:
                out.append((m.group(1).lower(), m.group(group), m.start(group)))
                break
        else:
            out.append((m.group(1).lower(), None, m.end()))
    return out


def _hidden_by(attrs: str) -> str | None:
    aria = False
    for raw_name, double, single, bare in ATTRIBUTE.findall(attrs):  # findall: no Match objects
        name = raw_name.lower()
        value = double or single or bare
        if name == "hidden":
            return "the hidden attribute"
        if name == "type" and value.strip().lower() == "hidden":
            return 'type="hidden"'
        if name == "style":
            style = _STYLE_HIDDEN.search(value)
            if style is not None:
                return snippet(style.group(), 24)
        if name == "aria-hidden" and value.strip().lower() == "true":
            aria = True
    return 'aria-hidden="true"' if aria else None


@lru_cache(maxsize=128)
def _tag_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"<(/?){re.escape(name)}(?=[\s/>])[^<>]*>", re.I)


def _element_end(text: str, name: str, pos: int) -> int:
    """Index just past the end tag matching an open ``name`` element whose start tag ends at pos."""
    depth = 1
    for tag in _tag_pattern(name).finditer(text, pos):
        if tag.group(1):
            depth -= 1
            if depth == 0:
                return tag.end()
        elif not tag.group().endswith("/>"):
            depth += 1
    return len(text)


def _visible_chars(html: str) -> int:
    return len("".join(_ANY_TAG.sub(" ", html).split()))


def hidden_spans(text: str, sink: Sink) -> list[tuple[int, int]]:
    """Spans of comments and hidden elements, in order and disjoint."""
    if "<" not in text:
        return []
    spans: list[tuple[int, int]] = []
    comments = 0
    first_comment = -1
    scan = _SCAN
    pos = 0
    while (m := scan.search(text, pos)) is not None:
        start = m.start()
        name = m.group("name")
        if name is None:
            after = m.end()
            if text.startswith(">", after):
                end = after + 1
            elif text.startswith("->", after):
                end = after + 2
            else:
                close = _COMMENT_END.search(text, after)
                if close is None:
                    scan = _SCAN_TAGS  # no comment can close from here on
                    pos = after
                    continue
                end = close.end()
            spans.append((start, end))
            comments += 1
            if first_comment < 0:
                first_comment = start
            pos = end
            continue
        attrs = m.group("attrs")
        reason = _hidden_by(attrs) if _HIDING_HINT.search(attrs) is not None else None
        if reason is None:
            pos = m.end()
            continue
        tag = name.lower()
        if tag in _VOID or attrs.rstrip().endswith("/"):
            end = m.end()
        else:
            end = _element_end(text, tag, m.end())
            if reason.startswith("aria") and _visible_chars(text[m.end() : end]) < _ARIA_MIN_CHARS:
                pos = m.end()
                continue
        spans.append((start, end))
        if sink.full("hidden_html"):
            sink.drop()
        else:
            sink.add("hidden_html", f"removed <{snippet(tag, 20)}> hidden by {reason}", start)
        pos = end
    if comments:
        sink.add("html_comment", f"removed {comments} HTML comment(s)", first_comment)
    return spans


def removal_edits(text: str, spans: list[tuple[int, int]]) -> list[Edit]:
    """Edits that remove ``spans``; a space stands in for a span between two non-space characters
    so that the text on either side cannot join into a new comment, tag or link."""
    merged: list[list[int]] = []
    for start, end in spans:
        if merged and merged[-1][1] >= start:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    edits: list[Edit] = []
    for start, end in merged:
        joins = start > 0 and end < len(text) and not text[start - 1].isspace()
        joins = joins and not text[end].isspace()
        edits.append((start, end, " " if joins else ""))
    return edits
