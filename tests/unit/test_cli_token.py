"""``broker token inspect``: decodes without trusting, says so loudly, never needs the network."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from broker.cli.main import cli
from broker.core.tokens import mint_token
from tests.support.tokens import JTI, TASK, OneKeyProvider, fixed_key, make_claims


@pytest.fixture
def token() -> str:
    return mint_token(make_claims(), OneKeyProvider(fixed_key()))


def inspect(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    # no --addr/--ca...: it must not need them (nor any network)
    result = CliRunner().invoke(cli, ["token", "inspect", *args], input=stdin)
    return result.exit_code, result.stdout, result.stderr


def test_inspect_shows_the_claims_and_warns(token: str) -> None:
    code, out, err = inspect(token)
    assert code == 0, err
    assert "UNVERIFIED" in err and "WITHOUT checking the signature" in err
    assert "verified:" in out and "NO (decoded only)" in out
    for text in (TASK, JTI, "read_file", "spiffe://test.example/mcp/repo", "x5t#S256"):
        assert text in out
    assert token not in out + err  # the token itself is never echoed


def test_inspect_from_stdin_as_json(token: str) -> None:
    code, out, err = inspect("--json", stdin=f"Bearer {token}\n")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["verified"] is False
    assert doc["header"]["typ"] == "task+jwt" and doc["claims"]["task"] == TASK
    assert "UNVERIFIED" in err


@pytest.mark.parametrize("bad", ["not-a-token", "a.b.c", "e30.e30"])
def test_inspect_refuses_what_is_not_a_jws(bad: str) -> None:
    code, _, err = inspect(bad)
    assert code == 1
    assert "not a compact JWS" in err


def test_inspect_needs_a_token() -> None:
    code, _, err = inspect(stdin="")
    assert code == 2 and "no token given" in err
