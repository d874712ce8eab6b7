"""Verification of audit hash chains (pure: no I/O). See docs/audit.md.

``verify_records`` walks the records in input order, keeping one state per chain, and reports the
FIRST bad record: the one at the lowest position in the input that is not where an intact chain
would have it. Checks, per record:

- the envelope is well formed (``malformed``);
- its ``sha256`` recomputes over its canonical bytes (``edited: hash mismatch``);
- its ``seq`` is the previous record's plus one (``deleted or inserted``, ``reordered``,
  ``duplicated``, ``inserted``) and its ``prev`` is the previous record's ``sha256``
  (``prev link broken``); a chain starts at seq 0 with ``prev`` = 64 zeros.

To name the right record, the walk looks ahead in the same chain: a record that appears too early
is ``reordered`` when the records it skips come later; a record with a correctly computed hash
that the rest of the chain does not build on is ``inserted``; a record rewritten with a recomputed
hash is named when the next record still links to its original hash.

What a chain alone cannot show: records cut from the END of a chain (the remaining prefix is a
valid chain), and a record appended at the end by whoever can write the file. Pass ``anchors``
(heads kept out of the writer's reach) to catch the first; ship records off-box against both.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from broker.core.audit.record import GENESIS_PREV, ChainedRecord, Head


class Kind(StrEnum):
    MALFORMED = "malformed"
    EDITED = "edited"
    GAP = "deleted or inserted"
    INSERTED = "inserted"
    REORDERED = "reordered"
    DUPLICATED = "duplicated"
    PREV_LINK = "prev link broken"
    TRUNCATED = "truncated"
    ANCHOR_MISMATCH = "anchor mismatch"


@dataclass(frozen=True)
class Finding:
    """What is wrong and where. ``position`` is the 0-based index in the input (None when the
    problem is a missing tail); ``seq`` and ``chain`` are those of the named record."""

    kind: Kind
    detail: str
    position: int | None
    seq: int | None
    chain: str | None

    def __str__(self) -> str:
        return f"{self.kind.value}: {self.detail}"


@dataclass(frozen=True)
class VerifyReport:
    records: int
    chains: tuple[str, ...]
    """Chain ids in order of first appearance."""
    problem: Finding | None
    heads: Mapping[str, Head]
    """The last verified record of each chain (what to keep as the next anchor)."""

    @property
    def ok(self) -> bool:
        return self.problem is None

    def raise_for_problem(self) -> None:
        """Raise ``ChainBroken`` when verification failed."""
        if self.problem is not None:
            raise ChainBroken(self.problem)


class ChainBroken(ValueError):
    """An audit chain failed verification; ``finding`` says where and how."""

    def __init__(self, finding: Finding) -> None:
        super().__init__(str(finding))
        self.finding = finding


@dataclass(frozen=True)
class _Item:
    position: int
    record: ChainedRecord
    valid: bool  # the stored sha256 recomputes


@dataclass
class _State:
    seq: int = -1
    sha256: str = GENESIS_PREV
    position: int | None = None


def _line(position: int) -> str:
    """Human form of a position: 1-based, so that record N is line N of a JSON lines file."""
    return f"record {position + 1}"


def verify_records(
    records: Iterable[Mapping[str, Any] | ChainedRecord],
    *,
    anchors: Iterable[Head] = (),
    partial: bool = False,
) -> VerifyReport:
    """Verify every chain found in ``records`` and report the first bad record, if any.

    ``anchors``: heads known from elsewhere (``Head.chain`` None means "the only chain", or
    whichever chain holds that record); each anchored record must be present with that hash.
    ``partial``: accept a chain that does not start at seq 0 (a rotated file): its first record
    in the input is trusted as the starting point.
    """
    items: list[_Item | Finding] = []
    for position, raw in enumerate(records):
        items.append(_parse(position, raw))
    parsed = [i for i in items if isinstance(i, _Item)]
    chains = tuple(dict.fromkeys(i.record.chain for i in parsed))
    walk = _Walk(parsed, partial)
    problem: Finding | None = None
    for item in items:
        problem = item if isinstance(item, Finding) else walk.step(item)
        if problem is not None:
            break
    if problem is None:
        problem = walk.check_anchors(tuple(anchors))
    heads = {
        c: Head(seq=s.seq, sha256=s.sha256, chain=c) for c, s in walk.states.items() if s.seq >= 0
    }
    return VerifyReport(records=len(items), chains=chains, problem=problem, heads=heads)


def _parse(position: int, raw: Mapping[str, Any] | ChainedRecord) -> _Item | Finding:
    try:
        record = raw if isinstance(raw, ChainedRecord) else ChainedRecord.from_dict(raw)
    except (ValueError, TypeError) as exc:
        seq = raw.get("seq") if isinstance(raw, Mapping) else None
        chain = raw.get("chain") if isinstance(raw, Mapping) else None
        return Finding(
            Kind.MALFORMED,
            f"{_line(position)}: {exc}",
            position,
            seq if isinstance(seq, int) and not isinstance(seq, bool) else None,
            chain if isinstance(chain, str) else None,
        )
    try:
        valid = record.compute_sha256() == record.sha256
    except (ValueError, TypeError, RecursionError) as exc:
        return Finding(
            Kind.MALFORMED,
            f"{_line(position)}: not canonical JSON ({exc})",
            position,
            record.seq,
            record.chain,
        )
    return _Item(position, record, valid)


class _Walk:
    """Per-chain state plus indexes over the hash-valid records for look-ahead."""

    def __init__(self, items: list[_Item], partial: bool) -> None:
        self.partial = partial
        self.states: dict[str, _State] = {}
        self.accepted: dict[str, dict[int, tuple[str, int]]] = defaultdict(dict)
        self.by_chain: dict[str, list[_Item]] = defaultdict(list)
        self.by_seq: dict[tuple[str, int], list[_Item]] = defaultdict(list)
        self.by_prev: dict[tuple[str, str], list[_Item]] = defaultdict(list)
        for item in items:
            r = item.record
            self.by_chain[r.chain].append(item)
            if item.valid:
                self.by_seq[(r.chain, r.seq)].append(item)
                self.by_prev[(r.chain, r.prev)].append(item)

    def _has_successor(self, item: _Item) -> bool:
        r = item.record
        return any(s.record.seq == r.seq + 1 for s in self.by_prev[(r.chain, r.sha256)])

    def _finding(self, kind: Kind, item: _Item, detail: str) -> Finding:
        r = item.record
        where = f"{_line(item.position)} (chain {r.chain}, seq {r.seq})"
        return Finding(kind, f"{where}: {detail}", item.position, r.seq, r.chain)

    def _accept(self, item: _Item) -> None:
        r = item.record
        self.states[r.chain] = _State(r.seq, r.sha256, item.position)
        self.accepted[r.chain][r.seq] = (r.sha256, item.position)

    def step(self, item: _Item) -> Finding | None:
        r = item.record
        if not item.valid:
            return self._finding(Kind.EDITED, item, "hash mismatch")
        state = self.states.get(r.chain)
        if state is None:
            if self.partial:
                self._accept(item)
                return None
            state = self.states[r.chain] = _State()
        expected = state.seq + 1
        if r.seq == expected and r.prev == state.sha256:
            problem = self._linked(item)
        elif r.seq == expected:
            problem = self._unlinked(item, state)
        elif r.seq > expected:
            problem = self._ahead(item, state)
        else:
            problem = self._behind(item, state)
        if problem is None:
            self._accept(item)
        return problem

    def _linked(self, item: _Item) -> Finding | None:
        """``item`` links correctly; it may still be a forged branch the chain does not follow."""
        r = item.record
        rivals = [
            q
            for q in self.by_seq[(r.chain, r.seq)]
            if q.position > item.position
            and q.record.sha256 != r.sha256
            and q.record.prev == r.prev
        ]
        if not rivals or self._has_successor(item):
            return None
        followed = [q for q in rivals if self._has_successor(q)]
        if followed:
            return self._finding(
                Kind.INSERTED,
                item,
                f"forged record: the chain continues from the record with the same seq at "
                f"{_line(followed[0].position)}",
            )
        return self._finding(
            Kind.INSERTED,
            item,
            f"seq {r.seq} appears twice (also at {_line(rivals[0].position)}); one is forged",
        )

    def _unlinked(self, item: _Item, state: _State) -> Finding:
        """Right seq, wrong prev: this record, or the one before it, was rewritten or forged."""
        r = item.record
        proper = [
            q
            for q in self.by_seq[(r.chain, r.seq)]
            if q.position > item.position and q.record.prev == state.sha256
        ]
        if proper:
            return self._finding(
                Kind.INSERTED,
                item,
                f"forged record: the chain continues at {_line(proper[0].position)}",
            )
        if state.position is not None and self._has_successor(item):
            before = self.by_chain[r.chain]
            prev_item = next(i for i in before if i.position == state.position)
            return self._finding(
                Kind.EDITED,
                prev_item,
                f"rewritten with a recomputed hash: the next record ({_line(item.position)}) "
                "links to a different one",
            )
        where = "the chain's start" if state.position is None else _line(state.position)
        return self._finding(
            Kind.PREV_LINK,
            item,
            f"prev does not match the record before it ({where}); one of them was rewritten "
            "or forged",
        )

    def _ahead(self, item: _Item, state: _State) -> Finding:
        """``seq`` jumps forward: records missing, or this one moved or forged."""
        r = item.record
        expected = state.seq + 1
        skipped = [
            q
            for q in self.by_chain[r.chain]
            if q.position > item.position and expected <= q.record.seq < r.seq
        ]
        follows = "the chain's start" if state.seq < 0 else f"seq {state.seq}"
        if skipped:
            has_pred = any(p.record.sha256 == r.prev for p in self.by_seq[(r.chain, r.seq - 1)])
            if has_pred:
                return self._finding(
                    Kind.REORDERED,
                    item,
                    f"appears before seq {skipped[0].record.seq} ({_line(skipped[0].position)})",
                )
            return self._finding(
                Kind.INSERTED, item, f"seq {r.seq} follows {follows} and links to no record"
            )
        missing = r.seq - expected
        return self._finding(
            Kind.GAP,
            item,
            f"seq {r.seq} follows {follows} ({missing} record{'s' if missing > 1 else ''} missing)",
        )

    def _behind(self, item: _Item, state: _State) -> Finding:
        """``seq`` does not advance: a replayed copy, or a forged record."""
        r = item.record
        seen = self.accepted[r.chain].get(r.seq)
        if seen is not None and seen[0] == r.sha256:
            return self._finding(Kind.DUPLICATED, item, f"repeats {_line(seen[1])}")
        return self._finding(Kind.INSERTED, item, f"seq {r.seq} follows seq {state.seq}")

    def check_anchors(self, anchors: tuple[Head, ...]) -> Finding | None:
        for anchor in anchors:
            problem = self._check_anchor(anchor)
            if problem is not None:
                return problem
        return None

    def _check_anchor(self, anchor: Head) -> Finding | None:
        chain = anchor.chain
        if chain is None:
            holders = [
                c
                for c, recs in self.accepted.items()
                if recs.get(anchor.seq, ("",))[0] == anchor.sha256
            ]
            if holders:
                return None
            if len(self.states) != 1:
                return Finding(
                    Kind.TRUNCATED,
                    f"no chain holds the anchor {anchor} (records cut or rewritten)",
                    None,
                    anchor.seq,
                    None,
                )
            chain = next(iter(self.states))
        state = self.states.get(chain)
        if state is None:
            return Finding(
                Kind.TRUNCATED,
                f"chain {chain} of anchor {anchor} is absent",
                None,
                anchor.seq,
                chain,
            )
        if state.seq < anchor.seq:
            return Finding(
                Kind.TRUNCATED,
                f"chain {chain} ends at seq {state.seq}, before the anchor at seq {anchor.seq}",
                None,
                anchor.seq,
                chain,
            )
        seen = self.accepted[chain].get(anchor.seq)
        if seen is None:
            return Finding(
                Kind.ANCHOR_MISMATCH,
                f"chain {chain}: the anchor's seq {anchor.seq} precedes the first record given",
                None,
                anchor.seq,
                chain,
            )
        if seen[0] != anchor.sha256:
            return Finding(
                Kind.ANCHOR_MISMATCH,
                f"{_line(seen[1])} (chain {chain}, seq {anchor.seq}): differs from the anchor; "
                "the chain was rewritten from here or earlier",
                seen[1],
                anchor.seq,
                chain,
            )
        return None
