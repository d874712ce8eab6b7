"""``broker audit verify`` and ``broker audit export`` on JSON lines files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from broker.adapters.audit import JsonLinesSink
from broker.cli.audit import audit
from broker.core.audit import AuditEvent, Chain
from tests.support.audit import AGENT, T0, event, rehash


@pytest.fixture
def audit_file(tmp_path: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    sink = JsonLinesSink(path)
    a, b = Chain("replica-a"), Chain("replica-b")
    for i in range(6):
        sink.write((a if i % 2 == 0 else b).append(event(i, task=f"t_{'A' * 21}{i % 3}")))
    sink.close()
    return path


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(audit, list(args))
    return result.exit_code, result.output


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def test_verify_ok(audit_file: Path) -> None:
    code, out = run("verify", "--file", str(audit_file))
    assert code == 0, out
    assert out.splitlines()[0] == "OK: 6 records in 2 chains"
    assert "head replica-a:2:" in out


def test_verify_names_an_edited_record(audit_file: Path) -> None:
    data = lines(audit_file)
    record = json.loads(data[3])
    record["decision"] = "deny"
    data[3] = json.dumps(record).encode()
    audit_file.write_bytes(b"\n".join(data) + b"\n")
    code, out = run("verify", "--file", str(audit_file))
    assert code == 1
    assert out.startswith("FAIL: edited: record 4 (chain replica-b, seq 1): hash mismatch")


def test_verify_names_a_deleted_record(audit_file: Path) -> None:
    data = lines(audit_file)
    del data[2]
    audit_file.write_bytes(b"\n".join(data) + b"\n")
    code, out = run("verify", "--file", str(audit_file))
    assert code == 1
    assert "deleted or inserted: record 4 (chain replica-a, seq 2): seq 2 follows seq 0" in out


def test_verify_names_a_forged_rewrite(audit_file: Path) -> None:
    data = lines(audit_file)
    data[0] = json.dumps(rehash({**json.loads(data[0]), "decision": "deny"})).encode()
    audit_file.write_bytes(b"\n".join(data) + b"\n")
    code, out = run("verify", "--file", str(audit_file))
    assert code == 1
    assert "edited: record 1 (chain replica-a, seq 0): rewritten" in out


def test_verify_with_head_catches_a_cut_tail(audit_file: Path) -> None:
    data = lines(audit_file)
    last = json.loads(data[-1])
    head = f"{last['chain']}:{last['seq']}:{last['sha256']}"
    assert run("verify", "--file", str(audit_file), "--head", head)[0] == 0
    audit_file.write_bytes(b"\n".join(data[:-1]) + b"\n")
    assert run("verify", "--file", str(audit_file))[0] == 0  # the chain alone cannot tell
    code, out = run("verify", "--file", str(audit_file), "--head", head)
    assert code == 1
    assert "truncated: chain replica-b ends at seq 1, before the anchor at seq 2" in out
    code, out = run("verify", "--file", str(audit_file), "--head", f"1:{last['sha256']}")
    assert code == 1
    assert "truncated" in out


@pytest.mark.parametrize("head", ["nonsense", "x:abc", "3:" + "z" * 64])
def test_verify_rejects_a_bad_head(audit_file: Path, head: str) -> None:
    code, out = run("verify", "--file", str(audit_file), "--head", head)
    assert code == 2
    assert "--head" in out


def test_verify_names_an_unreadable_line(audit_file: Path) -> None:
    data = lines(audit_file)
    data[4] = data[4][:20]
    audit_file.write_bytes(b"\n".join(data) + b"\n")
    code, out = run("verify", "--file", str(audit_file))
    assert code == 1
    assert out.startswith("FAIL: malformed: record 5")


def test_verify_reports_an_earlier_problem_before_an_unreadable_line(audit_file: Path) -> None:
    data = lines(audit_file)
    del data[0]
    data[4] = b"not json"
    audit_file.write_bytes(b"\n".join(data) + b"\n")
    code, out = run("verify", "--file", str(audit_file))
    assert code == 1
    assert "record 2 (chain replica-a, seq 1)" in out


def test_verify_partial_accepts_a_rotated_file(audit_file: Path) -> None:
    audit_file.write_bytes(b"\n".join(lines(audit_file)[2:]) + b"\n")
    assert run("verify", "--file", str(audit_file))[0] == 1
    assert run("verify", "--file", str(audit_file), "--partial")[0] == 0


def test_export_everything_is_the_file(audit_file: Path) -> None:
    code, out = run("export", "--file", str(audit_file))
    assert code == 0
    assert out.encode() == audit_file.read_bytes()


def test_export_filters(audit_file: Path) -> None:
    code, out = run("export", "--file", str(audit_file), "--event", "task.begin")
    assert code == 0
    assert [json.loads(x)["event"] for x in out.splitlines()] == ["task.begin", "task.begin"]
    task = "t_" + "A" * 21 + "1"
    code, out = run("export", "--file", str(audit_file), "--task", task)
    assert {json.loads(x)["task"] for x in out.splitlines()} == {task}
    assert len(out.splitlines()) == 2
    code, out = run(
        "export", "--file", str(audit_file), "--task", task, "--event", "credential.decision"
    )
    assert [json.loads(x)["seq"] for x in out.splitlines()] == [0]


@pytest.mark.parametrize(
    ("since", "count"),
    [
        ("2027-01-15T08:00:00+00:00", 6),  # T0 is 2027-01-15T08:00:00Z
        ("2027-01-15T08:00:01Z", 2),
        ("2027-01-15T08:00:01", 2),  # no zone: UTC
        ("2030-01-01", 0),
    ],
)
def test_export_since(audit_file: Path, since: str, count: int) -> None:
    code, out = run("export", "--file", str(audit_file), "--since", since)
    assert code == 0, out
    assert len(out.splitlines()) == count


def test_export_rejects_a_bad_time(audit_file: Path) -> None:
    code, out = run("export", "--file", str(audit_file), "--since", "yesterday")
    assert code == 2
    assert "ISO 8601" in out


def test_export_fails_on_an_unreadable_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = JsonLinesSink(path)
    sink.write(Chain("c").append(AuditEvent("task.begin", T0, AGENT)))
    sink.close()
    with path.open("ab") as f:
        f.write(b"{broken\n")
    result = CliRunner().invoke(audit, ["export", "--file", str(path)])
    assert result.exit_code == 1
    assert "line 2" in result.stderr
