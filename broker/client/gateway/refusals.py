"""Refusals a model and a person can act on: the broker's errors as ``wire.Refusal``.

Every refusal says what was refused, the reason code, the policy ids when policy decided, and
what to do next. The hints are written for both readers: the model learns not to retry the same
call and what to tell the user; the person learns the operator command or the config key.
"""

from __future__ import annotations

from broker.client.gateway.upstream import CredentialRefused, UpstreamError
from broker.client.gateway.wire import Refusal
from broker.client.sdk.errors import BrokerUnavailable
from broker.core.errors import BrokerError, PermissionDenied, Reason

NO_RETRY = "Do not retry this call unchanged: the broker would decide the same way."
TELL_USER = "Tell the user what you were trying to do and why it was refused."


def approve_hint(approval_id: str) -> str:
    return (
        f"An operator approves it with `broker approvals approve {approval_id} --reason "
        f'"..."` (or refuses it with `broker approvals deny {approval_id} --reason "..."`); '
        "then call the same tool again with the same arguments."
    )


def pending(tool: str, approval_id: str, reason: str, waited: float) -> Refusal:
    waited_text = f" The gateway waited {waited:g} s for a decision." if waited else ""
    return Refusal(
        tool=tool,
        reason="APPROVAL_REQUIRED",
        message=f"{reason}.{waited_text}".replace("..", "."),
        approval_id=approval_id,
        hints=(
            approve_hint(approval_id),
            "Until then, continue with other work or ask the user to have it approved.",
        ),
    )


def from_broker(tool: str, exc: BrokerError, why: tuple[str, ...] = ()) -> Refusal:
    if isinstance(exc, BrokerUnavailable):  # gRPC's details go to the log, not to the model
        return Refusal(
            tool,
            "BROKER_UNAVAILABLE",
            "The broker could not be reached or did not answer: the call was not made.",
            hints=(
                "Try again in a little while. If it keeps failing, tell the user: the "
                "gateway's log (stderr) says why the broker cannot be reached.",
            ),
        )
    reason = exc.reason
    ids = exc.policy_ids if isinstance(exc, PermissionDenied) else ()
    message = exc.message.rstrip(".") + "."
    hints: tuple[str, ...]
    if reason is Reason.POLICY_DENIED:
        hints = (
            NO_RETRY,
            TELL_USER,
            "A person can see the policy's decision with `broker policy explain`; a task that "
            "read untrusted or suspect content stays so until the session ends.",
        )
    elif reason is Reason.OUTSIDE_PLAN:
        hints = (
            NO_RETRY,
            "The gateway's config declares a plan (key `plan`) that does not include this "
            "tool; the user can add it and restart the gateway.",
        )
    elif reason is Reason.APPROVAL_REQUIRED:
        hints = (
            NO_RETRY,
            TELL_USER,
            "An operator can look at it with `broker approvals list --all`.",
        )
    elif reason in (Reason.TASK_ENDED, Reason.TASK_NOT_FOUND):
        hints = (
            "The session's task has ended or expired: reconnect the MCP server to start a new one.",
        )
    elif reason in (Reason.UNKNOWN_SERVER, Reason.UNKNOWN_TOOL):
        hints = (
            "The broker's registry does not know this server or tool, so no credential can be "
            "minted for it. List the tools again and use one of those.",
        )
    elif reason is Reason.QUOTA_EXCEEDED:
        hints = ("Wait a minute before calling again, and call less often.",)
    elif reason is Reason.INVALID_REQUEST:
        hints = ("Check the arguments against the tool's input schema.",)
    else:
        hints = (
            "The broker could not decide (it may be down or unreachable): the call was not "
            "made. Try again later; the user can check the gateway's log.",
        )
    return Refusal(tool, reason.value, message, policy_ids=ids, why=why, hints=hints)


def from_upstream(tool: str, exc: UpstreamError) -> Refusal:
    if isinstance(exc, CredentialRefused):
        return Refusal(
            tool,
            exc.reason,
            f"The server {exc.server} refused the call's credential: {exc.message}.".replace(
                "..", "."
            ),
            hints=(
                "The call was not made. If the reason is REVOKED, the task's state changed: "
                "list the tools again. Otherwise tell the user; the gateway's log has details.",
            ),
        )
    return Refusal(
        tool,
        "UPSTREAM_UNAVAILABLE",
        f"The server {exc.server} could not be reached or answered out of protocol: "
        f"{exc.message}.".replace("..", "."),
        hints=("The call may not have been made. Try again later, or tell the user.",),
    )


def unknown_tool(tool: str, servers: list[str]) -> Refusal:
    return Refusal(
        tool,
        "UNKNOWN_TOOL",
        f"No tool {tool!r}: tools are named SERVER__TOOL with SERVER one of {', '.join(servers)}.",
        hints=("List the tools again and call one of them.",),
    )
