"""Helpers for audit chain tests: build chains as stored dicts, forge records, interleave."""

from __future__ import annotations

import hashlib
from typing import Any

import rfc8785

from broker.core.audit import AuditEvent, Chain

AGENT = "spiffe://example.org/agent/coder"
SERVER = "spiffe://example.org/mcp/deploy"
ARGS = hashlib.sha256(b"args").hexdigest()
PROMPT = hashlib.sha256(b"prompt").hexdigest()
T0 = 1_800_000_000.0

EVENTS = ("task.begin", "credential.decision", "credential.mint", "credential.consume", "task.end")


def event(i: int, task: str = "t_AAAAAAAAAAAAAAAAAAAAAA") -> AuditEvent:
    return AuditEvent(
        event=EVENTS[i % len(EVENTS)],
        time=T0 + i * 0.25,
        actor=AGENT,
        task=task,
        server=SERVER,
        tool="deploy",
        args_sha256=ARGS,
        prompt_sha256=PROMPT,
        decision="allow",
        policy_ids=("tier3-approval", "plan"),
        outcome="ok",
        reason="within plan",
        jti=f"{task}.BBBBBBBBBBBBBBBBBBBBB{i % 10}",
        extra={"tier": 3, "ttl": 30.5, "tainted": False, "note": f"step {i}"},
    )


def make_records(n: int, chain: str = "replica-1") -> list[dict[str, Any]]:
    """``n`` stored records (dicts, as read back from a file) of one chain."""
    c = Chain(chain)
    return [c.append(event(i)).to_dict() for i in range(n)]


def rehash(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with its sha256 recomputed: what a forger who knows the format produces."""
    unsigned = {k: v for k, v in record.items() if k != "sha256"}
    return {**unsigned, "sha256": hashlib.sha256(rfc8785.dumps(unsigned)).hexdigest()}


def forge(seq: int, prev: str, chain: str = "replica-1", note: str = "forged") -> dict[str, Any]:
    """A record with a correctly computed own hash and the given place in a chain."""
    body = AuditEvent(
        event="credential.mint", time=T0, actor=AGENT, reason=note, extra={"note": note}
    ).to_dict()
    return rehash({"seq": seq, "chain": chain, "prev": prev, **body})
