"""The tamper-evident audit trail: records, hash chains, verification and sinks.

See docs/audit.md. ``record`` and ``verify`` are pure; ``sinks`` holds the I/O.
"""

from broker.audit.record import (
    GENESIS_PREV,
    KNOWN_EVENTS,
    AuditEvent,
    Chain,
    ChainedRecord,
    Head,
)
from broker.audit.sinks import (
    Auditor,
    AuditSink,
    AuditUnavailable,
    JsonLinesSink,
    MemorySink,
    StdoutSink,
    read_json_lines,
    resume_chain,
)
from broker.audit.verify import ChainBroken, Finding, Kind, VerifyReport, verify_records

__all__ = [
    "GENESIS_PREV",
    "KNOWN_EVENTS",
    "AuditEvent",
    "AuditSink",
    "AuditUnavailable",
    "Auditor",
    "Chain",
    "ChainBroken",
    "ChainedRecord",
    "Finding",
    "Head",
    "JsonLinesSink",
    "Kind",
    "MemorySink",
    "StdoutSink",
    "VerifyReport",
    "read_json_lines",
    "resume_chain",
    "verify_records",
]
