"""Where audit records go: stdout, a JSON lines file, a Redis stream (the Auditor chains them)."""

from broker.adapters.audit.sinks import (
    JsonLinesSink,
    MemorySink,
    StdoutSink,
    read_json_lines,
    resume_chain,
)

__all__ = [
    "JsonLinesSink",
    "MemorySink",
    "StdoutSink",
    "read_json_lines",
    "resume_chain",
]
