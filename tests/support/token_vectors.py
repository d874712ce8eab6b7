"""Generate tests/vectors/tokens.json: task-token vectors, valid tokens and attacks, as data.

    .venv/bin/python -m tests.support.token_vectors      # rewrites tests/vectors/tokens.json

Every token in the file is a literal string, so the corpus also serves verifiers written in other
languages. It is reproducible byte for byte: the keys are TEST-ONLY keys derived from public labels
(their PEMs are in the file) and ES256 signatures use deterministic ECDSA (RFC 6979).
tests/unit/test_verify.py replays every vector and checks that this module still produces the
committed file.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from broker.core.tokens import EDDSA, ES256, SigningKey
from broker.core.tokens.jws import P256_N, es256_low_s
from tests.support.tokens import (
    ARGS_SHA256,
    ARGUMENTS,
    AUDIENCE,
    ISSUER,
    OTHER_AUDIENCE,
    PARENT_AGENT,
    T0,
    TOOL,
    X5T,
    fixed_private_key,
    make_claims,
)

VECTORS_PATH = Path(__file__).resolve().parent.parent / "vectors" / "tokens.json"
NOW = T0 + 1.0
WARNING = "TEST-ONLY key, published in this repository: never trust it anywhere."

Private = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _sign(private: Private, data: bytes) -> bytes:
    """Deterministic JWS signature: RFC 6979 for ES256 (raw r || s), Ed25519 is deterministic."""
    if isinstance(private, ec.EllipticCurvePrivateKey):
        der = private.sign(data, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
        r, s = decode_dss_signature(der)
        return es256_low_s(r.to_bytes(32, "big") + s.to_bytes(32, "big"))  # as the broker signs
    return private.sign(data)


class _Keys:
    def __init__(self) -> None:
        self.private = {
            "es256": fixed_private_key(ES256, "primary"),
            "eddsa": fixed_private_key(EDDSA, "primary"),
            "stranger": fixed_private_key(ES256, "stranger"),  # NOT in the JWKS
        }
        self.kid = {name: SigningKey(key).kid for name, key in self.private.items()}

    def header(self, name: str, **changes: Any) -> dict[str, Any]:
        header = {
            "alg": SigningKey(self.private[name]).alg,
            "typ": "task+jwt",
            "kid": self.kid[name],
        }
        header.update(changes)
        return {k: v for k, v in header.items() if v is not None}

    def token(
        self,
        name: str = "es256",
        payload: dict[str, Any] | bytes | None = None,
        header: dict[str, Any] | bytes | None = None,
    ) -> str:
        """A token signed by key ``name`` over exactly the given header and payload bytes."""
        h = header if isinstance(header, bytes) else orjson.dumps(header or self.header(name))
        p = payload if isinstance(payload, bytes) else orjson.dumps(payload or claims())
        signing_input = f"{_b64(h)}.{_b64(p)}".encode()
        return f"{signing_input.decode()}.{_b64(_sign(self.private[name], signing_input))}"


def claims(**changes: Any) -> dict[str, Any]:
    return make_claims(**changes).to_payload()


def _parts(token: str) -> list[str]:
    return token.split(".")


def build() -> dict[str, Any]:
    keys = _Keys()
    good = keys.token()
    h, p, s = _parts(good)
    vectors: list[dict[str, Any]] = []

    def add(name: str, description: str, token: str, expect: str, **context: Any) -> None:
        vector: dict[str, Any] = {"name": name, "description": description, "expect": expect}
        if context:
            vector["context"] = context
        vector["token"] = token
        if expect == "VALID":
            vector["payload"] = orjson.loads(base64.urlsafe_b64decode(_parts(token)[1] + "=="))
        vectors.append(vector)

    # -- valid ----------------------------------------------------------------------------------
    add("valid-es256", "a well-formed ES256 token for this call", good, "VALID")
    add("valid-eddsa", "a well-formed EdDSA token for this call", keys.token("eddsa"), "VALID")
    add(
        "valid-delegated-with-resource",
        "a sub-agent's token: RFC 8693 act chain (two levels) and a resource",
        keys.token(
            payload=claims(
                act={"sub": PARENT_AGENT, "act": {"sub": "spiffe://test.example/agent/root"}},
                resource="repo://main/README.md",
            )
        ),
        "VALID",
    )
    add(
        "valid-expiring-within-leeway",
        "exp 4 s ago: still accepted with the 5 s leeway",
        keys.token(payload=claims(iat=T0 - 60, nbf=T0 - 60, exp=int(NOW) - 4)),
        "VALID",
    )
    add(
        "valid-without-presenter-check",
        "no presenter certificate given: the cnf binding is not checked",
        good,
        "VALID",
        presenter_x5t_s256=None,
    )

    # -- algorithm attacks -------------------------------------------------------------------------
    none_header = _b64(orjson.dumps(keys.header("es256", alg="none")))
    add(
        "alg-none", '"alg": "none" with an empty signature', f"{none_header}.{p}.", "BAD_TOKEN_TYPE"
    )
    add(
        "alg-none-with-signature",
        '"alg": "none" keeping a signature',
        f"{none_header}.{p}.{s}",
        "BAD_TOKEN_TYPE",
    )
    for spelling in ("None", "NONE", "nOnE"):
        header = _b64(orjson.dumps(keys.header("es256", alg=spelling)))
        add(f"alg-{spelling}", f'"alg": "{spelling}"', f"{header}.{p}.", "BAD_TOKEN_TYPE")
    public = keys.private["es256"].public_key()
    for secret_name, secret in {
        "pem": public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "der": public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "jwk": orjson.dumps(SigningKey(keys.private["es256"]).public_key.to_jwk()),
    }.items():
        header = _b64(orjson.dumps(keys.header("es256", alg="HS256")))
        mac = hmac.new(secret, f"{header}.{p}".encode(), hashlib.sha256).digest()
        add(
            f"alg-hs256-public-key-{secret_name}",
            f"HS256, HMAC keyed with the ES256 public key ({secret_name}): key confusion",
            f"{header}.{p}.{_b64(mac)}",
            "BAD_TOKEN_TYPE",
        )
    add(
        "alg-rs256",
        "an algorithm this verifier does not implement",
        keys.token(header=keys.header("es256", alg="RS256")),
        "BAD_TOKEN_TYPE",
    )
    add(
        "alg-not-allowed-here",
        "a valid EdDSA token at a verifier that accepts ES256 only",
        keys.token("eddsa"),
        "BAD_TOKEN_TYPE",
        allowed_algs=["ES256"],
    )
    add(
        "alg-not-a-string",
        '"alg" is a list',
        keys.token(header=keys.header("es256", alg=["ES256"])),
        "BAD_TOKEN_TYPE",
    )
    add(
        "alg-kid-mismatch",
        "header says EdDSA (signed by the EdDSA key) but names the ES256 key's kid",
        keys.token("eddsa", header=keys.header("eddsa", kid=keys.kid["es256"])),
        "BAD_SIGNATURE",
    )

    # -- type and header ---------------------------------------------------------------------------
    for label, typ in (
        ("jwt", "JWT"),
        ("at-jwt", "at+jwt"),
        ("media-type", "application/task+jwt"),
        ("case", "TASK+JWT"),
    ):
        add(
            f"typ-{label}",
            f'"typ": "{typ}" (exactly "task+jwt" is required)',
            keys.token(header=keys.header("es256", typ=typ)),
            "BAD_TOKEN_TYPE",
        )
    add(
        "typ-missing",
        "no typ header",
        keys.token(header={"alg": ES256, "kid": keys.kid["es256"]}),
        "BAD_TOKEN_TYPE",
    )
    embedded = SigningKey(keys.private["stranger"]).public_key.to_jwk()
    add(
        "header-embedded-jwk",
        "signed by a stranger key that the header embeds as jwk (CVE-2018-0114 style)",
        keys.token("stranger", header=keys.header("stranger", jwk=embedded)),
        "BAD_TOKEN_TYPE",
    )
    add(
        "header-jku",
        "a jku header pointing at an attacker's JWKS",
        keys.token(header=keys.header("es256", jku="http://evil.example/jwks")),
        "BAD_TOKEN_TYPE",
    )
    add(
        "header-crit",
        "a critical extension this verifier does not understand",
        keys.token(header=keys.header("es256", crit=["exp"], exp=0)),
        "BAD_TOKEN_TYPE",
    )

    # -- key id ----------------------------------------------------------------------------------
    add(
        "kid-unknown",
        "signed by a key that is not published",
        keys.token("stranger"),
        "UNKNOWN_KEY",
    )
    for label, kid in (
        ("path", "../../etc/passwd"),
        ("absolute-path", "/dev/zero"),
        ("url", "http://evil/jwks"),
        ("sql", "' OR '1'='1"),
        ("empty", ""),
        ("nul", "\u0000"),
    ):
        add(
            f"kid-{label}",
            f"kid {kid!r}: only ever a dict key",
            keys.token(header=keys.header("es256", kid=kid)),
            "UNKNOWN_KEY",
        )
    add(
        "kid-missing",
        "no kid header",
        keys.token(header={"alg": ES256, "typ": "task+jwt"}),
        "UNKNOWN_KEY",
    )
    add(
        "kid-number",
        "kid is a number",
        keys.token(header=keys.header("es256", kid=7)),
        "UNKNOWN_KEY",
    )

    # -- signature -------------------------------------------------------------------------------
    tampered = _b64(orjson.dumps(claims(tool="deploy", server=OTHER_AUDIENCE)))
    add(
        "tampered-payload",
        "payload changed (another tool), signature kept",
        f"{h}.{tampered}.{s}",
        "BAD_SIGNATURE",
        tool="deploy",
    )
    other_p = _parts(keys.token(payload=claims(aud=OTHER_AUDIENCE)))[1]
    add(
        "spliced-payload",
        "the payload of another valid token with this token's signature",
        f"{h}.{other_p}.{s}",
        "BAD_SIGNATURE",
    )
    sig = base64.urlsafe_b64decode(s + "==")
    flipped = bytes([sig[0] ^ 1]) + sig[1:]
    add(
        "signature-bit-flipped", "one bit of r flipped", f"{h}.{p}.{_b64(flipped)}", "BAD_SIGNATURE"
    )
    add(
        "signature-truncated",
        "63 of 64 signature bytes",
        f"{h}.{p}.{_b64(sig[:63])}",
        "BAD_SIGNATURE",
    )
    add("signature-zero", "r = s = 0", f"{h}.{p}.{_b64(bytes(64))}", "BAD_SIGNATURE")
    es256 = keys.private["es256"]
    assert isinstance(es256, ec.EllipticCurvePrivateKey)
    der = es256.sign(f"{h}.{p}".encode(), ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
    add(
        "signature-der",
        "a valid ES256 signature in DER, not r || s (RFC 7518 §3.4)",
        f"{h}.{p}.{_b64(der)}",
        "BAD_SIGNATURE",
    )
    add("signature-empty", "an ES256 token with an empty signature", f"{h}.{p}.", "BAD_SIGNATURE")
    r_part, s_int = sig[:32], int.from_bytes(sig[32:], "big")
    add(
        "signature-high-s",
        "the same signature as (r, n - s): valid ECDSA, but tokens are low-S (malleability)",
        f"{h}.{p}.{_b64(r_part + (P256_N - s_int).to_bytes(32, 'big'))}",
        "BAD_SIGNATURE",
    )

    # -- claims (validly signed) -------------------------------------------------------------------
    add(
        "wrong-issuer",
        "issued by someone else",
        keys.token(payload=claims(iss="spiffe://evil.example/broker")),
        "WRONG_ISSUER",
    )
    add(
        "wrong-audience",
        "a token for another MCP server",
        keys.token(payload=claims(aud=OTHER_AUDIENCE)),
        "WRONG_AUDIENCE",
    )
    add(
        "wrong-audience-here",
        "this token presented to another server",
        good,
        "WRONG_AUDIENCE",
        audience=OTHER_AUDIENCE,
    )
    add(
        "nbf-future",
        "not valid before now + 60 s",
        keys.token(payload=claims(nbf=T0 + 60, exp=T0 + 120)),
        "NOT_YET_VALID",
    )
    add(
        "iat-future",
        "issued 60 s in the future",
        keys.token(payload=claims(iat=T0 + 60, exp=T0 + 120)),
        "NOT_YET_VALID",
    )
    add(
        "expired",
        "expired 60 s ago",
        keys.token(payload=claims(iat=T0 - 120, nbf=T0 - 120, exp=T0 - 60)),
        "TOKEN_EXPIRED",
    )
    add(
        "expired-at-leeway-edge",
        "exp == now - leeway",
        keys.token(payload=claims(iat=T0 - 60, nbf=T0 - 60, exp=int(NOW) - 5)),
        "TOKEN_EXPIRED",
    )
    add(
        "tool-mismatch",
        "the token is for read_file, the call is write_file",
        good,
        "TOOL_MISMATCH",
        tool="write_file",
    )
    add(
        "args-mismatch",
        "the call's arguments differ",
        good,
        "ARGS_MISMATCH",
        args_sha256=hashlib.sha256(b"{}").hexdigest(),
    )
    add(
        "cert-mismatch",
        "presented over another agent's certificate",
        good,
        "CERT_MISMATCH",
        presenter_x5t_s256=_b64(hashlib.sha256(b"other").digest()),
    )

    payload = claims()
    bad_claims: list[tuple[str, str, dict[str, Any]]] = [
        ("aud-list", "aud as an array holding the right audience", {"aud": [AUDIENCE]}),
        ("tier-string", 'tier "1"', {"tier": "1"}),
        ("tier-range", "tier 4", {"tier": 4}),
        ("tier-bool", "tier true", {"tier": True}),
        ("taint-unknown", 'taint "dirty"', {"taint": "dirty"}),
        ("exp-float", "exp as a float", {"exp": T0 + 60.5}),
        ("jti-short", "jti too short", {"jti": "abc"}),
        ("cnf-missing", "no cnf", {"cnf": None}),
        (
            "cnf-extra",
            "cnf with an unknown confirmation method",
            {"cnf": {"x5t#S256": X5T, "jkt": X5T}},
        ),
        (
            "details-two",
            "two authorization details",
            {"authorization_details": [payload["authorization_details"][0]] * 2},
        ),
        (
            "details-extra-member",
            "an authorization detail member this verifier would not enforce",
            {
                "authorization_details": [
                    {**payload["authorization_details"][0], "locations": ["x"]}
                ]
            },
        ),
        (
            "details-type",
            'authorization detail of type "payment"',
            {"authorization_details": [{**payload["authorization_details"][0], "type": "payment"}]},
        ),
        ("act-deep", "a delegation chain nine levels deep", {"act": _chain(9)}),
        ("act-no-sub", "act without sub", {"act": {"act": {"sub": PARENT_AGENT}}}),
    ]
    for label, description, change in bad_claims:
        bad = copy.deepcopy(payload)
        bad.update(change)
        add(
            f"claim-{label}",
            description,
            keys.token(payload={k: v for k, v in bad.items() if v is not None}),
            "MALFORMED_TOKEN",
        )
    duplicated = orjson.dumps(payload)[:-1] + f',"aud":"{OTHER_AUDIENCE}"}}'.encode()
    add(
        "claim-duplicate-aud",
        "aud twice, validly signed (parsers disagree on which wins)",
        keys.token(payload=duplicated),
        "MALFORMED_TOKEN",
    )

    # -- shape -------------------------------------------------------------------------------------
    dup_alg = _b64(orjson.dumps(keys.header("es256"))[:-1] + b',"alg":"none"}')
    huge = keys.token(payload={**payload, "padding": "x" * 8200})
    add("huge", "a validly signed token larger than 8 KiB", huge, "MALFORMED_TOKEN")
    add("huge-garbage", "9000 dots", "." * 9000, "MALFORMED_TOKEN")
    for label, token in (
        ("empty", ""),
        ("word", "garbage"),
        ("dots", ".."),
        ("four-dots", "...."),
        ("abc", "a.b.c"),
        ("two-parts", f"{h}.{p}"),
        ("four-parts", f"{h}.{p}.{s}.{s}"),
        ("five-parts-jwe", f"{h}.{p}.{s}.{s}.{s}"),
        ("header-repeated", f"{h}.{h}.{p}.{s}"),
        ("empty-header", f".{p}.{s}"),
        ("empty-payload", f"{h}..{s}"),
        ("padded-payload", f"{h}.{p}{'=' * (-len(p) % 4) or '=='}.{s}"),
        ("standard-alphabet", f"{h}.{p[:5]}+{p[6:]}.{s}"),
        ("whitespace", f"{h}.{p[:10]} {p[10:]}.{s}"),
        ("trailing-newline", good + "\n"),
        ("leading-space", " " + good),
        ("non-ascii", f"{h}.{p}é.{s}"),
        ("bearer-prefix", "Bearer " + good),
        ("non-canonical-base64", f"{h}.{p}.{s[:-1]}{_bump(s[-1])}"),
        ("header-not-json", f"{_b64(b'not json')}.{p}.{s}"),
        ("header-array", f"{_b64(b'[1,2]')}.{p}.{s}"),
        ("header-duplicate-alg", f"{dup_alg}.{p}.{s}"),
        ("payload-null", f"{h}.{_b64(b'null')}.{s}"),
        ("payload-not-utf8", f"{h}.{_b64(bytes([0x7B, 0xFF, 0x7D]))}.{s}"),
    ):
        add(f"shape-{label}", f"malformed: {label.replace('-', ' ')}", token, "MALFORMED_TOKEN")
    return {
        "description": (
            "Task-token verification vectors for broker.core.tokens.verify_token. Each vector is "
            "checked with `context` (then its own `context` overrides) and must raise "
            "Unauthenticated with reason `expect`, or verify (`VALID`) to claims equal to "
            "`payload`. Generated by tests/support/token_vectors.py: do not edit by hand."
        ),
        "test_only_keys": {
            name: {
                "warning": WARNING,
                "kid": keys.kid[name],
                "private_pem": SigningKey(key).hazmat_private_pem().decode(),
                "published": name != "stranger",
            }
            for name, key in keys.private.items()
        },
        "jwks": {
            "keys": [SigningKey(keys.private[n]).public_key.to_jwk() for n in ("es256", "eddsa")]
        },
        "context": {
            "allowed_algs": [ES256, EDDSA],
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "now": NOW,
            "leeway": 5,
            "tool": TOOL,
            "arguments": ARGUMENTS,
            "args_sha256": ARGS_SHA256,
            "presenter_x5t_s256": X5T,
        },
        "vectors": vectors,
    }


def _chain(depth: int) -> dict[str, Any]:
    act: dict[str, Any] = {"sub": f"spiffe://test.example/agent/a{depth}"}
    for level in range(depth - 1, 0, -1):
        act = {"sub": f"spiffe://test.example/agent/a{level}", "act": act}
    return act


def _bump(char: str) -> str:
    """The next base64url character: same leading bits, different (non-zero) unused bits."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return alphabet[alphabet.index(char) + 1]


def render() -> str:
    return json.dumps(build(), indent=1, ensure_ascii=True) + "\n"


if __name__ == "__main__":
    VECTORS_PATH.parent.mkdir(exist_ok=True)
    VECTORS_PATH.write_text(render())
    print(f"wrote {VECTORS_PATH}")
