"""Audit sinks and the Auditor: file format and mode, failures visible and counted, threads."""

from __future__ import annotations

import io
import json
import logging
import os
import stat
import threading
from pathlib import Path

import pytest

from broker.adapters.audit import (
    JsonLinesSink,
    MemorySink,
    StdoutSink,
    read_json_lines,
    resume_chain,
)
from broker.app.audit import Auditor, AuditUnavailable
from broker.core.audit import AuditEvent, Chain, ChainBroken, ChainedRecord, verify_records
from broker.core.errors import StoreUnavailable
from tests.support.audit import AGENT, T0, event


def write_file(path: Path, n: int, chain: Chain | None = None) -> list[ChainedRecord]:
    chain = chain or Chain("replica-1")
    sink = JsonLinesSink(path)
    records = [chain.append(event(i)) for i in range(n)]
    for r in records:
        sink.write(r)
    sink.close()
    return records


def test_json_lines_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    records = write_file(path, 5)
    lines = path.read_bytes().splitlines()
    assert lines == [r.to_json() for r in records]
    read = list(read_json_lines(path))
    assert [ChainedRecord.from_dict(d) for d in read] == records
    assert verify_records(read).ok


def test_file_is_created_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    old = os.umask(0)
    try:
        JsonLinesSink(path).close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_existing_file_with_wide_mode_is_narrowed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.jsonl"
    path.touch(mode=0o644)
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="broker.core.audit"):
        JsonLinesSink(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "narrowed" in caplog.text


def test_symlink_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.touch()
    link = tmp_path / "audit.jsonl"
    link.symlink_to(target)
    with pytest.raises(OSError, match=r"symbolic links|Too many levels"):
        JsonLinesSink(link)


def test_appends_to_an_existing_file_and_closes_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    chain = Chain("replica-1")
    first = write_file(path, 2, chain)
    with path.open("ab") as f:
        f.write(b'{"torn":')  # a crash in the middle of a write
    sink = JsonLinesSink(path, fsync=True)
    third = chain.append(event(2))
    sink.write(third)
    sink.close()
    lines = path.read_bytes().splitlines()
    assert lines[:2] == [r.to_json() for r in first]
    assert lines[2] == b'{"torn":'
    assert lines[3] == third.to_json()


def test_write_after_close_raises(tmp_path: Path) -> None:
    sink = JsonLinesSink(tmp_path / "a.jsonl")
    sink.close()
    sink.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        sink.write(Chain("c").append(event(0)))


def test_read_json_lines_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_file(path, 2)
    with path.open("ab") as f:
        f.write(b'{"a": 1, "a": 2}\n')
    with pytest.raises(ValueError, match="line 3: duplicate key"):
        list(read_json_lines(path))
    path.write_bytes(b'{"a": 1}\n\n')
    with pytest.raises(ValueError, match="line 2"):
        list(read_json_lines(path))
    path.write_bytes(b"[1]\n")
    with pytest.raises(ValueError, match="line 1: not a JSON object"):
        list(read_json_lines(path))
    path.write_bytes(b'{"a": NaN}\n')
    with pytest.raises(ValueError, match="line 1"):
        list(read_json_lines(path))


def test_stdout_sink_writes_canonical_lines() -> None:
    stream = io.StringIO()
    sink = StdoutSink(stream)
    record = Chain("c").append(event(0))
    sink.write(record)
    sink.close()
    assert stream.getvalue() == record.to_json().decode() + "\n"


# --- Auditor --------------------------------------------------------------------------------


class BrokenSink:
    def __init__(self) -> None:
        self.closed = False

    def write(self, record: ChainedRecord) -> None:
        raise ConnectionError(f"cannot store {record.to_json().decode()}")

    def close(self) -> None:
        raise OSError(5, "Input/output error")


def test_auditor_writes_every_record_to_every_sink(tmp_path: Path) -> None:
    memory = MemorySink()
    path = tmp_path / "audit.jsonl"
    auditor = Auditor(Chain("replica-1"), [memory, JsonLinesSink(path)])
    records = [auditor.record(event(i)) for i in range(4)]
    auditor.close()
    assert memory.records == records
    assert memory.closed
    assert verify_records(read_json_lines(path)).ok
    assert auditor.failures == 0
    assert auditor.chain.head == records[-1].head


def test_failing_sink_is_logged_and_counted_without_content(
    caplog: pytest.LogCaptureFixture,
) -> None:
    memory = MemorySink()
    auditor = Auditor(Chain("replica-1"), [BrokenSink(), memory])
    secret_ish = "confidential reason text"
    with caplog.at_level(logging.ERROR, logger="broker.core.audit"):
        record = auditor.record(AuditEvent("task.end", T0, AGENT, reason=secret_ish))
        auditor.record(event(1))
    assert auditor.failures == 2
    assert memory.records[0] == record  # the other sinks still got it
    assert "BrokenSink#0" in caplog.text
    assert "seq=0" in caplog.text
    assert "event=task.end" in caplog.text
    assert "ConnectionError" in caplog.text
    assert secret_ish not in caplog.text
    assert record.sha256 not in caplog.text
    with caplog.at_level(logging.ERROR, logger="broker.core.audit"):
        auditor.close()
    assert auditor.failures == 3
    assert "Input/output error" in caplog.text


def test_auditor_accepts_a_chain_id() -> None:
    memory = MemorySink()
    record = Auditor("host-1234", [memory]).record(event(0))
    assert (record.chain, record.seq) == ("host-1234", 0)


def test_fail_closed_raises_after_trying_every_sink() -> None:
    memory = MemorySink()
    auditor = Auditor(Chain("replica-1"), [BrokenSink(), memory], fail_closed=True)
    with pytest.raises(AuditUnavailable) as caught:
        auditor.record(event(0))
    assert isinstance(caught.value, StoreUnavailable)
    assert "BrokenSink#0" in str(caught.value)
    assert len(memory.records) == 1
    assert auditor.failures == 1


def test_auditor_is_thread_safe(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    auditor = Auditor(Chain("replica-1"), [JsonLinesSink(path)])
    threads = [
        threading.Thread(target=lambda: [auditor.record(event(i)) for i in range(50)])
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    auditor.close()
    stored = list(read_json_lines(path))
    assert [d["seq"] for d in stored] == list(range(400))
    assert verify_records(stored).ok


# --- resume ---------------------------------------------------------------------------------


def test_resume_chain_from_file_continues_it(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    before = write_file(path, 3)
    chain = resume_chain(path, "replica-1")
    assert chain.next_seq == 3
    write_file(path, 2, chain)
    stored = list(read_json_lines(path))
    assert len(stored) == 5
    assert verify_records(stored).ok
    assert stored[3]["prev"] == before[-1].sha256


def test_resume_chain_starts_fresh_without_file_or_chain(tmp_path: Path) -> None:
    assert resume_chain(tmp_path / "missing.jsonl", "replica-1").next_seq == 0
    path = tmp_path / "audit.jsonl"
    write_file(path, 2)
    assert resume_chain(path, "replica-2").next_seq == 0


def test_resume_refuses_a_tampered_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_file(path, 3)
    lines = path.read_bytes().splitlines()
    path.write_bytes(b"\n".join([lines[0], lines[2]]) + b"\n")
    with pytest.raises(ChainBroken, match="deleted or inserted"):
        resume_chain(path, "replica-1")


def test_file_lines_are_json_objects_with_the_schema(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_file(path, 1)
    stored = json.loads(path.read_text())
    assert set(stored) >= {"seq", "chain", "prev", "sha256", "event", "time", "actor"}
