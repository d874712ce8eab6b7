"""Typed requests and results of the core service: what crosses from the gRPC edge to the core.

Validation of shapes (lengths, digests, ids) happens here, so every edge (gRPC, tests, a future
REST gateway) gets the same INVALID_REQUEST messages naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from broker.core.errors import InvalidRequest
from broker.core.ids import is_task_id
from broker.core.model import Taint
from broker.core.secret import IssuedSecret

MAX_INTENT = 2000
MAX_TEXT = 512
MAX_LABELS = 32
MAX_PLAN = 64
MAX_FINDINGS = 100
MAX_DELEGATES = 16
MAX_SPIFFE_ID = 512


def check_task_id(value: str, name: str = "task_id") -> str:
    if not value:
        raise InvalidRequest(name, "is required")
    if not is_task_id(value):
        raise InvalidRequest(name, "is not a task id (t_ followed by 22 base64url characters)")
    return value


def check_text(value: str, name: str, limit: int = MAX_TEXT, *, required: bool = False) -> str:
    if required and not value.strip():
        raise InvalidRequest(name, "is required")
    if len(value) > limit:
        raise InvalidRequest(name, f"is {len(value)} characters long; the limit is {limit}")
    return value


def check_digest(value: str, name: str, *, required: bool = True) -> str:
    if not value:
        if required:
            raise InvalidRequest(name, "is required")
        return value
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise InvalidRequest(name, "must be 64 lowercase hex characters (a SHA-256 digest)")
    return value


@dataclass(frozen=True)
class BeginTask:
    intent: str
    on_behalf_of: str = ""
    ttl_seconds: int = 0
    plan: tuple[tuple[str, str], ...] = ()  # (server ref, tool or "")
    labels: Mapping[str, str] = field(default_factory=dict)
    parent_task_id: str = ""
    delegates: tuple[str, ...] = ()  # SPIFFE IDs of agents that may begin sub-tasks of it

    def __post_init__(self) -> None:
        check_text(self.intent, "intent", MAX_INTENT, required=True)
        check_text(self.on_behalf_of, "on_behalf_of")
        if len(self.plan) > MAX_PLAN:
            raise InvalidRequest("plan", f"has {len(self.plan)} steps; the limit is {MAX_PLAN}")
        for i, (server, tool) in enumerate(self.plan):
            check_text(server, f"plan[{i}].server", required=True)
            check_text(tool, f"plan[{i}].tool")
        if len(self.labels) > MAX_LABELS:
            raise InvalidRequest("labels", f"has {len(self.labels)} entries; limit {MAX_LABELS}")
        for k, v in self.labels.items():
            check_text(k, "labels (key)", 64, required=True)
            check_text(v, f"labels[{k}]")
        if self.parent_task_id:
            check_task_id(self.parent_task_id, "parent_task_id")
        if len(self.delegates) > MAX_DELEGATES:
            raise InvalidRequest(
                "delegates", f"has {len(self.delegates)} entries; the limit is {MAX_DELEGATES}"
            )
        for i, agent in enumerate(self.delegates):
            check_text(agent, f"delegates[{i}]", MAX_SPIFFE_ID, required=True)
            if not agent.startswith("spiffe://"):
                raise InvalidRequest(f"delegates[{i}]", "must be an agent's SPIFFE ID")


@dataclass(frozen=True)
class CredentialRequest:
    task_id: str
    server: str
    tool: str
    args_sha256: str
    prompt_sha256: str = ""
    justification: str = ""
    ttl_seconds: int = 0
    approval_id: str = ""

    def __post_init__(self) -> None:
        check_task_id(self.task_id)
        check_text(self.server, "server", required=True)
        check_text(self.tool, "tool", 128, required=True)
        check_digest(self.args_sha256, "args_sha256")
        check_digest(self.prompt_sha256, "prompt_sha256", required=False)
        check_text(self.justification, "justification", MAX_INTENT)
        check_text(self.approval_id, "approval_id", 64)

    def audit_fields(self, task_id: str, server_id: str) -> dict[str, str | None]:
        """The fields that name this call in an audit record (never the arguments themselves)."""
        return {
            "task": task_id,
            "server": server_id,
            "tool": self.tool,
            "args_sha256": self.args_sha256,
            "prompt_sha256": self.prompt_sha256 or None,
        }


@dataclass(frozen=True)
class Granted:
    token: str
    jti: str
    expires_at: float

    def __repr__(self) -> str:  # never print a token
        return f"Granted(jti={self.jti!r}, expires_at={self.expires_at}, token=[secure])"


@dataclass(frozen=True)
class Pending:
    """The call needs an operator's approval: retry it with ``approval_id`` once approved."""

    approval_id: str
    expires_at: float
    reason: str


@dataclass(frozen=True)
class VerifyRequest:
    token: str
    tool: str
    args_sha256: str
    presenter_cert_sha256: str = ""
    check_only: bool = False  # every check, but the credential is not used up

    def __post_init__(self) -> None:
        if not self.token:
            raise InvalidRequest("token", "is required")
        check_text(self.tool, "tool", 128, required=True)
        check_digest(self.args_sha256, "args_sha256")
        check_digest(self.presenter_cert_sha256, "presenter_cert_sha256", required=False)

    def __repr__(self) -> str:
        return f"VerifyRequest(tool={self.tool!r}, token=[secure])"


@dataclass(frozen=True)
class Verified:
    task_id: str
    agent: str
    server: str
    tool: str
    tier: int
    taint: Taint
    jti: str
    expires_at: float
    secret: IssuedSecret | None = None  # the tool's downstream secret, for the MCP server only


@dataclass(frozen=True)
class Outcome:
    jti: str
    succeeded: bool
    result_sha256: str = ""
    untrusted: bool | None = None  # None: the server's registry setting applies
    findings: tuple[tuple[str, str], ...] = ()  # (kind, detail)

    def __post_init__(self) -> None:
        if not self.jti:
            raise InvalidRequest("jti", "is required")
        check_digest(self.result_sha256, "result_sha256", required=False)
        if len(self.findings) > MAX_FINDINGS:
            raise InvalidRequest("findings", f"more than {MAX_FINDINGS} findings")
        for i, (kind, detail) in enumerate(self.findings):
            check_text(kind, f"findings[{i}].kind", 64, required=True)
            check_text(detail, f"findings[{i}].detail")


MAX_REFUSALS = 100  # per ReportRefusals call


@dataclass(frozen=True)
class Refusal:
    """A credential an offline verifier refused (never the token). Every field but ``reason``
    may be empty; they come from the verifier and are recorded as what it says."""

    reason: str
    jti: str = ""
    task_id: str = ""
    tool: str = ""
    agent: str = ""
    refused_at: float = 0.0
    mode: str = "offline"

    def __post_init__(self) -> None:
        check_text(self.reason, "refusals.reason", 64, required=True)
        check_text(self.jti, "refusals.jti", 128)
        check_text(self.task_id, "refusals.task_id", 64)
        check_text(self.tool, "refusals.tool", 128)
        check_text(self.agent, "refusals.agent", MAX_SPIFFE_ID)
        check_text(self.mode, "refusals.mode", 16)


def check_refusals(refusals: tuple[Refusal, ...]) -> tuple[Refusal, ...]:
    if len(refusals) > MAX_REFUSALS:
        raise InvalidRequest(
            "refusals", f"has {len(refusals)} entries; send at most {MAX_REFUSALS} per call"
        )
    return refusals
