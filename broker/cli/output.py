"""Output of the operator commands: aligned tables for people, JSON for scripts (``--json``)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
from google.protobuf import json_format
from google.protobuf.message import Message

from broker.core.durations import format_duration
from broker.core.text import printable

F = TypeVar("F", bound=Callable[..., Any])

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON (for scripts) instead of a table."
)


def emit_json(value: Any) -> None:
    """JSON with every non-ASCII character escaped: control characters are escaped by JSON
    anyway, and so are bidi overrides and zero-width characters this way."""
    click.echo(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=True))


def message_dict(msg: Message) -> dict[str, Any]:
    """A message as JSON-ready data with the proto field names (times as RFC 3339 strings)."""
    return json_format.MessageToDict(
        msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Columns padded to their widest cell; the last column is not padded. Every cell is shown
    with its control, bidi and zero-width characters escaped (``broker.core.text``): agents
    write some of them, and must not be able to hide or rewrite what an operator sees."""
    cells = [[printable(str(c)) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    for row in [list(headers), *cells]:
        parts = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        click.echo("  ".join([*parts, row[-1]]).rstrip())


def fields(pairs: Sequence[tuple[str, object]]) -> None:
    """``key: value`` lines with the values aligned."""
    width = max(len(k) for k, _ in pairs)
    for key, value in pairs:
        click.echo(f"{key + ':':<{width + 1}} {printable(str(value))}")


def when(ts: Any, now: float | None = None) -> str:
    """A protobuf Timestamp (or epoch seconds) as ``2026-01-02 03:04:05Z``; '-' when unset."""
    secs = ts if isinstance(ts, int | float) else ts.seconds + ts.nanos / 1e9
    if not secs:
        return "-"
    return datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def relative(ts: Any, now: float) -> str:
    """``in 5m`` / ``3m ago`` from ``now``."""
    secs = ts if isinstance(ts, int | float) else ts.seconds + ts.nanos / 1e9
    if not secs:
        return "-"
    delta = secs - now
    text = format_duration(abs(int(delta)))
    return f"in {text}" if delta >= 0 else f"{text} ago"


def short_id(spiffe_id: str) -> str:
    """``spiffe://dev.local/agent/demo`` -> ``agent/demo`` (one trust domain for all)."""
    if spiffe_id.startswith("spiffe://"):
        rest = spiffe_id[len("spiffe://") :]
        return rest.split("/", 1)[1] if "/" in rest else rest
    return spiffe_id
