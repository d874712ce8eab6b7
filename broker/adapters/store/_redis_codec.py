"""Compact encodings of the store's records in Redis (pure functions, no I/O).

A credential is one field of its task's ``creds`` hash: the field is the random half of the jti
(the task half is the key's hash tag) and the value is 53 bytes for the usual SHA-256 digest::

    flag     1 byte   "0" live, "1" consumed (the only byte a script rewrites)
    target   u16      index into the task's list of interned (server, tool) pairs
    tier     u8
    issued   f64      exact: the record round-trips bit for bit
    expires  f64
    kind     u8       1: args digest as 32 raw bytes (lowercase hex in the record), 0: UTF-8 text
    args     ...

Keeping the value under 64 bytes lets Redis store the hash as a listpack (its compact encoding,
``hash-max-listpack-value`` 64 by default): about 82 bytes per credential (see
docs/operations.md for the measured totals).
A task's static fields are one orjson array (``rec``); the fields that change (state, taint, end)
are separate hash fields that the scripts update in place.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Sequence

import orjson

from broker.core.ids import JTI_RE, TASK_ID_RE
from broker.core.model import CredentialRecord, PlanStep, Taint, TaskRecord, TaskState

_HEAD = struct.Struct("<BddB")  # tier, issued_at, expires_at, args kind
_HEX64 = re.compile(r"[0-9a-f]{64}")
_REC_VERSION = 1


def fnum(value: float) -> str:
    """A float as Redis and Lua read it back exactly (``repr`` is the shortest exact form)."""
    return repr(float(value))


def ms(value: float) -> int:
    """Milliseconds, rounded up: the integer zset score of an expiry (a fraction of a millisecond
    longer, never shorter: a quota counts an expired credential at most 1 ms too long)."""
    return math.ceil(value * 1000)


QUOTA_BUCKET = 5  # seconds: width of the per-agent quota's expiry buckets


def quota_bucket(expires_ms: int) -> str:
    """The per-agent quota bucket of a credential: the end of the ``QUOTA_BUCKET``-second window
    its expiry falls in. A credential counts until its bucket ends: at most 5 s past ``exp``."""
    return str(-(-expires_ms // (QUOTA_BUCKET * 1000)) * QUOTA_BUCKET)


def packed_expiry(value: bytes) -> float:
    """``expires_at`` of a stored credential value (flag, target index, then the head)."""
    expires: float = _HEAD.unpack_from(value, 3)[2]
    return expires


def task_id_ok(task_id: str) -> bool:
    """Only well-formed ids name keys: a brace would break the ``{task_id}`` hash tag."""
    return TASK_ID_RE.fullmatch(task_id) is not None


def jti_field(task_id: str, jti: str) -> str | None:
    """The creds-hash field of ``jti`` (its random half), or None if it is not of ``task_id``."""
    m = JTI_RE.fullmatch(jti)
    if m is None or m.group(1) != task_id:
        return None
    return jti[len(task_id) + 1 :]


def pack_target(server: str, tool: str) -> bytes:
    return orjson.dumps([server, tool])


def unpack_target(raw: bytes) -> tuple[str, str]:
    server, tool = orjson.loads(raw)
    return str(server), str(tool)


def pack_credential(cred: CredentialRecord) -> bytes:
    """The value after the flag and target index (the mint script prepends those)."""
    if _HEX64.fullmatch(cred.args_sha256):
        return _HEAD.pack(cred.tier, cred.issued_at, cred.expires_at, 1) + bytes.fromhex(
            cred.args_sha256
        )
    return _HEAD.pack(cred.tier, cred.issued_at, cred.expires_at, 0) + cred.args_sha256.encode()


def unpack_credential(
    task_id: str, agent: str, field: bytes, value: bytes, target: bytes
) -> CredentialRecord:
    tier, issued, expires, kind = _HEAD.unpack_from(value, 3)
    rest = value[3 + _HEAD.size :]
    server, tool = unpack_target(target)
    return CredentialRecord(
        jti=f"{task_id}.{field.decode()}",
        task_id=task_id,
        agent=agent,
        server=server,
        tool=tool,
        args_sha256=rest.hex() if kind == 1 else rest.decode(),
        tier=tier,
        issued_at=issued,
        expires_at=expires,
        consumed=value[:1] == b"1",
    )


def target_index(value: bytes) -> int:
    idx: int = struct.unpack_from("<H", value, 1)[0]
    return idx


def pack_task(task: TaskRecord) -> bytes:
    return orjson.dumps(
        [
            _REC_VERSION,
            task.agent,
            task.intent,
            task.on_behalf_of,
            task.created_at,
            task.expires_at,
            task.parent_task_id,
            [[step.server, step.tool] for step in task.plan],
            dict(task.labels),
            task.depth,
            list(task.act),
            list(task.delegates),
        ]
    )


def unpack_task(task_id: str, fields: Sequence[bytes | None]) -> TaskRecord | None:
    """``fields`` as read by HMGET rec st tn e why; None when the record is gone."""
    rec, st, tn, ended_at, reason = fields
    if rec is None or st is None or tn is None:
        return None
    fields_ = orjson.loads(rec)
    (
        _version,
        agent,
        intent,
        on_behalf_of,
        created_at,
        expires_at,
        parent,
        plan,
        labels,
        depth,
        act,
    ) = fields_[:11]
    delegates = fields_[11] if len(fields_) > 11 else []  # records written before issue 13
    return TaskRecord(
        task_id=task_id,
        agent=agent,
        intent=intent,
        on_behalf_of=on_behalf_of,
        created_at=created_at,
        expires_at=expires_at,
        parent_task_id=parent,
        plan=tuple(PlanStep(server, tool) for server, tool in plan),
        labels=labels,
        depth=depth,
        act=tuple(act),
        delegates=tuple(delegates),
        taint=Taint(int(tn)),
        state=TaskState(int(st)),
        ended_at=float(ended_at) if ended_at else 0.0,
        end_reason=reason.decode() if reason else "",
    )


TASK_FIELDS = ("rec", "st", "tn", "e", "why")
