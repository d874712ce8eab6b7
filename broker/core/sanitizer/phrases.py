"""Stage 4: text written to steer the model (the rules are in :mod:`broker.core.sanitizer.rules`).

One regex finds every lead word (a trie, so its cost does not grow with the number of words);
only where one matches are its rules tried, anchored, so the cost stays linear in the text.
Matching runs on the folded copy (:mod:`broker.core.sanitizer.fold`); details quote the original.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from broker.core.sanitizer.common import Sink, snippet
from broker.core.sanitizer.fold import fold
from broker.core.sanitizer.rules import (
    EXFILTRATION,
    FAMILIES,
    FILE_OR_PATH,
    GATES,
    LINE_LABELS,
    LINE_MARKERS,
    PARAM_TARGET,
    ROLE_MARKER,
    Rule,
    gate_holds,
)
from broker.core.sanitizer.skeleton import skeleton


def _trie(entries: Mapping[str, Sequence[str]]) -> str:
    """One regex for many (literal, tail) leads, shared prefixes factored out: the regex engine
    tries alternatives one by one, so a flat list of a hundred words is several times slower."""
    root: dict[str, Any] = {}
    for literal in entries:
        node = root
        for ch in literal:
            node = node.setdefault(ch, {})
        node[""] = {}

    def build(node: dict[str, Any], prefix: str) -> str:
        alts = [
            re.escape(ch) + build(child, prefix + ch) for ch, child in sorted(node.items()) if ch
        ]
        if "" in node:
            tails = entries[prefix]
            alts.append(tails[0] if len(tails) == 1 else "(?:" + "|".join(tails) + ")")
        return alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"

    return build(root, "")


@dataclass(frozen=True, slots=True)
class _Compiled:
    kind: str
    label: str
    pattern: re.Pattern[str]
    post: re.Pattern[str] | None
    cased: re.Pattern[str] | None
    closed: bool
    gate: str


def _compile_rules(rules: Sequence[tuple[Rule, str]]) -> tuple[_Compiled, ...]:
    """Rules with the same kind, label, conditions and gate merged into one alternation."""
    merged: dict[tuple[str, str, str, str, bool, str], list[str]] = {}
    for rule, gate in rules:
        key = (rule.kind, rule.label, rule.post, rule.cased, rule.closed, gate)
        merged.setdefault(key, []).append(rule.pattern)
    return tuple(
        _Compiled(
            kind,
            label,
            re.compile(alts[0] if len(alts) == 1 else "|".join(f"(?:{p})" for p in alts)),
            re.compile(post) if post else None,
            re.compile(cased) if cased else None,
            closed,
            gate,
        )
        for (kind, label, post, cased, closed, gate), alts in merged.items()
    )


def _build_scan() -> tuple[re.Pattern[str], dict[str, tuple[_Compiled, ...]]]:
    """One lead regex for all families, and the rules to try per lead literal. Gated rules are
    skipped in Python when their gate does not hold: cheaper than a second pass over the text."""
    words: dict[str, list[str]] = {}
    symbols: dict[str, list[str]] = {}
    rules: dict[str, list[tuple[Rule, str]]] = {}
    for family in FAMILIES:
        for literal, tail in family.leads:
            table = words if literal[0].isalpha() else symbols
            if tail not in table.setdefault(literal, []):
                table[literal].append(tail)
            for rule in family.rules:
                if (rule, family.gate) not in rules.setdefault(literal, []):
                    rules[literal].append((rule, family.gate))
    leads = re.compile(rf"{_trie(symbols)}|\b{_trie(words)}")
    return leads, {literal: _compile_rules(r) for literal, r in rules.items()}


_LEADS, _RULES = _build_scan()
_LITERAL = re.compile(r"[a-z']+|.", re.S)


def _report(sink: Sink, kind: str, label: str, text: str, start: int, end: int) -> None:
    if sink.full(kind):
        sink.drop()
    else:
        sink.add(kind, f'{label}: "{snippet(text[start:end])}"', start)


def find_phrases(text: str, sink: Sink) -> None:
    """Reports instruction-like phrases in ``text``, then those only its skeleton shows
    (:mod:`broker.core.sanitizer.skeleton`: markup and combining marks gone, confusables
    mapped), each at its offset in ``text``."""
    seen: set[tuple[str, int]] = set()
    _find(text, sink, seen, None)
    plain = skeleton(text)
    if plain is not None:
        copy, back = plain
        _find(copy, sink.through(back), seen, back)


def _find(
    text: str, sink: Sink, seen: set[tuple[str, int]], back: Callable[[int], int] | None
) -> None:
    """One pass; ``seen`` holds (kind, offset in the original) already reported."""

    def report(kind: str, label: str, start: int, end: int) -> None:
        key = (kind, back(start) if back is not None else start)
        if key not in seen:
            seen.add(key)
            _report(sink, kind, label, text, start, end)

    low = fold(text)
    gates = {gate: gate_holds(gate, low) for gate in GATES}
    gates[""] = True
    literal_at = _LITERAL.match
    last_close: dict[str, int] = {}
    for lead in _LEADS.finditer(low):
        pos = lead.start()
        literal = literal_at(low, pos)
        for rule in _RULES.get(literal.group() if literal else "", ()):
            if not gates[rule.gate]:
                continue
            m = rule.pattern.match(low, pos)
            if m is None:
                continue
            if rule.post is not None and rule.post.search(m.group()) is None:
                continue
            if rule.cased is not None and rule.cased.match(text, pos) is None:
                continue
            if rule.closed:
                name = m.group()[1:].rstrip(" \t\n\r\f\v>")
                if name not in last_close:  # one search per tag name, not per tag: linear
                    last_close[name] = low.rfind("</" + name)
                if last_close[name] < m.end():
                    continue
            # Handing a token to a named parameter is ordinary API use; a file's contents is not.
            if (
                rule.kind == EXFILTRATION
                and PARAM_TARGET.search(m.group())
                and FILE_OR_PATH.search(m.group()) is None
            ):
                continue
            report(rule.kind, rule.label, pos, m.end())
            break
    if ":" in low:
        for m in LINE_MARKERS.finditer(low):
            group = m.lastgroup or "turn"
            report(ROLE_MARKER, LINE_LABELS[group], m.start(group), m.end(group))
