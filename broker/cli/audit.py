"""``broker audit``: verify and export a JSON lines audit file (see docs/audit.md).

Thin: read the file, call ``broker.audit.verify_records`` or filter, print. ``audit tail`` (over
gRPC) lives with the other operator commands.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from broker.audit.record import Head
from broker.audit.sinks import parse_json_line
from broker.audit.verify import verify_records

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


def _lines(path: Path) -> Iterator[tuple[int, bytes, dict[str, Any] | ValueError]]:
    """(line number, raw line without newline, parsed object or the parse error)."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            line = raw.rstrip(b"\n")
            try:
                yield number, line, parse_json_line(line)
            except ValueError as exc:
                yield number, line, exc


@click.group("audit")
def audit() -> None:
    """Verify and export the tamper-evident audit trail."""


@audit.command("verify")
@click.option("--file", "path", type=_FILE, required=True, help="JSON lines audit file.")
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
def verify(path: Path, heads: Sequence[Head], partial: bool) -> None:
    """Check every hash chain in the file; exit 1 naming the first bad record."""
    records: list[dict[str, Any]] = []
    bad_line: tuple[int, ValueError] | None = None
    for number, _raw, parsed in _lines(path):
        if isinstance(parsed, ValueError):
            bad_line = (number, parsed)
            break
        records.append(parsed)
    # With an unreadable line, only the lines before it can be checked; a problem there comes
    # first, otherwise the unreadable line is the first bad record.
    report = verify_records(records, anchors=() if bad_line else heads, partial=partial)
    if report.problem is not None:
        click.echo(f"FAIL: {report.problem}")
        raise SystemExit(1)
    if bad_line is not None:
        click.echo(f"FAIL: malformed: record {bad_line[0]}: {bad_line[1]}")
        raise SystemExit(1)
    click.echo(f"OK: {report.records} records in {len(report.chains)} chains")
    for chain, head in report.heads.items():
        click.echo(f"head {chain}:{head.seq}:{head.sha256}")


@audit.command("export")
@click.option("--file", "path", type=_FILE, required=True, help="JSON lines audit file.")
@click.option("--since", type=SinceParam(), help="Only records at or after this time.")
@click.option("--event", "events", multiple=True, help="Only this event (repeatable).")
@click.option("--task", "tasks", multiple=True, help="Only records of this task (repeatable).")
def export(path: Path, since: float | None, events: Sequence[str], tasks: Sequence[str]) -> None:
    """Print the matching records, as stored, one JSON line each (run `verify` first)."""
    for number, raw, parsed in _lines(path):
        if isinstance(parsed, ValueError):
            click.echo(f"error: line {number}: {parsed}", err=True)
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
