"""The one enforcement core of ``ToolGuard`` (a Python server on our SDK) and ``broker guard``
(a proxy in front of an unmodified server): the per-call check, the sanitizing of what comes
back, and the outcome report with its withhold rule.

1. ``admit``: the credential presented with THIS call must verify for this server (the
   verifier's own SPIFFE ID is the audience), THIS tool, THESE arguments (RFC 8785 digest of the
   raw JSON arguments), not replayed (it is consumed here), not revoked, the revocation feed not
   stale, and ``cnf.x5t#S256`` equal to the presenting client certificate whenever one was
   presented (RFC 8705). Any failure: ``Unauthenticated`` with the broker's reason code; the tool
   must not run.
2. ``release``: every string of the result is sanitized (``broker.core.sanitizer``), the outcome
   is reported (content trust, suspect findings; the broker raises the task's taint), and the
   cleaned result is returned. When the report fails the result is withheld (``Withheld``),
   unless the content is known trusted and nothing suspect was found: the taint must rise
   before the model reads what raised it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import orjson

from broker.client.verifier import VerifiedCall, Verifier
from broker.core.errors import BrokerError, Reason, Unauthenticated
from broker.core.model import Taint
from broker.core.sanitizer import SUSPECT, Finding, sanitize

log = logging.getLogger("broker.mcp")

MAX_FINDINGS = 100
MAX_DETAIL = 200

Cleaner = Callable[[Any, tuple[str, ...], list[Finding]], Any]


class Withheld(Exception):
    """The outcome of a call could not be reported, so its result must not reach the model."""

    def __init__(self, tool: str, cause: BrokerError) -> None:
        super().__init__("the result was withheld: its outcome could not be reported to the broker")
        self.tool = tool
        self.cause = cause


def clean_value(value: Any, hosts: tuple[str, ...], findings: list[Finding]) -> Any:
    """``value`` with every string (also inside lists, tuples and dict values) sanitized."""
    if isinstance(value, str):
        result = sanitize(value, allowed_hosts=hosts)
        findings.extend(result.findings)
        return result.text
    if isinstance(value, list | tuple):
        return type(value)(clean_value(v, hosts, findings) for v in value)
    if isinstance(value, dict):
        return {k: clean_value(v, hosts, findings) for k, v in value.items()}
    return value


# base64 of images, audio and blobs, and labels: not text for a model
_LEFT_ALONE = frozenset({"data", "blob", "mimeType", "type", "_meta"})


def clean_tool_result(value: Any, hosts: tuple[str, ...], findings: list[Finding]) -> Any:
    """An MCP result (JSON: a ``CallToolResult``, resource contents, prompt messages, an error)
    with every text a model reads sanitized, at any depth; base64 payloads (``data``, ``blob``),
    ``mimeType``, ``type`` and ``_meta`` are left alone."""
    if isinstance(value, dict):
        return {
            k: v if k in _LEFT_ALONE else clean_tool_result(v, hosts, findings)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [clean_tool_result(v, hosts, findings) for v in value]
    return clean_value(value, hosts, findings)


def result_digest(value: Any) -> str:
    data = value.encode() if isinstance(value, str) else orjson.dumps(value, default=repr)
    return hashlib.sha256(data).hexdigest()


class Enforcer:
    """The per-call check and the release of results for one MCP server (see the module doc).

    ``allowed_hosts``: hosts links and images in results may point at.
    ``report_trusted_later``: a result that is released whatever its report does (trusted
    content, nothing suspect found) is returned at once and reported in the background (saves
    the report's round trip, ~1 ms, on the call's latency; ``flush`` waits for pending reports).
    Anything else is reported first, as the withhold rule needs.
    """

    def __init__(
        self,
        verifier: Verifier,
        *,
        allowed_hosts: Collection[str] = (),
        report_trusted_later: bool = False,
    ) -> None:
        self.verifier = verifier
        self.allowed_hosts = tuple(allowed_hosts)
        self.report_trusted_later = report_trusted_later
        self._pending: set[asyncio.Task[None]] = set()

    async def flush(self) -> None:
        """Wait for the outcome reports still in flight (before closing the verifier)."""
        while self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    async def admit(
        self,
        token: str | None,
        *,
        tool: str,
        arguments: Any,
        presenter_cert_sha256: str | None = None,
    ) -> VerifiedCall:
        """Check and consume ``token`` for this call of ``tool``. Raises ``Unauthenticated``."""
        if not token:
            raise Unauthenticated(
                "no credential: a tool call needs its own broker credential as "
                "`Authorization: Bearer <token>`",
                Reason.NO_CREDENTIAL,
            )
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise Unauthenticated(
                "the call's arguments are not a JSON object", Reason.ARGS_MISMATCH
            )
        try:
            call = await self.verifier.verify(
                token, tool=tool, arguments=arguments, presenter_cert_sha256=presenter_cert_sha256
            )
        except Unauthenticated as exc:
            log.info("tool %s: credential rejected: %s", tool, exc.reason.value)
            raise
        log.info("tool %s: admitted %s (task %s)", tool, call.jti, call.task_id)
        return call

    async def release(
        self,
        call: VerifiedCall,
        result: Any,
        *,
        trusted: bool | None,
        succeeded: bool = True,
        clean: Cleaner = clean_value,
    ) -> Any:
        """Sanitize ``result``, report the outcome, return the cleaned result; ``Withheld``
        when the report failed and the content is not known to be trusted and clean."""
        findings: list[Finding] = []
        cleaned = clean(result, self.allowed_hosts, findings)
        suspect = [f for f in findings if f.severity == SUSPECT][:MAX_FINDINGS]
        report = self.verifier.report_outcome(
            call,
            succeeded=succeeded,
            result_sha256=result_digest(cleaned),
            trusted=trusted,
            findings=[(f.kind, f.detail[:MAX_DETAIL]) for f in suspect],
        )
        if trusted is True and not suspect and self.report_trusted_later:
            task = asyncio.get_running_loop().create_task(self._report_quietly(call, report))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
            return cleaned
        try:
            taint = await report
        except BrokerError as exc:
            if suspect or trusted is not True:
                log.warning("tool %s: outcome not reported (%s): result withheld", call.tool, exc)
                raise Withheld(call.tool, exc) from None
            log.warning("tool %s: outcome not reported: %s", call.tool, exc)
            return cleaned
        if suspect:
            log.warning(
                "tool %s: output flagged (%s); task %s is now %s",
                call.tool,
                ", ".join(sorted({f.kind for f in suspect})),
                call.task_id,
                taint.label,
            )
        return cleaned

    @staticmethod
    async def _report_quietly(call: VerifiedCall, report: Awaitable[Taint]) -> None:
        try:
            await report
        except BrokerError as exc:
            log.warning("tool %s: outcome not reported: %s", call.tool, exc)

    async def report_failure(self, call: VerifiedCall, trusted: bool | None) -> None:
        """The call ran and failed without a result: report it (best effort)."""
        try:
            await self.verifier.report_outcome(call, succeeded=False, trusted=trusted)
        except BrokerError as exc:
            log.warning("tool %s: failure not reported: %s", call.tool, exc)
