"""Keys as JWKs: signing keys, public keys, key ids and the verifiers' key set.

- https://www.rfc-editor.org/rfc/rfc7517 (JWK, JWK Set)
- https://www.rfc-editor.org/rfc/rfc7518#section-6.2 (EC public keys: kty "EC", crv "P-256", x, y)
- https://www.rfc-editor.org/rfc/rfc8037#section-2 (OKP public keys: kty "OKP", crv "Ed25519", x)
- https://www.rfc-editor.org/rfc/rfc7638 (JWK thumbprint: the key id of every key minted here)

Only two key types exist here: P-256 for ES256 and Ed25519 for EdDSA; a key's algorithm follows
from its type, so a key can never be used with another algorithm. Parsed public keys are kept as
``cryptography`` objects so that verifying a token never re-parses a key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import partial
from typing import Any

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from broker.core.canonical import canonical_json
from broker.core.errors import ConfigError
from broker.core.tokens.jws import (
    EDDSA,
    ES256,
    SUPPORTED_ALGS,
    b64url_decode,
    b64url_encode,
    eddsa_sign,
    eddsa_verify,
    es256_sign,
    es256_verify,
)

PrivateKeyType = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKeyType = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

MAX_KID_LENGTH = 128
_THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "k", "oth"})


def _alg_of(key: PublicKeyType | PrivateKeyType) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError(f"EC keys must be on P-256 (ES256), not {key.curve.name}")
        return ES256
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return EDDSA
    raise ValueError(f"unsupported key type {type(key).__name__}: use P-256 or Ed25519")


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 thumbprint: base64url SHA-256 of the required members, sorted, no whitespace."""
    kty = jwk.get("kty")
    members = _THUMBPRINT_MEMBERS.get(kty) if isinstance(kty, str) else None
    if members is None:
        raise ValueError(f"no thumbprint for kty {jwk.get('kty')!r}")
    required = {name: jwk[name] for name in members}
    return b64url_encode(hashlib.sha256(canonical_json(required)).digest())


class PublicKey:
    """A verification key: its kid, its algorithm and the parsed key object."""

    __slots__ = ("_key", "_verify", "alg", "kid")
    _verify: Callable[[bytes, bytes], None]

    def __init__(self, key: PublicKeyType, *, kid: str | None = None) -> None:
        self.alg = _alg_of(key)
        self._key = key
        if isinstance(key, ec.EllipticCurvePublicKey):
            self._verify = partial(es256_verify, key)
        else:
            self._verify = partial(eddsa_verify, key)
        self.kid = kid if kid is not None else jwk_thumbprint(self._key_members())

    def verify(self, signing_input: bytes, signature: bytes) -> None:
        """Raise ``Unauthenticated(BAD_SIGNATURE)`` unless ``signature`` is valid."""
        self._verify(signing_input, signature)

    def _key_members(self) -> dict[str, str]:
        if isinstance(self._key, ec.EllipticCurvePublicKey):
            point = self._key.public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
            return {
                "kty": "EC",
                "crv": "P-256",
                "x": b64url_encode(point[1:33]),
                "y": b64url_encode(point[33:]),
            }
        raw = self._key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(raw)}

    def to_jwk(self) -> dict[str, str]:
        """The public JWK: key members plus kid, alg and use "sig"."""
        return {**self._key_members(), "kid": self.kid, "alg": self.alg, "use": "sig"}

    @classmethod
    def from_jwk(cls, jwk: Mapping[str, Any]) -> PublicKey:
        """Parse one public JWK strictly; raise ``ValueError`` naming the problem."""
        if not isinstance(jwk, Mapping):
            raise ValueError("a JWK must be a JSON object")
        if _PRIVATE_MEMBERS & jwk.keys():
            raise ValueError("contains private key material: publish public keys only")
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > MAX_KID_LENGTH:
            raise ValueError(f"kid must be a string of 1 to {MAX_KID_LENGTH} characters")
        if jwk.get("use", "sig") != "sig":
            raise ValueError(f"key {kid!r}: use must be 'sig'")
        ops = jwk.get("key_ops")
        if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
            raise ValueError(f"key {kid!r}: key_ops must allow 'verify'")
        kty, crv, alg = jwk.get("kty"), jwk.get("crv"), jwk.get("alg")
        key: PublicKeyType
        try:
            if (kty, crv, alg) == ("EC", "P-256", ES256):
                x, y = b64url_decode(_member(jwk, "x")), b64url_decode(_member(jwk, "y"))
                if len(x) != 32 or len(y) != 32:
                    raise ValueError("x and y must be 32 bytes each")
                key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + x + y)
            elif (kty, crv, alg) == ("OKP", "Ed25519", EDDSA):
                x = b64url_decode(_member(jwk, "x"))
                if len(x) != 32:
                    raise ValueError("x must be 32 bytes")
                key = ed25519.Ed25519PublicKey.from_public_bytes(x)
            else:
                raise ValueError(
                    f"(kty, crv, alg) = ({kty!r}, {crv!r}, {alg!r}); supported: "
                    "('EC', 'P-256', 'ES256') and ('OKP', 'Ed25519', 'EdDSA')"
                )
        except ValueError as exc:
            raise ValueError(f"key {kid!r}: {exc}") from None
        return cls(key, kid=kid)

    def __repr__(self) -> str:
        return f"PublicKey(kid={self.kid!r}, alg={self.alg!r})"


def _member(jwk: Mapping[str, Any], name: str) -> str:
    value = jwk.get(name)
    if not isinstance(value, str):
        raise ValueError(f"member {name!r} must be a base64url string")
    return value


class SigningKey:
    """A private signing key with its algorithm and kid (the RFC 7638 thumbprint of its public key).

    The repr never shows key material; ``hazmat_private_pem`` is the one way out of the object.
    """

    __slots__ = ("_private", "_sign", "public_key")
    _sign: Callable[[bytes], bytes]

    def __init__(self, private_key: PrivateKeyType) -> None:
        self._private = private_key
        self.public_key = PublicKey(private_key.public_key())
        if isinstance(private_key, ec.EllipticCurvePrivateKey):
            self._sign = partial(es256_sign, private_key)
        else:
            self._sign = partial(eddsa_sign, private_key)

    @property
    def kid(self) -> str:
        return self.public_key.kid

    @property
    def alg(self) -> str:
        return self.public_key.alg

    @classmethod
    def generate(cls, alg: str = ES256) -> SigningKey:
        if alg == ES256:
            return cls(ec.generate_private_key(ec.SECP256R1()))
        if alg == EDDSA:
            return cls(ed25519.Ed25519PrivateKey.generate())
        raise ValueError(f"unsupported algorithm {alg!r}; supported: {sorted(SUPPORTED_ALGS)}")

    @classmethod
    def from_pem(cls, pem: bytes) -> SigningKey:
        """Load an unencrypted PKCS#8 (or SEC1) PEM private key; P-256 or Ed25519 only."""
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
            raise ValueError(f"unsupported key type {type(key).__name__}: use P-256 or Ed25519")
        _alg_of(key)
        return cls(key)

    def hazmat_private_pem(self) -> bytes:
        """The private key as UNENCRYPTED PKCS#8 PEM. Write it only to a 0600 file."""
        return self._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def sign(self, signing_input: bytes) -> bytes:
        """The JWS signature of ``signing_input`` (raw r || s for ES256)."""
        return self._sign(signing_input)

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.kid!r}, alg={self.alg!r}, private=[secure])"


class KeySet:
    """The public keys a verifier trusts, by kid. The kid is only ever a dict key here."""

    __slots__ = ("_keys",)

    def __init__(self, keys: Iterable[PublicKey] = ()) -> None:
        self._keys: dict[str, PublicKey] = {}
        for key in keys:
            if key.kid in self._keys:
                raise ValueError(f"duplicate kid {key.kid!r}")
            self._keys[key.kid] = key

    @classmethod
    def from_jwks(
        cls,
        jwks: Mapping[str, Any] | str | bytes,
        *,
        allowed_algs: frozenset[str] = SUPPORTED_ALGS,
    ) -> KeySet:
        """Parse a JWK Set (``{"keys": [...]}``, as a dict or JSON text).

        The whole set is rejected with ``ConfigError`` naming the offending entry if any key is
        malformed, carries private material, has an algorithm outside ``allowed_algs``, or repeats
        a kid: a half-loaded key set would fail in confusing ways later.
        """
        if isinstance(jwks, str | bytes):
            try:
                jwks = orjson.loads(jwks)
            except orjson.JSONDecodeError:
                raise ConfigError("jwks", "is not JSON") from None
        if not isinstance(jwks, Mapping) or not isinstance(jwks.get("keys"), list):
            raise ConfigError("jwks", 'must be an object with a "keys" array')
        keys: list[PublicKey] = []
        seen: set[str] = set()
        for i, jwk in enumerate(jwks["keys"]):
            where = f"jwks.keys[{i}]"
            try:
                key = PublicKey.from_jwk(jwk)
            except ValueError as exc:
                raise ConfigError(where, str(exc)) from None
            if key.alg not in allowed_algs:
                raise ConfigError(
                    where, f"algorithm {key.alg!r} is not allowed here ({sorted(allowed_algs)})"
                )
            if key.kid in seen:
                raise ConfigError(where, f"duplicate kid {key.kid!r}")
            seen.add(key.kid)
            keys.append(key)
        return cls(keys)

    def get(self, kid: str) -> PublicKey | None:
        return self._keys.get(kid)

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def to_jwks(self) -> dict[str, list[dict[str, str]]]:
        return {"keys": [key.to_jwk() for key in self._keys.values()]}

    def __repr__(self) -> str:
        return f"KeySet({sorted(self._keys)!r})"
