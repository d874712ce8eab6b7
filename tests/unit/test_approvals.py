"""Approval records and their rules (pure: broker.core.approvals)."""

from __future__ import annotations

import pytest

from broker.core.approvals import (
    ApprovalRecord,
    ApprovalState,
    binding,
    check_approval_id,
    check_decidable,
    mismatch,
    new_approval_id,
    refusal,
    task_of_approval,
)
from broker.core.errors import FailedPrecondition, InvalidRequest, NotFound, Reason
from broker.core.ids import new_task_id

T0 = 1_800_000_000.0
AGENT = "spiffe://dev.local/agent/demo"
DEPLOY = "spiffe://dev.local/mcp/deploy"


def record(**kw: object) -> ApprovalRecord:
    task = new_task_id()
    base: dict[str, object] = {
        "approval_id": new_approval_id(task),
        "task_id": task,
        "agent": AGENT,
        "server": DEPLOY,
        "tool": "deploy",
        "args_sha256": "a" * 64,
        "created_at": T0,
        "expires_at": T0 + 600,
        "reason": "tier 3",
        "policy_ids": ("tier3-needs-approval",),
    }
    base.update(kw)
    return ApprovalRecord(**base)  # type: ignore[arg-type]


def test_ids_name_their_task() -> None:
    task = new_task_id()
    approval_id = new_approval_id(task)
    assert task_of_approval(approval_id) == task
    assert check_approval_id(approval_id) == approval_id
    for bad in ("", "ap_", f"ap_{task}", f"{task}.{'A' * 22}", f"ap_{task}.{'A' * 21}"):
        assert task_of_approval(bad) is None
        with pytest.raises(InvalidRequest):
            check_approval_id(bad)


def test_binding_covers_every_part_of_the_call() -> None:
    parts = (AGENT, new_task_id(), DEPLOY, "deploy", "a" * 64)
    base = binding(*parts)
    for i in range(len(parts)):
        changed = list(parts)
        changed[i] = changed[i] + "x"
        assert binding(*changed) != base
    # no ambiguity from concatenation
    assert binding("a", "b", "c", "de", "f") != binding("a", "b", "cd", "e", "f")


def test_state_over_time() -> None:
    r = record()
    assert r.state_at(T0) is ApprovalState.PENDING
    assert r.state_at(T0 + 600) is ApprovalState.EXPIRED
    approved = r.decided(approve=True, by="op", reason="ok", now=T0 + 1)
    assert approved.state_at(T0 + 599) is ApprovalState.APPROVED
    assert approved.state_at(T0 + 600) is ApprovalState.EXPIRED
    used = approved.used(T0 + 2)
    assert used.state_at(T0 + 10_000) is ApprovalState.USED  # used stays used
    denied = r.decided(approve=False, by="op", reason="no", now=T0 + 1)
    assert denied.state_at(T0 + 10_000) is ApprovalState.DENIED


def test_static_json_round_trip() -> None:
    r = record(justification="ship it", prompt_sha256="c" * 64)
    assert ApprovalRecord.from_static_json(r.approval_id, r.static_json()) == r


def test_decidable_only_when_pending() -> None:
    r = record()
    assert check_decidable(r, r.approval_id, T0) is r
    with pytest.raises(NotFound):
        check_decidable(None, r.approval_id, T0)
    for done in (r.decided(approve=True, by="op", reason="ok", now=T0), r):
        now = T0 + (0 if done is not r else 600)
        with pytest.raises(FailedPrecondition) as exc:
            check_decidable(done, r.approval_id, now)
        assert exc.value.reason is Reason.APPROVAL_NOT_PENDING


def test_refusals_say_why_and_what_to_do() -> None:
    r = record().decided(approve=False, by="spiffe://dev.local/operator/admin", reason="no", now=T0)
    err = refusal(r, ApprovalState.DENIED)
    assert err.reason is Reason.APPROVAL_REQUIRED
    assert "denied by spiffe://dev.local/operator/admin (no)" in err.message
    assert "without approval_id" in err.message
    assert "another call" in mismatch(r).message
