"""Compact JWS: strict parsing (decode_unverified), serialization, the two signature encodings."""

from __future__ import annotations

import base64
import os

import orjson
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from hypothesis import given
from hypothesis import strategies as st

from broker.core.errors import Reason, Unauthenticated
from broker.core.tokens.jws import (
    EDDSA,
    ES256,
    MAX_TOKEN_BYTES,
    b64url_decode,
    b64url_encode,
    decode_unverified,
    es256_low_s,
    es256_verify,
    sign_compact,
)
from tests.support.tokens import fixed_key, fixed_private_key

HEADER = {"alg": ES256, "typ": "task+jwt", "kid": "k1"}
PAYLOAD = {"sub": "spiffe://test.example/agent/coder", "n": 1, "nested": {"a": [1, 2]}}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def malformed(token: str) -> str:
    with pytest.raises(Unauthenticated) as caught:
        decode_unverified(token)
    assert caught.value.reason is Reason.MALFORMED_TOKEN
    return caught.value.message


@pytest.mark.parametrize("size", range(1, 40))
def test_b64url_round_trip(size: int) -> None:
    data = os.urandom(size)
    encoded = b64url_encode(data)
    assert "=" not in encoded
    assert b64url_decode(encoded) == data
    assert b64url_decode(encoded.encode()) == data


@pytest.mark.parametrize(
    ("segment", "problem"),
    [
        ("", "is empty"),
        ("A", "is not unpadded base64url"),
        ("YQ==", "is not unpadded base64url"),
        ("YQ=", "is not unpadded base64url"),
        ("Y+Qa", "is not unpadded base64url"),
        ("Y/Qa", "is not unpadded base64url"),
        ("Y Qa", "is not unpadded base64url"),
        ("YQa\n", "is not unpadded base64url"),
        ("Y\u00e9Qa", "is not unpadded base64url"),
        ("YR", "non-zero trailing bits"),
        ("YWJ", "non-zero trailing bits"),
    ],
)
def test_b64url_decode_is_strict(segment: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        b64url_decode(segment)


def test_sign_compact_round_trip() -> None:
    key = fixed_key(ES256)
    token = sign_compact(HEADER, PAYLOAD, key.sign)
    header, payload, signing_input, signature = decode_unverified(token)
    assert header == HEADER
    assert payload == PAYLOAD
    assert signing_input == token.rsplit(".", 1)[0].encode()
    assert len(signature) == 64
    key.public_key.verify(signing_input, signature)


def test_sign_compact_uses_compact_json() -> None:
    token = sign_compact(HEADER, PAYLOAD, lambda _: b"sig")
    assert b64url_decode(token.split(".")[0]) == orjson.dumps(HEADER)
    assert b" " not in b64url_decode(token.split(".")[1])


def test_sign_compact_refuses_oversized_tokens() -> None:
    with pytest.raises(ValueError, match="8192"):
        sign_compact(HEADER, {"pad": "x" * MAX_TOKEN_BYTES}, lambda _: b"sig")


def test_es256_signature_is_raw_r_s() -> None:
    """RFC 7518 §3.4: 32-byte big-endian r then s, checked against cryptography's own DER."""
    private = fixed_private_key(ES256, "primary")
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    key = fixed_key(ES256)
    data = b"signing input"
    signature = key.sign(data)
    assert len(signature) == 64
    der = encode_dss_signature(
        int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    )
    private.public_key().verify(der, data, ec.ECDSA(hashes.SHA256()))
    # and the other way: an independently made DER signature, converted to low-S, verifies
    r, s = decode_dss_signature(private.sign(data, ec.ECDSA(hashes.SHA256())))
    raw = es256_low_s(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
    es256_verify(private.public_key(), data, raw)


def test_es256_signatures_are_low_s_and_high_s_is_refused() -> None:
    """Issue 13 item 13: (r, n - s) verifies under plain ECDSA; ours are low-S, and the other
    spelling of the same signature is refused, so a token has exactly one valid form."""
    from broker.core.errors import Reason, Unauthenticated
    from broker.core.tokens.jws import P256_N

    private = fixed_private_key(ES256, "primary")
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    key = fixed_key(ES256)
    for i in range(40):  # about half of raw ECDSA signatures are high-S
        data = f"input {i}".encode()
        signature = key.sign(data)
        s = int.from_bytes(signature[32:], "big")
        assert s <= P256_N // 2
        es256_verify(private.public_key(), data, signature)
        twin = signature[:32] + (P256_N - s).to_bytes(32, "big")
        der = encode_dss_signature(int.from_bytes(twin[:32], "big"), P256_N - s)
        private.public_key().verify(der, data, ec.ECDSA(hashes.SHA256()))  # valid ECDSA...
        with pytest.raises(Unauthenticated) as refused:  # ...but not a token of ours
            es256_verify(private.public_key(), data, twin)
        assert refused.value.reason is Reason.BAD_SIGNATURE
        assert es256_low_s(twin) == signature


def test_es256_signatures_with_short_r_are_padded() -> None:
    key = fixed_key(ES256)
    for i in range(300):  # r or s below 2**248 happens about 1 time in 128
        data = f"input {i}".encode()
        signature = key.sign(data)
        assert len(signature) == 64
        key.public_key.verify(data, signature)


def test_eddsa_signature() -> None:
    key = fixed_key(EDDSA)
    signature = key.sign(b"x")
    assert len(signature) == 64
    assert signature == key.sign(b"x")  # Ed25519 is deterministic
    key.public_key.verify(b"x", signature)
    with pytest.raises(Unauthenticated) as caught:
        key.public_key.verify(b"y", signature)
    assert caught.value.reason is Reason.BAD_SIGNATURE


def test_size_is_checked_before_anything_else() -> None:
    # non-ASCII and one part only: the size check must be the one that answers
    assert (
        malformed("\u00e9" * (MAX_TOKEN_BYTES + 1))
        == f"token is longer than {MAX_TOKEN_BYTES} bytes"
    )


def test_largest_token_is_accepted() -> None:
    token = sign_compact(HEADER, {"p": ""}, lambda _: b"s")
    room = MAX_TOKEN_BYTES - len(token)
    payload = {"p": "x" * (room * 3 // 4 - 2)}
    token = sign_compact(HEADER, payload, lambda _: b"s")
    assert MAX_TOKEN_BYTES - 4 <= len(token) <= MAX_TOKEN_BYTES
    assert decode_unverified(token).payload == payload


def test_not_a_string() -> None:
    assert malformed(b"a.b.c") == "token must be a string"  # type: ignore[arg-type]


def test_empty_signature_is_returned_empty() -> None:
    token = sign_compact(HEADER, PAYLOAD, lambda _: b"")
    assert token.endswith(".")
    assert decode_unverified(token).signature == b""


@pytest.mark.parametrize(
    "raw",
    [
        b'{"alg":"ES256","alg":"none"}',
        b'{"a":1, "a":1}',
    ],
)
def test_duplicate_header_members(raw: bytes) -> None:
    assert malformed(f"{b64(raw)}.{b64(b'{}')}.AA") == "header has duplicate member names"


def test_duplicate_members_nested_in_payload() -> None:
    raw = b'{"authorization_details":[{"tool":"read_file","tool":"deploy"}]}'
    assert malformed(f"{b64(orjson.dumps(HEADER))}.{b64(raw)}.AA") == (
        "payload has duplicate member names"
    )


def test_whitespace_in_json_is_fine_without_duplicates() -> None:
    raw = b'{ "sub" : "x",\n "n": 1.50 }'
    token = f"{b64(orjson.dumps(HEADER))}.{b64(raw)}.AA"
    assert decode_unverified(token).payload == {"sub": "x", "n": 1.5}


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"", "payload is empty"),
        (b"[]", "payload is not a JSON object"),
        (b'"text"', "payload is not a JSON object"),
        (b"{", "payload is not JSON"),
        (b'{"a":NaN}', "payload is not JSON"),
        (b'{"a":"\xff"}', "payload is not JSON"),
    ],
)
def test_payload_must_be_a_json_object(raw: bytes, problem: str) -> None:
    segment = b64(raw) if raw else ""
    assert malformed(f"{b64(orjson.dumps(HEADER))}.{segment}.AA") == problem


@pytest.mark.parametrize("space", [b"", b" "], ids=["compact", "spaced"])
@pytest.mark.parametrize("depth", [100, 300, 999, 5000])
def test_deep_nesting_is_malformed_not_a_crash(depth: int, space: bytes) -> None:
    raw = b'{"a":' + space + b"[" * depth + b"]" * depth + b"}"
    token = f"{b64(orjson.dumps(HEADER))}.{b64(raw)}.AA"
    if len(token) > MAX_TOKEN_BYTES:
        assert "longer than" in malformed(token)
    elif depth < 200:
        assert decode_unverified(token).payload == {"a": orjson.loads(raw)["a"]}
    else:
        assert malformed(token) in ("payload is nested too deeply", "payload is not JSON")


def reason_of(token: str) -> Reason | None:
    try:
        decode_unverified(token)
    except Unauthenticated as exc:
        return exc.reason
    return None


@given(st.text(max_size=200))
def test_decode_unverified_rejects_text_only_as_malformed(text: str) -> None:
    assert reason_of(text) in (None, Reason.MALFORMED_TOKEN)


@given(st.binary(max_size=64), st.binary(max_size=64), st.binary(max_size=64))
def test_decode_unverified_on_arbitrary_segments(h: bytes, p: bytes, s: bytes) -> None:
    token = f"{b64(h)}.{b64(p)}.{b64(s)}"
    reason = reason_of(token)
    assert reason in (None, Reason.MALFORMED_TOKEN)
    if reason is None:
        parts = decode_unverified(token)
        assert isinstance(parts.header, dict)
        assert isinstance(parts.payload, dict)
        assert parts.signature == s
