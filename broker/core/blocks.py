"""Kill switches that persist: one record per revoked agent, server, tier or "issued before T".

Revoking an agent, a server or a tier writes ONE ``Block`` in the store and publishes ONE event
on the revocation feed; nothing walks the tasks (O(1) store calls, whatever the agent holds).
Two things follow from a block, and the store checks both inside the steps they guard (mint,
consume), the broker at BeginTask, and offline verifiers from the feed:

- its **floor**: every task of the subject created, and every token of it issued, at or before
  ``floor`` is revoked for good (a lift does not bring them back);
- while it is **blocked** (until ``until``, or until an operator lifts it when ``until`` is 0),
  nothing new is started or minted for the subject: BeginTask and RequestCredential are refused
  and every token of the subject is refused at verification, whatever its ``iat``.

``issued_before`` is a floor only (subject ``*``): it never blocks. A lift ends the block and
moves the floor up to the lift's time. A record is forgotten after ``keep_until`` (0: never,
while blocked until lifted): by then every task and token it covers has expired.

Pure: no I/O; every time is passed in.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from broker.core.errors import BrokerError, FailedPrecondition, PermissionDenied, Reason


class BlockKind(StrEnum):
    AGENT = "agent"
    SERVER = "server"
    TIER = "tier"
    ISSUED_BEFORE = "issued_before"


ALL_SUBJECTS = "*"  # the subject of an issued_before floor


@dataclass(frozen=True)
class Block:
    kind: str  # a BlockKind value
    subject: str  # agent or server SPIFFE ID, tier number, or "*"
    floor: float  # tasks created and tokens issued at or before this are revoked
    blocked: bool = False
    until: float = 0.0  # end of the block; 0 while blocked: until an operator lifts it
    reason: str = ""
    by: str = ""  # the operator who revoked (or last lifted)
    created_at: float = 0.0
    keep_until: float = 0.0  # the store may forget the record after this; 0: never

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.subject)

    def blocks(self, now: float) -> bool:
        """Whether the subject is blocked at ``now`` (nothing new for it)."""
        return self.blocked and (self.until == 0 or now < self.until)

    def retained(self, now: float) -> bool:
        return self.keep_until == 0 or now <= self.keep_until

    def lifted(self, now: float, *, by: str, reason: str, retention: float) -> Block:
        floor = max(self.floor, now)
        return replace(
            self,
            floor=floor,
            blocked=False,
            until=0.0,
            by=by,
            reason=reason,
            keep_until=floor + retention,
        )

    def describe(self) -> str:
        what = (
            "every task and token"
            if self.kind == BlockKind.ISSUED_BEFORE
            else (f"{self.kind} {self.subject}")
        )
        if not self.blocked:
            return f"{what}: revoked up to {self.floor:.0f}"
        end = "until an operator lifts it" if self.until == 0 else f"until {self.until:.0f}"
        return f"{what} is blocked by an operator {end}"


def new_block(
    kind: BlockKind,
    subject: str,
    *,
    now: float,
    floor: float | None = None,
    duration: float = 0.0,
    by: str,
    reason: str,
    retention: float,
) -> Block:
    """The record a revoke writes: floor at ``floor`` (default ``now``); agents, servers and
    tiers are also blocked for ``duration`` seconds (0: until lifted)."""
    at = now if floor is None else floor
    blocked = kind is not BlockKind.ISSUED_BEFORE
    until = now + duration if blocked and duration > 0 else 0.0
    keep = 0.0 if blocked and until == 0 else max(at, until) + retention
    return Block(
        kind=kind.value,
        subject=subject,
        floor=at,
        blocked=blocked,
        until=until,
        reason=reason,
        by=by,
        created_at=now,
        keep_until=keep,
    )


def merged(old: Block | None, new: Block) -> Block:
    """A block written over an existing one: floors only rise, the newest block state wins."""
    if old is None:
        return new
    # the newer block state wins: kept forever while blocked until lifted, else at least as long
    # as either floor needs (the higher floor's retention covers the lower one's)
    keep = 0.0 if new.keep_until == 0 else max(new.keep_until, old.keep_until)
    return replace(new, floor=max(old.floor, new.floor), keep_until=keep)


def covering(
    blocks: Iterable[Block],
    *,
    agents: Sequence[str],
    server: str,
    tier: int | None,
    issued_at: float,
    now: float,
    task_created_at: float | None = None,
) -> Block | None:
    """The first block that refuses a token (or a mint) of ``agents`` (the task's agent and its
    delegation chain) for ``server`` at ``tier`` issued at ``issued_at``, or None.

    ``task_created_at`` (for a mint): agent and issued_before floors cover every task created
    up to them, and the credentials such a task would get later."""
    created = issued_at if task_created_at is None else min(issued_at, task_created_at)
    for b in blocks:
        if b.kind == BlockKind.AGENT:
            if b.subject in agents and (created <= b.floor or b.blocks(now)):
                return b
        elif b.kind == BlockKind.SERVER:
            if b.subject == server and (issued_at <= b.floor or b.blocks(now)):
                return b
        elif b.kind == BlockKind.TIER:
            if (
                tier is not None
                and b.subject == str(tier)
                and (issued_at <= b.floor or b.blocks(now))
            ):
                return b
        elif created <= b.floor:  # issued_before, or a kind this code does not know
            return b
    return None


def blocking(blocks: Iterable[Block], agents: Sequence[str], now: float) -> Block | None:
    """The block that refuses a new task of ``agents`` (its agent and delegation chain)."""
    for b in blocks:
        if b.kind == BlockKind.AGENT and b.subject in agents and b.blocks(now):
            return b
    return None


def task_revoked(blocks: Iterable[Block], agents: Sequence[str], created_at: float) -> Block | None:
    """The floor that revoked a task of ``agents`` created at ``created_at``, if any."""
    for b in blocks:
        scoped = b.kind == BlockKind.ISSUED_BEFORE or (
            b.kind == BlockKind.AGENT and b.subject in agents
        )
        if scoped and created_at <= b.floor:
            return b
    return None


def refusal(block: Block, now: float, task_id: str) -> BrokerError:
    """The error a mint (or BeginTask) refused by ``block`` raises."""
    text = block.describe() + (f" ({block.reason})" if block.reason else "")
    if block.blocks(now):
        return PermissionDenied(text, Reason.REVOKED)
    return FailedPrecondition(f"task {task_id} was revoked: {text}", Reason.TASK_ENDED)
