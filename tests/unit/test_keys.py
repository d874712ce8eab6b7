"""Keys: JWK export and strict import, RFC 7638 kids, KeySet, LocalKeyProvider and rotation."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from broker.adapters.keys import KEYRING_FILE, LOCK_FILE, LocalKeyProvider
from broker.core.errors import ConfigError, Reason, Unauthenticated
from broker.core.tokens import (
    EDDSA,
    ES256,
    KeySet,
    PublicKey,
    SigningKey,
)
from broker.core.tokens.claims import mint_token_async
from broker.core.tokens.jwk import jwk_thumbprint
from broker.core.tokens.jws import b64url_decode, b64url_encode
from tests.support.tokens import T0, TTL, fixed_key, make_claims, verify

# RFC 8037 Appendix A.2 / A.3: an Ed25519 public key and its RFC 7638 thumbprint
RFC8037_JWK = {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
RFC8037_THUMBPRINT = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- kids and JWKs ------------------------------------------------------------------------------


def test_thumbprint_rfc8037_vector() -> None:
    assert jwk_thumbprint(RFC8037_JWK) == RFC8037_THUMBPRINT
    key = PublicKey.from_jwk({**RFC8037_JWK, "kid": "given", "alg": EDDSA})
    assert key.kid == "given"
    assert PublicKey(key._key).kid == RFC8037_THUMBPRINT  # derived when not given


def test_ec_thumbprint_hashes_the_required_members_in_order() -> None:
    jwk = fixed_key(ES256).public_key.to_jwk()
    required = f'{{"crv":"P-256","kty":"EC","x":"{jwk["x"]}","y":"{jwk["y"]}"}}'
    digest = hashlib.sha256(required.encode()).digest()
    assert jwk["kid"] == b64url_encode(digest)
    assert PublicKey.from_jwk(jwk).kid == jwk["kid"]


@pytest.mark.parametrize("alg", [ES256, EDDSA])
def test_jwk_export_and_import(alg: str) -> None:
    key = fixed_key(alg)
    jwk = key.public_key.to_jwk()
    expected = {"kty", "crv", "x", "kid", "alg", "use"} | ({"y"} if alg == ES256 else set())
    assert set(jwk) == expected
    assert jwk["use"] == "sig"
    assert jwk["alg"] == alg
    assert jwk["crv"] == ("P-256" if alg == ES256 else "Ed25519")
    again = PublicKey.from_jwk(jwk)
    assert (again.kid, again.alg) == (key.kid, alg)
    again.verify(b"data", key.sign(b"data"))


def test_coordinates_keep_leading_zeros() -> None:
    for i in range(64):  # a coordinate below 2**248 happens about 1 time in 256 per key
        key = SigningKey(ec.derive_private_key(i + 1, ec.SECP256R1()))
        jwk = key.public_key.to_jwk()
        assert len(jwk["x"]) == len(jwk["y"]) == 43
        assert PublicKey.from_jwk(jwk).kid == key.kid


def jwk_of(key_alg: str = ES256, /, **changes: Any) -> dict[str, Any]:
    jwk: dict[str, Any] = fixed_key(key_alg).public_key.to_jwk()
    jwk.update(changes)
    return {k: v for k, v in jwk.items() if v is not None}


@pytest.mark.parametrize(
    ("jwk", "problem"),
    [
        (jwk_of(d="AAAA"), "private key material"),
        (jwk_of(kid=None), "kid must be a string"),
        (jwk_of(kid=""), "kid must be a string"),
        (jwk_of(kid="k" * 129), "kid must be a string"),
        (jwk_of(kid=7), "kid must be a string"),
        (jwk_of(use="enc"), "use must be 'sig'"),
        (jwk_of(key_ops=["encrypt"]), "key_ops must allow 'verify'"),
        (jwk_of(alg=None), "supported: "),
        (jwk_of(alg="EdDSA"), "supported: "),
        (jwk_of(alg="HS256"), "supported: "),
        (jwk_of(crv="P-384"), "supported: "),
        (jwk_of(kty="RSA"), "supported: "),
        (jwk_of(EDDSA, alg=ES256), "supported: "),
        (jwk_of(x=None), "member 'x' must be a base64url string"),
        (jwk_of(y=12), "member 'y' must be a base64url string"),
        (jwk_of(x="AAAA"), "x and y must be 32 bytes"),
        (jwk_of(EDDSA, x="AAAA"), "x must be 32 bytes"),
        (jwk_of(x=jwk_of()["x"] + "="), "is not unpadded base64url"),
    ],
)
def test_from_jwk_rejects(jwk: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("(", r"\(")) as caught:
        PublicKey.from_jwk(jwk)
    assert not isinstance(caught.value, Unauthenticated)


def test_from_jwk_rejects_point_off_curve() -> None:
    good = jwk_of()
    y = good["y"][:5] + ("A" if good["y"][5] != "A" else "B") + good["y"][6:]
    with pytest.raises(ValueError, match=f"key '{good['kid']}': "):
        PublicKey.from_jwk({**good, "y": y})


def test_keyset_from_jwks() -> None:
    a, b = fixed_key(ES256), fixed_key(EDDSA)
    jwks = {"keys": [a.public_key.to_jwk(), b.public_key.to_jwk()]}
    for source in (jwks, json.dumps(jwks), orjson.dumps(jwks)):
        keys = KeySet.from_jwks(source)
        assert set(keys) == {a.kid, b.kid}
        assert len(keys) == 2
        assert a.kid in keys
        assert keys.get("nope") is None
    assert KeySet.from_jwks(jwks).to_jwks() == jwks


@pytest.mark.parametrize(
    ("jwks", "where", "problem"),
    [
        ("not json", "jwks", "is not JSON"),
        ({"keys": {}}, "jwks", "must be an object"),
        ([], "jwks", "must be an object"),
        ({"keys": [jwk_of(), jwk_of()]}, "jwks.keys[1]", "duplicate kid"),
        ({"keys": [jwk_of(), jwk_of(d="x")]}, "jwks.keys[1]", "private key material"),
        ({"keys": [jwk_of(EDDSA)]}, "jwks.keys[0]", "algorithm 'EdDSA' is not allowed"),
        ({"keys": ["text"]}, "jwks.keys[0]", "must be a JSON object"),
    ],
)
def test_keyset_rejects_the_whole_set(jwks: Any, where: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        KeySet.from_jwks(jwks, allowed_algs=frozenset({ES256}))
    assert caught.value.key == where
    assert problem in caught.value.message


# -- signing keys -------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", [ES256, EDDSA])
def test_signing_key_pem_round_trip_and_repr(alg: str) -> None:
    key = SigningKey.generate(alg)
    assert key.alg == alg
    pem = key.hazmat_private_pem()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert SigningKey.from_pem(pem).kid == key.kid
    text = repr(key)
    assert "[secure]" in text
    assert key.kid in text
    assert pem.decode().splitlines()[1] not in text


@pytest.mark.parametrize(
    "private",
    [ec.generate_private_key(ec.SECP384R1()), rsa.generate_private_key(65537, 2048)],
    ids=["p384", "rsa"],
)
def test_signing_key_refuses_other_key_types(private: Any) -> None:
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ValueError, match="P-256"):
        SigningKey.from_pem(pem)


def test_generate_refuses_other_algs() -> None:
    with pytest.raises(ValueError, match="unsupported algorithm 'HS256'"):
        SigningKey.generate("HS256")


def _mint(provider: LocalKeyProvider) -> str:
    return asyncio.run(mint_token_async(make_claims(), provider))


# -- LocalKeyProvider ---------------------------------------------------------------------------


@pytest.mark.parametrize("alg", [ES256, EDDSA])
def test_ephemeral_provider_signs(alg: str) -> None:
    provider = LocalKeyProvider(now=T0, alg=alg)
    assert provider.alg == alg
    token = _mint(provider)
    keys = KeySet.from_jwks({"keys": provider.public_jwks()})
    assert verify(token, keys) == make_claims()
    info = provider.list_keys()
    assert [(k.kid, k.active, k.created_at) for k in info] == [(provider.active_kid(), True, T0)]


def test_provider_refuses_bad_config() -> None:
    with pytest.raises(ConfigError, match="alg"):
        LocalKeyProvider(now=T0, alg="none")
    with pytest.raises(ConfigError, match="publish_margin"):
        LocalKeyProvider(now=T0, publish_margin=-1)


def test_sign_only_with_the_active_key() -> None:
    provider = LocalKeyProvider(now=T0)
    with pytest.raises(LookupError):
        asyncio.run(provider.sign("../../etc/passwd", b"x"))


def test_persistence_layout_and_modes(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    provider = LocalKeyProvider(now=T0, directory=directory)
    kid = provider.active_kid()
    assert mode(directory) == 0o700
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        [f"{kid}.pem", KEYRING_FILE, LOCK_FILE]
    )
    assert mode(directory / f"{kid}.pem") == 0o600
    assert mode(directory / KEYRING_FILE) == 0o600
    ring = json.loads((directory / KEYRING_FILE).read_text())
    assert ring["version"] == 1
    [entry] = ring["keys"]
    assert entry["kid"] == kid
    assert entry["active"] is True
    assert entry["created_at"] == T0
    assert entry["retired_at"] is None
    assert "d" not in entry["jwk"]
    again = LocalKeyProvider(now=T0 + 10, directory=directory)
    assert again.active_kid() == kid
    assert again.public_jwks() == provider.public_jwks()


def test_files_are_0600_despite_a_lax_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        provider = LocalKeyProvider(now=T0, directory=tmp_path)
    finally:
        os.umask(old)
    assert mode(tmp_path / f"{provider.active_kid()}.pem") == 0o600


def test_refuses_a_private_key_readable_by_others(tmp_path: Path) -> None:
    provider = LocalKeyProvider(now=T0, directory=tmp_path)
    pem = tmp_path / f"{provider.active_kid()}.pem"
    pem.chmod(0o644)
    with pytest.raises(ConfigError, match="must not be readable by others"):
        LocalKeyProvider(now=T0, directory=tmp_path)


def test_refuses_a_symlinked_private_key(tmp_path: Path) -> None:
    provider = LocalKeyProvider(now=T0, directory=tmp_path / "keys")
    pem = tmp_path / "keys" / f"{provider.active_kid()}.pem"
    elsewhere = tmp_path / "elsewhere.pem"
    pem.rename(elsewhere)
    pem.symlink_to(elsewhere)
    with pytest.raises(OSError, match=r"symbolic links|Too many levels"):
        LocalKeyProvider(now=T0, directory=tmp_path / "keys")


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda ring: "not json", "is not JSON"),
        (lambda ring: {**ring, "version": 2}, "version 1 keyring"),
        (lambda ring: {**ring, "keys": []}, "has no keys"),
        (
            lambda ring: {
                **ring,
                "keys": [{**ring["keys"][0], "active": False, "publish_until": T0 + 1}],
            },
            "exactly one",
        ),
        (lambda ring: {**ring, "keys": [{**ring["keys"][0], "active": False}]}, "publish_until"),
        (lambda ring: {**ring, "keys": ring["keys"] * 2}, "lists a kid twice"),
        (lambda ring: {**ring, "keys": [{**ring["keys"][0], "kid": "../x"}]}, "kid"),
        (lambda ring: {**ring, "keys": [{**ring["keys"][0], "created_at": None}]}, "malformed"),
    ],
)
def test_refuses_a_corrupt_keyring(tmp_path: Path, mutate: Any, problem: str) -> None:
    LocalKeyProvider(now=T0, directory=tmp_path)
    path = tmp_path / KEYRING_FILE
    ring = mutate(json.loads(path.read_text()))
    path.write_text(ring if isinstance(ring, str) else json.dumps(ring))
    with pytest.raises(ConfigError, match=problem):
        LocalKeyProvider(now=T0, directory=tmp_path)


def test_refuses_a_private_key_that_is_not_its_kid(tmp_path: Path) -> None:
    provider = LocalKeyProvider(now=T0, directory=tmp_path)
    pem = tmp_path / f"{provider.active_kid()}.pem"
    pem.write_bytes(SigningKey.generate().hazmat_private_pem())
    with pytest.raises(ConfigError, match="does not match its kid"):
        LocalKeyProvider(now=T0, directory=tmp_path)
    pem.unlink()
    with pytest.raises(ConfigError, match="active private key is missing"):
        LocalKeyProvider(now=T0, directory=tmp_path)


# -- rotation -----------------------------------------------------------------------------------


def test_rotation_publishes_old_keys_until_their_tokens_expire(tmp_path: Path) -> None:
    """After rotate the new key signs; the old key's tokens verify until publish_until, after
    which the old kid is pruned everywhere and its tokens fail with UNKNOWN_KEY."""
    provider = LocalKeyProvider(now=T0, directory=tmp_path, publish_margin=30)
    old_kid = provider.active_kid()
    old_token = _mint(provider)

    new_kid = provider.rotate_blocking(now=T0 + 10, max_token_ttl=TTL)
    assert new_kid != old_kid
    assert provider.active_kid() == new_kid
    new_token = _mint(provider)
    assert f'"kid":"{new_kid}"' in _header(new_token)
    assert [k["kid"] for k in provider.public_jwks()] == [new_kid, old_kid]
    retired = provider.list_keys()[1]
    assert (retired.active, retired.retired_at, retired.publish_until) == (
        False,
        T0 + 10,
        T0 + 10 + TTL + 30,
    )
    # a retired key never signs again, and its private half is gone from disk
    with pytest.raises(LookupError):
        asyncio.run(provider.sign(old_kid, b"x"))
    assert not (tmp_path / f"{old_kid}.pem").exists()

    keys = KeySet.from_jwks({"keys": provider.public_jwks()})
    assert verify(old_token, keys).jti == make_claims().jti
    assert verify(new_token, keys).jti == make_claims().jti

    # a restart keeps the retired public key published
    restarted = LocalKeyProvider(now=T0 + 20, directory=tmp_path, publish_margin=30)
    assert restarted.active_kid() == new_kid
    assert [k["kid"] for k in restarted.public_jwks()] == [new_kid, old_kid]

    assert provider.prune_blocking(T0 + 10 + TTL + 29) == []
    assert provider.prune_blocking(T0 + 10 + TTL + 30) == [old_kid]
    assert [k["kid"] for k in provider.public_jwks()] == [new_kid]
    ring = json.loads((tmp_path / KEYRING_FILE).read_text())
    assert [k["kid"] for k in ring["keys"]] == [new_kid]

    keys = KeySet.from_jwks({"keys": provider.public_jwks()})
    with pytest.raises(Unauthenticated) as caught:
        verify(old_token, keys)
    assert caught.value.reason is Reason.UNKNOWN_KEY
    verify(new_token, keys)


def test_rotation_prunes_expired_keys_and_restart_prunes_too(tmp_path: Path) -> None:
    provider = LocalKeyProvider(now=T0, directory=tmp_path, publish_margin=0)
    first = provider.active_kid()
    second = provider.rotate_blocking(now=T0, max_token_ttl=10)
    third = provider.rotate_blocking(now=T0 + 5, max_token_ttl=10)
    assert [k["kid"] for k in provider.public_jwks()] == [third, second, first]
    assert provider.rotate_blocking(now=T0 + 11, max_token_ttl=10) not in (first, second, third)
    assert first not in [k["kid"] for k in provider.public_jwks()]
    restarted = LocalKeyProvider(now=T0 + 100, directory=tmp_path)
    assert len(restarted.public_jwks()) == 1
    assert sorted(p.suffix for p in tmp_path.iterdir() if p.name != LOCK_FILE) == [".json", ".pem"]


def test_processes_sharing_a_directory_agree(tmp_path: Path) -> None:
    """Workers starting together create one first key; a rotation by one reaches the others on
    reload, and no rotation drops another's retired key."""
    with ThreadPoolExecutor(8) as pool:  # separate instances contend through the flock
        providers = list(pool.map(lambda _: LocalKeyProvider(now=T0, directory=tmp_path), range(8)))
    first = providers[0].active_kid()
    assert {p.active_kid() for p in providers} == {first}
    a, b = providers[0], providers[1]
    second = a.rotate_blocking(now=T0 + 1, max_token_ttl=TTL)
    assert b.active_kid() == first  # b signs with the retired key until it reloads
    assert b.reload_blocking(T0 + 2) is True
    assert b.active_kid() == second
    assert b.reload_blocking(T0 + 3) is False
    third = b.rotate_blocking(now=T0 + 4, max_token_ttl=TTL)
    assert [k["kid"] for k in b.public_jwks()] == [third, second, first]
    a.reload_blocking(T0 + 5)
    assert [k["kid"] for k in a.public_jwks()] == [third, second, first]


def test_rotation_can_switch_algorithms() -> None:
    provider = LocalKeyProvider(now=T0, alg=EDDSA)
    provider.rotate_blocking(now=T0, max_token_ttl=TTL)
    assert provider.alg == EDDSA
    switching = LocalKeyProvider(now=T0, alg=ES256)
    switching._new_alg = EDDSA  # what a restart with another configured alg amounts to
    switching.rotate_blocking(now=T0, max_token_ttl=TTL)
    assert switching.alg == EDDSA
    assert {k["alg"] for k in switching.public_jwks()} == {ES256, EDDSA}


def test_rotate_refuses_bad_ttl() -> None:
    provider = LocalKeyProvider(now=T0)
    with pytest.raises(ValueError, match="max_token_ttl"):
        provider.rotate_blocking(now=T0, max_token_ttl=float("nan"))


def test_mint_retries_once_when_a_rotation_races() -> None:
    """active_kid() then sign(): a rotation in between makes sign() refuse the old kid."""

    class Racing(LocalKeyProvider):
        raced = False

        async def sign(self, kid: str, signing_input: bytes) -> bytes:
            if not self.raced:
                self.raced = True
                self.rotate_blocking(now=T0, max_token_ttl=TTL)
            return await super().sign(kid, signing_input)

    provider = Racing(now=T0)
    token = _mint(provider)
    assert f'"kid":"{provider.active_kid()}"' in _header(token)
    verify(token, KeySet.from_jwks({"keys": provider.public_jwks()}))


def _header(token: str) -> str:
    return b64url_decode(token.split(".")[0]).decode()
