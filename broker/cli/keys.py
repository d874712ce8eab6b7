"""``broker keys list|rotate`` and ``broker policy reload``: the broker's signing keys and its
policy set, on the replica the CLI reaches.

Rotation makes a new key sign from now on; the old one stays published (JWKS) until every token
it signed has expired, so nothing in flight breaks.
"""

from __future__ import annotations

import time

import click

from broker._proto.broker.v1 import admin_pb2
from broker.cli.client import admin_stub, call
from broker.cli.output import emit_json, json_option, message_dict, relative, table, when


@click.group("keys")
def keys() -> None:
    """The token signing keys: list and rotate."""


def _rows(found: list[admin_pb2.SigningKey]) -> None:
    now = time.time()
    transit = any(k.transit_version for k in found)
    table(
        (
            "KID",
            *(("TRANSIT",) if transit else ()),
            "ALG",
            "STATUS",
            "CREATED",
            "RETIRED",
            "PUBLISHED UNTIL",
            "REPLICA",
        ),
        [
            (
                k.kid,
                *((f"v{k.transit_version}" if k.transit_version else "-",) if transit else ()),
                k.alg,
                _status(k),
                when(k.created_at),
                when(k.retired_at),
                "-" if k.active else relative(k.publish_until, now),
                k.replica or "this one",
            )
            for k in found
        ],
    )


def _status(k: admin_pb2.SigningKey) -> str:
    if k.active:
        return "active"
    if k.replica:
        return "published"  # another replica's key: it verifies here
    if not k.HasField("retired_at"):
        return "next"  # Transit, pre-published: signs once its activation delay has passed
    return "retired"


@keys.command("list")
@json_option
def list_keys(as_json: bool) -> None:
    """List the published keys: the active one signs, retired ones still verify."""
    with admin_stub() as stub:
        resp = call(stub.ListSigningKeys, admin_pb2.ListSigningKeysRequest())
    if as_json:
        emit_json([message_dict(k) for k in resp.keys])
        return
    _rows(list(resp.keys))


@keys.command("rotate")
@json_option
def rotate(as_json: bool) -> None:
    """Make a new key active now; the old one stays published until its tokens expired."""
    with admin_stub() as stub:
        resp = call(stub.RotateSigningKey, admin_pb2.RotateSigningKeyRequest())
    if as_json:
        emit_json(message_dict(resp.key))
        return
    click.echo(f"rotated: {resp.key.kid} ({resp.key.alg}) signs from now on")


@click.command("reload")
@json_option
def reload_policy(as_json: bool) -> None:
    """Make the running broker re-read its policy files (an invalid set is refused, the old
    one stays in force)."""
    with admin_stub() as stub:
        resp = call(stub.ReloadPolicy, admin_pb2.ReloadPolicyRequest())
    if as_json:
        emit_json(message_dict(resp))
        return
    click.echo(f"reloaded: {resp.policies} policies, digest sha256:{resp.digest}")
