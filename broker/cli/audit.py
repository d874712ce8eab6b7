"""``broker audit``: verify, export and tail the audit trail (see docs/audit.md).

    broker audit verify (--file PATH | --redis URL [--stream KEY]) [--head ...] [--partial]
    broker audit export (--file PATH | --redis URL [--stream KEY]) [--since T] [--event E] ...
    broker audit tail   [--last N] [-f] [--json] [--redis URL [--stream KEY]]

Thin: read the file or the Redis stream, call ``broker.core.audit.verify_records`` or filter, print.
``tail`` asks the broker (``AdminService.TailAudit``) unless ``--redis`` reads the stream itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from broker.adapters.audit.sinks import parse_json_line
from broker.cli.client import CliError, ExitCode
from broker.core.audit.record import ChainedRecord, Head
from broker.core.audit.verify import verify_records
from broker.core.text import json_safe, printable

_F = TypeVar("_F", bound=Callable[..., Any])

__all__ = ["audit"]

_FILE = click.Path(exists=True, dir_okay=False, readable=True, path_type=Path)


class HeadParam(click.ParamType[Head]):
    """``[CHAIN:]SEQ:SHA256``: an anchor kept somewhere the file's writer cannot reach."""

    name = "[CHAIN:]SEQ:SHA256"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> Head:
        if isinstance(value, Head):
            return value
        try:
            return Head.parse(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class SinceParam(click.ParamType[float]):
    """An ISO 8601 date or time; without a zone it is UTC."""

    name = "ISO-TIME"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            when = datetime.fromisoformat(str(value))
        except ValueError:
            self.fail(f"{value!r} is not an ISO 8601 date or time", param, ctx)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return when.timestamp()


def _parsed(number: int, line: bytes) -> tuple[int, bytes, dict[str, Any] | ValueError]:
    try:
        return number, line, parse_json_line(line)
    except ValueError as exc:
        return number, line, exc


def _lines(path: Path) -> Iterator[tuple[int, bytes, dict[str, Any] | ValueError]]:
    """(line number, raw line without newline, parsed object or the parse error)."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            yield _parsed(number, raw.rstrip(b"\n"))


def _redis_client(url: str) -> tuple[Any, str]:
    """A blocking client for the store URL, and the namespace's audit stream key."""
    from broker.adapters.audit.redis_sink import stream_key
    from broker.adapters.store.factory import open_sync_redis
    from broker.core.errors import ConfigError

    try:
        client, target = open_sync_redis(url, timeout=5.0)
    except ConfigError as exc:
        raise CliError(f"--redis: {exc.message}", ExitCode.USAGE) from None
    return client, stream_key(target.namespace)


def _stream_lines(
    url: str, stream: str | None, ids: list[str]
) -> Iterator[tuple[int, bytes, dict[str, Any] | ValueError]]:
    """Like ``_lines`` for the entries of the Redis stream; their ids are appended to ``ids``."""
    import redis.exceptions

    from broker.adapters.audit.redis_sink import read_stream

    client, default = _redis_client(url)
    try:
        for number, (entry_id, line) in enumerate(read_stream(client, stream or default), 1):
            ids.append(entry_id)
            yield _parsed(number, line)
    except (redis.exceptions.RedisError, OSError) as exc:
        raise CliError(
            f"cannot read the audit stream from Redis: {type(exc).__name__}: {exc}",
            ExitCode.UNAVAILABLE,
            "check --redis (the store URL the broker uses, e.g. redis://host:6379)",
        ) from None
    finally:
        client.close()


def _source_options(command: _F) -> _F:
    options = (
        click.option("--file", "path", type=_FILE, help="A JSON lines audit file."),
        click.option(
            "--redis",
            "redis_url",
            metavar="URL",
            help="Read the Redis audit stream instead: the broker's store URL "
            "(redis://..., redis-cluster://..., ?namespace=NS).",
        ),
        click.option(
            "--stream", metavar="KEY", help="Stream key with --redis [NS:{audit}:stream]."
        ),
    )
    for option in reversed(options):
        command = option(command)
    return command


def _records(
    path: Path | None, redis_url: str | None, stream: str | None, ids: list[str]
) -> Iterator[tuple[int, bytes, dict[str, Any] | ValueError]]:
    if (path is None) == (redis_url is None):
        raise click.UsageError("give exactly one of --file PATH or --redis URL")
    if stream and not redis_url:
        raise click.UsageError("--stream goes with --redis")
    if path is not None:
        return _lines(path)
    assert redis_url is not None
    return _stream_lines(redis_url, stream, ids)


@click.group("audit")
def audit() -> None:
    """Verify, export and tail the tamper-evident audit trail."""


@audit.command("verify")
@_source_options
@click.option(
    "--head",
    "heads",
    type=HeadParam(),
    multiple=True,
    help="Anchor: the record SEQ of the chain (the only one, unless CHAIN is given) must have "
    "this SHA-256. Catches a cut tail. Repeatable.",
)
@click.option(
    "--partial",
    is_flag=True,
    help="Accept chains that do not start at seq 0 (a rotated file).",
)
def verify(
    path: Path | None,
    redis_url: str | None,
    stream: str | None,
    heads: Sequence[Head],
    partial: bool,
) -> None:
    """Check every hash chain in the file or stream; exit 1 naming the first bad record."""
    records: list[dict[str, Any]] = []
    bad_line: tuple[int, ValueError] | None = None
    ids: list[str] = []
    for number, _raw, parsed in _records(path, redis_url, stream, ids):
        if isinstance(parsed, ValueError):
            bad_line = (number, parsed)
            break
        records.append(parsed)
    # With an unreadable line, only the lines before it can be checked; a problem there comes
    # first, otherwise the unreadable line is the first bad record.
    report = verify_records(records, anchors=() if bad_line else heads, partial=partial)
    if report.problem is not None:
        where = report.problem.position
        entry = f" [stream entry {ids[where]}]" if ids and where is not None else ""
        click.echo(f"FAIL: {report.problem}{entry}")
        raise SystemExit(1)
    if bad_line is not None:
        entry = f" [stream entry {ids[bad_line[0] - 1]}]" if ids else ""
        click.echo(f"FAIL: malformed: record {bad_line[0]}: {bad_line[1]}{entry}")
        raise SystemExit(1)
    click.echo(f"OK: {report.records} records in {len(report.chains)} chains")
    for chain, head in report.heads.items():
        click.echo(f"head {chain}:{head.seq}:{head.sha256}")


@audit.command("export")
@_source_options
@click.option("--since", type=SinceParam(), help="Only records at or after this time.")
@click.option("--event", "events", multiple=True, help="Only this event (repeatable).")
@click.option("--task", "tasks", multiple=True, help="Only records of this task (repeatable).")
def export(
    path: Path | None,
    redis_url: str | None,
    stream: str | None,
    since: float | None,
    events: Sequence[str],
    tasks: Sequence[str],
) -> None:
    """Print the matching records, as stored, one JSON line each (run `verify` first)."""
    for number, raw, parsed in _records(path, redis_url, stream, []):
        if isinstance(parsed, ValueError):
            what = "line" if path is not None else "entry"
            click.echo(f"error: {what} {number}: {parsed}", err=True)
            raise SystemExit(1)
        if since is not None:
            when = parsed.get("time")
            if isinstance(when, bool) or not isinstance(when, int | float) or when < since:
                continue
        if events and parsed.get("event") not in events:
            continue
        if tasks and parsed.get("task") not in tasks:
            continue
        click.echo(raw)


@audit.command("tail")
@click.option(
    "--last",
    type=click.IntRange(0, 10_000),
    default=20,
    show_default=True,
    help="Start with the last N records.",
)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new records (Ctrl-C to stop).")
@click.option("--json", "as_json", is_flag=True, help="Print stored JSON lines (verifiable).")
@click.option(
    "--redis",
    "redis_url",
    metavar="URL",
    help="Read the Redis audit stream directly instead of asking the broker.",
)
@click.option("--stream", metavar="KEY", help="Stream key with --redis [NS:{audit}:stream].")
def tail(last: int, follow: bool, as_json: bool, redis_url: str | None, stream: str | None) -> None:
    """Print the most recent audit records (every replica's with the Redis sink)."""
    show = _print_json if as_json else _print_human
    try:
        if redis_url:
            _tail_redis(redis_url, stream, last, follow, show)
        else:
            if stream:
                raise click.UsageError("--stream goes with --redis")
            _tail_grpc(last, follow, show)
    except KeyboardInterrupt:
        return


def _tail_grpc(last: int, follow: bool, show: Callable[[ChainedRecord], None]) -> None:
    import grpc

    from broker._proto.broker.v1 import admin_pb2
    from broker.cli.client import admin_stub, fail, settings

    timeout = None if follow else settings().timeout
    with admin_stub() as stub:
        try:
            for msg in stub.TailAudit(
                admin_pb2.TailAuditRequest(last=last, follow=follow), timeout=timeout
            ):
                body = parse_json_line(msg.json)
                show(ChainedRecord.from_dict({**body, "sha256": msg.sha256}))
        except grpc.RpcError as exc:
            fail(exc)


def _tail_redis(
    url: str, stream: str | None, last: int, follow: bool, show: Callable[[ChainedRecord], None]
) -> None:
    from broker.adapters.audit.redis_sink import follow_stream, last_entries, last_id

    client, default = _redis_client(url)
    key = stream or default
    try:
        entries = last_entries(client, key, last)
        cursor = entries[-1][0] if entries else last_id(client, key)
        while True:
            for entry_id, line in entries:
                cursor = entry_id
                show(ChainedRecord.from_dict(parse_json_line(line)))
            if not follow:
                return
            entries = follow_stream(client, key, cursor)
    finally:
        client.close()


def _print_json(record: ChainedRecord) -> None:
    click.echo(json_safe(record.to_json().decode()))


def _print_human(record: ChainedRecord) -> None:
    b = record.body
    when = datetime.fromtimestamp(float(b.get("time", 0)), UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    call = " ".join(str(b[k]) for k in ("server", "tool") if b.get(k))
    parts = [
        when,
        f"{b.get('event', '?'):<20}",
        str(b.get("actor", "-")),
        str(b.get("task") or "-"),
        call or "-",
        str(b.get("decision") or b.get("outcome") or "-"),
    ]
    if b.get("reason"):
        parts.append(json.dumps(b["reason"], ensure_ascii=False))
    click.echo(printable("  ".join(parts)))  # agent-written text must not act on the terminal
