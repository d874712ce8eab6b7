"""Audit records and their hash chain (pure: no I/O).

An ``AuditEvent`` says what happened; a ``Chain`` turns events into ``ChainedRecord`` s, each
carrying the SHA-256 of the previous record of its chain, so that an edited, deleted, inserted or
reordered record is detected by ``broker.core.audit.verify``. See docs/audit.md.

Canonical form: RFC 8785, JSON Canonicalization Scheme (https://www.rfc-editor.org/rfc/rfc8785).
A record's hash is the lowercase hex SHA-256 of the JCS bytes of the flat object
``{"seq", "chain", "prev", <event fields>}``; the stored line is the JCS of the same object plus
``"sha256"``. ``broker.core.audit.jcs`` computes the JCS bytes (the reference output, faster).

A record never carries a token, a key or a secret: ``extra`` keys with a secret-ish name are
rejected at construction, and text that looks like a bearer token, a compact JWS/JWT or a PEM
private key is replaced by ``[redacted]`` wherever it appears in free text.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from broker.core.audit import jcs
from broker.core.audit.scrub import is_denied_extra_key, looks_like_secret, redact

GENESIS_PREV = "0" * 64
"""The ``prev`` of the first record (seq 0) of every chain."""


class AuditEventName(StrEnum):
    """The events the broker records. The values are the ``event`` field of stored records:
    they never change (docs/audit.md, and chains already written name them)."""

    TASK_BEGIN = "task.begin"
    TASK_END = "task.end"
    TASK_REFUSED = "task.refused"
    RPC_REFUSED = "rpc.refused"
    CREDENTIAL_DECISION = "credential.decision"
    CREDENTIAL_MINT = "credential.mint"
    CREDENTIAL_VERIFY = "credential.verify"
    CREDENTIAL_CONSUME = "credential.consume"
    CREDENTIAL_REFUSED = "credential.refused"
    VERIFIER_REFUSAL = "verifier.refusal"
    VERIFIER_REFUSALS_DROPPED = "verifier.refusals_dropped"
    OUTCOME_REPORT = "outcome.report"
    REVOKE_TASK = "revoke.task"
    REVOKE_AGENT = "revoke.agent"
    REVOKE_SERVER = "revoke.server"
    REVOKE_TIER = "revoke.tier"
    REVOKE_ISSUED_BEFORE = "revoke.issued_before"
    REVOKE_CREDENTIAL = "revoke.credential"
    BLOCK_LIFT = "block.lift"
    APPROVAL_REQUEST = "approval.request"
    APPROVAL_DECIDE = "approval.decide"
    APPROVAL_CONSUME = "approval.consume"
    APPROVAL_REJECT = "approval.reject"
    KEY_ROTATE = "key.rotate"
    POLICY_RELOAD = "policy.reload"
    SECRET_ISSUE = "secret.issue"  # noqa: S105 - an event name, not a password
    SECRET_REVOKE = "secret.revoke"  # noqa: S105 - an event name, not a password
    TOOL_PINNED = "tool.pinned"  # a guard saw a registry tool's definition first: pinned
    TOOL_CHANGED = "tool.changed"  # a definition differs from its pin: a rug pull until re-pinned
    TOOL_REPINNED = "tool.repinned"  # an operator re-pinned a tool to its observed definition
    TASK_PREVIEW = "task.preview"  # PreviewTools: what policy would decide, nothing minted
    TAINT_RAISE = "taint.raise"  # RaiseTaint: an agent reports an unguarded server's content

    @classmethod
    def revoke(cls, kind: str) -> AuditEventName:
        """``revoke.<kind>`` for a ``RevocationKind``; ValueError for any other kind."""
        return cls(f"revoke.{kind}")


KNOWN_EVENTS = frozenset(str(name) for name in AuditEventName)
"""The events the broker records. Others are accepted if they match ``EVENT_RE``."""

EVENT_RE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")
CHAIN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,255}")
EXTRA_KEY_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")

MAX_ID_CHARS = 512
"""Identifiers (actor, task, server, tool, jti, decision, policy ids) longer than this raise."""
MAX_TEXT_CHARS = 1024
"""Free text (reason, outcome, extra strings) longer than this is truncated, never rejected."""
MAX_EXTRA_ITEMS = 32

_TRUNCATED = "...[truncated]"

ExtraValue = str | int | float | bool
_MAX_EXACT = 2**53 - 1


def _check_utf8(name: str, value: str) -> None:
    if value.isascii():
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{name}: not valid Unicode text (lone surrogate)") from None


def _check_id(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name}: must be a non-empty string")
    if len(value) > MAX_ID_CHARS:
        raise ValueError(f"{name}: longer than {MAX_ID_CHARS} characters")
    _check_utf8(name, value)
    if looks_like_secret(value):
        raise ValueError(f"{name}: looks like a credential; audit records never carry one")
    return value


def _clean_text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name}: must be a string")
    _check_utf8(name, value)
    # Cut first: the scrubber then never scans more than MAX_TEXT_CHARS of what an agent sent.
    truncated = len(value) > MAX_TEXT_CHARS
    value = redact(value[:MAX_TEXT_CHARS])
    if truncated or len(value) > MAX_TEXT_CHARS:
        value = value[: MAX_TEXT_CHARS - len(_TRUNCATED)] + _TRUNCATED
    return value


def _check_digest(name: str, value: object) -> str:
    if not isinstance(value, str) or _SHA256_HEX.fullmatch(value) is None:
        raise ValueError(f"{name}: must be 64 lowercase hex characters (SHA-256)")
    return value


def _check_extra_value(key: str, value: object) -> ExtraValue:
    name = f"extra[{key!r}]"
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if abs(value) > _MAX_EXACT:
            raise ValueError(f"{name}: integer outside the exact JSON range (2**53)")
        return value
    if isinstance(value, float):
        if not math.isfinite(value) or abs(value) > _MAX_EXACT:
            # JCS writes 2**53 as "9007199254740992", which reads back as an int beyond the
            # exact range: such a record would not verify after a round trip.
            raise ValueError(f"{name}: must be a finite number within +-(2**53 - 1)")
        return value
    if isinstance(value, str):
        return _clean_text(name, str(value))  # a StrEnum as its plain value
    raise ValueError(f"{name}: must be str, int, float or bool, not {type(value).__name__}")


@dataclass(frozen=True)
class AuditEvent:
    """What happened, who did it, to what. Never a token, a key or a secret.

    ``time`` is seconds since the epoch (UTC) from the injected clock; ``actor`` is the caller's
    SPIFFE ID (``spiffe://TD/broker`` for what the broker does on its own, e.g. task expiry).
    Identifiers that are too long or look like a credential raise ``ValueError``; free text
    (``reason``, ``outcome``, string ``extra`` values) is redacted and truncated instead, so that
    what an agent writes can never make the audit trail refuse a record.
    """

    event: str
    time: float
    actor: str
    task: str | None = None
    server: str | None = None
    tool: str | None = None
    args_sha256: str | None = None
    prompt_sha256: str | None = None
    decision: str | None = None
    policy_ids: tuple[str, ...] = ()
    outcome: str | None = None
    reason: str | None = None
    jti: str | None = None
    extra: Mapping[str, ExtraValue] = field(
        default_factory=lambda: MappingProxyType({}), hash=False
    )

    def __post_init__(self) -> None:
        if not isinstance(self.event, str) or EVENT_RE.fullmatch(self.event) is None:
            raise ValueError(f"event: {self.event!r} is not a dotted lowercase name")
        if len(self.event) > 64:
            raise ValueError("event: longer than 64 characters")
        object.__setattr__(self, "event", str(self.event))  # an AuditEventName as its plain value
        if isinstance(self.time, bool) or not isinstance(self.time, int | float):
            raise ValueError("time: must be a number of seconds since the epoch")
        if not math.isfinite(self.time) or not 0 <= self.time <= _MAX_EXACT:
            raise ValueError("time: must be a finite, non-negative number below 2**53")
        object.__setattr__(self, "time", float(self.time))
        _check_id("actor", self.actor)
        for name in ("task", "server", "tool", "decision", "jti"):
            value = getattr(self, name)
            if value is not None:
                _check_id(name, value)
        for name in ("args_sha256", "prompt_sha256"):
            value = getattr(self, name)
            if value is not None:
                _check_digest(name, value)
        for name in ("outcome", "reason"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _clean_text(name, value))
        if isinstance(self.policy_ids, str) or not isinstance(self.policy_ids, tuple | list):
            raise ValueError("policy_ids: must be a tuple of strings")
        policy_ids = tuple(self.policy_ids)
        for i, pid in enumerate(policy_ids):
            _check_id(f"policy_ids[{i}]", pid)
        object.__setattr__(self, "policy_ids", policy_ids)
        object.__setattr__(self, "extra", MappingProxyType(self._checked_extra()))

    def _checked_extra(self) -> dict[str, ExtraValue]:
        if not isinstance(self.extra, Mapping):
            raise ValueError("extra: must be a mapping")
        if len(self.extra) > MAX_EXTRA_ITEMS:
            raise ValueError(f"extra: more than {MAX_EXTRA_ITEMS} items")
        out: dict[str, ExtraValue] = {}
        for key in sorted(self.extra):
            if not isinstance(key, str) or EXTRA_KEY_RE.fullmatch(key) is None:
                raise ValueError(f"extra: key {key!r} is not a plain name")
            if is_denied_extra_key(key):
                raise ValueError(
                    f"extra: key {key!r} names a secret; audit records never carry one"
                )
            out[key] = _check_extra_value(key, self.extra[key])
        return out

    def to_dict(self) -> dict[str, Any]:
        """The event as a JSON object: unset fields (None, empty) are left out."""
        out: dict[str, Any] = {"event": self.event, "time": self.time, "actor": self.actor}
        for name in (
            "task",
            "server",
            "tool",
            "args_sha256",
            "prompt_sha256",
            "decision",
            "outcome",
            "reason",
            "jti",
        ):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.policy_ids:
            out["policy_ids"] = list(self.policy_ids)
        if self.extra:
            out["extra"] = dict(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditEvent:
        """Parse ``to_dict`` output (or a record body). Unknown fields raise ``ValueError``."""
        unknown = set(data) - _EVENT_FIELDS
        if unknown:
            raise ValueError(f"unknown event fields: {', '.join(sorted(unknown))}")
        for required in ("event", "time", "actor"):
            if required not in data:
                raise ValueError(f"{required}: missing")
        kwargs: dict[str, Any] = dict(data)
        if "policy_ids" in kwargs:
            if not isinstance(kwargs["policy_ids"], list | tuple):
                raise ValueError("policy_ids: must be a list of strings")
            kwargs["policy_ids"] = tuple(kwargs["policy_ids"])
        return cls(**kwargs)


_EVENT_FIELDS = frozenset(AuditEvent.__dataclass_fields__)


@dataclass(frozen=True)
class Head:
    """The last record of a chain as seen by someone: ``seq`` and its ``sha256``.

    Used to resume a chain after a restart and as an anchor for ``verify_records``: a head kept
    somewhere the file's writer cannot reach proves that nothing was cut from the tail.
    Text form: ``[CHAIN:]SEQ:SHA256`` (the chain id may itself contain colons).
    """

    seq: int
    sha256: str
    chain: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.seq, bool) or not isinstance(self.seq, int) or self.seq < 0:
            raise ValueError("seq: must be a non-negative integer")
        _check_digest("sha256", self.sha256)
        if self.chain is not None:
            _check_chain_id(self.chain)

    def __str__(self) -> str:
        prefix = f"{self.chain}:" if self.chain is not None else ""
        return f"{prefix}{self.seq}:{self.sha256}"

    @classmethod
    def parse(cls, text: str) -> Head:
        """Parse ``[CHAIN:]SEQ:SHA256``; raise ``ValueError`` naming what is wrong."""
        parts = text.rsplit(":", 2)
        if len(parts) < 2:
            raise ValueError("expected [CHAIN:]SEQ:SHA256")
        chain = parts[0] if len(parts) == 3 else None
        seq_text, sha = parts[-2], parts[-1]
        if not seq_text.isdigit():
            raise ValueError(f"seq {seq_text!r} is not a non-negative integer")
        return cls(seq=int(seq_text), sha256=sha.lower(), chain=chain)


def _check_chain_id(chain: object) -> str:
    if not isinstance(chain, str) or CHAIN_ID_RE.fullmatch(chain) is None:
        raise ValueError(f"chain: {chain!r} is not a valid chain id")
    return chain


_ENVELOPE = ("seq", "chain", "prev", "sha256")


@dataclass(frozen=True)
class ChainedRecord:
    """One record of one chain. ``body`` is the event as a read-only JSON object (nested objects
    are read-only mappings, arrays are tuples).

    Constructing one checks the envelope's types but not the hash: ``verify_records`` does that,
    so that a tampered record can still be parsed and named.
    """

    seq: int
    chain: str
    prev: str
    body: Mapping[str, Any]
    sha256: str

    def __post_init__(self) -> None:
        if isinstance(self.seq, bool) or not isinstance(self.seq, int) or self.seq < 0:
            raise ValueError("seq: must be a non-negative integer")
        _check_chain_id(self.chain)
        _check_digest("prev", self.prev)
        _check_digest("sha256", self.sha256)
        if not isinstance(self.body, Mapping):
            raise ValueError("body: must be a JSON object")
        clash = set(self.body) & set(_ENVELOPE)
        if clash:
            raise ValueError(f"body: must not hold {', '.join(sorted(clash))}")
        object.__setattr__(self, "body", _freeze(self.body))

    def hashed_dict(self) -> dict[str, Any]:
        """The object whose canonical JSON is hashed: envelope (without sha256) and body."""
        return {"seq": self.seq, "chain": self.chain, "prev": self.prev, **_thaw(self.body)}

    def canonical_bytes(self) -> bytes:
        """RFC 8785 bytes of ``hashed_dict()``: exactly what ``sha256`` is computed over.

        Raises ``ValueError`` when the body holds something JSON cannot carry exactly.
        """
        return jcs.dumps(self.hashed_dict())

    def compute_sha256(self) -> str:
        return hashlib.sha256(self.canonical_bytes()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """The stored form: ``hashed_dict()`` plus ``sha256``."""
        return {**self.hashed_dict(), "sha256": self.sha256}

    def to_json(self) -> bytes:
        """The stored line: RFC 8785 canonical JSON of ``to_dict()``, without a newline.

        Computed once (every sink writes the same bytes): the record is immutable.
        """
        line: bytes | None = self.__dict__.get("_json")
        if line is None:
            line = jcs.dumps(self.to_dict())
            object.__setattr__(self, "_json", line)
        return line

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChainedRecord:
        """Split a stored object into envelope and body. Raises ``ValueError`` if malformed."""
        if not isinstance(data, Mapping):
            raise ValueError("not a JSON object")
        missing = [name for name in _ENVELOPE if name not in data]
        if missing:
            raise ValueError(f"missing field {missing[0]!r}")
        body = {k: v for k, v in data.items() if k not in _ENVELOPE}
        return cls(
            seq=data["seq"],
            chain=data["chain"],
            prev=data["prev"],
            body=body,
            sha256=data["sha256"],
        )

    def event(self) -> AuditEvent:
        """The body parsed as an ``AuditEvent`` (raises ``ValueError`` if it is not one)."""
        return AuditEvent.from_dict(self.body)

    @property
    def head(self) -> Head:
        return Head(seq=self.seq, sha256=self.sha256, chain=self.chain)


_SCALARS = (str, int, float, bool, type(None))


def _freeze(value: Any) -> Any:
    """A read-only deep copy of a JSON-shaped value: mappings become proxies, arrays tuples."""
    if type(value) in _SCALARS:
        return value
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    """A plain deep copy (dicts and lists) of a JSON-shaped value, for serialization."""
    if type(value) in _SCALARS:
        return value
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_thaw(v) for v in value]
    return value


class Chain:
    """Appends events to one hash chain: seq 0, 1, 2... each linking to the previous record.

    ``Chain(chain_id)`` starts a new chain at seq 0 with ``prev`` = 64 zeros.
    ``Chain(chain_id, head=Head(seq, sha256))`` resumes one after a restart: the next record is
    ``seq + 1`` and links to ``sha256``. One chain id must have exactly one writer at a time
    (a replica id, not a shared name), or the chain forks. Not thread-safe on its own: the
    ``Auditor`` serializes appends.
    """

    def __init__(self, chain_id: str, head: Head | None = None) -> None:
        self._id = _check_chain_id(chain_id)
        if head is not None and head.chain is not None and head.chain != chain_id:
            raise ValueError(f"head belongs to chain {head.chain!r}, not {chain_id!r}")
        self._next_seq = 0 if head is None else head.seq + 1
        self._prev = GENESIS_PREV if head is None else head.sha256

    @property
    def chain_id(self) -> str:
        return self._id

    @property
    def next_seq(self) -> int:
        return self._next_seq

    @property
    def head(self) -> Head | None:
        """The last appended (or resumed-from) record, None for a chain with no record yet."""
        if self._next_seq == 0:
            return None
        return Head(seq=self._next_seq - 1, sha256=self._prev, chain=self._id)

    def append(self, event: AuditEvent) -> ChainedRecord:
        """Chain ``event`` after the current head and return the new record."""
        body = event.to_dict()
        unsigned = {"seq": self._next_seq, "chain": self._id, "prev": self._prev, **body}
        digest, line = _hashed_line(unsigned)
        record = ChainedRecord(
            seq=self._next_seq, chain=self._id, prev=self._prev, body=body, sha256=digest
        )
        object.__setattr__(record, "_json", line)
        self._next_seq += 1
        self._prev = digest
        return record


# One serialization per record: the stored line is the canonical JSON of the record with its
# "sha256" member, and the hashed text is the same without that member (JCS writes an object as
# its sorted members joined by commas, so removing one member and one comma next to it gives
# the canonical JSON of the rest). The line is written with a placeholder digest that nothing
# outside this process can know (so it occurs once, as the member), then the digest put in.
_MARK = secrets.token_hex(32).encode()
_MEMBER = b'"sha256":"' + _MARK + b'"'


def _hashed_line(unsigned: dict[str, Any]) -> tuple[str, bytes]:
    """The SHA-256 (hex) of the canonical JSON of ``unsigned``, and the stored line: the
    canonical JSON of ``unsigned`` with that digest as its "sha256" member."""
    line = jcs.dumps({**unsigned, "sha256": _MARK.decode()})
    if "sha256" not in unsigned and line.count(_MARK) == 1:
        if _MEMBER + b"," in line:
            hashed = line.replace(_MEMBER + b",", b"", 1)
        else:
            hashed = line.replace(b"," + _MEMBER, b"", 1)
        digest = hashlib.sha256(hashed).hexdigest()
        return digest, line.replace(_MARK, digest.encode(), 1)
    digest = hashlib.sha256(jcs.dumps(unsigned)).hexdigest()  # never for the broker's records
    return digest, jcs.dumps({**unsigned, "sha256": digest})
