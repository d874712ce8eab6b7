"""Identifiers: 128-bit random task ids and credential ids (jti).

A jti is ``<task_id>.<128 random bits>``: the task is part of the id, so a ReportOutcome that
names only the jti finds its task (and, in Redis, its hash slot) without a global index.
"""

from __future__ import annotations

import base64
import re
import secrets

_B64 = r"[A-Za-z0-9_-]{22}"
TASK_ID_RE = re.compile(rf"^t_{_B64}$")
JTI_RE = re.compile(rf"^(t_{_B64})\.{_B64}$")


def _random128() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode()


def new_task_id() -> str:
    return "t_" + _random128()


def new_jti(task_id: str) -> str:
    return f"{task_id}.{_random128()}"


def is_task_id(value: str) -> bool:
    return TASK_ID_RE.fullmatch(value) is not None


def task_of_jti(jti: str) -> str | None:
    """The task id inside a jti, or None when ``jti`` is not one of ours."""
    m = JTI_RE.fullmatch(jti)
    return m.group(1) if m else None
