"""Where audit records go: implementations of the ``AuditSink`` port (``broker.app.audit``,
where the ``Auditor`` chains events and writes them to every sink). A JSON lines file, a text
stream (stdout) and memory ship here; the Redis stream sink is ``redis_sink``.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from broker.core.audit.record import Chain, ChainedRecord
from broker.core.audit.verify import verify_records

log = logging.getLogger("broker.audit")


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
