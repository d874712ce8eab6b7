"""Message <-> core type conversion for the servicers (the only place that knows both)."""

from __future__ import annotations

import math
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from broker._proto.broker.v1 import common_pb2, verifier_pb2
from broker.core.canonical import args_sha256
from broker.core.errors import InvalidRequest
from broker.core.model import Taint
from broker.core.tooldefs import PinStatus

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


_NOT_JSON = "NaN and Infinity are not JSON numbers: arguments must be JSON"


def _non_finite(
    value: struct_pb2.Struct | struct_pb2.ListValue | struct_pb2.Value, path: str
) -> str | None:
    """The path of the first NaN or infinite number in ``value``, or None."""
    if isinstance(value, struct_pb2.Struct):
        items = [(f"{path}.{key}", item) for key, item in value.fields.items()]
    elif isinstance(value, struct_pb2.ListValue):
        items = [(f"{path}[{i}]", item) for i, item in enumerate(value.values)]
    else:
        kind = value.WhichOneof("kind")
        if kind == "number_value":
            return None if math.isfinite(value.number_value) else path
        if kind == "struct_value":
            return _non_finite(value.struct_value, path)
        if kind == "list_value":
            return _non_finite(value.list_value, path)
        return None
    for where, item in items:
        found = _non_finite(item, where)
        if found is not None:
            return found
    return None


def digest_of_args(msg: Any) -> str:
    """The args digest of a request with ``oneof args {Struct arguments; string args_sha256}``."""
    which = msg.WhichOneof("args")
    if which == "arguments":
        arguments: struct_pb2.Struct = msg.arguments
        try:
            as_dict = json_format.MessageToDict(arguments)
        except ValueError:  # NaN or Infinity: not JSON; say where
            where = _non_finite(arguments, "arguments") or "arguments"
            raise InvalidRequest(where, _NOT_JSON) from None
        return args_sha256(as_dict)
    if which == "args_sha256":
        return str(msg.args_sha256)
    raise InvalidRequest(
        "arguments",
        "is required: send `arguments` (an object; {} for a call without arguments) "
        "or `args_sha256`",
    )


PIN_STATUS_TO_PB = {
    PinStatus.MATCH: verifier_pb2.PIN_STATUS_MATCH,
    PinStatus.PINNED: verifier_pb2.PIN_STATUS_PINNED,
    PinStatus.CHANGED: verifier_pb2.PIN_STATUS_CHANGED,
    PinStatus.UNKNOWN: verifier_pb2.PIN_STATUS_UNKNOWN,
}
PIN_STATUS_OF_PB = {v: k for k, v in PIN_STATUS_TO_PB.items()}
