"""The operator CLI's shared edge: where it connects, exit codes, errors that say what to do."""

from __future__ import annotations

from pathlib import Path

import click
import grpc
import pytest
from click.testing import CliRunner

from broker.cli.client import CliError, ExitCode, Settings, fail
from broker.cli.main import cli


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("status", "details", "exit_code", "hint"),
    [
        (grpc.StatusCode.NOT_FOUND, "TASK_NOT_FOUND: task t_x not found", 3, "tasks list"),
        (grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_ALLOWED: x may not", 4, "operator"),
        (grpc.StatusCode.UNAUTHENTICATED, "REVOKED: gone", 4, ""),
        (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST: reason: is required", 2, "--help"),
        (grpc.StatusCode.FAILED_PRECONDITION, "APPROVAL_NOT_PENDING: used", 6, ""),
        (grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE: redis down", 5, "store"),
        (grpc.StatusCode.INTERNAL, "INTERNAL: correlation id 12", 1, "correlation id"),
        (
            grpc.StatusCode.UNAVAILABLE,
            "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:7443: "
            "Failed to connect to remote host: Connection refused",
            5,
            "make run",
        ),
        (grpc.StatusCode.UNAVAILABLE, "Ssl handshake failed: CERTIFICATE_VERIFY_FAILED", 5, "--ca"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", 5, "--timeout"),
    ],
)
def test_status_to_exit_code_and_hint(
    status: grpc.StatusCode, details: str, exit_code: int, hint: str
) -> None:
    with pytest.raises(CliError) as exc:
        fail(FakeRpcError(status, details), Settings(addr="127.0.0.1:7443"))
    assert exc.value.exit_code == exit_code
    assert hint in exc.value.format_message()


def test_exit_codes_are_distinct() -> None:
    assert len({int(c) for c in ExitCode}) == len(ExitCode)


def test_settings_from_flags_env_and_dev_pki(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for var in ("BROKER_ADDR", "BROKER_CA", "BROKER_CERT", "BROKER_KEY"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(CliError) as exc:
        Settings().resolved()
    assert exc.value.exit_code == ExitCode.USAGE and "make dev-pki" in exc.value.format_message()
    dev = tmp_path / ".broker-dev"
    dev.mkdir()
    for name in ("ca.crt", "operator-admin.crt", "operator-admin.key"):
        (dev / name).write_text("x")
    addr, ca, cert, key = Settings().resolved()
    assert (addr, ca.name, cert.name, key.name) == (
        "127.0.0.1:7443",
        "ca.crt",
        "operator-admin.crt",
        "operator-admin.key",
    )
    other = tmp_path / "ops.crt"
    other.write_text("x")
    monkeypatch.setenv("BROKER_ADDR", "broker.internal:443")
    monkeypatch.setenv("BROKER_CERT", str(other))
    addr, _, cert, _ = Settings().resolved()
    assert (addr, cert) == ("broker.internal:443", other)
    assert Settings(addr="10.0.0.1:7443").resolved()[0] == "10.0.0.1:7443"
    with pytest.raises(CliError, match="no such file"):
        Settings(key=tmp_path / "missing.key").resolved()


def test_global_options_reach_the_commands(tmp_path: Path) -> None:
    seen: list[Settings] = []

    @cli.command("_probe", hidden=True)
    @click.pass_context
    def probe(ctx: click.Context) -> None:
        seen.append(ctx.find_object(Settings))  # type: ignore[arg-type]

    try:
        result = CliRunner().invoke(
            cli,
            ["--addr", "h:1", "--timeout", "2.5", "_probe"],
            env={"BROKER_CA": str(tmp_path / "ca.crt")},
        )
    finally:
        cli.commands.pop("_probe")
    assert result.exit_code == 0, result.output
    assert (seen[0].addr, seen[0].ca, seen[0].timeout) == ("h:1", tmp_path / "ca.crt", 2.5)


def test_completion_scripts() -> None:
    for shell in ("bash", "zsh", "fish"):
        result = CliRunner().invoke(cli, ["completion", shell])
        assert result.exit_code == 0 and "_BROKER_COMPLETE" in result.output
