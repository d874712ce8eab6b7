"""The enums of revocation kinds and audit event names keep today's strings: nothing changes in
the store, on the wire or in audit records."""

from __future__ import annotations

from broker.client.verifier.offline import KIND_OF_PB
from broker.core.audit import jcs
from broker.core.audit.record import KNOWN_EVENTS, AuditEvent, AuditEventName, Chain
from broker.core.model import RevocationKind

_PRO = "spiffe://dev.local/agent/demo"


def test_revocation_kinds_are_the_strings_the_store_and_verifiers_know() -> None:
    assert {k.value for k in RevocationKind} == {
        "task",
        "agent",
        "server",
        "tier",
        "issued_before",
        "credential",
    }
    assert RevocationKind.ISSUED_BEFORE == "issued_before"
    assert {"task": 1}[RevocationKind.TASK] == 1  # looked up as the plain string


def test_every_revocation_kind_has_a_wire_kind_and_comes_back_as_itself() -> None:
    from broker._proto.broker.v1 import verifier_pb2

    back = {kind: pb for pb, kind in KIND_OF_PB.items()}
    for kind in RevocationKind:
        assert back[kind] != verifier_pb2.REVOCATION_KIND_UNSPECIFIED
        assert KIND_OF_PB[back[kind]] is kind


def test_audit_event_names_are_todays_and_each_revoke_kind_has_one() -> None:
    assert {n.value for n in AuditEventName} == KNOWN_EVENTS
    assert {"task.begin", "credential.mint", "revoke.issued_before", "secret.revoke"} <= (
        KNOWN_EVENTS
    )
    for kind in RevocationKind:
        assert AuditEventName.revoke(kind) == f"revoke.{kind.value}"


def test_a_record_made_with_a_name_is_byte_for_byte_the_one_made_with_its_string() -> None:
    when = 1_800_000_000.0
    named = AuditEvent(
        event=AuditEventName.REVOKE_TIER,
        time=when,
        actor=_PRO,
        extra={"scope": RevocationKind.TIER},
    )
    plain = AuditEvent(event="revoke.tier", time=when, actor=_PRO, extra={"scope": "tier"})
    assert type(named.event) is str
    assert type(named.to_dict()["extra"]["scope"]) is str
    assert jcs.dumps(named.to_dict()) == jcs.dumps(plain.to_dict())
    a, b = Chain("c"), Chain("c")
    assert a.append(named).sha256 == b.append(plain).sha256
