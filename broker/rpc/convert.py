"""Message <-> core type conversion for the servicers (the only place that knows both)."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from broker._proto.broker.v1 import common_pb2
from broker.core.canonical import args_sha256
from broker.core.errors import InvalidRequest
from broker.core.model import Taint

TAINT_TO_PB = {
    Taint.CLEAN: common_pb2.TAINT_CLEAN,
    Taint.UNTRUSTED: common_pb2.TAINT_UNTRUSTED,
    Taint.SUSPECT: common_pb2.TAINT_SUSPECT,
}
TAINT_FROM_PB = {v: k for k, v in TAINT_TO_PB.items()}  # TAINT_UNSPECIFIED: absent


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def seconds(ts: timestamp_pb2.Timestamp) -> float:
    return float(ts.ToNanoseconds()) / 1e9


def digest_of_args(msg: Any) -> str:
    """The args digest of a request with ``oneof args {Struct arguments; string args_sha256}``."""
    which = msg.WhichOneof("args")
    if which == "arguments":
        arguments: struct_pb2.Struct = msg.arguments
        return args_sha256(json_format.MessageToDict(arguments))
    if which == "args_sha256":
        return str(msg.args_sha256)
    raise InvalidRequest(
        "arguments",
        "is required: send `arguments` (an object; {} for a call without arguments) "
        "or `args_sha256`",
    )
