"""Properties: a token for one tool call verifies for that call only; claims round-trip."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from broker.core.canonical import args_sha256
from broker.core.errors import Reason, Unauthenticated
from broker.core.tokens import (
    ACTIONS,
    EDDSA,
    ES256,
    TAINTS,
    AuthorizationDetail,
    TokenClaims,
    mint_token,
    x5t_s256,
)
from tests.support.tokens import T0, OneKeyProvider, fixed_key, keyset, make_claims, verify

KEYS = {alg: fixed_key(alg) for alg in (ES256, EDDSA)}
PROVIDERS = {alg: OneKeyProvider(key) for alg, key in KEYS.items()}
KEYSET = keyset(*KEYS.values())

text = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=30)
spiffe_ids = st.builds(
    lambda kind, name: f"spiffe://test.example/{kind}/{name}",
    st.sampled_from(["agent", "mcp"]),
    st.from_regex(r"[a-z][a-z0-9-]{0,15}", fullmatch=True),
)
tools = st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text
)
arguments = st.dictionaries(text, json_scalars | st.lists(json_scalars, max_size=3), max_size=4)
hex_digests = st.binary(min_size=32, max_size=32).map(bytes.hex)


@st.composite
def claims(draw: st.DrawFn) -> TokenClaims:
    iat = draw(st.integers(0, 2**40))
    nbf = draw(st.integers(iat, iat + 100))
    depth = draw(st.integers(0, 3))
    act: dict[str, Any] | None = None
    for _ in range(depth):
        act = {"sub": draw(spiffe_ids), **({"act": act} if act else {})}
    return TokenClaims(
        iss=draw(text),
        sub=draw(spiffe_ids),
        aud=draw(spiffe_ids),
        iat=iat,
        nbf=nbf,
        exp=draw(st.integers(nbf + 1, nbf + 3600)),
        jti=draw(st.from_regex(r"[A-Za-z0-9._-]{16,64}", fullmatch=True)),
        task=draw(text),
        authorization_details=(
            AuthorizationDetail(
                server=draw(spiffe_ids),
                tool=draw(tools),
                action=draw(st.sampled_from(sorted(ACTIONS))),
                args_sha256=draw(hex_digests),
                resource=draw(st.none() | text),
            ),
        ),
        cnf_x5t_s256=x5t_s256(draw(st.binary(max_size=16))),
        tier=draw(st.integers(0, 3)),
        taint=draw(st.sampled_from(sorted(TAINTS))),
        act=act,
    )


@given(claims())
def test_claims_round_trip_through_json(original: TokenClaims) -> None:
    payload = orjson.loads(orjson.dumps(original.to_payload()))
    assert TokenClaims.from_payload(payload) == original


@given(claims(), st.sampled_from([ES256, EDDSA]))
def test_mint_then_verify_round_trip(original: TokenClaims, alg: str) -> None:
    token = mint_token(original, PROVIDERS[alg])
    verified = verify(
        token,
        KEYSET,
        issuer=original.iss,
        audience=original.aud,
        now=float(original.nbf),
        tool=original.tool,
        args_sha256=original.args_sha256,
        presenter_x5t_s256=original.cnf_x5t_s256,
    )
    assert verified == original


@given(
    audience=spiffe_ids,
    tool=tools,
    args=arguments,
    other_audience=spiffe_ids,
    other_tool=tools,
    other_args=arguments,
    alg=st.sampled_from([ES256, EDDSA]),
)
def test_a_token_verifies_only_for_its_own_call(
    audience: str,
    tool: str,
    args: dict[str, Any],
    other_audience: str,
    other_tool: str,
    other_args: dict[str, Any],
    alg: str,
) -> None:
    digest, other_digest = args_sha256(args), args_sha256(other_args)
    token = mint_token(
        make_claims(aud=audience, tool=tool, args=digest, server=audience), PROVIDERS[alg]
    )
    call = {"audience": audience, "tool": tool, "args_sha256": digest}
    verify(token, KEYSET, **call)
    for change, expected in (
        ({"audience": other_audience}, Reason.WRONG_AUDIENCE),
        ({"tool": other_tool}, Reason.TOOL_MISMATCH),
        ({"args_sha256": other_digest}, Reason.ARGS_MISMATCH),
    ):
        [(name, value)] = change.items()
        if value == call[name]:
            continue
        with pytest.raises(Unauthenticated) as caught:
            verify(token, KEYSET, **{**call, **change})
        assert caught.value.reason is expected


@given(claims(), st.data())
def test_any_single_payload_change_breaks_the_signature(original: TokenClaims, data: Any) -> None:
    token = mint_token(original, PROVIDERS[ES256])
    other = data.draw(claims())
    assume(other != original)
    header, _, signature = token.split(".")
    spliced = ".".join([header, mint_token(other, PROVIDERS[ES256]).split(".")[1], signature])
    with pytest.raises(Unauthenticated) as caught:
        verify(spliced, KEYSET, audience=other.aud, now=float(other.nbf))
    assert caught.value.reason is Reason.BAD_SIGNATURE


json_values = st.recursive(
    json_scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(text, c, max_size=3)
)


@given(st.dictionaries(st.sampled_from(sorted(make_claims().to_payload())), json_values))
def test_from_payload_fails_only_as_malformed(changes: dict[str, Any]) -> None:
    payload = {**make_claims().to_payload(), **changes}
    parsed: TokenClaims | Unauthenticated
    try:
        parsed = TokenClaims.from_payload(payload)
    except Unauthenticated as exc:  # anything else fails the test
        parsed = exc
    if isinstance(parsed, Unauthenticated):
        assert parsed.reason is Reason.MALFORMED_TOKEN
    else:
        assert parsed.to_payload() == payload


@pytest.mark.parametrize(
    "payload",
    [
        {**make_claims().to_payload(), "act": None},
        {
            **make_claims().to_payload(),
            "act": {"sub": "spiffe://test.example/agent/a", "act": None},
        },
        {
            **make_claims().to_payload(),
            "authorization_details": [{**make_claims().detail.to_json(), "resource": None}],
        },
    ],
    ids=["act", "nested-act", "resource"],
)
def test_optional_claims_are_absent_not_null(payload: dict[str, Any]) -> None:
    with pytest.raises(Unauthenticated, match=r"omit it rather than null|RFC 8693"):
        TokenClaims.from_payload(payload)


def test_claims_refuse_bad_values_at_construction() -> None:
    for change in ({"tier": 4}, {"taint": "dirty"}, {"aud": ""}, {"exp": T0}, {"jti": "short"}):
        with pytest.raises(ValueError, match=next(iter(change))):
            make_claims(**change)
    with pytest.raises(ValueError, match=r"authorization_details\.action"):
        make_claims(action="destroy")
    detail = make_claims().detail
    with pytest.raises(ValueError, match="exactly one"):
        dataclasses.replace(make_claims(), authorization_details=(detail, detail))
