"""Tamper detection: every edit, deletion, insertion and reordering names the first bad record."""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core.audit import GENESIS_PREV, Chain, ChainBroken, Head, Kind, verify_records
from tests.support.audit import event, forge, make_records, rehash

N = 6


def first_bad(records: list[dict[str, Any]], **kwargs: Any) -> tuple[int | None, Kind]:
    report = verify_records(records, **kwargs)
    assert report.problem is not None, "tampering was not detected"
    return report.problem.position, report.problem.kind


# --- intact chains --------------------------------------------------------------------------


def test_intact_chain_verifies() -> None:
    records = make_records(N)
    report = verify_records(records)
    assert report.ok
    assert report.records == N
    assert report.chains == ("replica-1",)
    assert report.heads["replica-1"] == Head(N - 1, records[-1]["sha256"], "replica-1")
    report.raise_for_problem()


def test_empty_input_verifies() -> None:
    report = verify_records([])
    assert report.ok
    assert (report.records, report.chains) == (0, ())


def test_chained_record_objects_verify_too() -> None:
    chain = Chain("c")
    assert verify_records([chain.append(event(i)) for i in range(3)]).ok


def test_two_interleaved_chains_verify_independently() -> None:
    a, b = make_records(N, "replica-a"), make_records(N + 2, "replica-b")
    rng = random.Random(7)
    merged = interleave(a, b, rng)
    report = verify_records(merged)
    assert report.ok
    assert set(report.chains) == {"replica-a", "replica-b"}
    assert report.heads["replica-b"].seq == N + 1


def test_tampering_in_one_of_two_chains_is_named_by_input_position() -> None:
    a, b = make_records(N, "replica-a"), make_records(N, "replica-b")
    merged = interleave(a, b, random.Random(3))
    victim = merged.index(b[2])
    merged[victim] = {**merged[victim], "outcome": "denied"}
    assert first_bad(merged) == (victim, Kind.EDITED)
    del merged[merged.index(a[3])]
    assert first_bad(merged)[0] == min(victim, merged.index(a[4]))


def interleave(
    a: list[dict[str, Any]], b: list[dict[str, Any]], rng: random.Random
) -> list[dict[str, Any]]:
    out, ia, ib = [], 0, 0
    while ia < len(a) or ib < len(b):
        if ib >= len(b) or (ia < len(a) and rng.random() < 0.5):
            out.append(a[ia])
            ia += 1
        else:
            out.append(b[ib])
            ib += 1
    return out


# --- edits ----------------------------------------------------------------------------------

EDITS: dict[str, Any] = {
    "seq": lambda r: r["seq"] + 1,
    "chain": lambda r: "replica-2",
    "prev": lambda r: "f" * 64,
    "sha256": lambda r: "e" * 64,
    "time": lambda r: r["time"] + 1,
    "event": lambda r: "credential.verify",
    "actor": lambda r: "spiffe://example.org/agent/other",
    "task": lambda r: "t_CCCCCCCCCCCCCCCCCCCCCC",
    "args_sha256": lambda r: "0" * 64,
    "decision": lambda r: "deny",
    "policy_ids": lambda r: ["plan"],
    "reason": lambda r: "within plan ",
    "extra": lambda r: {**r["extra"], "tier": 0},
}


@pytest.mark.parametrize("position", range(N))
@pytest.mark.parametrize("field", sorted(EDITS))
def test_editing_any_field_of_any_record_is_named(position: int, field: str) -> None:
    records = make_records(N)
    records[position] = {**records[position], field: EDITS[field](records[position])}
    assert first_bad(records) == (position, Kind.EDITED)


@pytest.mark.parametrize("position", range(N))
def test_adding_or_removing_a_field_is_named(position: int) -> None:
    records = make_records(N)
    added = {**records[position], "outcome": "rolled back"}
    del added["reason"]
    records[position] = added
    assert first_bad(records) == (position, Kind.EDITED)


@pytest.mark.parametrize("position", range(N - 2))
def test_rewrite_with_recomputed_hash_is_named(position: int) -> None:
    records = make_records(N)
    records[position] = rehash({**records[position], "decision": "deny"})
    assert first_bad(records) == (position, Kind.EDITED)


def test_rewrite_of_the_second_to_last_record_is_caught_at_the_last() -> None:
    records = make_records(N)
    records[N - 2] = rehash({**records[N - 2], "decision": "deny"})
    assert first_bad(records) == (N - 1, Kind.PREV_LINK)


def test_rewrite_of_the_last_record_needs_an_anchor() -> None:
    records = make_records(N)
    anchor = Head(N - 1, records[-1]["sha256"])
    records[-1] = rehash({**records[-1], "decision": "deny"})
    assert verify_records(records).ok  # a chain alone cannot tell: documented
    assert first_bad(records, anchors=[anchor]) == (N - 1, Kind.ANCHOR_MISMATCH)


# --- deletions ------------------------------------------------------------------------------


@pytest.mark.parametrize("position", range(N - 1))
def test_deleting_any_record_is_named(position: int) -> None:
    records = make_records(N)
    del records[position]
    report = verify_records(records)
    assert report.problem is not None
    assert (report.problem.position, report.problem.kind) == (position, Kind.GAP)
    assert report.problem.seq == position + 1
    assert f"follows {'seq ' + str(position - 1) if position else 'the chain'}" in str(
        report.problem
    )


def test_deleting_a_run_of_records_is_named() -> None:
    records = make_records(N)
    del records[1:4]
    assert first_bad(records) == (1, Kind.GAP)
    assert "3 records missing" in str(verify_records(records).problem)


def test_deleting_the_last_record_needs_an_anchor() -> None:
    records = make_records(N)
    anchor = Head(N - 1, records[-1]["sha256"], "replica-1")
    del records[-1]
    assert verify_records(records).ok  # undetectable by the chain alone: documented
    position, kind = first_bad(records, anchors=[anchor])
    assert (position, kind) == (None, Kind.TRUNCATED)


def test_anchor_without_chain_in_a_single_chain_file() -> None:
    records = make_records(N)
    assert verify_records(records, anchors=[Head(3, records[3]["sha256"])]).ok
    del records[-2:]
    assert first_bad(records, anchors=[Head(N - 1, "a" * 64)]) == (None, Kind.TRUNCATED)


def test_anchor_without_chain_among_several_chains() -> None:
    a, b = make_records(3, "replica-a"), make_records(3, "replica-b")
    merged = a + b
    assert verify_records(merged, anchors=[Head(2, b[2]["sha256"])]).ok
    assert first_bad(merged, anchors=[Head(2, "a" * 64)]) == (None, Kind.TRUNCATED)
    assert first_bad(merged, anchors=[Head(0, "a" * 64, "replica-c")]) == (None, Kind.TRUNCATED)


def test_deleting_the_first_record_is_named() -> None:
    records = make_records(N)[1:]
    assert first_bad(records) == (0, Kind.GAP)
    assert verify_records(records, partial=True).ok  # a rotated file, if the caller says so


# --- insertions -----------------------------------------------------------------------------


@pytest.mark.parametrize("position", range(N))
def test_inserted_record_linked_like_the_original_is_named(position: int) -> None:
    """The forger computes a correct hash and links it exactly where the original sits."""
    records = make_records(N)
    prev = records[position - 1]["sha256"] if position else GENESIS_PREV
    records.insert(position, forge(position, prev))
    assert first_bad(records) == (position, Kind.INSERTED)


@pytest.mark.parametrize("position", range(N + 1))
@pytest.mark.parametrize("seq", [0, 2, 5, 9])
def test_inserted_record_with_arbitrary_place_is_named(position: int, seq: int) -> None:
    records = make_records(N)
    records.insert(position, forge(seq, "b" * 64))
    assert first_bad(records)[0] == position


def test_perfect_append_is_not_detectable_by_a_chain() -> None:
    """Whoever can write the file can append a correctly linked record: ship records off-box."""
    records = make_records(N)
    records.append(forge(N, records[-1]["sha256"]))
    assert verify_records(records).ok


@pytest.mark.parametrize("position", range(N))
def test_replayed_copy_is_named(position: int) -> None:
    records = make_records(N)
    records.append(copy.deepcopy(records[position]))
    assert first_bad(records) == (N, Kind.DUPLICATED)


# --- reordering -----------------------------------------------------------------------------


@pytest.mark.parametrize(("a", "b"), [(a, b) for a in range(N) for b in range(a + 1, N)])
def test_swapping_two_records_names_the_first(a: int, b: int) -> None:
    records = make_records(N)
    records[a], records[b] = records[b], records[a]
    assert first_bad(records) == (a, Kind.REORDERED)


# --- malformed ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "damage",
    [
        lambda r: {k: v for k, v in r.items() if k != "sha256"},
        lambda r: {**r, "seq": True},
        lambda r: {**r, "seq": -1},
        lambda r: {**r, "prev": "not hex"},
        lambda r: {**r, "chain": ""},
        lambda r: {**r, "time": 2**60},
    ],
)
def test_malformed_record_is_named(damage: Any) -> None:
    records = make_records(N)
    records[2] = damage(records[2])
    assert first_bad(records) == (2, Kind.MALFORMED)


def test_genesis_with_a_nonzero_prev_is_named() -> None:
    records = [forge(0, "c" * 64), *make_records(2)[1:]]
    assert first_bad(records)[0] == 0


def test_raise_for_problem() -> None:
    records = make_records(3)
    del records[1]
    with pytest.raises(ChainBroken) as caught:
        verify_records(records).raise_for_problem()
    assert caught.value.finding.position == 1


# --- properties -----------------------------------------------------------------------------

FIELDS = sorted(EDITS)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), n=st.integers(min_value=3, max_value=24))
def test_random_tampering_names_the_first_bad_record(data: st.DataObject, n: int) -> None:
    records = make_records(n)
    op = data.draw(st.sampled_from(["edit", "rehash", "delete", "insert", "swap", "move"]))
    if op == "edit":
        p = data.draw(st.integers(0, n - 1))
        field = data.draw(st.sampled_from(FIELDS))
        records[p] = {**records[p], field: EDITS[field](records[p])}
        expected = p
    elif op == "rehash":
        p = data.draw(st.integers(0, n - 3))
        records[p] = rehash({**records[p], "outcome": "tampered"})
        expected = p
    elif op == "delete":
        p = data.draw(st.integers(0, n - 2))
        del records[p]
        expected = p
    elif op == "insert":
        p = data.draw(st.integers(0, n))
        seq = data.draw(st.integers(0, n + 3))
        prev = records[p - 1]["sha256"] if p else GENESIS_PREV
        if p == n and seq == n:  # a perfect append cannot be detected; make it imperfect
            prev = "d" * 64
        records.insert(p, forge(seq, prev))
        expected = p
    elif op == "swap":
        a = data.draw(st.integers(0, n - 2))
        b = data.draw(st.integers(a + 1, n - 1))
        records[a], records[b] = records[b], records[a]
        expected = a
    else:  # move one record to another place
        src = data.draw(st.integers(0, n - 1))
        dst = data.draw(st.integers(0, n - 1).filter(lambda d: d != src))
        records.insert(dst, records.pop(src))
        expected = min(src, dst)
    report = verify_records(records)
    assert report.problem is not None
    assert report.problem.position == expected, str(report.problem)


@settings(max_examples=100, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=8), min_size=1, max_size=4),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_interleaving_of_chains_verifies(sizes: list[int], seed: int) -> None:
    rng = random.Random(seed)
    merged: list[dict[str, Any]] = []
    for i, n in enumerate(sizes):
        merged = interleave(merged, make_records(n, f"replica-{i}"), rng)
    report = verify_records(merged)
    assert report.ok, str(report.problem)
    assert len(report.chains) == len(sizes)
