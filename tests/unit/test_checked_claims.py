"""``checked_claims`` (the one-pass claims parser of the verification path) accepts exactly what
``TokenClaims.from_payload`` accepts, and builds the same claims: any claim changed to any JSON
value either gives the same claims from both, or None from the lean one (``from_payload`` then
names the refusal)."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from broker.core.errors import Unauthenticated
from broker.core.tokens.claims import TokenClaims, checked_claims
from tests.support.tokens import make_claims

BASE = make_claims().to_payload()
DELEGATED = {**BASE, "act": {"sub": "spiffe://test.example/agent/parent"}}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats(allow_nan=False)
    | st.text(max_size=70)
    | st.sampled_from(["read", "clean", "tool_call", "a" * 43, "0" * 64, "x" * 16]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=6,
)
# where a value goes: a top-level claim, a member of the detail, of cnf or of act
paths = st.sampled_from(
    [(k,) for k in (*BASE, "act", "extra")]
    + [
        ("authorization_details", 0, k)
        for k in (*BASE["authorization_details"][0], "resource", "x")
    ]
    + [("cnf", "x5t#S256"), ("cnf", "other"), ("act", "sub"), ("act", "act")]
)


def _put(payload: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(payload)
    where: Any = out
    for step in path[:-1]:
        where = where[step]
    where[path[-1]] = value
    return out


def _reference(payload: dict[str, Any]) -> TokenClaims | None:
    try:
        return TokenClaims.from_payload(payload)
    except Unauthenticated:
        return None


def test_a_well_formed_payload_gives_the_same_claims() -> None:
    for payload in (BASE, DELEGATED):
        assert checked_claims(payload) == TokenClaims.from_payload(payload)


@given(base=st.sampled_from([BASE, DELEGATED]), path=paths, value=json_values)
def test_any_changed_claim_is_judged_as_from_payload_judges_it(
    base: dict[str, Any], path: tuple[Any, ...], value: Any
) -> None:
    if path[0] == "act" and len(path) > 1 and "act" not in base:
        return
    payload = _put(base, path, value)
    lean, reference = checked_claims(payload), _reference(payload)
    if reference is None:
        assert lean is None
    else:
        assert lean is None or lean == reference


@given(path=paths)
def test_a_missing_claim_is_judged_as_from_payload_judges_it(path: tuple[Any, ...]) -> None:
    payload = copy.deepcopy(DELEGATED)
    where: Any = payload
    for step in path[:-1]:
        where = where[step]
    where.pop(path[-1], None)
    lean, reference = checked_claims(payload), _reference(payload)
    assert lean == reference
