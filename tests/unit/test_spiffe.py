from __future__ import annotations

import base64
import datetime as dt
import hashlib
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given
from hypothesis import strategies as st

from broker.core.errors import InvalidSvid, PermissionDenied, Reason
from broker.core.spiffe import (
    PeerIdentity,
    Role,
    SpiffeId,
    clear_identity_cache,
    identity_from_der,
    identity_from_pem,
    parse_spiffe_id,
    parse_trust_domain,
    validate_svid,
)
from tests.support.certs import CA, make_ca

TD = "dev.local"

# --- SPIFFE ID syntax (SPIFFE-ID.md sections 2.1-2.3) ---------------------------------------------


@pytest.mark.parametrize(
    ("text", "trust_domain", "path"),
    [
        ("spiffe://example.org", "example.org", ""),
        ("spiffe://example.org/service", "example.org", "/service"),
        ("spiffe://staging.example.com/payments/mysql", "staging.example.com", "/payments/mysql"),
        ("spiffe://staging.example.com/payments/web-fe", "staging.example.com", "/payments/web-fe"),
        (
            "spiffe://k8s-west.example.com/ns/staging/sa/default",
            "k8s-west.example.com",
            "/ns/staging/sa/default",
        ),
        (
            "spiffe://example.com/9eebccd2-12bf-40a6-b262-65fe0487d453",
            "example.com",
            "/9eebccd2-12bf-40a6-b262-65fe0487d453",
        ),
        ("spiffe://trust_domain.example.com/A.b_C-d", "trust_domain.example.com", "/A.b_C-d"),
        ("spiffe://1.2.3.4/x", "1.2.3.4", "/x"),  # dotted quads are ordinary trust domain names
        ("spiffe://td/.../..a/a..", "td", "/.../..a/a.."),  # only "." and ".." are dot segments
        ("spiffe://dev.local/agent/demo", "dev.local", "/agent/demo"),
    ],
)
def test_valid_ids(text: str, trust_domain: str, path: str) -> None:
    parsed = parse_spiffe_id(text)
    assert parsed == SpiffeId(trust_domain, path)
    assert str(parsed) == text


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "it is empty"),
        ("example.org/service", "scheme must be 'spiffe://'"),
        ("https://example.org/service", "scheme must be 'spiffe://'"),
        ("spiffe:/example.org/service", "scheme must be 'spiffe://'"),
        ("SPIFFE://example.org/service", "scheme must be lowercase"),
        ("Spiffe://example.org/service", "scheme must be lowercase"),
        ("spiffe://", "trust domain is missing"),
        ("spiffe:///service", "trust domain is missing"),
        ("spiffe://Example.org/service", "must be lowercase"),
        ("spiffe://example.org:8443/service", "no port"),
        ("spiffe://user@example.org/service", "no userinfo"),
        ("spiffe://user:pw@example.org/service", "no userinfo"),
        ("spiffe://[::1]/service", "an IPv6 address cannot be a trust domain"),
        ("spiffe://exa mple.org/service", "only lowercase letters, digits"),
        ("spiffe://ex%41mple.org/service", "percent-encoded"),
        ("spiffe://example.org/service?x=1", "no query"),
        ("spiffe://example.org?x=1", "no query"),
        ("spiffe://example.org/service#frag", "no fragment"),
        ("spiffe://example.org/", "must not end with '/'"),
        ("spiffe://example.org/service/", "must not end with '/'"),
        ("spiffe://example.org//service", "empty segment"),
        ("spiffe://example.org/a//b", "empty segment"),
        ("spiffe://example.org/./service", "'.' or '..' segment"),
        ("spiffe://example.org/a/..", "'.' or '..' segment"),
        ("spiffe://example.org/a%20b", "percent-encoded"),
        ("spiffe://example.org/a b", "only letters, digits"),
        ("spiffe://example.org/caf\u00e9", "only letters, digits"),
        ("spiffe://example.org/a+b", "only letters, digits"),
        ("spiffe://" + "a" * 256 + "/x", "trust domain is 256 bytes long; the maximum is 255"),
        ("spiffe://example.org/" + "a" * 2028, "2049 bytes long; the maximum is 2048"),
    ],
)
def test_invalid_ids(text: str, problem: str) -> None:
    with pytest.raises(InvalidSvid, match="invalid SPIFFE ID") as caught:
        parse_spiffe_id(text)
    assert problem in caught.value.message
    assert caught.value.reason is Reason.INVALID_SVID


def test_longest_allowed_id() -> None:
    text = "spiffe://example.org/" + "a" * 2027
    assert len(text) == 2048
    assert str(parse_spiffe_id(text)) == text


def test_invalid_svid_is_a_permission_denial() -> None:
    error = InvalidSvid("x")
    assert isinstance(error, PermissionDenied)
    assert str(error) == "INVALID_SVID: x"


@pytest.mark.parametrize(
    ("trust_domain", "path"),
    [("Example.org", "/x"), ("", "/x"), ("td", "x"), ("td", "/x/"), ("td", "/a/../b")],
)
def test_constructor_validates(trust_domain: str, path: str) -> None:
    with pytest.raises(InvalidSvid):
        SpiffeId(trust_domain, path)


def test_parse_trust_domain() -> None:
    assert parse_trust_domain("dev.local") == "dev.local"
    with pytest.raises(InvalidSvid, match="must be lowercase"):
        parse_trust_domain("Dev.local")
    with pytest.raises(InvalidSvid, match="not a URI or a path"):
        parse_trust_domain("spiffe://dev.local")
    with pytest.raises(InvalidSvid, match="not a URI or a path"):
        parse_trust_domain("dev.local/x")


_TD_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.-_"
_SEGMENT_CHARS = _TD_CHARS + "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
trust_domains = st.text(_TD_CHARS, min_size=1, max_size=40)
segments = st.text(_SEGMENT_CHARS, min_size=1, max_size=20).filter(lambda s: s not in (".", ".."))


@given(trust_domains, st.lists(segments, max_size=6))
def test_round_trip(trust_domain: str, parts: list[str]) -> None:
    spiffe_id = SpiffeId(trust_domain, "".join("/" + part for part in parts))
    assert parse_spiffe_id(str(spiffe_id)) == spiffe_id
    assert spiffe_id.segments == tuple(parts)


@given(st.text(max_size=60))
def test_parse_never_fails_any_other_way(text: str) -> None:
    try:
        parsed = parse_spiffe_id(text)
    except InvalidSvid:
        return
    assert str(parsed) == text


# --- roles and peer identities --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "role", "name"),
    [
        ("spiffe://dev.local/agent/demo", Role.AGENT, "demo"),
        ("spiffe://dev.local/mcp/docs", Role.MCP, "docs"),
        ("spiffe://dev.local/operator/admin", Role.OPERATOR, "admin"),
        ("spiffe://dev.local/agent/team/a", Role.AGENT, "team/a"),
        ("spiffe://dev.local/broker", None, "broker"),
        ("spiffe://dev.local/agent", None, "agent"),
        ("spiffe://dev.local/Agent/demo", None, "Agent/demo"),
        ("spiffe://dev.local/agents/demo", None, "agents/demo"),
        ("spiffe://dev.local", None, ""),
    ],
)
def test_role_from_path(text: str, role: Role | None, name: str) -> None:
    peer = PeerIdentity.of(parse_spiffe_id(text), "00" * 32)
    assert (peer.role, peer.name) == (role, name)


def test_x5t_s256() -> None:
    digest = hashlib.sha256(b"certificate").digest()
    peer = PeerIdentity.of(parse_spiffe_id("spiffe://td/agent/a"), digest.hex())
    assert peer.x5t_s256 == base64.urlsafe_b64encode(digest).decode().rstrip("=")
    assert "=" not in peer.x5t_s256
    assert len(peer.x5t_s256) == 43


# --- X.509-SVID leaf validation (X509-SVID.md section 5.2) ----------------------------------------


@pytest.fixture(scope="module")
def ca() -> CA:
    return make_ca(TD)


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    clear_identity_cache()
    yield
    clear_identity_cache()


def _cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def test_valid_leaf(ca: CA) -> None:
    pem, _ = ca.issue(["spiffe://dev.local/agent/demo"], dns=["localhost", "127.0.0.1"])
    assert validate_svid(_cert(pem), TD) == SpiffeId(TD, "/agent/demo")


def test_key_usage_and_basic_constraints_may_be_absent(ca: CA) -> None:
    pem, _ = ca.issue(["spiffe://dev.local/agent/demo"], key_usage=False, basic_constraints=False)
    assert validate_svid(_cert(pem), TD) == SpiffeId(TD, "/agent/demo")


@pytest.mark.parametrize(
    ("uris", "options", "problem"),
    [
        ([], {}, "certificate has no URI SAN; an X.509-SVID has exactly one"),
        (
            ["spiffe://dev.local/agent/a", "spiffe://dev.local/agent/b"],
            {},
            "certificate has 2 URI SANs; an X.509-SVID has exactly one",
        ),
        (["https://dev.local/agent/a"], {}, "URI SAN is not a SPIFFE ID: invalid SPIFFE ID"),
        (["spiffe://dev.local/agent/a/"], {}, "must not end with '/'"),
        (["spiffe://other.org/agent/a"], {}, "in trust domain 'other.org', not the configured"),
        (["spiffe://dev.local"], {}, "has no path"),
        (["spiffe://dev.local/agent/a"], {"is_ca": True}, "is a CA certificate"),
        (["spiffe://dev.local/agent/a"], {"key_cert_sign": True}, "keyCertSign"),
        (["spiffe://dev.local/agent/a"], {"crl_sign": True}, "cRLSign"),
        (["spiffe://dev.local/agent/a"], {"digital_signature": False}, "lacks key usage"),
    ],
)
def test_rejections(ca: CA, uris: list[str], options: dict[str, Any], problem: str) -> None:
    pem, _ = ca.issue(uris, dns=["localhost"], **options)
    with pytest.raises(InvalidSvid) as caught:
        validate_svid(_cert(pem), TD)
    assert problem in caught.value.message
    assert caught.value.reason is Reason.INVALID_SVID


def test_ca_certificate_presented_as_leaf(ca: CA) -> None:
    with pytest.raises(InvalidSvid, match="is a CA certificate"):
        validate_svid(ca.cert, TD)


def test_identity_from_pem(ca: CA) -> None:
    pem, _ = ca.issue(["spiffe://dev.local/mcp/docs"])
    der = _cert(pem).public_bytes(Encoding.DER)
    peer = identity_from_pem(pem, TD)
    assert peer == PeerIdentity(
        SpiffeId(TD, "/mcp/docs"), Role.MCP, "docs", hashlib.sha256(der).hexdigest()
    )
    assert identity_from_der(der, TD) == peer
    assert peer.cert_sha256 == peer.cert_sha256.lower()


def test_identity_from_pem_takes_the_leaf_of_a_chain(ca: CA) -> None:
    pem, _ = ca.issue(["spiffe://dev.local/agent/demo"])
    assert identity_from_pem(pem + ca.cert_pem, TD).spiffe_id == SpiffeId(TD, "/agent/demo")


def test_identity_is_cached(ca: CA, monkeypatch: pytest.MonkeyPatch) -> None:
    pem, _ = ca.issue(["spiffe://dev.local/agent/demo"])
    first = identity_from_pem(pem, TD)

    def fail(*_args: object) -> None:
        raise AssertionError("parsed again")

    monkeypatch.setattr(x509, "load_pem_x509_certificate", fail)
    assert identity_from_pem(pem, TD) is first


def test_trust_domain_is_part_of_the_cache_key(ca: CA) -> None:
    pem, _ = ca.issue(["spiffe://dev.local/agent/demo"])
    identity_from_pem(pem, TD)
    with pytest.raises(InvalidSvid, match=r"not the configured 'prod\.example'"):
        identity_from_pem(pem, "prod.example")


def test_garbage_is_an_invalid_svid() -> None:
    with pytest.raises(InvalidSvid, match=r"not a PEM-encoded X\.509 certificate"):
        identity_from_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", TD)
    with pytest.raises(InvalidSvid, match=r"not a DER-encoded X\.509 certificate"):
        identity_from_der(b"\x30\x03\x02\x01\x01", TD)


def test_expiry_is_left_to_tls(ca: CA) -> None:
    """validate_svid reads no clock: the TLS handshake rejects expired certificates."""
    long_ago = dt.datetime(2001, 1, 1, tzinfo=dt.UTC)
    pem, _ = ca.issue(
        ["spiffe://dev.local/agent/demo"],
        not_before=long_ago,
        not_after=long_ago + dt.timedelta(days=1),
    )
    assert validate_svid(_cert(pem), TD) == SpiffeId(TD, "/agent/demo")
