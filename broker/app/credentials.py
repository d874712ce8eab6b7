"""The broker's core: tasks, per-call credentials, verification, outcomes and revocation.

No gRPC here: the servicers convert messages to ``broker.core.requests`` types, call this, and
convert back. Everything this needs is injected: the store port, the key provider, the policy
engine (which owns the registry), the audit trail and the clock.

Flow of one credential (DESIGN.md): resolve server and tool -> the task is the caller's and live
-> plan -> Cedar policy (taint, tier, risk, approval) -> TTL (``broker.core.ttl``: min of tier
cap, policy cap, request and task remaining) -> sign -> record in the store (quotas,
atomically) -> hand out. A token is only ever handed out after the store recorded it.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace

from broker.app.approval_flow import ApprovalFlow
from broker.app.audit import Auditor
from broker.app.keyring import SigningKeys
from broker.app.ports import KeyProvider, Quotas, Store, TaintRose
from broker.app.secrets import SecretBroker
from broker.app.tracing import traced, traced_call
from broker.core import approvals
from broker.core.approvals import ApprovalRecord, ApprovalState
from broker.core.audit.record import AuditEvent, AuditEventName
from broker.core.blocks import blocking, covering, refusal, task_revoked
from broker.core.clock import Clock
from broker.core.errors import (
    BrokerError,
    FailedPrecondition,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    Reason,
    StoreUnavailable,
    Unauthenticated,
    VaultUnavailable,
)
from broker.core.ids import is_task_id, new_jti, new_task_id, task_of_jti
from broker.core.model import (
    ConsumeResult,
    CredentialRecord,
    PlanStep,
    RevocationKind,
    Taint,
    TaskRecord,
    TaskState,
)
from broker.core.policy.engine import PolicyEngine
from broker.core.policy.model import Effect, PolicyRequest
from broker.core.registry import (
    TIER_MAX_TTL,
    ContentTrust,
    Registry,
    ServerEntry,
    ToolEntry,
    tier_ttl_cap,
)
from broker.core.requests import (
    MAX_TEXT,
    BeginTask,
    CredentialRequest,
    Granted,
    Outcome,
    Pending,
    Refusal,
    Verified,
    VerifyRequest,
    check_refusals,
    check_task_id,
    check_text,
)
from broker.core.secret import IssuedSecret
from broker.core.spiffe import PeerIdentity
from broker.core.tokens.claims import AuthorizationDetail, TokenClaims, mint_token_async
from broker.core.tokens.verify import verify_token
from broker.core.ttl import granted_ttl

log = logging.getLogger("broker.app.credentials")

# Tasks are kept this long after their expiry, so that late verifications still find the
# tombstone rather than nothing (which also fails, but with a less useful reason).
TASK_RETENTION = 600.0
ENDED_BY_AGENT = "ended by its agent"  # the reason EndTask gives the feed, whatever the outcome
REFUSALS_PER_MINUTE = 6000  # verifier.refusal records one MCP server may write (per replica)


@dataclass(frozen=True)
class Limits:
    task_max_ttl: float = 3600.0
    task_default_ttl: float = 900.0
    task_retention: float = TASK_RETENTION
    quotas: Quotas = field(default_factory=Quotas)
    leeway: float = 5.0
    max_delegation_depth: int = 3
    approval_ttl: float = approvals.DEFAULT_TTL
    max_pending_approvals: int = approvals.MAX_PENDING_PER_TASK
    max_pending_per_agent: int = 64  # pending approvals of one agent, across its tasks
    max_live_tasks_per_agent: int = 256
    require_registered_agents: bool = False  # refuse BeginTask of agents not in the registry


class Broker:
    def __init__(
        self,
        *,
        issuer: str,
        policy: PolicyEngine,
        keys: KeyProvider,
        store: Store,
        audit: Auditor,
        clock: Clock,
        limits: Limits | None = None,
        secrets: SecretBroker | None = None,
        keyring: SigningKeys | None = None,
    ) -> None:
        self.issuer = issuer
        self.policy = policy  # owns the registry too: see ``registry``
        self.keys = keys
        self.store = store
        self.audit = audit
        self.clock = clock
        self.limits = limits or Limits()
        self.approvals = ApprovalFlow(
            store,
            self._audit,
            ttl=self.limits.approval_ttl,
            max_pending=self.limits.max_pending_approvals,
            max_pending_per_agent=self.limits.max_pending_per_agent,
        )
        self.secrets = (
            secrets  # downstream secrets from Vault (broker.adapters.vault); None: no Vault
        )
        # this replica's keys and every other replica's, shared through the store
        self.keyring = keyring or SigningKeys(
            keys, store, clock, max_token_ttl=float(max(TIER_MAX_TTL.values()))
        )
        self._refusals_written: dict[str, tuple[int, int]] = {}  # server -> (minute, records)

    @property
    def registry(self) -> Registry:
        """The registry in force: the policy engine's, its one owner, so that a reload
        (``PolicyEngine.reload(registry)``) changes what both resolve and decide at once."""
        return self.policy.registry

    # -- AgentService ------------------------------------------------------------------------

    async def begin_task(self, peer: PeerIdentity, req: BeginTask) -> TaskRecord:
        try:
            return await self._begin_task(peer, req)
        except BrokerError as exc:  # every refusal leaves a record (docs/audit.md)
            self._refused(
                AuditEventName.TASK_REFUSED,
                peer,
                exc,
                task=req.parent_task_id or None,  # (validated: a task id or empty)
                extra={"parent": bool(req.parent_task_id), "plan_steps": len(req.plan)},
            )
            raise

    async def _begin_task(self, peer: PeerIdentity, req: BeginTask) -> TaskRecord:
        now = self.clock.now()
        agent = str(peer.spiffe_id)
        if self.limits.require_registered_agents and self.registry.agent(agent) is None:
            raise PermissionDenied(
                f"{agent} is not in the registry, and this broker only serves registered "
                "agents (tasks.require_registered_agents)",
                Reason.ROLE_NOT_ALLOWED,
            )
        plan = tuple(self._plan_step(i, ref, tool) for i, (ref, tool) in enumerate(req.plan))
        ttl = float(req.ttl_seconds) if req.ttl_seconds else self.limits.task_default_ttl
        expires_at = now + min(ttl, self.limits.task_max_ttl)
        depth, taint = 0, Taint.CLEAN
        act: tuple[str, ...] = ()
        parent: TaskRecord | None = None
        if req.parent_task_id:
            parent = await self._task(req.parent_task_id, now, owner=None)
            if not parent.may_delegate_to(agent):
                # The parent did not name this agent: a task it may not use is reported as
                # absent (ids are not an oracle), and its chain is never claimed.
                raise NotFound(f"task {req.parent_task_id} not found", Reason.TASK_NOT_FOUND)
            depth = parent.depth + 1
            if depth > self.limits.max_delegation_depth:
                raise PermissionDenied(
                    f"delegation depth {depth} exceeds the limit of "
                    f"{self.limits.max_delegation_depth}",
                    Reason.POLICY_DENIED,
                )
            act = (parent.agent, *parent.act)
            taint = parent.taint  # a sub-agent inherits what its parent has read
            expires_at = min(expires_at, parent.expires_at)
            if parent.plan:
                if not plan:
                    plan = parent.plan
                for i, step in enumerate(plan):
                    # covers() also makes "any tool" (tool "") need "any tool" in the parent
                    if not any(p.covers(step.server, step.tool) for p in parent.plan):
                        raise PermissionDenied(
                            f"plan[{i}] ({step.server} {step.tool or '*'}) is outside the "
                            "parent task's plan",
                            Reason.OUTSIDE_PLAN,
                        )
        # Kill switches: a blocked agent (or one above it in the chain) starts nothing new, and
        # a parent task a floor revoked has no children.
        blocks = await self.store.list_blocks(now)
        block = blocking(blocks, (agent, *act), now)
        if block is None and parent is not None:
            block = task_revoked(blocks, act, parent.created_at)
        if block is not None:
            raise refusal(block, now, req.parent_task_id)
        task = TaskRecord(
            task_id=new_task_id(),
            agent=agent,
            intent=req.intent,
            on_behalf_of=req.on_behalf_of,
            created_at=now,
            expires_at=expires_at,
            parent_task_id=req.parent_task_id,
            plan=plan,
            labels=dict(req.labels),
            depth=depth,
            act=act,
            taint=taint,
            delegates=req.delegates,
        )
        await self.store.create_task(
            task,
            retain_until=expires_at + self.limits.task_retention,
            max_live_per_agent=self.limits.max_live_tasks_per_agent,
        )
        self._audit(AuditEventName.TASK_BEGIN, peer, task=task.task_id, extra={"depth": depth})
        return task

    async def request_credential(
        self, peer: PeerIdentity, req: CredentialRequest
    ) -> Granted | Pending:
        """A credential for one call, or a pending approval for it (then retried with its id)."""
        try:
            return await self._request_credential(peer, req)
        except BrokerError as exc:
            # A policy decision is on the record already (credential.decision); every other
            # refusal (quota, kill switch, task ended or unknown, unknown server or tool,
            # approval problems, the store) is recorded here.
            if exc.reason not in (Reason.POLICY_DENIED, Reason.OUTSIDE_PLAN):
                self._refused(
                    AuditEventName.CREDENTIAL_REFUSED,
                    peer,
                    exc,
                    task=req.task_id,
                    args_sha256=req.args_sha256,
                    extra={"server_asked": req.server, "tool_asked": req.tool},
                )
            raise

    async def _request_credential(
        self, peer: PeerIdentity, req: CredentialRequest
    ) -> Granted | Pending:
        now = self.clock.now()
        task = await self._task(req.task_id, now, owner=str(peer.spiffe_id))
        server = self.registry.server(req.server)
        tool = self.registry.tool(server, req.tool)
        in_plan = _in_plan(task, server, tool)
        if not in_plan:
            self._audit_decision(peer, task, server, req, "deny", ("outside-plan",))
            raise PermissionDenied(
                f"{server.name}/{tool.name} is not in the plan declared at BeginTask",
                Reason.OUTSIDE_PLAN,
            )
        approval: ApprovalRecord | None = None
        if req.approval_id:  # a retry: policy is evaluated as approved, then the approval used
            approval = await self.approvals.presented(peer, task, server, req, now)
        # Taint only rises (clean -> untrusted -> suspect): at most two re-decisions.
        for _ in range(len(Taint) - 1):
            try:
                return await self._decide_and_mint(peer, task, server, tool, req, approval, now)
            except TaintRose as rose:
                # A ReportOutcome raised the task's taint between this decision and its record
                # (which refused it, atomically): decide again at the new taint. The token
                # signed at the old one is dropped, never handed out.
                task = replace(task, taint=rose.taint)
        return await self._decide_and_mint(peer, task, server, tool, req, approval, now)

    async def _decide_and_mint(
        self,
        peer: PeerIdentity,
        task: TaskRecord,
        server: ServerEntry,
        tool: ToolEntry,
        req: CredentialRequest,
        approval: ApprovalRecord | None,
        now: float,
    ) -> Granted | Pending:
        policy_request = _policy_request(task, server, tool, task.taint, now, in_plan=True)
        if approval is not None:
            policy_request = replace(policy_request, approved=True)
        decision = traced_call("policy", self.policy.decide, policy_request)
        ids = tuple(decision.policy_ids)
        if decision.effect is Effect.DENY:
            self._audit_decision(peer, task, server, req, "deny", ids)
            raise PermissionDenied(
                f"denied by policy {', '.join(ids) or '(no permit matched)'}",
                Reason.POLICY_DENIED,
                policy_ids=ids,
            )
        if decision.effect is Effect.APPROVAL_REQUIRED:
            self._audit_decision(peer, task, server, req, "approval_required", ids)
            return await self.approvals.ask(peer, task, server, req, decision.reasons, ids, now)
        if approval is not None and approval.state_at(now) is ApprovalState.PENDING:
            return Pending(approval.approval_id, approval.expires_at, approval.reason)
        ttl = granted_ttl(
            tier_cap=tier_ttl_cap(server.tier),
            task_remaining=task.expires_at - now,
            policy_cap=decision.ttl_cap,
            requested=req.ttl_seconds,
        )
        if ttl < 1:
            raise FailedPrecondition(
                f"task {task.task_id} expires in under a second", Reason.TASK_ENDED
            )
        iat = int(now)
        jti = new_jti(task.task_id)
        claims = TokenClaims(
            iss=self.issuer,
            sub=task.agent,
            aud=server.spiffe_id,
            iat=iat,
            nbf=iat,
            exp=iat + ttl,
            jti=jti,
            task=task.task_id,
            authorization_details=(
                AuthorizationDetail(
                    type="tool_call",
                    server=server.spiffe_id,
                    tool=tool.name,
                    action=tool.risk.value,
                    args_sha256=req.args_sha256,
                ),
            ),
            cnf_x5t_s256=peer.x5t_s256,
            tier=server.tier,
            taint=task.taint.label,
            act=_act_claim(task.act),
        )
        token = await traced("sign", mint_token_async(claims, self.keys))  # never blocks the loop
        await traced("store", self.store.record_credential(
            CredentialRecord(
                jti=jti,
                task_id=task.task_id,
                agent=task.agent,
                server=server.spiffe_id,
                tool=tool.name,
                args_sha256=req.args_sha256,
                tier=server.tier,
                issued_at=float(iat),
                expires_at=float(iat + ttl),
            ),
            quotas=self.limits.quotas,
            now=now,
            taint=task.taint,  # the decision's taint: refused if the task's rose since
        ))  # fmt: skip
        if approval is not None:
            # Used up only once the credential is signed and recorded, so that a failure of
            # either does not burn the operator's approval. If this fails (a concurrent retry
            # used it first), the recorded credential is never handed out.
            await self.approvals.use(peer, approval, now)
        self._audit_decision(peer, task, server, req, "allow", ids)
        self._audit(
            AuditEventName.CREDENTIAL_MINT,
            peer,
            **req.audit_fields(task.task_id, server.spiffe_id),
            jti=jti,
            extra={"ttl": ttl, "tier": server.tier},
        )
        return Granted(token=token, jti=jti, expires_at=float(iat + ttl))

    async def end_task(self, peer: PeerIdentity, task_id: str, outcome: str) -> int:
        try:
            return await self._end_task(peer, task_id, outcome)
        except BrokerError as exc:
            self._refused(AuditEventName.TASK_END, peer, exc, task=task_id or None)
            raise

    async def _end_task(self, peer: PeerIdentity, task_id: str, outcome: str) -> int:
        now = self.clock.now()
        check_task_id(task_id)
        check_text(outcome, "outcome", MAX_TEXT)
        await self._task(task_id, now, owner=str(peer.spiffe_id), live=False)
        # The feed (every verifier) and the store get a fixed reason: the agent's text only
        # goes to the audit record (scrubbed there), never to other processes' logs.
        killed, ended = await self.store.end_task(
            task_id, state=TaskState.ENDED, now=now, reason=ENDED_BY_AGENT
        )
        self._audit(  # before the Vault step: the task has ended whatever Vault says
            AuditEventName.TASK_END,
            peer,
            task=task_id,
            outcome=outcome or None,
            extra={"revoked_credentials": killed, "tasks_ended": len(ended)},
        )
        if self.secrets is not None:  # revoke the Vault leases of every task this ended
            await self.secrets.revoke_tasks((task_id, *ended), ENDED_BY_AGENT)
        return killed

    # -- VerifierService ---------------------------------------------------------------------

    async def verify_credential(self, peer: PeerIdentity, req: VerifyRequest) -> Verified:
        now = self.clock.now()
        audience = str(peer.spiffe_id)
        presenter = (
            base64.urlsafe_b64encode(bytes.fromhex(req.presenter_cert_sha256)).rstrip(b"=").decode()
            if req.presenter_cert_sha256
            else None
        )
        claims: TokenClaims | None = None
        try:
            claims = verify_token(
                req.token,
                keys=await self.keyring.keyset_for(req.token),
                allowed_algs=frozenset({self.keys.alg}),
                issuer=self.issuer,
                audience=audience,
                now=now,
                leeway=self.limits.leeway,
                tool=req.tool,
                args_sha256=req.args_sha256,
                presenter_x5t_s256=presenter,
            )
            task = await self._check_taint_since_mint(claims, now)
            if req.check_only:
                await self._check_unused(claims, task, now)
                return self._verified(claims, audience, task, None)
            result = await self.store.consume_credential(claims.task, claims.jti, now)
            if result is ConsumeResult.REPLAYED:
                raise Unauthenticated(
                    "credential was already used: it verifies once", Reason.REPLAYED
                )
            if result is ConsumeResult.REVOKED:
                raise Unauthenticated(
                    f"task {claims.task} has ended or was revoked", Reason.REVOKED
                )
            if result is ConsumeResult.UNKNOWN:
                raise Unauthenticated(
                    "credential is not known to the broker's store (expired long ago, or the "
                    "store lost it): treated as revoked",
                    Reason.REVOKED,
                )
        except Unauthenticated as exc:
            # What is known of the refused credential: everything, once its signature verified.
            if claims is None and isinstance(exc.claims, TokenClaims):
                claims = exc.claims
            known = {}
            if claims is not None:
                known = {
                    "task": claims.task,
                    "jti": claims.jti,
                    "tool": claims.authorization_details[0].tool,
                    "args_sha256": claims.authorization_details[0].args_sha256,
                }
            self._refused(
                AuditEventName.CREDENTIAL_VERIFY,
                peer,
                exc,
                outcome="rejected",
                server=audience,
                extra={"agent": claims.sub} if claims is not None else {"tool_asked": req.tool},
                **known,
            )
            raise
        detail = claims.authorization_details[0]
        self._audit(
            AuditEventName.CREDENTIAL_CONSUME,
            peer,
            task=claims.task,
            server=audience,
            tool=detail.tool,
            args_sha256=detail.args_sha256,
            jti=claims.jti,
            outcome="accepted",
        )
        secret = None
        entry = self.registry.server(audience).tools.get(detail.tool)
        if entry is not None and entry.secret is not None:  # fails closed without Vault
            if self.secrets is None:
                raise VaultUnavailable(f"{detail.tool} needs a secret and no Vault is configured")
            secret = await self.secrets.issue(entry.secret, claims, now)
        return self._verified(claims, audience, task, secret)

    @staticmethod
    def _verified(
        claims: TokenClaims, audience: str, task: TaskRecord | None, secret: IssuedSecret | None
    ) -> Verified:
        # taint as read just before the consume (one store round trip fewer)
        return Verified(
            task_id=claims.task,
            agent=claims.sub,
            server=audience,
            tool=claims.authorization_details[0].tool,
            tier=claims.tier,
            taint=task.taint if task else Taint.from_label(claims.taint),
            jti=claims.jti,
            expires_at=float(claims.exp),
            secret=secret,
        )

    async def _check_unused(self, claims: TokenClaims, task: TaskRecord | None, now: float) -> None:
        """What a consume would refuse, without consuming (``VerifyRequest.check_only``)."""
        cred = await self.store.get_credential(claims.task, claims.jti)
        if cred is None or task is None:
            raise Unauthenticated(
                "credential is not known to the broker's store: treated as revoked",
                Reason.REVOKED,
            )
        if not task.is_live(now):
            raise Unauthenticated(f"task {claims.task} has ended or was revoked", Reason.REVOKED)
        if cred.consumed:
            raise Unauthenticated("credential was already used: it verifies once", Reason.REPLAYED)
        block = covering(
            await self.store.list_blocks(now),
            agents=(task.agent, *task.act),
            server=cred.server,
            tier=cred.tier,
            issued_at=cred.issued_at,
            now=now,
        )
        if block is not None:
            raise Unauthenticated(block.describe(), Reason.REVOKED)

    def report_refusals(
        self, peer: PeerIdentity, refusals: tuple[Refusal, ...], dropped: int
    ) -> int:
        """Record what an offline verifier refused (``verifier.refusal``, one record each; the
        actor is the verifier) and how many its buffer lost. Returns the records written."""
        check_refusals(refusals)
        server = str(peer.spiffe_id)
        # A verifier cannot flood the trail: past its budget a batch is counted, not written.
        allowed = self._refusal_budget(server, len(refusals))
        dropped += len(refusals) - allowed
        refusals = refusals[:allowed]
        for r in refusals:
            task = r.task_id if is_task_id(r.task_id) else None
            jti = r.jti if task is not None and task_of_jti(r.jti) == task else None
            reason = r.reason if r.reason in Reason.__members__ else "UNKNOWN"
            extra: dict[str, str | int | float | bool] = {"mode": r.mode or "offline"}
            if r.tool:
                extra["tool"] = r.tool
            if r.agent:
                extra["agent"] = r.agent
            if r.refused_at:
                extra["refused_at"] = r.refused_at
            self._audit(
                AuditEventName.VERIFIER_REFUSAL,
                peer,
                server=server,
                task=task,
                jti=jti,
                outcome="rejected",
                reason=reason,
                extra=extra,
            )
        if dropped:
            self._audit(
                AuditEventName.VERIFIER_REFUSALS_DROPPED,
                peer,
                server=server,
                outcome="dropped",
                extra={"dropped": dropped},
            )
        return len(refusals)

    def _refusal_budget(self, server: str, wanted: int) -> int:
        """How many of ``wanted`` refusal records ``server`` may still write this minute."""
        minute = int(self.clock.now() // 60)
        start, used = self._refusals_written.get(server, (minute, 0))
        if start != minute:
            used = 0
        allowed = max(0, min(wanted, REFUSALS_PER_MINUTE - used))
        self._refusals_written[server] = (minute, used + allowed)
        if len(self._refusals_written) > 10_000:  # verifiers come and go: forget old minutes
            self._refusals_written = {
                k: v for k, v in self._refusals_written.items() if v[0] == minute
            }
        return allowed

    async def _check_taint_since_mint(self, claims: TokenClaims, now: float) -> TaskRecord | None:
        """Online twin of ``_recheck_live_credentials``, for a race with a taint report.
        Returns the task as read (None if the store no longer has it)."""
        task = await self.store.get_task(claims.task)
        if task is None or task.taint <= Taint.from_label(claims.taint):
            return task
        server = self.registry.server(claims.aud)
        tool = server.tools.get(claims.authorization_details[0].tool)
        if tool is not None:
            decision = self.policy.decide(_policy_request(task, server, tool, task.taint, now))
            if decision.effect is Effect.ALLOW:
                return task
        raise Unauthenticated(
            f"task {claims.task} became {task.taint.label} after this credential was minted "
            "and policy no longer allows the call: ask again",
            Reason.REVOKED,
        )

    async def report_outcome(self, peer: PeerIdentity, outcome: Outcome) -> Taint:
        task_id = task_of_jti(outcome.jti)
        if task_id is None:
            raise InvalidRequest("jti", "is not a credential id issued by this broker")
        cred = await self.store.get_credential(task_id, outcome.jti)
        if cred is None or cred.server != str(peer.spiffe_id):
            raise NotFound(f"no credential {outcome.jti} for {peer.spiffe_id}")
        if not cred.consumed:
            # Verified offline (broker.client.verifier): mark it used here too, so that it stops
            # counting against the quotas and can no longer be verified online.
            await self.store.consume_credential(task_id, outcome.jti, self.clock.now())
        server = self.registry.server(cred.server)
        # The registry's "untrusted" is a floor: a server's report may raise trust concerns,
        # never lower the operator's (a compromised server saying "trusted" changes nothing).
        untrusted = server.content_trust is ContentTrust.UNTRUSTED or bool(outcome.untrusted)
        taint = Taint.CLEAN
        if untrusted:
            taint = Taint.UNTRUSTED
        if outcome.findings:
            taint = Taint.SUSPECT
        new, tainted = await self.raise_taint(peer, task_id, taint)
        self._audit(
            AuditEventName.OUTCOME_REPORT,
            peer,
            task=task_id,
            server=cred.server,
            tool=cred.tool,
            jti=outcome.jti,
            outcome="succeeded" if outcome.succeeded else "failed",
            extra={
                "taint": new.label,
                "tainted_tasks": tainted,
                "findings": ",".join(sorted({k for k, _ in outcome.findings})),
                **({"result_sha256": outcome.result_sha256} if outcome.result_sha256 else {}),
            },
        )
        return new

    async def raise_taint(
        self, peer: PeerIdentity, task_id: str, taint: Taint
    ) -> tuple[Taint, int]:
        """Raise the task's taint to at least ``taint``, and with it every live task of its
        delegation tree: what a sub-agent read reaches the agent it reports to, and what a task
        read reaches the sub-agents working for it. Live credentials of each task whose taint
        rose are decided again. Returns the task's taint after this and how many tasks rose."""
        before = await self.store.get_task(task_id)
        new = await self.store.raise_taint(task_id, taint)
        tainted = 0
        if before is None or new <= before.taint:
            return new, tainted
        tainted += 1
        await self._recheck_live_credentials(peer, before, new)
        # The whole delegation tree: up to its root, then every task below it (a tainted
        # parent instructs its other sub-agents too). Depth is bounded by config.
        root, seen = before, {task_id}
        while root.parent_task_id and root.parent_task_id not in seen:
            seen.add(root.parent_task_id)
            up = await self.store.get_task(root.parent_task_id)
            if up is None:
                break
            root = up
        related: list[str] = [root.task_id] if root.task_id != task_id else []
        pending = list(await self.store.list_sub_tasks(root.task_id))
        while pending:
            tid = pending.pop()
            if tid in related or tid == task_id:
                continue
            related.append(tid)
            pending.extend(await self.store.list_sub_tasks(tid))
        now = self.clock.now()
        for tid in related:
            task = await self.store.get_task(tid)
            if task is None or not task.is_live(now) or task.taint >= new:
                continue
            if await self.store.raise_taint(tid, new) > task.taint:
                tainted += 1
                await self._recheck_live_credentials(peer, task, new)
        return new, tainted

    async def _recheck_live_credentials(
        self, peer: PeerIdentity, task: TaskRecord, taint: Taint
    ) -> None:
        """The task's taint just rose: a credential minted before it must not outlive a decision
        policy would no longer make (e.g. a secret read minted while clean, used after reading
        a poisoned page). Each live one is decided again at the new taint; those no longer
        allowed are used up here and announced on the revocation feed (offline verifiers)."""
        now = self.clock.now()
        for cred in await self.store.list_credentials(task.task_id):
            if cred.consumed or cred.expires_at <= now:
                continue
            server = self.registry.server(cred.server)
            tool = server.tools.get(cred.tool)
            if tool is not None:
                decision = self.policy.decide(_policy_request(task, server, tool, taint, now))
                if decision.effect is Effect.ALLOW:
                    continue
            # Announce first (offline verifiers), then use up (online). Online verification
            # refuses such a credential anyway (_check_taint_since_mint); the announcement is
            # retried briefly so that a blip of the store does not leave offline verifiers out.
            reason = f"task taint rose to {taint.label} after it was minted"
            await _with_retry(
                functools.partial(
                    self.store.publish_revocation, RevocationKind.CREDENTIAL, cred.jti, now, reason
                )
            )
            await self.store.consume_credential(task.task_id, cred.jti, now)
            self._audit(
                AuditEventName.REVOKE_CREDENTIAL,
                peer,
                task=task.task_id,
                server=cred.server,
                tool=cred.tool,
                jti=cred.jti,
                reason=reason,
            )

    # -- helpers -----------------------------------------------------------------------------

    def _plan_step(self, i: int, ref: str, tool: str) -> PlanStep:
        try:
            server = self.registry.server(ref)
            if tool:
                self.registry.tool(server, tool)
        except NotFound as exc:
            raise NotFound(f"plan[{i}]: {exc.message}", exc.reason) from None
        return PlanStep(server.spiffe_id, tool)

    async def _task(
        self, task_id: str, now: float, *, owner: str | None, live: bool = True
    ) -> TaskRecord:
        task = await self.store.get_task(task_id)
        # Another agent's task is reported as absent: ids are not an oracle.
        if task is None or (owner is not None and task.agent != owner):
            raise NotFound(f"task {task_id} not found", Reason.TASK_NOT_FOUND)
        if live and not task.is_live(now):
            raise FailedPrecondition(
                f"task {task_id} is {task.state_at(now).name.lower()}", Reason.TASK_ENDED
            )
        return task

    def _audit_decision(
        self,
        peer: PeerIdentity,
        task: TaskRecord,
        server: ServerEntry,
        req: CredentialRequest,
        decision: str,
        policy_ids: tuple[str, ...],
    ) -> None:
        self._audit(
            AuditEventName.CREDENTIAL_DECISION,
            peer,
            **req.audit_fields(task.task_id, server.spiffe_id),
            decision=decision,
            policy_ids=policy_ids,
            extra={"taint": task.taint.label, "tier": server.tier},
        )

    def _refused(
        self,
        event: AuditEventName,
        peer: PeerIdentity,
        exc: BrokerError,
        *,
        outcome: str = "refused",
        extra: Mapping[str, str | int | float | bool] | None = None,
        **ids: str | None,
    ) -> None:
        """Record a refusal: its reason code and message, and the ids known of it. An id the
        record refuses (it came from the caller and looks like a credential, say) is dropped
        rather than the record: the refusal stays on the trail."""
        fields: dict[str, object] = {
            "outcome": outcome,
            "reason": exc.reason.value,
            "extra": {"message": exc.message, **(extra or {})},
        }
        try:
            self._audit(event, peer, **ids, **fields)
        except ValueError:
            log.warning("refusal recorded without its ids (one was not a valid identifier)")
            self._audit(event, peer, **fields)

    def _audit(self, event: AuditEventName, peer: PeerIdentity, **fields: object) -> None:
        self.audit.record(
            AuditEvent(event=event, time=self.clock.now(), actor=str(peer.spiffe_id), **fields)  # type: ignore[arg-type]
        )


async def _with_retry(
    op: Callable[[], Awaitable[object]], attempts: int = 3, delay: float = 0.05
) -> None:
    """Run ``op``, retrying a StoreUnavailable twice; the last failure propagates."""
    for attempt in range(attempts):
        try:
            await op()
            return
        except StoreUnavailable:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(delay * (attempt + 1))


def _in_plan(task: TaskRecord, server: ServerEntry, tool: ToolEntry) -> bool:
    """The call is within the plan declared at BeginTask (no plan: anything is)."""
    return not task.plan or any(s.covers(server.spiffe_id, tool.name) for s in task.plan)


def _policy_request(
    task: TaskRecord,
    server: ServerEntry,
    tool: ToolEntry,
    taint: Taint,
    now: float,
    *,
    in_plan: bool | None = None,
) -> PolicyRequest:
    """``in_plan``: when the caller has already checked the plan (None: check it here)."""
    return PolicyRequest(
        agent=task.agent,
        server=server,
        tool=tool,
        intent=task.intent,
        taint=taint.label,
        in_plan=_in_plan(task, server, tool) if in_plan is None else in_plan,
        has_plan=bool(task.plan),
        approved=False,
        now=now,
        delegation_depth=task.depth,
        on_behalf_of=task.on_behalf_of,
    )


def _act_claim(chain: tuple[str, ...]) -> dict[str, object] | None:
    """RFC 8693 §4.1 ``act``: the nearest delegator outermost, earlier ones nested."""
    claim: dict[str, object] | None = None
    for agent in reversed(chain):
        claim = {"sub": agent, **({"act": claim} if claim else {})}
    return claim
