"""One client session of the gateway: its task, its tool list, its tool calls.

- The task begins with the session (the first request) and ends with it (``end``): stdin EOF,
  a signal, an HTTP session closed or idle. Its intent: env BROKER_TASK_INTENT, the config's,
  else the client's name.
- ``tools/list``: every upstream's tools as SERVER__TOOL, minus those policy would deny this task
  now (PreviewTools: decided without minting). Tools that need an approval stay, with a note.
- ``tools/call``: a credential for exactly these arguments (RequestCredential), the upstream
  call with it, the result. Refusals become ``isError`` results (``refusals``). An approval is
  waited for up to ``approval_wait`` seconds; a later identical call presents its id.
- Unguarded upstreams: the result is sanitized here, and the broker told (RaiseTaint) before the
  model sees it; if the broker cannot be told, the result is withheld (fail closed).
- After each call the allowed set is previewed again in the background; when taint changed it,
  the client gets ``notifications/tools/list_changed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from broker.client.gateway import refusals
from broker.client.gateway.broker_link import Granted, Pending, Preview
from broker.client.gateway.hub import Hub, decisions
from broker.client.gateway.unguarded import clean_result
from broker.client.gateway.upstream import UpstreamError, UpstreamRpcError
from broker.client.gateway.wire import (
    JsonRpcError,
    Refusal,
    notification,
    split_tool,
    tool_entry,
)
from broker.client.sdk.errors import BrokerUnavailable
from broker.core.canonical import args_sha256
from broker.core.errors import BrokerError, Reason

log = logging.getLogger("broker.gateway")

Notify = Callable[[dict[str, Any]], Awaitable[None]]
RECHECK_INTERVAL = 0.5
RENEW_BEFORE = 30.0  # seconds before its expiry a task is replaced by the next one
RENEW_GRACE = 5.0  # seconds the replaced task lives on for calls in flight
APPROVAL_NOTE = "(Each call needs an operator's approval through the broker.)"


class Session:
    def __init__(self, hub: Hub, *, notify: Notify | None = None) -> None:
        self.hub = hub
        self.notify = notify
        self.client_name = ""
        self.task_id: str | None = None
        self.task_expires_at = 0.0
        self.ended = False
        self.last_used = time.monotonic()
        self._task_lock = asyncio.Lock()
        self._listed: frozenset[str] | None = None
        self._approvals: dict[tuple[str, str, str], str] = {}
        self._recheck: asyncio.Task[None] | None = None
        self._dirty = False
        self._renewal: asyncio.Task[None] | None = None
        self._retiring: set[str] = set()  # replaced tasks, ended after RENEW_GRACE
        self._jobs: set[asyncio.Task[int]] = set()

    # -- the task --------------------------------------------------------------------------

    async def ensure_task(self) -> str:
        if self.task_id is not None and not self._expired():
            return self.task_id
        async with self._task_lock:
            if self.ended:
                raise BrokerError("this session has ended", Reason.TASK_ENDED)
            if self.task_id is None:
                await self._begin()
            elif self._expired():
                # Renewal did not happen in time (the broker was unreachable): what the old
                # task had read is unknown, so the new one starts suspect (fail closed).
                log.warning("task %s expired before it could be renewed", self.task_id)
                await self._begin("suspect")
            assert self.task_id is not None
            return self.task_id

    def _expired(self) -> bool:
        return time.time() >= self.task_expires_at

    async def _begin(self, taint: str = "") -> None:
        cfg = self.hub.cfg
        task_id, expires_at = await self.hub.link.begin_task(
            cfg.task_intent(self.client_name),
            plan=cfg.plan_refs(),
            on_behalf_of=cfg.on_behalf_of,
            ttl_seconds=cfg.task_ttl,
            labels={"via": "broker-gateway", **cfg.labels},
        )
        if taint not in ("", "clean"):  # a renewed session carries what it has read
            await self.hub.link.raise_taint(task_id, "", taint=taint)
        self.task_id, self.task_expires_at = task_id, expires_at
        log.info("task %s begun for %s", task_id, self.client_name or "the client")
        if self._renewal is None or self._renewal.done():
            self._renewal = asyncio.get_running_loop().create_task(self._renew_loop())

    async def _renew_loop(self) -> None:
        """A session outlives its task's TTL: shortly before the task expires, begin the next
        one with the same taint (read from the old one), then end the old one. A task ended or
        revoked by someone else is not renewed: the session's calls are refused from then on."""
        while not self.ended and self.task_id is not None:
            lead = min(RENEW_BEFORE, max(1.0, (self.task_expires_at - time.time()) / 10))
            await asyncio.sleep(max(0.0, self.task_expires_at - lead - time.time()))
            if self.ended:
                return
            old, old_expiry = self.task_id, self.task_expires_at
            async with self._task_lock:
                try:
                    taint, _ = await self.hub.link.preview_tools(old, [])
                except BrokerError as exc:
                    if exc.reason in (Reason.TASK_ENDED, Reason.TASK_NOT_FOUND):
                        log.warning("task %s was ended or revoked: not renewing it (%s)", old, exc)
                        self.ended = True
                        return
                    await asyncio.sleep(1.0)  # the broker is unreachable: try again
                    continue
                try:
                    await self._begin(taint)
                except BrokerError as exc:
                    log.warning("cannot renew task %s yet: %s", old, exc)
                    await asyncio.sleep(1.0)
                    continue
            log.info("task %s renewed as %s (taint %s carried over)", old, self.task_id, taint)
            self._retiring.add(old)
            loop = asyncio.get_running_loop()
            loop.call_later(RENEW_GRACE, self._retire, old)
            if self.task_expires_at <= old_expiry + 1.0:  # no later expiry: never spin
                log.warning(
                    "the renewed task expires no later than the one it replaced: is the "
                    "broker's clock behind this machine's? next renewal in %g s",
                    RENEW_BEFORE,
                )
                await asyncio.sleep(RENEW_BEFORE)

    def _retire(self, task_id: str) -> None:
        """End a replaced task once calls in flight with its credentials had time to finish."""
        if task_id in self._retiring and not self.ended:
            self._retiring.discard(task_id)
            job = asyncio.get_running_loop().create_task(
                self._end_quietly(task_id, f"renewed as {self.task_id}", None)
            )
            self._jobs.add(job)
            job.add_done_callback(self._jobs.discard)

    async def _end_quietly(self, task_id: str, outcome: str, deadline: float | None) -> int:
        try:
            return await self.hub.link.end_task(task_id, outcome, deadline=deadline)
        except BrokerError as exc:
            log.warning(
                "could not end task %s (%s): it expires by its TTL at the latest", task_id, exc
            )
            return -1

    async def try_begin(self) -> None:
        """Begin the task now if the broker answers (a handshake does not fail on it: the
        first list or call reports the problem)."""
        try:
            await self.ensure_task()
        except BrokerError as exc:
            log.warning("cannot begin a task yet: %s", exc)

    async def end(self, outcome: str, *, deadline: float | None = None) -> None:
        """End the session's task (every credential minted in it dies), and a replaced one
        not ended yet. Idempotent."""
        if self.ended:
            return
        self.ended = True
        for background in (self._recheck, self._renewal):
            if background is not None:
                background.cancel()
        ids = [t for t in (self.task_id, *self._retiring) if t is not None]
        self._retiring.clear()
        results = await asyncio.gather(*(self._end_quietly(t, outcome, deadline) for t in ids))
        for task_id, killed in zip(ids, results, strict=True):
            if killed >= 0:
                log.info(
                    "task %s ended (%s): %d live credential(s) revoked", task_id, outcome, killed
                )

    # -- tools/list --------------------------------------------------------------------------

    async def list_tools(self) -> list[dict[str, Any]]:
        self.last_used = time.monotonic()
        try:
            task_id = await self.ensure_task()
        except BrokerError as exc:
            log.warning("cannot begin this session's task: %s", exc)
            why = "unreachable" if isinstance(exc, BrokerUnavailable) else exc.reason.value
            raise JsonRpcError(
                -32603,
                f"the broker cannot begin this session's task ({why}): see the gateway's log",
            ) from None
        by_server = await self.hub.all_tools()
        allowed = await self._decide(task_id, by_server)
        entries = []
        for server, tools in by_server.items():
            for tool in tools:
                verdict = allowed.get((server, str(tool["name"])))
                if verdict is None:
                    continue
                note = APPROVAL_NOTE if verdict == "approval" else ""
                entries.append(tool_entry(server, tool, note))
        self._listed = frozenset(e["name"] for e in entries)
        return entries

    async def _decide(
        self, task_id: str, by_server: Mapping[str, list[dict[str, Any]]]
    ) -> dict[tuple[str, str], str]:
        """(server, tool) -> "allow" | "approval" for the tools policy could grant now."""
        pairs = [(s, str(t["name"])) for s, tools in by_server.items() for t in tools]
        if not self.hub.preview_supported:
            return dict.fromkeys(pairs, "allow")
        refs = {name: up.ref for name, up in ((u.name, u) for u in self.hub.cfg.servers)}
        try:
            _, previews = await self.hub.link.preview_tools(
                task_id, [(refs[s], t) for s, t in pairs]
            )
        except BrokerError as exc:
            if "UNIMPLEMENTED" in str(exc):
                log.warning("the broker has no PreviewTools (older version): listing every tool")
                self.hub.preview_supported = False
                return dict.fromkeys(pairs, "allow")
            log.warning("cannot preview this session's tools: %s", exc)
            raise JsonRpcError(
                -32603,
                "the broker cannot say which tools this session may use: see the gateway's log",
            ) from None
        out: dict[tuple[str, str], str] = {}
        for (server, tool), p in zip(pairs, previews, strict=False):
            if p.decision in ("allow", "approval"):
                out[(server, tool)] = p.decision
        return out

    async def _check_listing(self) -> None:
        """Preview again after a call; tell the client when the allowed set changed."""
        if self._listed is None or self.notify is None or self.task_id is None:
            return
        with contextlib.suppress(Exception):
            by_server = {n: await self.hub.tools_of(n) for n in self.hub.upstreams}
            allowed = await self._decide(self.task_id, by_server)
            names = frozenset(f"{s}__{t}" for s, t in allowed)
            if names != self._listed and not self.ended:
                self._listed = names
                log.info("the tools this task may use changed: asking the client to list again")
                await self.notify(notification("notifications/tools/list_changed"))

    # -- tools/call ---------------------------------------------------------------------------

    async def call_tool(self, name: Any, arguments: Any) -> dict[str, Any]:
        self.last_used = time.monotonic()
        split = split_tool(name, list(self.hub.upstreams))
        if split is None:
            refusal = refusals.unknown_tool(str(name), list(self.hub.upstreams))
            decisions.info("DENIED %s: unknown tool", name)
            return refusal.result()
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise JsonRpcError(-32602, "tools/call: arguments must be an object")
        try:
            return await self._call(str(name), *split, arguments)
        finally:
            self._schedule_recheck()

    def _schedule_recheck(self) -> None:
        """Preview again after a call (a guard may have raised the taint): at once, then at
        most every RECHECK_INTERVAL seconds while calls keep coming."""
        if self._listed is None or self.notify is None or self.ended:
            return
        self._dirty = True
        if self._recheck is None or self._recheck.done():
            self._recheck = asyncio.get_running_loop().create_task(self._recheck_loop())

    async def _recheck_loop(self) -> None:
        while self._dirty and not self.ended:
            self._dirty = False
            await self._check_listing()
            await asyncio.sleep(RECHECK_INTERVAL)

    async def _call(
        self, name: str, server: str, tool: str, args: dict[str, Any]
    ) -> dict[str, Any]:
        up = self.hub.upstreams[server]
        ref = up.cfg.ref
        t0 = time.perf_counter()
        try:
            task_id = await self.ensure_task()
            grant = await self._credential(name, task_id, ref, tool, args)
        except BrokerError as exc:
            return await self._refused(name, exc)
        if isinstance(grant, Refusal):
            return grant.result()
        t1 = time.perf_counter()
        try:
            result = await up.call_tool(tool, args, grant.token if up.cfg.guarded else None)
        except UpstreamRpcError as exc:
            decisions.info("FAILED %s: the server answered error %d", name, exc.code)
            raise JsonRpcError(exc.code, exc.message, exc.data) from None
        except UpstreamError as exc:
            refusal = refusals.from_upstream(name, exc)
            decisions.info("REFUSED %s: %s (%s)", name, refusal.reason, exc.server)
            return refusal.result()
        t2 = time.perf_counter()
        if not up.cfg.guarded:
            result = await self._unguarded(name, task_id, ref, grant.jti, result)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s: credential %.1f ms, upstream %.1f ms, report %.1f ms",
                name,
                (t1 - t0) * 1000,
                (t2 - t1) * 1000,
                (time.perf_counter() - t2) * 1000,
            )
        return result

    async def _credential(
        self, name: str, task_id: str, ref: str, tool: str, args: dict[str, Any]
    ) -> Granted | Refusal:
        key = (ref, tool, args_sha256(args))
        approval_id = self._approvals.get(key, "")
        link = self.hub.link
        answer = await link.request_credential(task_id, ref, tool, args, approval_id=approval_id)
        if isinstance(answer, Pending):
            self._approvals[key] = answer.approval_id
            decisions.info(
                "PENDING %s: approval %s (broker approvals approve %s --reason ...)",
                name,
                answer.approval_id,
                answer.approval_id,
            )
            wait = self.hub.cfg.approval_wait
            deadline = time.monotonic() + wait
            while isinstance(answer, Pending) and time.monotonic() < deadline and not self.ended:
                await asyncio.sleep(
                    min(self.hub.cfg.approval_poll, max(0.0, deadline - time.monotonic()))
                )
                answer = await link.request_credential(
                    task_id, ref, tool, args, approval_id=answer.approval_id
                )
            if isinstance(answer, Pending):
                return refusals.pending(name, answer.approval_id, answer.reason, wait)
            decisions.info("APPROVED %s", name)
        self._approvals.pop(key, None)
        decisions.info("ALLOWED %s", name)
        return answer

    async def _refused(self, name: str, exc: BrokerError) -> dict[str, Any]:
        why: tuple[str, ...] = ()
        if exc.reason is Reason.POLICY_DENIED and self.task_id is not None:
            why = await self._why(name)
        refusal = refusals.from_broker(name, exc, why)
        detail = ", ".join(refusal.policy_ids) or refusal.reason
        if isinstance(exc, BrokerUnavailable):
            detail = f"{refusal.reason} ({exc.message})"
        decisions.info("DENIED %s: %s", name, detail)
        return refusal.result()

    async def _why(self, name: str) -> tuple[str, ...]:
        """The policies' own reasons for a denial (PreviewTools), best effort."""
        split = split_tool(name, list(self.hub.upstreams))
        if split is None or self.task_id is None or not self.hub.preview_supported:
            return ()
        try:
            _, previews = await self.hub.link.preview_tools(
                self.task_id, [(self.hub.upstreams[split[0]].cfg.ref, split[1])]
            )
        except BrokerError:
            return ()
        p: Preview | None = previews[0] if previews else None
        return p.why if p is not None else ()

    async def _unguarded(
        self, name: str, task_id: str, ref: str, jti: str, result: dict[str, Any]
    ) -> dict[str, Any]:
        findings: list[tuple[str, str]] = []
        cleaned = clean_result(result, findings)
        try:
            taint = await self.hub.link.raise_taint(task_id, ref, jti=jti, findings=findings)
        except BrokerError as exc:
            decisions.info("WITHHELD %s: cannot report to the broker (%s)", name, exc.reason.value)
            return Refusal(
                name,
                "BROKER_UNAVAILABLE",
                "The call was made, but its result is withheld: the broker could not be told "
                "what it contained (the server does not verify credentials, so the gateway "
                "must report before the result is read).",
                hints=("Try again later; the user can check the gateway's log.",),
            ).result()
        if findings:
            kinds = ", ".join(sorted({k for k, _ in findings}))
            decisions.info("FLAGGED %s: %s; task is now %s", name, kinds, taint)
        return cleaned
