"""The guard's JSON-RPC handling: parsing, classifying, telling the protocol revisions apart."""

from __future__ import annotations

import orjson
import pytest

from broker.client.guard import jsonrpc
from broker.client.guard.jsonrpc import ProtocolError, era_of, negotiate, parse
from broker.client.guard.upstream import answer_upstream_request


def msg(**fields: object) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", **fields})


def test_request_notification_response_are_told_apart() -> None:
    request = parse(msg(id=1, method="tools/list"))
    assert request.is_request and not request.is_notification
    note = parse(msg(method="notifications/initialized"))
    assert note.is_notification and note.id is None
    response = parse(msg(id="a", result={}))
    assert response.is_response and response.method is None


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", jsonrpc.PARSE_ERROR),
        (b"[]", jsonrpc.INVALID_REQUEST),  # batches: removed in MCP 2025-06-18
        (orjson.dumps({"id": 1, "method": "ping"}), jsonrpc.INVALID_REQUEST),  # no jsonrpc
        (msg(id=1, method=3), jsonrpc.INVALID_REQUEST),
        (msg(id=True, method="ping"), jsonrpc.INVALID_REQUEST),
        (msg(id=[1], method="ping"), jsonrpc.INVALID_REQUEST),
        (msg(id=1, method="tools/call", params=[1]), jsonrpc.INVALID_PARAMS),
        (msg(id=1), jsonrpc.INVALID_REQUEST),  # neither request nor response
    ],
)
def test_bad_messages_are_refused_with_their_code(body: bytes, code: int) -> None:
    with pytest.raises(ProtocolError) as exc:
        parse(body)
    assert exc.value.code == code


def test_era_of_a_modern_request_from_meta_header_or_discover() -> None:
    meta = {"_meta": {jsonrpc.META_VERSION: "2026-07-28"}}
    assert era_of(parse(msg(id=1, method="tools/list", params=meta)), None) == "2026-07-28"
    assert era_of(parse(msg(id=1, method="tools/list")), "2026-07-28") == "2026-07-28"
    assert era_of(parse(msg(id=1, method="server/discover")), None) == "2026-07-28"


def test_era_of_a_handshake_request() -> None:
    init = parse(msg(id=1, method="initialize", params={"protocolVersion": "2025-06-18"}))
    assert era_of(init, None) == "2025-06-18"
    assert era_of(parse(msg(id=1, method="tools/list")), "2025-03-26") == "2025-03-26"
    assert era_of(parse(msg(id=1, method="tools/list")), None) == jsonrpc.LATEST_HANDSHAKE


def test_negotiate_answers_an_unknown_version_with_the_latest_handshake_one() -> None:
    assert negotiate("2025-11-25") == "2025-11-25"
    assert negotiate("2099-01-01") == jsonrpc.LATEST_HANDSHAKE
    assert negotiate(None) == jsonrpc.LATEST_HANDSHAKE


def test_refusal_names_the_reason_in_message_and_data() -> None:
    err = jsonrpc.refusal(7, jsonrpc.CREDENTIAL_REJECTED, "REPLAYED", "used before")["error"]
    assert err["message"].startswith("REPLAYED: ")
    assert err["data"] == {"domain": "broker.v1", "reason": "REPLAYED"}


def test_requests_from_the_upstream_are_refused_but_ping() -> None:
    assert answer_upstream_request({"id": 4, "method": "ping"})["result"] == {}
    refused = answer_upstream_request({"id": 5, "method": "roots/list"})
    assert refused["error"]["code"] == jsonrpc.METHOD_NOT_FOUND
    assert refused["id"] == 5
