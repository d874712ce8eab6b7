"""The taint re-check: when a task's taint rises, every live credential policy would no longer
grant is revoked (used up, and announced to offline verifiers); the others stay valid."""

from __future__ import annotations

import pytest

from broker.core.audit.record import AuditEventName
from broker.core.errors import NotFound, Reason, Unauthenticated
from broker.core.model import RevocationKind, Taint
from broker.core.requests import Granted, Outcome, Pending

from .conftest import Harness, server_peer


async def report(
    h: Harness,
    granted: Granted,
    server: str,
    *,
    untrusted: bool | None = None,
    findings: tuple[tuple[str, str], ...] = (),
) -> Taint:
    outcome = Outcome(jti=granted.jti, succeeded=True, untrusted=untrusted, findings=findings)
    return await h.broker.report_outcome(server_peer(server), outcome)


async def test_reading_untrusted_content_revokes_what_policy_would_no_longer_grant(
    harness: Harness,
) -> None:
    task = await harness.task()
    secret = await harness.grant(task, "secrets", "read_secret")  # tier 2, granted while clean
    code = await harness.grant(task, "repo", "read_file")  # tier 1: still allowed when tainted
    page = await harness.grant(task, "docs", "fetch_page")

    assert await report(harness, page, "docs") is Taint.UNTRUSTED  # docs is untrusted content

    with pytest.raises(Unauthenticated) as err:
        await harness.verify(secret, "secrets", "read_secret")
    assert err.value.reason is Reason.REVOKED
    verified = await harness.verify(code, "repo", "read_file")
    assert verified.taint is Taint.UNTRUSTED
    [event] = [e for e in await harness.feed() if e.kind == RevocationKind.CREDENTIAL]
    assert event.subject == secret.jti
    [record] = harness.events(AuditEventName.REVOKE_CREDENTIAL)
    assert (record["jti"], record["task"]) == (secret.jti, task.task_id)
    assert "untrusted" in record["reason"]
    # and asking again for the secret now needs an operator
    assert isinstance(await harness.ask(task, "secrets", "read_secret"), Pending)


async def test_findings_make_a_task_suspect_and_leave_it_read_only(harness: Harness) -> None:
    task = await harness.task()
    write = await harness.grant(task, "repo", "write_file")
    read = await harness.grant(task, "repo", "read_file")
    tests = await harness.grant(task, "repo", "run_tests")
    taint = await report(harness, tests, "repo", findings=(("injection", "ignore previous"),))
    assert taint is Taint.SUSPECT
    with pytest.raises(Unauthenticated):
        await harness.verify(write, "repo", "write_file")
    await harness.verify(read, "repo", "read_file")
    revoked = {e["jti"] for e in harness.events(AuditEventName.REVOKE_CREDENTIAL)}
    assert revoked == {write.jti}


async def test_taint_never_goes_down(harness: Harness) -> None:
    task = await harness.task()
    page = await harness.grant(task, "docs", "search_docs")
    await report(harness, page, "docs")
    code = await harness.grant(task, "repo", "read_file")
    assert await report(harness, code, "repo", untrusted=False) is Taint.UNTRUSTED
    stored = await harness.store.get_task(task.task_id)
    assert stored is not None and stored.taint is Taint.UNTRUSTED


async def test_a_credential_minted_before_a_racing_taint_is_refused_online(
    harness: Harness,
) -> None:
    """The taint rose without the re-check having run (another replica reported it): online
    verification decides the call again at the task's taint as it reads it."""
    task = await harness.task()
    secret = await harness.grant(task, "secrets", "read_secret")
    code = await harness.grant(task, "repo", "read_file")
    await harness.store.raise_taint(task.task_id, Taint.UNTRUSTED)
    with pytest.raises(Unauthenticated) as err:
        await harness.verify(secret, "secrets", "read_secret")
    assert err.value.reason is Reason.REVOKED
    assert "became untrusted" in err.value.message
    assert (await harness.verify(code, "repo", "read_file")).taint is Taint.UNTRUSTED
    [rejected] = harness.events(AuditEventName.CREDENTIAL_VERIFY)
    assert (rejected["outcome"], rejected["reason"]) == ("rejected", "REVOKED")


async def test_only_the_server_a_credential_is_for_reports_its_outcome(harness: Harness) -> None:
    task = await harness.task()
    page = await harness.grant(task, "docs", "fetch_page")
    with pytest.raises(NotFound):
        await report(harness, page, "repo")
    stored = await harness.store.get_task(task.task_id)
    assert stored is not None and stored.taint is Taint.CLEAN
