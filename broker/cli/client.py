"""What every operator command shares: the connection to the broker (mTLS with an operator
certificate), exit codes, and errors that say what to do. See docs/cli.md.

Connection settings come from the global options, then the environment, then the dev PKI::

    --addr HOST:PORT   BROKER_ADDR   127.0.0.1:7443
    --ca FILE          BROKER_CA     .broker-dev/ca.crt               (when it exists)
    --cert FILE        BROKER_CERT   .broker-dev/operator-admin.crt   (when it exists)
    --key FILE         BROKER_KEY    .broker-dev/operator-admin.key   (when it exists)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import grpc

from broker._proto.broker.v1 import admin_pb2_grpc

DEFAULT_ADDR = "127.0.0.1:7443"
DEV_DIR = Path(".broker-dev")
DEV_IDENTITY = "operator-admin"
DEFAULT_TIMEOUT = 10.0

T = TypeVar("T")


class ExitCode(IntEnum):
    """Exit statuses of every ``broker`` command (docs/cli.md)."""

    OK = 0
    ERROR = 1  # anything else: an internal error, a failed check (`audit verify`, `policy test`)
    USAGE = 2  # bad command line or settings (click's own usage errors too); INVALID_ARGUMENT
    NOT_FOUND = 3  # no such task, approval, server...
    DENIED = 4  # PERMISSION_DENIED / UNAUTHENTICATED: this identity may not do that
    UNAVAILABLE = 5  # broker unreachable, timed out, or its store is down
    CONFLICT = 6  # FAILED_PRECONDITION: e.g. an approval already decided, an invalid policy


class CliError(click.ClickException):
    """An error with its exit code and, on a second line, what to do about it."""

    def __init__(self, message: str, code: ExitCode = ExitCode.ERROR, hint: str = "") -> None:
        super().__init__(message)
        self.exit_code = int(code)  # type: ignore[misc]  # click reads it per instance
        self.hint = hint

    def format_message(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


@dataclass
class Settings:
    """The global connection options, resolved lazily (commands that need no broker never fail
    on a missing certificate)."""

    addr: str | None = None
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None
    timeout: float = DEFAULT_TIMEOUT

    def resolved(self) -> tuple[str, Path, Path, Path]:
        addr = self.addr or os.environ.get("BROKER_ADDR") or DEFAULT_ADDR
        ca = self._path(self.ca, "BROKER_CA", DEV_DIR / "ca.crt", "--ca", "the CA bundle")
        cert = self._path(
            self.cert,
            "BROKER_CERT",
            DEV_DIR / f"{DEV_IDENTITY}.crt",
            "--cert",
            "an operator certificate (spiffe://TD/operator/NAME)",
        )
        key = self._path(
            self.key, "BROKER_KEY", DEV_DIR / f"{DEV_IDENTITY}.key", "--key", "its private key"
        )
        return addr, ca, cert, key

    @staticmethod
    def _path(given: Path | None, env: str, dev: Path, flag: str, what: str) -> Path:
        path = given or (Path(os.environ[env]) if os.environ.get(env) else None)
        if path is None:
            if dev.exists():
                return dev
            raise CliError(
                f"no {flag.lstrip('-')} file: pass {flag} FILE or set {env} ({what})",
                ExitCode.USAGE,
                "for the dev broker, run `make dev-pki` (or `make run`) in the repository: "
                f"it writes {dev}",
            )
        if not path.is_file():
            raise CliError(f"{flag} {path}: no such file ({what})", ExitCode.USAGE)
        return path


def settings(ctx: click.Context | None = None) -> Settings:
    ctx = ctx or click.get_current_context()
    found = ctx.find_object(Settings)
    return found if found is not None else Settings()


@contextmanager
def admin_stub(ctx: click.Context | None = None) -> Iterator[admin_pb2_grpc.AdminServiceStub]:
    """An AdminService stub over mTLS with the operator certificate; closed afterwards."""
    s = settings(ctx)
    addr, ca, cert, key = s.resolved()
    try:
        creds = grpc.ssl_channel_credentials(ca.read_bytes(), key.read_bytes(), cert.read_bytes())
    except OSError as exc:
        raise CliError(f"cannot read the TLS files: {exc}", ExitCode.USAGE) from None
    options = [("grpc.ssl_target_name_override", s.server_name)] if s.server_name else []
    with grpc.secure_channel(addr, creds, options=options) as channel:
        yield admin_pb2_grpc.AdminServiceStub(channel)  # type: ignore[no-untyped-call]


def call(fn: Callable[..., T], request: Any, ctx: click.Context | None = None) -> T:
    """One unary RPC with the configured deadline; an RpcError becomes a CliError."""
    s = settings(ctx)
    try:
        return fn(request, timeout=s.timeout)
    except grpc.RpcError as exc:
        fail(exc, s)


def fail(exc: grpc.RpcError, s: Settings | None = None) -> NoReturn:
    """Raise the CliError for ``exc``: its exit code, the broker's message, what to do."""
    s = s or settings()
    addr = s.addr or os.environ.get("BROKER_ADDR") or DEFAULT_ADDR
    code: grpc.StatusCode = exc.code()
    details: str = exc.details() or ""
    text = details.lower()
    if code is grpc.StatusCode.UNAVAILABLE and ("handshake" in text or "certificate" in text):
        raise CliError(
            f"TLS handshake with the broker at {addr} failed",
            ExitCode.UNAVAILABLE,
            "check that --ca (BROKER_CA) is the broker's trust bundle and --cert/--key "
            "(BROKER_CERT/BROKER_KEY) an operator certificate it trusts",
        ) from None
    if code is grpc.StatusCode.UNAVAILABLE and not details.startswith("STORE_UNAVAILABLE"):
        raise CliError(
            f"cannot reach the broker at {addr} ({_short(details)})",
            ExitCode.UNAVAILABLE,
            "is the broker running? Start the dev broker with `make run`, or point --addr "
            "(BROKER_ADDR) at yours",
        ) from None
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        raise CliError(
            f"the broker at {addr} did not answer within {s.timeout:g} s",
            ExitCode.UNAVAILABLE,
            "retry, or raise --timeout; `broker` talks to one replica at a time",
        ) from None
    exit_code, hint = _BY_STATUS.get(code, (ExitCode.ERROR, ""))
    if details.startswith(("ROLE_NOT_ALLOWED", "INVALID_SVID")):
        hint = "use an operator certificate (spiffe://TD/operator/NAME) with --cert/--key"
    raise CliError(details or code.name, exit_code, hint) from None


_BY_STATUS: dict[grpc.StatusCode, tuple[ExitCode, str]] = {
    grpc.StatusCode.NOT_FOUND: (
        ExitCode.NOT_FOUND,
        "list what exists with `broker tasks list` or `broker approvals list --all`",
    ),
    grpc.StatusCode.PERMISSION_DENIED: (ExitCode.DENIED, ""),
    grpc.StatusCode.UNAUTHENTICATED: (ExitCode.DENIED, ""),
    grpc.StatusCode.INVALID_ARGUMENT: (ExitCode.USAGE, "see `broker COMMAND --help`"),
    grpc.StatusCode.FAILED_PRECONDITION: (ExitCode.CONFLICT, ""),
    grpc.StatusCode.UNAVAILABLE: (ExitCode.UNAVAILABLE, "the broker cannot reach its store"),
    grpc.StatusCode.UNIMPLEMENTED: (ExitCode.ERROR, "the broker is older than this CLI"),
    grpc.StatusCode.INTERNAL: (
        ExitCode.ERROR,
        "the broker's log has the details under that correlation id",
    ),
}


def _short(details: str) -> str:
    for marker in ("Connection refused", "Name or service not known", "No route to host"):
        if marker.lower() in details.lower():
            return marker.lower()
    return details.split(";")[0][:120]
