"""decode_unverified keeps decoded headers by their exact bytes: same answers, no shared state."""

from __future__ import annotations

import base64

import orjson
import pytest

from broker.core.errors import Reason, Unauthenticated
from broker.core.tokens import jws
from broker.core.tokens.jws import decode_unverified


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(header: object, payload: object = None) -> str:
    body = orjson.dumps(payload if payload is not None else {"n": 1})
    return f"{b64(orjson.dumps(header))}.{b64(body)}.{b64(b'x' * 64)}"


@pytest.fixture(autouse=True)
def empty_cache() -> None:
    jws._HEADER_CACHE.clear()


def test_cached_header_is_a_copy() -> None:
    t = token({"alg": "ES256", "typ": "task+jwt", "kid": "k1"})
    first = decode_unverified(t).header
    first["alg"] = "none"  # a caller mutating its header must not change the next answer
    assert decode_unverified(t).header == {"alg": "ES256", "typ": "task+jwt", "kid": "k1"}
    assert len(jws._HEADER_CACHE) == 1


def test_refused_header_is_refused_every_time() -> None:
    dup = b'{"alg":"ES256","alg":"none"}'
    t = f"{b64(dup)}.{b64(b'{}')}.{b64(b'x')}"
    for _ in range(2):
        with pytest.raises(Unauthenticated) as exc:
            decode_unverified(t)
        assert exc.value.reason is Reason.MALFORMED_TOKEN
    assert not jws._HEADER_CACHE


def test_headers_with_nested_values_are_not_kept() -> None:
    t = token({"alg": "ES256", "jwk": {"kty": "EC"}})
    assert decode_unverified(t).header["jwk"] == {"kty": "EC"}
    assert not jws._HEADER_CACHE


def test_a_flood_of_headers_stays_bounded() -> None:
    for i in range(3 * jws._HEADER_CACHE_SIZE):
        assert decode_unverified(token({"alg": "ES256", "kid": f"k{i}"})).header["kid"] == f"k{i}"
        assert len(jws._HEADER_CACHE) <= jws._HEADER_CACHE_SIZE
