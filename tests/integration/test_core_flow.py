"""Issue 3: tasks, policy over tiers and taint, per-call tokens, verification, revocation."""

from __future__ import annotations

import hashlib
import json

import grpc
import pytest

from broker._proto.broker.v1 import agent_pb2, common_pb2, verifier_pb2
from broker.core.canonical import args_sha256
from tests.integration.conftest import Running, start_broker
from tests.integration.helpers import Agent, Server, cert_sha256, reason_of

pytestmark = pytest.mark.integration

ARGS = {"query": "retry policy", "limit": 5}


@pytest.fixture
def agent(running: Running) -> Agent:
    return Agent(running.channel("agent-demo"))


@pytest.fixture
def docs(running: Running) -> Server:
    return Server(running.channel("mcp-docs"))


async def rejected(coro: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await coro  # type: ignore[misc]
    return exc.value.code(), reason_of(exc.value)


async def test_happy_path(running: Running, agent: Agent, docs: Server) -> None:
    task = await agent.begin()
    resp = await agent.credential(task, "docs", "search_docs", ARGS)
    cred = resp.credential
    assert cred.jti.startswith(task + ".")
    ttl = cred.expires_at.seconds - int(running.clock.now())
    assert 0 < ttl <= 300  # tier 0 cap
    got = await docs.verify(cred.token, "search_docs", ARGS)
    assert (got.task_id, got.tool, got.tier, got.jti) == (task, "search_docs", 0, cred.jti)
    assert got.agent == "spiffe://dev.local/agent/demo"
    assert got.taint == common_pb2.TAINT_CLEAN
    # the server may also name the arguments by digest, and the presenter by its certificate
    token2 = await agent.token(task, "spiffe://dev.local/mcp/docs", "search_docs", ARGS)
    await docs.stub.VerifyCredential(
        verifier_pb2.VerifyCredentialRequest(
            token=token2,
            tool="search_docs",
            args_sha256=args_sha256(ARGS),
            presenter_cert_sha256=cert_sha256(running.pki, "agent-demo"),
        ),
        timeout=5,
    )
    assert await agent.end(task) == 0


async def test_token_shape(running: Running, agent: Agent) -> None:
    import base64

    task = await agent.begin()
    token = await agent.token(task, "docs", "search_docs", ARGS)
    header, payload = (
        json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4))) for p in token.split(".")[:2]
    )
    assert header["typ"] == "task+jwt" and header["alg"] == "ES256"
    assert payload["aud"] == "spiffe://dev.local/mcp/docs"
    assert payload["sub"] == "spiffe://dev.local/agent/demo"
    assert payload["task"] == task
    detail = payload["authorization_details"][0]
    assert detail["tool"] == "search_docs" and detail["args_sha256"] == args_sha256(ARGS)
    agent_cert = bytes.fromhex(cert_sha256(running.pki, "agent-demo"))
    assert payload["cnf"]["x5t#S256"] == base64.urlsafe_b64encode(agent_cert).rstrip(b"=").decode()
    jwks = json.loads(
        (
            await Server(running.channel("mcp-docs")).stub.GetSigningKeys(
                verifier_pb2.GetSigningKeysRequest(), timeout=5
            )
        ).jwks_json
    )
    assert header["kid"] in {k["kid"] for k in jwks["keys"]}


async def test_replay_is_rejected(agent: Agent, docs: Server) -> None:
    task = await agent.begin()
    token = await agent.token(task, "docs", "search_docs", ARGS)
    await docs.verify(token, "search_docs", ARGS)
    assert await rejected(docs.verify(token, "search_docs", ARGS)) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "REPLAYED",
    )


async def test_another_server_cannot_use_it(running: Running, agent: Agent) -> None:
    task = await agent.begin()
    token = await agent.token(task, "docs", "search_docs", ARGS)
    repo = Server(running.channel("mcp-repo"))
    assert (await rejected(repo.verify(token, "search_docs", ARGS)))[1] == "WRONG_AUDIENCE"


async def test_another_tool_or_other_arguments(agent: Agent, docs: Server) -> None:
    task = await agent.begin()
    token = await agent.token(task, "docs", "search_docs", ARGS)
    assert (await rejected(docs.verify(token, "fetch_page", ARGS)))[1] == "TOOL_MISMATCH"
    other = {**ARGS, "limit": 6}
    assert (await rejected(docs.verify(token, "search_docs", other)))[1] == "ARGS_MISMATCH"
    # failed checks did not consume it: the right call still goes through once
    await docs.verify(token, "search_docs", ARGS)


async def test_another_agents_certificate(running: Running, agent: Agent, docs: Server) -> None:
    task = await agent.begin()
    token = await agent.token(task, "docs", "search_docs", ARGS)
    other = cert_sha256(running.pki, "operator-admin")
    code, reason = await rejected(
        docs.verify(token, "search_docs", ARGS, presenter_cert_sha256=other)
    )
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "CERT_MISMATCH")


async def test_end_task_revokes(agent: Agent, docs: Server) -> None:
    task = await agent.begin()
    tokens = [await agent.token(task, "docs", "search_docs", ARGS) for _ in range(3)]
    await docs.verify(tokens[0], "search_docs", ARGS)
    assert await agent.end(task) == 2
    for token in tokens[1:]:
        assert (await rejected(docs.verify(token, "search_docs", ARGS)))[1] == "REVOKED"
    code, reason = await rejected(agent.credential(task, "docs", "search_docs", ARGS))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "TASK_ENDED")


async def test_expired(running: Running, agent: Agent, docs: Server) -> None:
    task = await agent.begin(ttl_seconds=3600)
    token = await agent.token(task, "repo", "read_file", {"path": "README.md"})
    repo = Server(running.channel("mcp-repo"))
    running.clock.advance(121 + 6)  # tier 1 cap + leeway
    assert (await rejected(repo.verify(token, "read_file", {"path": "README.md"})))[1] == (
        "TOKEN_EXPIRED"
    )


async def test_task_expiry_caps_the_token(running: Running, agent: Agent) -> None:
    task = await agent.begin(ttl_seconds=20)
    resp = await agent.credential(task, "docs", "search_docs", ARGS)
    assert resp.credential.expires_at.seconds - int(running.clock.now()) <= 20
    running.clock.advance(21)
    assert (await rejected(agent.credential(task, "docs", "search_docs", ARGS)))[1] == (
        "TASK_ENDED"
    )


async def test_outside_the_plan(agent: Agent) -> None:
    task = await agent.begin(plan=[("docs", "search_docs"), ("repo", "")])
    await agent.token(task, "docs", "search_docs", ARGS)
    await agent.token(task, "repo", "write_file", {"path": "x"})
    code, reason = await rejected(agent.credential(task, "docs", "fetch_page", {"url": "x"}))
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "OUTSIDE_PLAN")


async def test_tier3_needs_approval(agent: Agent) -> None:
    task = await agent.begin()
    resp = await agent.credential(task, "deploy", "deploy", {"env": "prod"})
    # an approval workflow applies: a pending approval, not an error (tests/integration/
    # test_approvals.py drives it to a credential)
    assert resp.WhichOneof("result") == "pending_approval"
    assert resp.pending_approval.approval_id.startswith(f"ap_{task}.")
    assert "tier3-needs-approval" in resp.pending_approval.reason or "tier 3" in (
        resp.pending_approval.reason
    )


async def test_untrusted_read_then_tier2_needs_approval(
    running: Running, agent: Agent, docs: Server
) -> None:
    task = await agent.begin()
    await agent.token(task, "secrets", "read_secret", {"name": "db"})  # clean: allowed
    resp = await agent.credential(task, "docs", "fetch_page", {"url": "https://x"})
    await docs.verify(resp.credential.token, "fetch_page", {"url": "https://x"})
    # docs serves untrusted content (registry): reporting the outcome taints the task
    assert await docs.report(resp.credential.jti) == common_pb2.TAINT_UNTRUSTED
    resp = await agent.credential(task, "secrets", "read_secret", {"name": "db"})
    assert resp.WhichOneof("result") == "pending_approval"
    await agent.token(task, "repo", "write_file", {"path": "x"})  # tier 1 still fine


async def test_finding_then_write_tools_denied(running: Running, agent: Agent) -> None:
    task = await agent.begin()
    repo = Server(running.channel("mcp-repo"))
    resp = await agent.credential(task, "repo", "read_file", {"path": "CONTRIBUTING.md"})
    await repo.verify(resp.credential.token, "read_file", {"path": "CONTRIBUTING.md"})
    taint = await repo.report(resp.credential.jti, untrusted=False, findings=("instruction",))
    assert taint == common_pb2.TAINT_SUSPECT
    for server, tool in (("repo", "write_file"), ("repo", "run_tests"), ("secrets", "read_secret")):
        code, reason = await rejected(agent.credential(task, server, tool, {}))
        assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "POLICY_DENIED"), tool
    await agent.token(task, "repo", "read_file", {"path": "x"})  # reads go on
    # taint never goes down: a later clean report does not lower it
    resp = await agent.credential(task, "repo", "read_file", {"path": "y"})
    assert await repo.report(resp.credential.jti, untrusted=False) == common_pb2.TAINT_SUSPECT


async def test_policy_denial_names_the_policy(running: Running, agent: Agent) -> None:
    task = await agent.begin()
    repo = Server(running.channel("mcp-repo"))
    resp = await agent.credential(task, "repo", "read_file", {})
    await repo.verify(resp.credential.token, "read_file", {})
    await repo.report(resp.credential.jti, findings=("exfil_link",))
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await agent.credential(task, "repo", "write_file", {})
    ids = [i for i in running.broker.policy.policy_ids if i in exc.value.details()]
    assert ids, exc.value.details()


async def test_quota_per_task(pki: object) -> None:
    r = await start_broker(pki, **{"quotas.per_task": 2})  # type: ignore[arg-type]
    try:
        agent = Agent(r.channel("agent-demo"))
        task = await agent.begin()
        await agent.token(task, "docs", "search_docs", ARGS)
        await agent.token(task, "docs", "search_docs", ARGS)
        code, reason = await rejected(agent.credential(task, "docs", "search_docs", ARGS))
        assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "QUOTA_EXCEEDED")
    finally:
        await r.close()


async def test_sub_agent_plan_within_parent_and_dies_with_it(agent: Agent, docs: Server) -> None:
    parent = await agent.begin(plan=[("docs", "")])
    child = await agent.begin(parent_task_id=parent, plan=[("docs", "search_docs")])
    code, reason = await rejected(agent.begin(parent_task_id=parent, plan=[("repo", "")]))
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "OUTSIDE_PLAN")
    token = await agent.token(child, "docs", "search_docs", ARGS)
    payload = json.loads(__import__("base64").urlsafe_b64decode(token.split(".")[1] + "=="))
    assert payload["act"] == {"sub": "spiffe://dev.local/agent/demo"}
    await agent.end(parent)
    assert (await rejected(docs.verify(token, "search_docs", ARGS)))[1] == "REVOKED"


async def test_other_agents_task_is_not_found(running: Running, agent: Agent) -> None:
    task = await agent.begin()
    # an operator-issued agent cert for another agent: not the owner of the task
    from broker.adapters.pki import issue

    issue(running.pki, "spiffe://dev.local/agent/intruder", running.pki / "agent-intruder")
    intruder = Agent(running.channel("agent-intruder"))
    code, reason = await rejected(intruder.credential(task, "docs", "search_docs", ARGS))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "TASK_NOT_FOUND")
    assert (await rejected(intruder.end(task)))[1] == "TASK_NOT_FOUND"


@pytest.mark.parametrize(
    ("request_kwargs", "code", "reason", "field"),
    [
        ({"intent": ""}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", "intent"),
        ({"intent": "x" * 5000}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", "intent"),
        (
            {"intent": "x", "plan": [common_pb2.PlannedStep(server="nope")]},
            grpc.StatusCode.NOT_FOUND,
            "UNKNOWN_SERVER",
            "plan[0]",
        ),
        (
            {"intent": "x", "parent_task_id": "../etc"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_REQUEST",
            "parent_task_id",
        ),
    ],
)
async def test_bad_begin_task(
    agent: Agent, request_kwargs: dict[str, object], code: grpc.StatusCode, reason: str, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await agent.stub.BeginTask(agent_pb2.BeginTaskRequest(**request_kwargs), timeout=5)  # type: ignore[arg-type]
    assert (exc.value.code(), reason_of(exc.value)) == (code, reason)
    assert field in exc.value.details()


async def test_bad_credential_requests(agent: Agent) -> None:
    task = await agent.begin()
    cases = [
        (
            {"task_id": task, "server": "nope", "tool": "x", "args_sha256": "0" * 64},
            grpc.StatusCode.NOT_FOUND,
            "UNKNOWN_SERVER",
            "nope",
        ),
        (
            {"task_id": task, "server": "docs", "tool": "rm_rf", "args_sha256": "0" * 64},
            grpc.StatusCode.NOT_FOUND,
            "UNKNOWN_TOOL",
            "rm_rf",
        ),
        (
            {"task_id": task, "server": "docs", "tool": "search_docs", "args_sha256": "XYZ"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_REQUEST",
            "args_sha256",
        ),
        (
            {"task_id": task, "server": "docs", "tool": "search_docs"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_REQUEST",
            "arguments",
        ),
        (
            {
                "task_id": task,
                "server": "docs",
                "tool": "search_docs",
                "args_sha256": "0" * 64,
                "prompt_sha256": "nothex",
            },
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_REQUEST",
            "prompt_sha256",
        ),
        (
            {"task_id": "t_nope", "server": "docs", "tool": "search_docs", "args_sha256": "0" * 64},
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_REQUEST",
            "task_id",
        ),
        (
            {
                "task_id": "t_" + "A" * 22,
                "server": "docs",
                "tool": "search_docs",
                "args_sha256": "0" * 64,
            },
            grpc.StatusCode.NOT_FOUND,
            "TASK_NOT_FOUND",
            "t_",
        ),
    ]
    for kwargs, code, reason, needle in cases:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await agent.stub.RequestCredential(
                agent_pb2.RequestCredentialRequest(**kwargs),
                timeout=5,  # type: ignore[arg-type]
            )
        assert (exc.value.code(), reason_of(exc.value)) == (code, reason), kwargs
        assert needle in exc.value.details(), exc.value.details()
    big = {"blob": "x" * 70_000}
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await agent.credential(task, "docs", "search_docs", big)
    assert exc.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "arguments" in exc.value.details()


async def test_bad_verify_requests(docs: Server) -> None:
    for token, reason in (
        ("", "INVALID_REQUEST"),
        ("garbage", "MALFORMED_TOKEN"),
        ("a.b.c", "MALFORMED_TOKEN"),
        ("x" * 20_000, "MALFORMED_TOKEN"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await docs.verify(token, "search_docs", ARGS)
        assert reason_of(exc.value) == reason
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await docs.stub.ReportOutcome(verifier_pb2.ReportOutcomeRequest(jti="nope"), timeout=5)
    assert reason_of(exc.value) == "INVALID_REQUEST"


async def test_no_token_or_key_in_any_log_line(
    running: Running, agent: Agent, docs: Server, captured_logs: pytest.LogCaptureFixture
) -> None:
    task = await agent.begin()
    tokens = []
    for _ in range(3):
        resp = await agent.credential(task, "docs", "search_docs", ARGS)
        tokens.append(resp.credential.token)
    await docs.verify(tokens[0], "search_docs", ARGS)
    for bad in (tokens[0], tokens[1][:-4] + "AAAA"):  # a replay and a bad signature
        with pytest.raises(grpc.aio.AioRpcError):
            await docs.verify(bad, "search_docs", ARGS)
    await docs.report(_jti(tokens[0]))
    await agent.end(task)
    text = captured_logs.text + "\n".join(json.dumps(r.to_dict()) for r in running.sink.records)
    assert running.sink.records, "the flow left no audit records"
    for token in tokens:
        for part in token.split("."):
            assert part not in text
    assert "PRIVATE KEY" not in text
    events = [r.to_dict()["event"] for r in running.sink.records]
    for event in (
        "task.begin",
        "credential.decision",
        "credential.mint",
        "credential.consume",
        "credential.verify",
        "outcome.report",
        "task.end",
    ):
        assert event in events


def _jti(token: str) -> str:
    import base64

    return str(json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))["jti"])


def test_args_digest_matches_api_definition() -> None:
    canonical = b'{"limit":5,"query":"retry policy"}'
    assert args_sha256(ARGS) == hashlib.sha256(canonical).hexdigest()


async def test_credentials_minted_before_taint_rose_are_rechecked(
    running: Running, agent: Agent, docs: Server
) -> None:
    """Mint a secret read while clean, then read untrusted content: the secret credential dies
    (online: REVOKED; offline: a "credential" revocation event), a tier-1 one lives on."""
    task = await agent.begin()
    secret = await agent.credential(task, "secrets", "read_secret", {"name": "db"})
    write = await agent.credential(task, "repo", "write_file", {"path": "x"})
    cursor = await running.store.last_revocation_cursor()
    page = await agent.credential(task, "docs", "fetch_page", {"url": "https://x"})
    await docs.verify(page.credential.token, "fetch_page", {"url": "https://x"})
    assert await docs.report(page.credential.jti) == common_pb2.TAINT_UNTRUSTED
    events = await running.store.revocations_since(cursor)
    assert [(e.kind, e.subject) for e in events] == [("credential", secret.credential.jti)]
    secrets = Server(running.channel("mcp-secrets"))
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await secrets.verify(secret.credential.token, "read_secret", {"name": "db"})
    assert exc.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert reason_of(exc.value) == "REVOKED"
    repo = Server(running.channel("mcp-repo"))
    await repo.verify(write.credential.token, "write_file", {"path": "x"})
