"""The tamper-evident audit trail, pure part: records, hash chains and their verification.

See docs/audit.md. The sinks that write records (stdout, JSON lines, Redis stream) are I/O and
live in ``broker.adapters.audit``.
"""

from broker.core.audit.record import (
    GENESIS_PREV,
    KNOWN_EVENTS,
    AuditEvent,
    AuditEventName,
    Chain,
    ChainedRecord,
    Head,
)
from broker.core.audit.verify import ChainBroken, Finding, Kind, VerifyReport, verify_records

__all__ = [
    "GENESIS_PREV",
    "KNOWN_EVENTS",
    "AuditEvent",
    "AuditEventName",
    "Chain",
    "ChainBroken",
    "ChainedRecord",
    "Finding",
    "Head",
    "Kind",
    "VerifyReport",
    "verify_records",
]
