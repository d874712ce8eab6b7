"""The ports of the use cases: the store (everything the broker keeps between calls) and the key
provider (whatever holds the signing keys).

The store.

Implementations: ``MemoryStore`` (embedded default, unit tests) and the Redis store. Both pass
the same contract suite (tests/contract). Rules every implementation keeps:

- Each method is atomic: no caller ever sees half of a change (Redis: one Lua script per call,
  all keys of a task sharing the hash tag ``{task_id}``).
- Revoking a task is O(1) in its credentials: the task's state is the tombstone; consuming a
  credential checks it in the same atomic step.
- Expiry of stored records is bookkeeping only: verification checks ``exp`` itself. A task
  record is kept at least until its last credential has expired (``retain_until``).
- Unreachable backend: raise ``StoreUnavailable`` within a bounded time, never hang.
- Time is always passed in (``now``); no implementation reads the wall clock for logic.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from broker.core.approvals import ApprovalRecord
from broker.core.blocks import Block
from broker.core.model import (
    ConsumeResult,
    CredentialRecord,
    RevocationEvent,
    RevocationKind,
    Taint,
    TaskRecord,
    TaskState,
)
from broker.core.tokens.keys import KeyInfo, PublishedKey
from broker.core.tooldefs import ToolPin


@dataclass(frozen=True)
class Quotas:
    """Caps on live credentials. A store may count a credential a little longer than it is
    live, never shorter (quotas fail closed): the Redis store counts it against its agent up to
    5 s past its exp, and a consumed one until the consuming process next mints for that agent
    (or its exp)."""

    per_task: int = 64  # live (unexpired, unconsumed) credentials per task
    per_agent: int = 1024  # live credentials per agent, across its tasks


# The revocation feed keeps events for at least this long (and at most about 100,000 of them):
# far longer than any credential lives (300 s at most), so that a verifier that was away for
# less than the window misses nothing. A quiet feed's events go once the window has passed.
REVOCATION_WINDOW = 3600.0


class TaintRose(Exception):
    """``record_credential`` refused: the task's taint rose above the one the credential was
    decided at (a ReportOutcome raced the mint). Nothing was recorded; decide again at
    ``taint``."""

    def __init__(self, taint: Taint) -> None:
        super().__init__(f"the task's taint is now {taint.label}")
        self.taint = taint


class Store(Protocol):
    async def create_task(
        self, task: TaskRecord, *, retain_until: float, max_live_per_agent: int = 0
    ) -> None:
        """Record a new task. Its parent (if any) must be live, else TaskEnded/TaskNotFound.
        ``max_live_per_agent`` (0: no cap): QuotaExceeded when the agent already holds that
        many live tasks (an ended one stops counting; a store may count it until its expiry)."""
        ...

    async def get_task(self, task_id: str) -> TaskRecord | None: ...

    async def record_credential(
        self, cred: CredentialRecord, *, quotas: Quotas, now: float, taint: Taint | None = None
    ) -> None:
        """Atomically: check the task is live (FailedPrecondition TASK_ENDED otherwise, NotFound
        TASK_NOT_FOUND if absent), check that its taint is not above ``taint``, the taint the
        credential was decided at (``TaintRose`` otherwise), check quotas (QuotaExceeded),
        record the credential. The taint check is what closes the race with a ReportOutcome
        that raises the taint while a credential is being decided and signed."""
        ...

    async def consume_credential(self, task_id: str, jti: str, now: float) -> ConsumeResult:
        """Single use: the first call for a recorded credential of a live task returns OK."""
        ...

    async def get_credential(self, task_id: str, jti: str) -> CredentialRecord | None: ...

    async def list_credentials(self, task_id: str) -> Sequence[CredentialRecord]: ...

    async def raise_taint(self, task_id: str, taint: Taint) -> Taint:
        """Raise the task's taint to at least ``taint`` (never lowers it); return the result."""
        ...

    async def end_task(
        self, task_id: str, *, state: TaskState, now: float, reason: str
    ) -> tuple[int, Sequence[str]]:
        """End a live task and, recursively, its live sub-tasks. Return the number of live
        credentials that died and the ids of every task ended by this call (empty if the task
        had already ended: idempotent). Publishes one "task" revocation event per ended task."""
        ...

    async def list_tasks(
        self,
        *,
        agent: str = "",
        state: TaskState | None = None,
        since: float = 0.0,
        now: float,
        limit: int = 1000,
    ) -> Sequence[TaskRecord]: ...

    async def tasks_with_server(self, server: str, now: float) -> Sequence[str]:
        """Live tasks that hold (or held) a credential for ``server``."""
        ...

    async def list_sub_tasks(self, task_id: str) -> Sequence[str]:
        """Ids of the task's direct sub-tasks, whatever their state ([] for an unknown task)."""
        ...

    async def count_live_credentials(self, task_id: str, now: float) -> int:
        """Unconsumed credentials of the task that expire after ``now`` (0 for an unknown or
        ended task). Never a walk over the credentials in Redis (ZCOUNT)."""
        ...

    # -- approvals (broker.core.approvals) --------------------------------------------------------

    async def create_approval(
        self,
        approval: ApprovalRecord,
        *,
        now: float,
        max_pending: int,
        max_pending_per_agent: int = 0,
    ) -> ApprovalRecord:
        """Atomically: the task must be live (FailedPrecondition TASK_ENDED, NotFound
        TASK_NOT_FOUND); a PENDING, unexpired approval of the task with the same binding is
        returned as it is (no new record); else QuotaExceeded when the task already has
        ``max_pending`` pending ones, or its agent ``max_pending_per_agent`` (0: no cap) across
        its tasks; else ``approval`` is recorded and returned."""
        ...

    async def get_approval(self, approval_id: str) -> ApprovalRecord | None: ...

    async def list_approvals(
        self, *, task_id: str = "", now: float, limit: int = 1000
    ) -> Sequence[ApprovalRecord]:
        """The approvals of ``task_id``, or of every task (those still retained: at least
        ``approvals.RETENTION`` past their expiry), oldest first. Callers filter by state."""
        ...

    async def decide_approval(
        self, approval_id: str, *, approve: bool, decided_by: str, reason: str, now: float
    ) -> tuple[bool, ApprovalRecord | None]:
        """Atomically: a PENDING, unexpired approval becomes APPROVED or DENIED (who, why,
        when): (True, the new record). Otherwise nothing changes: (False, the record as it is,
        or None when unknown)."""
        ...

    async def consume_approval(
        self, approval_id: str, *, binding: str, now: float
    ) -> tuple[bool, ApprovalRecord | None]:
        """Single use: an APPROVED, unexpired approval for exactly ``binding`` becomes USED:
        (True, the new record). Otherwise nothing changes: (False, the record as it is, or
        None when unknown). Of concurrent calls at most one gets True."""
        ...

    async def publish_revocation(
        self,
        kind: RevocationKind,
        subject: str,
        revoked_at: float,
        reason: str,
        *,
        blocked: bool = False,
        until: float = 0.0,
    ) -> RevocationEvent: ...

    # -- kill switches (broker.core.blocks) ----------------------------------------------------

    async def put_block(self, block: Block, *, now: float) -> Block:
        """Write the block of ``block.key`` (one record, O(1)): its floor never goes down, the
        rest is ``block``'s. Returns the record as stored. Forgets records past keep_until."""
        ...

    async def list_blocks(self, now: float) -> Sequence[Block]:
        """Every block record still retained at ``now``. ``record_credential`` and
        ``consume_credential`` check these in the same step: a mint for a blocked subject, or
        for a task a floor revoked, raises (PermissionDenied REVOKED / FailedPrecondition
        TASK_ENDED); a consume of a credential a block covers returns REVOKED."""
        ...

    async def revocations_since(self, cursor: str, limit: int = 1000) -> Sequence[RevocationEvent]:
        """Events after ``cursor`` ("" = from the beginning of what is retained: at least
        ``REVOCATION_WINDOW`` seconds of events, as long as there are fewer than 100,000)."""
        ...

    def watch_revocations(self, cursor: str) -> AsyncIterator[RevocationEvent]:
        """Events after ``cursor``, then new ones as they come ("$" = only new ones)."""
        ...

    async def last_revocation_cursor(self) -> str: ...

    async def tool_pins(self, server: str) -> Mapping[str, ToolPin]:
        """The pinned tool definitions of ``server`` (SPIFFE ID), by tool name."""
        ...

    async def observe_tools(
        self, server: str, observed: Mapping[str, str], now: float
    ) -> tuple[Mapping[str, ToolPin], frozenset[str]]:
        """Record the digests a guard observed (tool -> sha256). A tool without a pin is pinned
        to its observed digest (of concurrent first sights exactly one wins). Returns the pins
        of ``server`` after the change and the tools pinned by this call."""
        ...

    async def set_tool_pin(self, server: str, tool: str, sha256: str, now: float) -> None:
        """Pin ``tool`` of ``server`` to ``sha256`` (an operator's re-pin)."""
        ...

    # -- signing keys shared by replicas (broker.app.keyring) -------------------------------------

    async def publish_keys(self, keys: Sequence[PublishedKey], *, now: float) -> None:
        """Add or refresh public keys, atomically. A key already published keeps the later of
        its two ``until`` (a publication is never shortened); keys whose ``until`` is past
        ``now`` are dropped. Public halves only: never a private key."""
        ...

    async def published_keys(self, now: float) -> Sequence[PublishedKey]:
        """Every published key whose ``until`` is after ``now``, by kid."""
        ...

    async def ping(self) -> None:
        """Raise StoreUnavailable if the backend cannot be reached."""
        ...

    async def close(self) -> None: ...


class KeyProvider(Protocol):
    """The port to whatever holds the broker's signing keys: process memory and files
    (``broker.adapters.keys.LocalKeyProvider``) or Vault Transit
    (``broker.adapters.vault.transit.TransitKeyProvider``). Both pass the contract suite of
    tests/contract/test_key_contract.py.

    Reads (``alg``, ``active_kid``, ``public_jwks``, ``keys``) are memory only. Everything that
    may do I/O is a coroutine that never blocks the event loop (files and Vault run in threads).

    Keys rotate: the active key signs; a retired key no longer signs but stays in
    ``public_jwks`` until every token it signed has expired (``KeyInfo.publish_until``); a
    ``refresh`` after that drops it.
    """

    @property
    def alg(self) -> str:
        """The JWS algorithm of the active key (ES256 or EdDSA)."""
        ...

    @property
    def shared(self) -> bool:
        """True when every replica reads the same keys from the provider itself (Vault
        Transit); False for keys local to a process or host, which the broker publishes in
        the store (``broker.app.keyring``)."""
        ...

    @property
    def refresh_interval(self) -> float:
        """Seconds between two ``refresh`` calls of the broker's housekeeping."""
        ...

    def active_kid(self) -> str:
        """The kid of the key that signs new tokens."""
        ...

    async def sign(self, kid: str, signing_input: bytes) -> bytes:
        """The JWS signature of ``signing_input`` by ``kid``. Raises ``LookupError`` if ``kid``
        is not (or no longer) the active key: ask ``active_kid`` again."""
        ...

    async def rotate(self, now: float, max_token_ttl: float) -> str:
        """Make a new key active and return its kid; the old one stays published until
        ``now + max_token_ttl`` plus a safety margin."""
        ...

    async def refresh(self, now: float) -> bool:
        """Follow what other processes did (a shared key directory, Vault) and drop keys whose
        publication window has passed; return whether the active key changed."""
        ...

    def public_jwks(self) -> list[dict[str, str]]:
        """Every public key still published (active, retired-not-yet-expired), as JWKs."""
        ...

    def list_keys(self) -> list[KeyInfo]:
        """Metadata of every published key, the active one first."""
        ...

    async def aclose(self) -> None:
        """Stop background work and release connections."""
        ...
