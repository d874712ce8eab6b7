"""Audit events and the hash chain: schema, canonical form, linking, resuming, no secrets."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import time
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core.audit import GENESIS_PREV, AuditEvent, Chain, ChainedRecord, Head, verify_records
from broker.core.audit.record import MAX_TEXT_CHARS
from broker.core.audit.scrub import REDACTED, is_denied_extra_key
from tests.support.audit import AGENT, ARGS, T0, event

# A fixed vector: changing the canonical form or the hash input breaks every stored chain.
VECTOR_EVENT = AuditEvent(
    event="credential.mint",
    time=1_800_000_000.5,
    actor="spiffe://example.org/broker",
    task="t_AAAAAAAAAAAAAAAAAAAAAA",
    server="spiffe://example.org/mcp/docs",
    tool="search",
    args_sha256=ARGS,
    decision="allow",
    policy_ids=("p1",),
    jti="t_AAAAAAAAAAAAAAAAAAAAAA.BBBBBBBBBBBBBBBBBBBBBB",
    extra={"tier": 0, "ttl": 300},
)
VECTOR_CANONICAL = (
    '{"actor":"spiffe://example.org/broker","args_sha256":"'
    + ARGS
    + '","chain":"replica-1","decision":"allow","event":"credential.mint",'
    '"extra":{"tier":0,"ttl":300},"jti":"t_AAAAAAAAAAAAAAAAAAAAAA.BBBBBBBBBBBBBBBBBBBBBB",'
    '"policy_ids":["p1"],"prev":"' + GENESIS_PREV + '","seq":0,'
    '"server":"spiffe://example.org/mcp/docs","task":"t_AAAAAAAAAAAAAAAAAAAAAA",'
    '"time":1800000000.5,"tool":"search"}'
).encode()


def test_canonical_form_and_hash_vector() -> None:
    record = Chain("replica-1").append(VECTOR_EVENT)
    assert record.canonical_bytes() == VECTOR_CANONICAL
    assert record.sha256 == hashlib.sha256(VECTOR_CANONICAL).hexdigest()
    stored = json.loads(record.to_json())
    assert stored.pop("sha256") == record.sha256
    assert rfc8785.dumps(stored) == VECTOR_CANONICAL


def test_chain_links_each_record_to_the_previous() -> None:
    chain = Chain("replica-1")
    assert chain.head is None
    records = [chain.append(event(i)) for i in range(5)]
    assert [r.seq for r in records] == [0, 1, 2, 3, 4]
    assert records[0].prev == GENESIS_PREV
    for before, after in itertools.pairwise(records):
        assert after.prev == before.sha256
    for r in records:
        assert r.compute_sha256() == r.sha256
    assert chain.head == Head(4, records[-1].sha256, "replica-1")
    assert chain.next_seq == 5


def test_resumed_chain_continues_the_old_one() -> None:
    first = Chain("replica-1")
    before = [first.append(event(i)) for i in range(3)]
    resumed = Chain("replica-1", head=before[-1].head)
    after = [resumed.append(event(i)) for i in range(3, 6)]
    assert after[0].seq == 3
    assert after[0].prev == before[-1].sha256
    assert verify_records(before + after).ok


def test_resume_with_a_head_of_another_chain_raises() -> None:
    with pytest.raises(ValueError, match="belongs to chain"):
        Chain("replica-1", head=Head(3, "a" * 64, "replica-2"))


@pytest.mark.parametrize("chain_id", ["", " spaced", "a" * 300, "new\nline"])
def test_bad_chain_id_raises(chain_id: str) -> None:
    with pytest.raises(ValueError, match="chain"):
        Chain(chain_id)


def test_record_round_trips_through_its_dict_and_json() -> None:
    record = Chain("replica-1").append(event(1))
    assert ChainedRecord.from_dict(record.to_dict()) == record
    assert ChainedRecord.from_dict(json.loads(record.to_json())).sha256 == record.sha256
    assert record.event() == event(1)


def test_integral_time_survives_the_canonical_round_trip() -> None:
    record = Chain("c").append(AuditEvent("task.begin", T0, AGENT))
    parsed = ChainedRecord.from_dict(json.loads(record.to_json()))
    assert parsed.body["time"] == T0  # JCS writes 1800000000, which reads back as an int
    assert parsed.compute_sha256() == record.sha256
    assert isinstance(parsed.event().time, float)


def test_body_cannot_clash_with_the_envelope() -> None:
    with pytest.raises(ValueError, match="must not hold"):
        ChainedRecord(seq=0, chain="c", prev=GENESIS_PREV, body={"seq": 1}, sha256="a" * 64)


def test_head_text_form() -> None:
    head = Head(7, "a" * 64, "spiffe://example.org/broker/r1")
    assert Head.parse(str(head)) == head
    assert Head.parse("7:" + "ab" * 32) == Head(7, "ab" * 32)
    for bad in ("7", "x:" + "a" * 64, "7:zz", "-1:" + "a" * 64):
        with pytest.raises(ValueError, match=r"seq|sha256|expected"):
            Head.parse(bad)


# --- no secrets -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "token",
        "access_token",
        "refreshToken",
        "id-token",
        "secret",
        "client_secret",
        "password",
        "db_passwd",
        "passphrase",
        "private_key",
        "privateKey",
        "authorization",
        "Authorization",
        "bearer",
        "api_key",
        "API-KEY",
        "signing_key",
        "key_material",
        "key",
        "cookie",
        "jwt",
        "credential",
    ],
)
def test_secret_ish_extra_key_raises(key: str) -> None:
    assert is_denied_extra_key(key)
    with pytest.raises(ValueError, match="secret"):
        AuditEvent("task.begin", T0, AGENT, extra={key: "x"})


@pytest.mark.parametrize("key", ["kid", "key_id", "tier", "ttl", "revoked_credentials", "count"])
def test_ordinary_extra_keys_are_allowed(key: str) -> None:
    assert AuditEvent("key.rotate", T0, AGENT, extra={key: 1}).extra[key] == 1


@pytest.mark.parametrize(
    "text",
    [
        "Bearer abcdefghijklmnop",
        "got eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl back",
        "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n-----END EC PRIVATE KEY-----",
    ],
)
def test_credential_looking_text_is_redacted(text: str) -> None:
    e = AuditEvent("outcome.report", T0, AGENT, reason=text, outcome=text, extra={"note": text})
    for value in (e.reason, e.outcome, e.extra["note"]):
        assert isinstance(value, str)
        assert REDACTED in value
        assert "eyJzdWIi" not in value
        assert "abcdefghijklmnop" not in value
        assert "MHcCAQEE" not in value


def test_credential_looking_identifier_raises() -> None:
    with pytest.raises(ValueError, match="credential"):
        AuditEvent("task.begin", T0, AGENT, jti="eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.sig")


def test_long_free_text_is_truncated_not_rejected() -> None:
    e = AuditEvent("task.end", T0, AGENT, outcome="x" * 10_000)
    assert e.outcome is not None
    assert len(e.outcome) == MAX_TEXT_CHARS
    assert e.outcome.endswith("[truncated]")


def test_scrubbing_huge_hostile_text_is_fast() -> None:
    started = time.perf_counter()
    e = AuditEvent("task.end", T0, AGENT, outcome="eyJ" * 1_000_000, reason="Bearer " * 500_000)
    assert time.perf_counter() - started < 1.0
    assert e.outcome is not None
    assert len(e.outcome) == MAX_TEXT_CHARS


@pytest.mark.parametrize(
    "kwargs",
    [
        {"event": "Task Begin"},
        {"event": "task"},
        {"time": math.nan},
        {"time": -1.0},
        {"time": True},
        {"actor": ""},
        {"task": "x" * 600},
        {"args_sha256": "ABC"},
        {"prompt_sha256": "A" * 64},
        {"policy_ids": "p1"},
        {"policy_ids": ("",)},
        {"extra": {"n": 2**60}},
        {"extra": {"n": math.inf}},
        {"extra": {"n": 2.0**53}},
        {"time": 1e300},
        {"extra": {"n": [1]}},
        {"extra": {"bad key": 1}},
        {"extra": {f"k{i}": i for i in range(40)}},
        {"reason": "\ud800"},
    ],
)
def test_invalid_event_raises(kwargs: dict[str, Any]) -> None:
    base: dict[str, Any] = {"event": "task.begin", "time": T0, "actor": AGENT}
    with pytest.raises(ValueError, match=r"\w+"):
        AuditEvent(**{**base, **kwargs})


def test_from_dict_rejects_unknown_fields() -> None:
    with pytest.raises(ValueError, match="unknown"):
        AuditEvent.from_dict({"event": "task.begin", "time": T0, "actor": AGENT, "token": "x"})


def test_events_are_hashable_and_immutable() -> None:
    e = event(0)
    assert hash(e) == hash(event(0))
    with pytest.raises(TypeError):
        e.extra["tier"] = 0  # type: ignore[index]


# --- properties -----------------------------------------------------------------------------

_text = st.text(st.characters(codec="utf-8"), min_size=1, max_size=40)
_extra_value = (
    st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(-(2.0**53) + 1, 2.0**53 - 1, allow_nan=False)
    | _text
)


@settings(max_examples=200, deadline=None)
@given(
    times=st.lists(st.floats(0, 4e9, allow_nan=False), min_size=1, max_size=8),
    reason=st.none() | _text,
    extra=st.dictionaries(st.sampled_from(["tier", "n", "note", "kid", "ratio"]), _extra_value),
)
def test_any_valid_events_chain_serialize_and_verify(
    times: list[float], reason: str | None, extra: dict[str, Any]
) -> None:
    chain = Chain("replica-1")
    events = [AuditEvent("outcome.report", t, AGENT, reason=reason, extra=extra) for t in times]
    records = [chain.append(e) for e in events]
    stored = [json.loads(r.to_json()) for r in records]
    assert verify_records(stored).ok
    assert [ChainedRecord.from_dict(d).event() for d in stored] == events
