"""Which Transit version signs and which are published (pure ``plan_publication``), and the async
mint path the core uses for a provider whose signature is a network call."""

from __future__ import annotations

import pytest

from broker.adapters.keys import LocalKeyProvider
from broker.adapters.vault.transit import KeyVersion, plan_publication
from broker.core.ids import new_jti, new_task_id
from broker.core.tokens.claims import AuthorizationDetail, TokenClaims, mint_token_async
from broker.core.tokens.jwk import KeySet, SigningKey
from broker.core.tokens.verify import verify_token

T0 = 1_800_000_000.0
TTL, MARGIN = 300.0, 60.0


def versions(*created: float) -> tuple[KeyVersion, ...]:
    return tuple(
        KeyVersion(n, SigningKey.generate().public_key, at) for n, at in enumerate(created, 1)
    )


def plan(vs: tuple[KeyVersion, ...], now: float, delay: float = 0.0, min_enc: int = 0):  # type: ignore[no-untyped-def]
    return plan_publication(
        vs,
        now=now,
        alg="ES256",
        activation_delay=delay,
        max_token_ttl=TTL,
        publish_margin=MARGIN,
        min_encryption_version=min_enc,
    )


def test_the_newest_version_signs_and_a_retired_one_stays_until_its_tokens_expired() -> None:
    vs = versions(T0, T0 + 100)
    active, infos = plan(vs, T0 + 100)
    assert active.version == 2
    assert [(i.kid, i.active) for i in infos] == [(vs[1].kid, True), (vs[0].kid, False)]
    assert infos[1].retired_at == T0 + 100 and infos[1].publish_until == T0 + 100 + TTL + MARGIN
    _, infos = plan(vs, T0 + 100 + TTL + MARGIN)
    assert [i.kid for i in infos] == [vs[1].kid]


def test_an_activation_delay_pre_publishes_a_new_version() -> None:
    vs = versions(T0, T0 + 100)
    active, infos = plan(vs, T0 + 110, delay=30)
    assert active.version == 1  # version 2 is published but does not sign yet
    assert {i.kid for i in infos} == {vs[0].kid, vs[1].kid}
    active, infos = plan(vs, T0 + 130, delay=30)
    assert active.version == 2
    assert infos[1].retired_at == T0 + 130


def test_a_fresh_key_signs_at_once_even_with_a_delay() -> None:
    active, _ = plan(versions(T0), T0, delay=30)
    assert active.version == 1


def test_min_encryption_version_decides_the_oldest_signer() -> None:
    vs = versions(T0, T0 + 1, T0 + 2)
    active, _ = plan(vs, T0 + 2, delay=100, min_enc=3)
    assert active.version == 3


def test_no_version_is_an_error() -> None:
    with pytest.raises(ValueError, match="no key versions"):
        plan((), T0)


class RotatingProvider:
    """A LocalKeyProvider whose first signature races a rotation, as a Transit rotation by
    another replica can."""

    def __init__(self, rotate_once: bool = False) -> None:
        self.inner = LocalKeyProvider(now=T0)
        self.calls = 0
        self._rotate_once = rotate_once
        self.alg = self.inner.alg

    def active_kid(self) -> str:
        return self.inner.active_kid()

    async def sign(self, kid: str, signing_input: bytes) -> bytes:
        self.calls += 1
        if self._rotate_once:
            self._rotate_once = False
            await self.inner.rotate(T0, 300)  # a rotation between active_kid() and the signature
        return await self.inner.sign(kid, signing_input)

    def public_jwks(self) -> list[dict[str, str]]:
        return self.inner.public_jwks()


def _claims() -> TokenClaims:
    task = new_task_id()
    return TokenClaims(
        iss="spiffe://dev.local/broker",
        sub="spiffe://dev.local/agent/demo",
        aud="spiffe://dev.local/mcp/repo",
        iat=int(T0),
        nbf=int(T0),
        exp=int(T0) + 60,
        jti=new_jti(task),
        task=task,
        authorization_details=(
            AuthorizationDetail(
                server="spiffe://dev.local/mcp/repo",
                tool="read_file",
                action="read",
                args_sha256="0" * 64,
            ),
        ),
        cnf_x5t_s256="A" * 43,
        tier=1,
        taint="clean",
    )


def _check(token: str, jwks: list[dict[str, str]]) -> None:
    verify_token(
        token,
        keys=KeySet.from_jwks({"keys": jwks}),
        allowed_algs=frozenset({"ES256"}),
        issuer="spiffe://dev.local/broker",
        audience="spiffe://dev.local/mcp/repo",
        now=T0,
        tool="read_file",
        args_sha256="0" * 64,
    )


@pytest.mark.parametrize("rotate_once", [False, True])
async def test_the_async_mint_awaits_sign_and_retries_after_a_rotation(
    rotate_once: bool,
) -> None:
    provider = RotatingProvider(rotate_once)
    token = await mint_token_async(_claims(), provider)
    assert provider.calls == (2 if rotate_once else 1)
    _check(token, provider.public_jwks())


async def test_a_local_provider_signs_in_place() -> None:
    provider = LocalKeyProvider(now=T0)
    _check(await mint_token_async(_claims(), provider), provider.public_jwks())
