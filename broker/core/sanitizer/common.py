"""Pieces every sanitizer stage shares: findings and their severities, a bounded collector, the
offset map that carries an edited text's positions back to the input, and short safe snippets."""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate
from types import MappingProxyType
from typing import Final, Literal

Severity = Literal["info", "suspect"]
INFO: Final = "info"
SUSPECT: Final = "suspect"

# Every kind has one severity, so a finding that crossed the wire as (kind, detail) only, as the
# proto's Finding does, still taints a task correctly. Unknown kinds count as suspect.
SEVERITY: Final[Mapping[str, Severity]] = MappingProxyType(
    {
        # Removed; harmless once gone.
        "control_chars": INFO,
        "invisible_chars": INFO,
        "bidi_control": INFO,
        "ansi_style": INFO,
        "html_comment": INFO,
        "hidden_html": INFO,
        "external_link": INFO,
        # An attempt to steer the model, smuggle text past a reviewer, or move data out.
        "bidi_override": SUSPECT,
        "tag_chars": SUSPECT,
        "variation_smuggling": SUSPECT,
        "terminal_control": SUSPECT,
        "remote_image": SUSPECT,
        "exfil_link": SUSPECT,
        "role_marker": SUSPECT,
        "instruction": SUSPECT,
        "exfiltration": SUSPECT,
    }
)

SNIPPET_CHARS: Final = 40


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing the sanitizer removed or flagged.

    ``detail`` is short and human readable; it quotes at most 40 printable characters of the
    offending content. ``offset`` is a position in the text given to ``sanitize``.
    """

    kind: str
    detail: str
    severity: Severity
    offset: int


class Collector:
    """Keeps at most ``limit`` findings, suspect ones first, and counts what it had to drop."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._kept: dict[str, list[Finding]] = {INFO: [], SUSPECT: []}
        self.dropped = 0

    def add(self, kind: str, detail: str, offset: int) -> None:
        severity = SEVERITY[kind]
        bucket = self._kept[severity]
        if len(bucket) < self._limit:
            bucket.append(Finding(kind, detail, severity, offset))
        else:
            self.dropped += 1

    def full(self, kind: str) -> bool:
        return len(self._kept[SEVERITY[kind]]) >= self._limit

    def result(self) -> tuple[tuple[Finding, ...], int]:
        suspect, info = self._kept[SUSPECT], self._kept[INFO]
        chosen = suspect + info[: self._limit - len(suspect)]
        omitted = self.dropped + len(suspect) + len(info) - len(chosen)
        return tuple(sorted(chosen, key=lambda f: (f.offset, f.kind))), omitted


class Sink:
    """Where a stage reports, with offsets in the stage's own text; they are carried back to the
    input. Hot loops ask ``full`` first and ``drop`` instead of building a detail for nothing."""

    __slots__ = ("_collector", "_to_input")

    def __init__(self, collector: Collector, to_input: Callable[[int], int] | None = None) -> None:
        self._collector = collector
        self._to_input = to_input

    def add(self, kind: str, detail: str, offset: int) -> None:
        if self._to_input is not None:
            offset = self._to_input(offset)
        self._collector.add(kind, detail, offset)

    def full(self, kind: str) -> bool:
        return self._collector.full(kind)

    def drop(self) -> None:
        self._collector.dropped += 1

    def through(self, to_here: Callable[[int], int]) -> Sink:
        """A sink for a text derived from this one, ``to_here`` mapping its offsets to ours."""
        outer = self._to_input
        if outer is None:
            return Sink(self._collector, to_here)
        return Sink(self._collector, lambda pos: outer(to_here(pos)))


Edit = tuple[int, int, str]  # replace text[start:end] with the string


class OffsetMap:
    """Carries a position in an edited text back to the text the edits were applied to.

    A position inside a replacement maps to the start of what it replaced. The lookup table is
    built on first use: most texts need no mapping at all.
    """

    __slots__ = ("_dst", "_edits")

    def __init__(self, edits: Sequence[Edit] = ()) -> None:
        self._edits = edits
        self._dst: list[int] | None = None

    def __call__(self, pos: int) -> int:
        if not self._edits:
            return pos
        if self._dst is None:
            self._dst = []
            out = prev = 0
            for start, end, repl in self._edits:
                out += start - prev
                self._dst.append(out)
                out += len(repl)
                prev = end
        i = bisect_right(self._dst, pos) - 1
        if i < 0:
            return pos
        start, end, repl = self._edits[i]
        dst = self._dst[i]
        if pos < dst + len(repl):
            return start
        return end + (pos - dst - len(repl))


class SplitMap:
    """Carries offsets back through a ``re.split`` with one group: parts are kept, removed, kept,
    ..., kept. Built with C-level accumulation, since there may be a removal every other
    character."""

    __slots__ = ("_dst", "_parts", "_src_end")

    def __init__(self, parts: Sequence[str]) -> None:
        self._parts = parts
        self._dst: list[int] | None = None
        self._src_end: list[int] = []

    def __call__(self, pos: int) -> int:
        if self._dst is None:
            ends = list(accumulate(map(len, self._parts)))
            self._src_end = ends[1::2]  # where each removed part ended in the source
            self._dst = list(accumulate(map(len, self._parts[0::2])))[:-1]
        i = bisect_right(self._dst, pos) - 1
        return pos if i < 0 else self._src_end[i] + pos - self._dst[i]


def apply_edits(text: str, edits: Sequence[Edit]) -> tuple[str, OffsetMap]:
    """Applies sorted, non-overlapping edits; returns the new text and its map back to ``text``."""
    if not edits:
        return text, OffsetMap()
    parts: list[str] = []
    append = parts.append
    prev = 0
    for start, end, repl in edits:
        append(text[prev:start])
        if repl:
            append(repl)
        prev = end
    append(text[prev:])
    return "".join(parts), OffsetMap(edits)


_SPACES = re.compile(r"\s+")


def snippet(text: str, limit: int = SNIPPET_CHARS) -> str:
    """At most ``limit`` printable characters of ``text``, whitespace collapsed, "..." if cut."""
    head = text[: limit * 4]
    clean = _SPACES.sub(" ", "".join(c if c.isprintable() else " " for c in head)).strip()
    if len(clean) > limit or len(text) > len(head):
        clean = clean[: limit - 3].rstrip() + "..."
    return clean
