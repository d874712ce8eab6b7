"""``broker token inspect``: decode a credential WITHOUT trusting it (never needs the network).

It shows what a token claims, for debugging ("why was this rejected?"). Nothing it prints is
checked: not the signature, not the issuer, not the audience, not the expiry. Only a verifier
(``VerifyCredential``, or the offline verifier with the broker's published keys) can say that a
token is genuine; this command says so, loudly, every time.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from broker.cli.client import CliError, ExitCode
from broker.cli.output import emit_json, fields, relative, when
from broker.core.errors import Unauthenticated
from broker.core.tokens.jws import decode_unverified

WARNING = (
    "UNVERIFIED: decoded WITHOUT checking the signature, issuer, audience or expiry. "
    "Anyone can write a token that says this; only a verifier can tell a genuine one."
)


@click.group("token")
def token() -> None:
    """Look inside credentials (offline)."""


@token.command("inspect")
@click.argument("value", required=False, default="-", metavar="[TOKEN|-]")
@click.option("--json", "as_json", is_flag=True, help="Print the header and claims as JSON.")
def inspect(value: str, as_json: bool) -> None:
    """Decode TOKEN (or one read from stdin) without verifying it, and say so."""
    text = sys.stdin.read() if value == "-" else value
    text = text.strip().removeprefix("Bearer ").strip()
    if not text:
        raise CliError("no token given: pass it as an argument or on stdin", ExitCode.USAGE)
    try:
        jws = decode_unverified(text)
    except Unauthenticated as exc:
        raise CliError(f"not a compact JWS: {exc.message}", ExitCode.ERROR) from None
    click.secho(f"WARNING: {WARNING}", fg="red", bold=True, err=True)
    if as_json:
        emit_json({"verified": False, "header": jws.header, "claims": jws.payload})
        return
    fields(_summary(jws.header, jws.payload, time.time()))


def _summary(
    header: dict[str, Any], claims: dict[str, Any], now: float
) -> list[tuple[str, object]]:
    detail: dict[str, Any] = {}
    details = claims.get("authorization_details")
    if isinstance(details, list) and details and isinstance(details[0], dict):
        detail = details[0]
    cnf = claims.get("cnf")
    out: list[tuple[str, object]] = [
        ("verified", "NO (decoded only)"),
        (
            "type",
            f"{header.get('typ', '-')}, alg {header.get('alg', '-')}, kid {header.get('kid', '-')}",
        ),
        ("issuer", claims.get("iss", "-")),
        ("agent (sub)", claims.get("sub", "-")),
        ("server (aud)", claims.get("aud", "-")),
        ("task", claims.get("task", "-")),
        ("jti", claims.get("jti", "-")),
        ("tool", f"{detail.get('tool', '-')} ({detail.get('action', '-')})"),
        ("args_sha256", detail.get("args_sha256", "-")),
        ("tier", claims.get("tier", "-")),
        ("taint", claims.get("taint", "-")),
    ]
    for name in ("iat", "nbf", "exp"):
        value = claims.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out.append((name, f"{when(value)} ({relative(value, now)})"))
    if isinstance(cnf, dict):
        out.append(("bound to cert", f"x5t#S256 {cnf.get('x5t#S256', '-')}"))
    act = claims.get("act")
    chain = []
    while isinstance(act, dict):
        chain.append(str(act.get("sub", "?")))
        act = act.get("act")
    if chain:
        out.append(("delegated by", " <- ".join(chain)))
    exp = claims.get("exp")
    if isinstance(exp, int | float) and exp <= now:
        out.append(("note", "exp has passed: no verifier would accept it anyway"))
    return out
