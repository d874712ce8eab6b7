"""verify_token: the token vector corpus (tests/vectors/tokens.json), check order, messages."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from cryptography.exceptions import UnsupportedAlgorithm

from broker.core.canonical import args_sha256
from broker.core.errors import Reason, Unauthenticated
from broker.core.tokens import (
    EDDSA,
    ES256,
    KeySet,
    SigningKey,
    TokenClaims,
    mint_token,
    verify_token,
)
from broker.core.tokens.jws import b64url_decode, sign_compact
from tests.support import token_vectors
from tests.support.tokens import (
    AUDIENCE,
    OTHER_AUDIENCE,
    T0,
    OneKeyProvider,
    fixed_key,
    keyset,
    make_claims,
    verify,
)

CORPUS: dict[str, Any] = json.loads(token_vectors.VECTORS_PATH.read_text())
VERIFY_REASONS = {
    Reason.MALFORMED_TOKEN,
    Reason.BAD_TOKEN_TYPE,
    Reason.BAD_SIGNATURE,
    Reason.UNKNOWN_KEY,
    Reason.TOKEN_EXPIRED,
    Reason.NOT_YET_VALID,
    Reason.WRONG_AUDIENCE,
    Reason.WRONG_ISSUER,
    Reason.TOOL_MISMATCH,
    Reason.ARGS_MISMATCH,
    Reason.CERT_MISMATCH,
}


def run_vector(corpus: dict[str, Any], vector: dict[str, Any]) -> TokenClaims | Unauthenticated:
    """The one way every vector is checked: corpus context, then the vector's own overrides."""
    context = {k: v for k, v in corpus["context"].items() if k != "arguments"}
    context.update(vector.get("context", {}))
    context["allowed_algs"] = frozenset(context["allowed_algs"])
    keys = KeySet.from_jwks(corpus["jwks"])
    try:
        return verify_token(vector["token"], keys=keys, **context)
    except Unauthenticated as exc:
        return exc


@pytest.mark.parametrize("vector", CORPUS["vectors"], ids=lambda v: v["name"])
def test_vector(vector: dict[str, Any]) -> None:
    outcome = run_vector(CORPUS, vector)
    if vector["expect"] == "VALID":
        assert isinstance(outcome, TokenClaims), outcome
        assert outcome.to_payload() == vector["payload"]
        return
    assert isinstance(outcome, Unauthenticated)
    assert outcome.reason.value == vector["expect"], outcome.message
    # an error message never carries the token, nor its payload or signature
    message = str(outcome)
    assert len(message) < 300
    for part in [vector["token"], *vector["token"].split(".")]:
        assert len(part) < 16 or part not in message


def test_corpus_covers_every_verify_reason_and_the_named_attacks() -> None:
    expected = {v["expect"] for v in CORPUS["vectors"]}
    assert expected == {"VALID"} | {reason.value for reason in VERIFY_REASONS}
    names = {v["name"] for v in CORPUS["vectors"]}
    assert len(names) == len(CORPUS["vectors"])
    for attack in (
        "alg-none",
        "alg-hs256-public-key-pem",
        "kid-unknown",
        "kid-path",
        "kid-url",
        "tampered-payload",
        "typ-jwt",
        "typ-missing",
        "wrong-issuer",
        "wrong-audience",
        "nbf-future",
        "expired",
        "huge",
        "shape-word",
        "shape-two-parts",
        "shape-four-parts",
        "shape-padded-payload",
    ):
        assert attack in names


def test_corpus_context_digest_is_the_canonical_digest() -> None:
    context = CORPUS["context"]
    assert args_sha256(context["arguments"]) == context["args_sha256"]
    assert context["arguments"]["max_lines"] == 20.0  # a Struct double ...
    assert args_sha256({**context["arguments"], "max_lines": 20}) == context["args_sha256"]


def test_corpus_test_only_keys_match_the_published_set() -> None:
    published = []
    for entry in CORPUS["test_only_keys"].values():
        assert "TEST-ONLY" in entry["warning"]
        key = SigningKey.from_pem(entry["private_pem"].encode())
        assert key.kid == entry["kid"]
        if entry["published"]:
            published.append(key.public_key.to_jwk())
    assert published == CORPUS["jwks"]["keys"]


def test_corpus_is_what_the_generator_produces() -> None:
    try:
        rendered = token_vectors.render()
    except UnsupportedAlgorithm:  # pragma: no cover - OpenSSL without RFC 6979 signing
        pytest.skip("deterministic ECDSA unavailable: cannot reproduce the ES256 vectors")
    assert rendered == token_vectors.VECTORS_PATH.read_text(), (
        "tests/vectors/tokens.json is stale: run python -m tests.support.token_vectors"
    )


# -- beyond the corpus --------------------------------------------------------------------------


@pytest.mark.parametrize("alg", [ES256, EDDSA])
def test_mint_then_verify(alg: str) -> None:
    key = fixed_key(alg)
    token = mint_token(make_claims(), OneKeyProvider(key))
    header = orjson.loads(b64url_decode(token.split(".")[0]))
    assert header == {"alg": alg, "typ": "task+jwt", "kid": key.kid}
    assert verify(token, keyset(key)) == make_claims()


def forged(payload: dict[str, Any], key: SigningKey, **header: Any) -> str:
    head = {"alg": key.alg, "typ": "task+jwt", "kid": key.kid, **header}
    return sign_compact({k: v for k, v in head.items() if v is not None}, payload, key.sign)


def reason(token: str, keys: KeySet, **context: Any) -> Reason:
    with pytest.raises(Unauthenticated) as caught:
        verify(token, keys, **context)
    return caught.value.reason


def test_signature_is_checked_before_any_claim() -> None:
    key, stranger = fixed_key(), fixed_key(label="stranger")
    bad = make_claims(aud=OTHER_AUDIENCE, iss="x", iat=T0 - 999, nbf=T0 - 999, exp=T0 - 900)
    token = forged(bad.to_payload(), stranger, kid=key.kid)
    assert reason(token, keyset(key)) is Reason.BAD_SIGNATURE
    mangled = forged({"tier": "not even a claim set"}, stranger, kid=key.kid)
    assert reason(mangled, keyset(key)) is Reason.BAD_SIGNATURE


def test_check_order_after_the_signature() -> None:
    key = fixed_key()
    keys = keyset(key)
    everything_wrong = make_claims(
        iss="spiffe://evil/broker",
        aud=OTHER_AUDIENCE,
        iat=T0 - 999,
        nbf=T0 - 999,
        exp=T0 - 900,
        tool="deploy",
    )
    steps: list[tuple[dict[str, Any], Reason]] = [
        ({}, Reason.WRONG_ISSUER),
        ({"iss": make_claims().iss}, Reason.WRONG_AUDIENCE),
        ({"aud": AUDIENCE}, Reason.TOKEN_EXPIRED),
        ({"exp": T0 + 60}, Reason.TOOL_MISMATCH),
    ]
    payload = everything_wrong.to_payload()
    for fix, expected in steps:
        payload.update(fix)
        assert reason(forged(payload, key), keys, args_sha256="0" * 64) is expected
    payload["authorization_details"][0]["tool"] = "read_file"
    assert reason(forged(payload, key), keys, args_sha256="0" * 64) is Reason.ARGS_MISMATCH
    assert reason(forged(payload, key), keys, presenter_x5t_s256="x" * 43) is Reason.CERT_MISMATCH


def test_header_checks_come_first_in_order() -> None:
    key = fixed_key()
    payload = make_claims().to_payload()
    token = forged(payload, key, typ="JWT", alg="none", kid="unknown")
    assert reason(token, keyset(key)) is Reason.BAD_TOKEN_TYPE
    with pytest.raises(Unauthenticated, match="typ"):
        verify(token, keyset(key))
    token = forged(payload, key, alg="none", kid="unknown")
    with pytest.raises(Unauthenticated, match="algorithm 'none' is not accepted; accepted: "):
        verify(token, keyset(key))
    token = forged(payload, key, kid="unknown")
    assert reason(token, keyset(key)) is Reason.UNKNOWN_KEY


def test_leeway_and_now_are_the_callers() -> None:
    key = fixed_key()
    token = mint_token(make_claims(), OneKeyProvider(key))  # valid [T0, T0 + 60)
    keys = keyset(key)
    verify(token, keys, now=T0 - 5, leeway=5)
    assert reason(token, keys, now=T0 - 5.5, leeway=5) is Reason.NOT_YET_VALID
    verify(token, keys, now=T0 + 59.9, leeway=0)
    assert reason(token, keys, now=T0 + 60, leeway=0) is Reason.TOKEN_EXPIRED
    verify(token, keys, now=T0 + 64.9, leeway=5)
    assert reason(token, keys, now=T0 + 65, leeway=5) is Reason.TOKEN_EXPIRED


def test_attacker_values_in_messages_are_bounded_and_escaped() -> None:
    key = fixed_key()
    kid = "evil\nINFO forged log line " + "k" * 500
    with pytest.raises(Unauthenticated) as caught:
        verify(forged(make_claims().to_payload(), key, kid=kid), keyset(key))
    assert "\n" not in caught.value.message
    assert len(caught.value.message) < 120


def test_non_ascii_call_values_do_not_crash_the_compare() -> None:
    token = mint_token(make_claims(), OneKeyProvider(fixed_key()))
    keys = keyset(fixed_key())
    assert reason(token, keys, args_sha256="\u00e9" * 64) is Reason.ARGS_MISMATCH
    assert reason(token, keys, presenter_x5t_s256="\ud800") is Reason.CERT_MISMATCH


def test_vectors_file_is_ascii_for_every_language() -> None:
    assert token_vectors.VECTORS_PATH.read_bytes().isascii()
