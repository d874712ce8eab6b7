"""Issue 6: the audit trail on a real Redis stream and in a JSON lines file.

`broker audit verify` passes on an untouched log and fails, naming the first bad record, when any
record is edited, deleted, inserted or reordered, for the file and for the Redis stream. The
broker writes its records to the stream without blocking, and TailAudit reads them from it.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from broker._proto.broker.v1 import admin_pb2
from broker.adapters.audit import JsonLinesSink, MemorySink
from broker.adapters.audit.redis_sink import RedisStreamSink, read_stream, stream_key
from broker.adapters.store.factory import open_store, open_sync_redis
from broker.adapters.store.memory import MemoryStore
from broker.app.audit import Auditor
from broker.cli.main import cli
from broker.core.errors import ConfigError
from broker.rpc.run import open_audit
from tests.integration.conftest import make_config, start_broker
from tests.integration.helpers import Agent, Server
from tests.integration.operator import admin, broker_cli
from tests.support.audit import event, forge, rehash

pytestmark = pytest.mark.integration

ARGS = {"query": "retry"}


@pytest.fixture
def redis_url(redis_server: str) -> str:
    return f"{redis_server}?namespace=a{uuid.uuid4().hex[:10]}"


@pytest.fixture
def client(redis_url: str) -> Iterator[Any]:
    c, _ = open_sync_redis(redis_url, timeout=3.0)
    try:
        yield c
    finally:
        c.close()


def stream_of(url: str) -> str:
    return stream_key(url.rsplit("namespace=", 1)[1])


def verify(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["audit", "verify", *args])
    return result.exit_code, result.output


# -- the broker on Redis: sink, tail, verify ----------------------------------------------------


async def test_broker_audit_trail_on_the_stream_and_in_a_file(
    pki: Path, redis_url: str, client: Any, tmp_path: Path
) -> None:
    path = tmp_path / "audit.jsonl"
    config = make_config(pki, store=redis_url, **{"audit.sinks": ["redis", f"jsonl:{path}"]})
    store = open_store(redis_url, timeout=3.0)
    opened = open_audit(config, store)  # what `broker serve` builds from audit.sinks
    stream_sink = opened.sinks[0]
    assert isinstance(stream_sink, RedisStreamSink)
    auditor = Auditor(opened.chain, [MemorySink(), *opened.sinks])
    r = await start_broker(pki, store, auditor=auditor)
    try:
        agent, docs = Agent(r.channel("agent-demo")), Server(r.channel("mcp-docs"))
        task = await agent.begin()
        token = await agent.token(task, "docs", "search_docs", ARGS)
        await docs.verify(token, "search_docs", ARGS)
        await agent.end(task)
        assert stream_sink.flush(5)
        written = len(r.sink.records)

        # TailAudit reads the stream (every replica's records), not this process's memory
        got = [m async for m in admin(r).TailAudit(admin_pb2.TailAuditRequest(last=3), timeout=5)]
        assert [m.seq for m in got] == list(range(written - 3, written))
        assert got[-1].chain == opened.chain.chain_id
        tail = await broker_cli(r, "audit", "tail", "--redis", redis_url, "--last", "2", "--json")
        assert [json.loads(x)["seq"] for x in tail.out.splitlines()] == [written - 2, written - 1]
    finally:
        await r.close()
        auditor.close()
        await store.close()

    lines = [line for _, line in read_stream(client, stream_of(redis_url))]
    assert lines == path.read_bytes().splitlines()  # the same records, byte for byte
    for args in (("--redis", redis_url), ("--file", str(path))):
        code, out = verify(*args)
        assert code == 0, out
        assert out.startswith(f"OK: {written} records in 1 chains")
    export = CliRunner().invoke(cli, ["audit", "export", "--redis", redis_url, "--task", task])
    assert export.exit_code == 0
    assert {json.loads(x)["task"] for x in export.output.splitlines()} == {task}


def test_the_redis_sink_needs_a_redis_store(pki: Path) -> None:
    config = make_config(pki, **{"audit.sinks": ["redis"]})
    with pytest.raises(ConfigError) as exc:
        open_audit(config, MemoryStore())
    assert "store" in exc.value.message


# -- tampering: the same four attacks on the file and on the stream -----------------------------

Tamper = Callable[[list[bytes]], list[bytes]]


def _edit(lines: list[bytes]) -> list[bytes]:
    record = json.loads(lines[3])
    record["decision"] = "deny"
    return [*lines[:3], json.dumps(record).encode(), *lines[4:]]


def _delete(lines: list[bytes]) -> list[bytes]:
    return [*lines[:3], *lines[4:]]


def _insert(lines: list[bytes]) -> list[bytes]:
    prev = json.loads(lines[2])["sha256"]
    forged = json.dumps(forge(3, prev, chain="r1")).encode()
    return [*lines[:3], forged, *lines[3:]]


def _reorder(lines: list[bytes]) -> list[bytes]:
    return [*lines[:3], lines[4], lines[3], *lines[5:]]


def _rewrite(lines: list[bytes]) -> list[bytes]:  # an edit with the hash recomputed
    return [
        *lines[:3],
        json.dumps(rehash({**json.loads(lines[3]), "reason": "x"})).encode(),
        *lines[4:],
    ]


ATTACKS: dict[str, tuple[Tamper, str]] = {
    "edited": (_edit, "edited: record 4 (chain r1, seq 3): hash mismatch"),
    "deleted": (_delete, "deleted or inserted: record 4 (chain r1, seq 4): seq 4 follows seq 2"),
    "inserted": (_insert, "inserted: record 4 (chain r1, seq 3)"),
    "reordered": (_reorder, "reordered: record 4 (chain r1, seq 4): appears before seq 3"),
    "rewritten": (_rewrite, "edited: record 4 (chain r1, seq 3): rewritten with a recomputed hash"),
}


@pytest.fixture
def trail(tmp_path: Path, redis_url: str, client: Any) -> tuple[Path, str]:
    """Eight records of chain r1, written by one Auditor to a file and to the stream."""
    path = tmp_path / "audit.jsonl"
    namespace = redis_url.rsplit("namespace=", 1)[1]
    sink = RedisStreamSink(client, namespace=namespace)
    auditor = Auditor("r1", [JsonLinesSink(path), sink])
    for i in range(8):
        auditor.record(event(i))
    assert sink.flush(5)
    auditor.close()
    return path, namespace


@pytest.mark.parametrize("backend", ["file", "redis"])
@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_verify_names_the_first_bad_record(
    trail: tuple[Path, str], redis_url: str, client: Any, backend: str, attack: str
) -> None:
    path, namespace = trail
    args = ("--file", str(path)) if backend == "file" else ("--redis", redis_url)
    code, out = verify(*args)
    assert code == 0, out
    tamper, expected = ATTACKS[attack]
    if backend == "file":
        path.write_bytes(b"\n".join(tamper(path.read_bytes().splitlines())) + b"\n")
    else:
        key = stream_key(namespace)
        entries = list(read_stream(client, key))
        if attack == "deleted":  # what an attacker with access to Redis would do: XDEL
            client.xdel(key, entries[3][0])
        else:  # a stream cannot be edited in place: rebuild it
            client.delete(key)
            for line in tamper([line for _, line in entries]):
                client.xadd(key, {"r": line})
    code, out = verify(*args)
    assert code == 1, out
    assert out.startswith(f"FAIL: {expected}"), out
    if backend == "redis":
        assert "[stream entry " in out


# -- the sink never blocks, counts and logs its failures ----------------------------------------


def test_a_retried_batch_is_not_written_twice(redis_url: str, client: Any) -> None:
    namespace = redis_url.rsplit("namespace=", 1)[1]
    sink = RedisStreamSink(client, namespace=namespace)
    auditor = Auditor("r1", [sink])
    records = [auditor.record(event(i)) for i in range(3)]
    assert sink.flush(5)
    sink._send(records)  # a retry after a timeout that had in fact been written
    auditor.close()
    assert [json.loads(x)["seq"] for _, x in read_stream(client, stream_key(namespace))] == [
        0,
        1,
        2,
    ]
    assert client.hget(f"{namespace}:{{audit}}:heads", "r1").decode() == f"2:{records[2].sha256}"


def test_redis_down_never_blocks_the_caller(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "broker.core.audit")
    dead, _ = open_sync_redis("redis://127.0.0.1:1", timeout=0.2)
    sink = RedisStreamSink(dead, queue_size=5)
    auditor = Auditor("r1", [sink])
    start = time.monotonic()
    for i in range(20):
        auditor.record(event(i))
    assert time.monotonic() - start < 0.2  # the event loop would not notice
    # the queue holds 5 and the writer at most one batch it took from it: the rest were
    # refused, counted and logged
    assert auditor.failures >= 10
    assert not sink.flush(0.3)
    deadline = time.monotonic() + 5
    while sink.failures == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sink.failures >= 1
    sink.close(timeout=0.2)  # gives up on what Redis never took: counted as dropped
    auditor.close()
    assert sink.dropped == 20
    text = caplog.text
    assert "AuditQueueFull" in text and "cannot append" in text
    assert "step " not in text  # never a record's content in the log


async def test_the_stream_on_a_redis_cluster(redis_cluster: str) -> None:
    url = f"{redis_cluster}?namespace=c{uuid.uuid4().hex[:10]}"
    client, target = open_sync_redis(url, timeout=3.0)
    sink = RedisStreamSink(client, namespace=target.namespace, block=0.05)
    auditor = Auditor("r1", [sink])
    for i in range(5):
        auditor.record(event(i))
    assert sink.flush(5)
    tail = [r.seq async for r in sink.source().tail(2, False)]
    assert tail == [3, 4]
    auditor.close()
    client.close()
    code, out = verify("--redis", url)
    assert code == 0 and out.startswith("OK: 5 records in 1 chains"), out
