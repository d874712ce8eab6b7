"""Where audit records go, and the ``Auditor`` that chains events and writes them out.

Sinks are a small port (``AuditSink``): a JSON lines file, a text stream (stdout) and memory ship
here; the Redis stream sink lives with the other Redis adapters. Every sink receives every record
in chain order (the ``Auditor`` holds one lock across append and writes).

Sink failures are never silent and never swallowed whole: each one is logged on the
``broker.audit`` logger (sink type, chain, seq and event name only, never the record's content)
and counted in ``Auditor.failures``. With ``fail_closed=True`` the ``Auditor`` then raises
``AuditUnavailable`` (after trying every sink), so that the caller can refuse the action it was
about to audit; with the default it returns the record and the caller decides from ``failures``.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, TextIO

from broker.audit.record import AuditEvent, Chain, ChainedRecord
from broker.audit.verify import verify_records
from broker.errors import StoreUnavailable

log = logging.getLogger("broker.audit")


class AuditSink(Protocol):
    def write(self, record: ChainedRecord) -> None:
        """Store ``record`` durably enough for this sink, or raise."""
        ...

    def close(self) -> None: ...


class AuditUnavailable(StoreUnavailable):
    """A record could not be written to every audit sink (raised only with ``fail_closed``)."""


class JsonLinesSink:
    """Appends one canonical JSON line per record to ``path``.

    The file is opened append-only (``O_APPEND``), refuses to follow a symlink, and is created
    with mode 0600 (an existing file with wider permissions is narrowed to 0600). Each record is a
    single ``write(2)``, so it reaches the kernel before ``write`` returns; with ``fsync=True``
    it also reaches the disk. A torn last line left by a crash is closed with a newline so that
    new records stay readable (``audit verify`` still reports the torn one).
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = False) -> None:
        self.path = Path(path)
        self._fsync = fsync
        self._lock = threading.Lock()
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.path, flags, 0o600)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(f"{self.path} is not a regular file")
            if stat.S_IMODE(st.st_mode) != 0o600:
                if stat.S_IMODE(st.st_mode) & 0o077:
                    log.warning("audit file %s was readable by others; narrowed to 0600", path)
                os.fchmod(fd, 0o600)
            if st.st_size > 0 and not _ends_with_newline(self.path):
                _write_all(fd, b"\n")
        except BaseException:
            os.close(fd)
            raise
        self._fd: int | None = fd

    def __repr__(self) -> str:
        return f"JsonLinesSink({str(self.path)!r})"

    def write(self, record: ChainedRecord) -> None:
        line = record.to_json() + b"\n"
        with self._lock:
            if self._fd is None:
                raise ValueError("audit sink is closed")
            _write_all(self._fd, line)
            if self._fsync:
                os.fsync(self._fd)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                fd, self._fd = self._fd, None
                os.close(fd)


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class StdoutSink:
    """Writes one canonical JSON line per record to a text stream (stdout by default)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout

    def write(self, record: ChainedRecord) -> None:
        self._stream.write(record.to_json().decode("utf-8") + "\n")
        self._stream.flush()

    def close(self) -> None:
        self._stream.flush()


class MemorySink:
    """Keeps records in a list: for tests and for an in-process tail."""

    def __init__(self) -> None:
        self.records: list[ChainedRecord] = []
        self.closed = False

    def write(self, record: ChainedRecord) -> None:
        if self.closed:
            raise ValueError("audit sink is closed")
        self.records.append(record)

    def close(self) -> None:
        self.closed = True


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json_line(line: bytes | str) -> dict[str, Any]:
    """Parse one stored line; raise ``ValueError`` unless it is a JSON object.

    Stricter than ``json.loads``: a repeated key or NaN/Infinity is an error, not a silent pick.
    """
    value = json.loads(line, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def read_json_lines(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Yield each line of a JSON lines audit file as a dict, in file order.

    Raises ``ValueError`` naming the line number for a line that is not a JSON object (blank
    lines included: an append-only audit file has none).
    """
    with Path(path).open("rb") as f:
        for number, line in enumerate(f, start=1):
            try:
                yield parse_json_line(line)
            except ValueError as exc:
                raise ValueError(f"line {number}: {exc}") from None


def resume_chain(path: str | os.PathLike[str], chain_id: str) -> Chain:
    """The chain ``chain_id`` continued from its last record in the JSON lines file ``path``.

    The whole file is verified first and ``ChainBroken`` is raised if it fails: a broker never
    extends a chain that has been tampered with (it would hide the damage). A missing file, or one
    without that chain, gives a new chain starting at seq 0.
    """
    if not Path(path).exists():
        return Chain(chain_id)
    report = verify_records(read_json_lines(path))
    report.raise_for_problem()
    head = report.heads.get(chain_id)
    return Chain(chain_id, head=head)


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
