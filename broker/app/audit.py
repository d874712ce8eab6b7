"""The ``Auditor``: chains audit events and writes every record to every sink (the ``AuditSink``
port; implementations in ``broker.adapters.audit``). Every sink receives every record in chain
order (the ``Auditor`` holds one lock across append and writes).

Sink failures are never silent and never swallowed whole: each one is logged on the
``broker.audit`` logger (sink type, chain, seq and event name only, never the record's content)
and counted in ``Auditor.failures``. With ``fail_closed=True`` the ``Auditor`` then raises
``AuditUnavailable`` (after trying every sink), so that the caller can refuse the action it was
about to audit; with the default it returns the record and the caller decides from ``failures``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Protocol

from broker.core.audit.record import AuditEvent, Chain, ChainedRecord
from broker.core.errors import StoreUnavailable

log = logging.getLogger("broker.audit")


class AuditSink(Protocol):
    def write(self, record: ChainedRecord) -> None:
        """Store ``record`` durably enough for this sink, or raise."""
        ...

    def close(self) -> None: ...


class AuditUnavailable(StoreUnavailable):
    """A record could not be written to every audit sink (raised only with ``fail_closed``)."""


class Auditor:
    """Chains events and writes every record to every sink, one record at a time.

    ``record`` is thread-safe: append and writes happen under one lock, so every sink sees the
    records in seq order. A failing sink does not stop the others; see the module docstring.
    """

    def __init__(
        self, chain: Chain | str, sinks: Sequence[AuditSink], *, fail_closed: bool = False
    ) -> None:
        """``chain``: a ``Chain`` (e.g. from ``resume_chain``) or a chain id for a new chain."""
        self._chain = chain if isinstance(chain, Chain) else Chain(chain)
        self._sinks = tuple(sinks)
        self._fail_closed = fail_closed
        self._lock = threading.Lock()
        self._failures = 0

    @property
    def failures(self) -> int:
        """How many sink writes (one per sink per record) and closes have failed so far."""
        return self._failures

    @property
    def chain(self) -> Chain:
        return self._chain

    @property
    def sinks(self) -> tuple[AuditSink, ...]:
        return self._sinks

    def add_sink(self, sink: AuditSink) -> None:
        """Also write every later record to ``sink`` (e.g. the in-process tail of recent ones)."""
        with self._lock:
            self._sinks = (*self._sinks, sink)

    def record(self, event: AuditEvent) -> ChainedRecord:
        """Append ``event`` to the chain and write the record to every sink.

        Raises ``AuditUnavailable`` after trying every sink if one failed and ``fail_closed``.
        """
        with self._lock:
            record = self._chain.append(event)
            failed = [
                _sink_name(index, sink)
                for index, sink in enumerate(self._sinks)
                if not self._write(index, sink, record)
            ]
        if failed and self._fail_closed:
            raise AuditUnavailable(
                f"audit record {record.chain}/{record.seq} not written to {', '.join(failed)}"
            )
        return record

    def _write(self, index: int, sink: AuditSink, record: ChainedRecord) -> bool:
        try:
            sink.write(record)
        except Exception as exc:  # noqa: BLE001 - any sink failure is logged and counted
            self._failures += 1
            log.error(
                "audit sink %s failed to write chain=%s seq=%d event=%s: %s",
                _sink_name(index, sink),
                record.chain,
                record.seq,
                record.body.get("event"),
                _describe(exc),
            )
            return False
        return True

    def close(self) -> None:
        """Close every sink; a failing close is logged and counted like a failing write."""
        with self._lock:
            for index, sink in enumerate(self._sinks):
                try:
                    sink.close()
                except Exception as exc:  # noqa: BLE001 - same policy as writes
                    self._failures += 1
                    log.error(
                        "audit sink %s failed to close: %s", _sink_name(index, sink), _describe(exc)
                    )


def _sink_name(index: int, sink: AuditSink) -> str:
    # The type, not repr(): a sink's repr may hold a URL with credentials.
    return f"{type(sink).__name__}#{index}"


def _describe(exc: BaseException) -> str:
    """The exception's class, plus the OS reason for OSError; never a message that could echo
    the record back."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    return type(exc).__name__
