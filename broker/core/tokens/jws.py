"""JWS compact serialization (RFC 7515) with the broker's two algorithms (RFC 7518, RFC 8037).

- https://www.rfc-editor.org/rfc/rfc7515 (JWS; compact form ``BASE64URL(header).BASE64URL(payload).
  BASE64URL(signature)``, base64url without padding, RFC 7515 §2)
- https://www.rfc-editor.org/rfc/rfc7518#section-3.4 (ES256: ECDSA P-256 SHA-256, the signature is
  the raw 64-byte ``r || s``, not DER)
- https://www.rfc-editor.org/rfc/rfc8037#section-3.1 (EdDSA with Ed25519)

Built directly on ``cryptography`` and ``orjson``: no JWT library, so that the token core is small
enough to read in one sitting and costs little beyond the signature itself (see PERF-NOTES.md).

``decode_unverified`` parses without checking anything cryptographic; its only caller that decides
anything is ``broker.core.tokens.verify.verify_token``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from broker.core.errors import Reason, Unauthenticated

ES256 = "ES256"
EDDSA = "EdDSA"
SUPPORTED_ALGS: frozenset[str] = frozenset({ES256, EDDSA})

MAX_TOKEN_BYTES = 8 * 1024
"""Tokens longer than this are rejected before any decoding."""

SIGNATURE_BYTES = 64  # both ES256 (r || s, 32 bytes each) and Ed25519

_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
_B64URL_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_B64URL_VALUE = bytes(_B64URL_ALPHABET.find(bytes([i])) % 64 for i in range(256))
_UNUSED_BITS = {2: 0x0F, 3: 0x03}  # a last character carrying 4 or 2 bits of padding
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())


class UnverifiedJWS(NamedTuple):
    """The parts of a compact JWS whose signature has NOT been checked."""

    header: dict[str, Any]
    payload: dict[str, Any]
    signing_input: bytes
    signature: bytes


def _malformed(message: str) -> Unauthenticated:
    return Unauthenticated(message, Reason.MALFORMED_TOKEN)


def b64url_encode(data: bytes) -> str:
    """Base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(data: bytes | str) -> bytes:
    """Strict base64url decoding (RFC 7515 §2): urlsafe alphabet only, no padding, no whitespace,
    and only the one canonical spelling of each byte string (unused trailing bits must be zero).
    Raises ``ValueError`` saying what is wrong."""
    segment = data.encode("ascii", "replace") if isinstance(data, str) else data
    if not segment:
        raise ValueError("is empty")
    rem = len(segment) % 4
    # Map the urlsafe alphabet onto the standard one, deleting the characters that would then be
    # ambiguous ("+", "/") or are padding ("="); the strict decoder rejects everything else.
    std = segment.translate(_TO_STANDARD, b"+/=")
    if rem == 1 or len(std) != len(segment):
        raise ValueError("is not unpadded base64url")
    try:
        raw = binascii.a2b_base64(std + b"=" * (-rem % 4), strict_mode=True)
    except binascii.Error:
        raise ValueError("is not unpadded base64url") from None
    if rem and _B64URL_VALUE[segment[-1]] & _UNUSED_BITS[rem]:
        raise ValueError("is not canonical base64url (non-zero trailing bits)")
    return raw


def _segment(segment: bytes, what: str) -> bytes:
    try:
        return b64url_decode(segment)
    except ValueError as exc:
        raise _malformed(f"{what} {exc}") from None


class _DuplicateMember(ValueError):
    pass


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _DuplicateMember
    return obj


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _malformed(f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise _malformed(f"{what} is not a JSON object")
    # RFC 7515 §4 / RFC 7519 §4: duplicate member names are rejected, so that no two parsers can
    # read different claims out of the same signed bytes. orjson keeps the last duplicate, so:
    # when re-serializing gives back the exact input (always true for tokens minted here) there
    # was no duplicate; otherwise check with a parser that sees every member.
    try:
        exact = orjson.dumps(value) == raw
    except TypeError:  # deeper than orjson writes (~250 levels): never a token of ours
        raise _malformed(f"{what} is nested too deeply") from None
    if not exact:
        try:
            json.loads(raw, object_pairs_hook=_reject_duplicates)
        except _DuplicateMember:
            raise _malformed(f"{what} has duplicate member names") from None
        except (ValueError, RecursionError):  # what orjson took but json refuses (deep nesting)
            raise _malformed(f"{what} is not JSON") from None
    return value


# Every token signed by one key has the same header segment: decoding it once per key saves a
# base64 and a JSON pass per verification (measured: ~2 us of ~12 us for decode_unverified).
# Only small headers whose values are all strings are kept (callers get a copy), at most
# _HEADER_CACHE_SIZE of them: a flood of distinct headers only empties the cache.
_HEADER_CACHE: dict[bytes, dict[str, Any]] = {}
_HEADER_CACHE_SIZE = 64
_HEADER_CACHE_MAX_BYTES = 256


def _header(h64: bytes) -> dict[str, Any]:
    cached = _HEADER_CACHE.get(h64)
    if cached is not None:
        return dict(cached)
    header = _json_object(_segment(h64, "header"), "header")
    if len(h64) <= _HEADER_CACHE_MAX_BYTES and all(type(v) is str for v in header.values()):
        if len(_HEADER_CACHE) >= _HEADER_CACHE_SIZE:
            _HEADER_CACHE.clear()
        _HEADER_CACHE[h64] = dict(header)
    return header


def decode_unverified(token: str) -> UnverifiedJWS:
    """Split and decode a compact JWS WITHOUT verifying its signature.

    Raises ``Unauthenticated(MALFORMED_TOKEN)`` for anything that is not a well-formed compact JWS
    with a JSON-object header and payload: oversized input (checked first, before any decoding),
    non-ASCII, not exactly three parts, an empty header or payload, bad base64url, non-JSON,
    duplicate members. An empty signature is returned as ``b""`` (RFC 7515 allows it for
    ``"alg": "none"``), so that the verifier can name the algorithm it refuses.
    """
    if not isinstance(token, str):
        raise _malformed("token must be a string")
    if len(token) > MAX_TOKEN_BYTES:
        raise _malformed(f"token is longer than {MAX_TOKEN_BYTES} bytes")
    try:
        data = token.encode("ascii")
    except UnicodeEncodeError:
        raise _malformed("token contains non-ASCII characters") from None
    parts = data.split(b".")
    if len(parts) != 3:
        raise _malformed(f"a compact JWS has 3 dot-separated parts, this has {len(parts)}")
    h64, p64, s64 = parts
    header = _header(h64)
    payload = _json_object(_segment(p64, "payload"), "payload")
    signature = _segment(s64, "signature") if s64 else b""  # empty: an "alg": "none" token
    return UnverifiedJWS(header, payload, data[: len(h64) + 1 + len(p64)], signature)


def sign_compact(
    header: dict[str, Any], payload: dict[str, Any], signer: Callable[[bytes], bytes]
) -> str:
    """Serialize ``header`` and ``payload`` (compact JSON, orjson) and sign them with ``signer``,
    which maps the JWS signing input to the JWS signature bytes."""
    signing_input = _signing_input(header, payload)
    return _compact(signing_input, signer(signing_input))


async def sign_compact_async(
    header: dict[str, Any], payload: dict[str, Any], signer: Callable[[bytes], Awaitable[bytes]]
) -> str:
    """``sign_compact`` with a signer that is awaited (a remote key: Vault Transit)."""
    signing_input = _signing_input(header, payload)
    return _compact(signing_input, await signer(signing_input))


def _signing_input(header: dict[str, Any], payload: dict[str, Any]) -> bytes:
    return (
        base64.urlsafe_b64encode(orjson.dumps(header)).rstrip(b"=")
        + b"."
        + base64.urlsafe_b64encode(orjson.dumps(payload)).rstrip(b"=")
    )


def _compact(signing_input: bytes, signature: bytes) -> str:
    token = signing_input.decode("ascii") + "." + b64url_encode(signature)
    if len(token) > MAX_TOKEN_BYTES:
        raise ValueError(f"token would be {len(token)} bytes, above the {MAX_TOKEN_BYTES} limit")
    return token


# JWA primitives (RFC 7518 §3.4, RFC 8037 §3.1). Verifiers raise Unauthenticated(BAD_SIGNATURE).


# The order of P-256. ECDSA signatures are malleable: (r, n - s) verifies as well as (r, s).
# Ours are always "low-S" (s <= n/2), and a high-S one is refused, so a token has exactly one
# valid encoding: nothing (a cache, a replay check, an audit comparison) can be fooled by a
# second spelling of the same signature.
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_HALF_N = P256_N // 2


def es256_low_s(signature: bytes) -> bytes:
    """The low-S form of a raw ES256 signature (``r || s``): s replaced by n - s if above n/2.
    For signatures made elsewhere (Vault Transit does not normalize)."""
    if len(signature) != SIGNATURE_BYTES:
        return signature
    s = int.from_bytes(signature[32:], "big")
    if s > _HALF_N:
        return signature[:32] + (P256_N - s).to_bytes(32, "big")
    return signature


def es256_sign(key: ec.EllipticCurvePrivateKey, signing_input: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(signing_input, _ECDSA_SHA256))
    if s > _HALF_N:
        s = P256_N - s
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def es256_verify(key: ec.EllipticCurvePublicKey, signing_input: bytes, signature: bytes) -> None:
    if len(signature) != SIGNATURE_BYTES:
        raise Unauthenticated(
            f"an ES256 signature is 64 bytes (r || s), this one is {len(signature)}",
            Reason.BAD_SIGNATURE,
        )
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    if not (0 < r < P256_N and 0 < s <= _HALF_N):
        raise Unauthenticated(
            "signature is not in canonical form (ES256 tokens of this broker are low-S)",
            Reason.BAD_SIGNATURE,
        )
    der = encode_dss_signature(r, s)
    try:
        key.verify(der, signing_input, _ECDSA_SHA256)
    except InvalidSignature:
        raise Unauthenticated("signature does not verify", Reason.BAD_SIGNATURE) from None


def eddsa_sign(key: ed25519.Ed25519PrivateKey, signing_input: bytes) -> bytes:
    return key.sign(signing_input)


def eddsa_verify(key: ed25519.Ed25519PublicKey, signing_input: bytes, signature: bytes) -> None:
    if len(signature) != SIGNATURE_BYTES:
        raise Unauthenticated(
            f"an EdDSA (Ed25519) signature is 64 bytes, this one is {len(signature)}",
            Reason.BAD_SIGNATURE,
        )
    try:
        key.verify(signature, signing_input)
    except InvalidSignature:
        raise Unauthenticated("signature does not verify", Reason.BAD_SIGNATURE) from None
