"""SPIFFE IDs and X.509-SVID leaf validation: who is on the other end of an mTLS connection.

Implements
- the SPIFFE ID syntax of https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md
  (sections 2.1 trust domain, 2.2 path, 2.3 maximum length);
- the leaf checks of https://github.com/spiffe/spiffe/blob/main/standards/X509-SVID.md section 5.2
  (exactly one URI SAN, a ``spiffe`` ID with a non-root path, ``cA=false``, no ``keyCertSign`` or
  ``cRLSign``, ``digitalSignature`` set when key usage is present);
- the certificate thumbprint of RFC 8705 section 3.1 (``cnf`` / ``x5t#S256``) that binds a
  credential to the client certificate it was issued to.

Path validation (the chain up to the trust bundle, expiry) is the TLS stack's job and is not
repeated here. Pure: no gRPC, no I/O, no clock.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from dataclasses import dataclass
from enum import StrEnum

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from broker.core.errors import InvalidSvid

__all__ = [
    "MAX_SPIFFE_ID_BYTES",
    "MAX_TRUST_DOMAIN_BYTES",
    "PeerIdentity",
    "Role",
    "SpiffeId",
    "clear_identity_cache",
    "identity_from_der",
    "identity_from_pem",
    "parse_spiffe_id",
    "parse_trust_domain",
    "validate_svid",
]

SCHEME_PREFIX = "spiffe://"
MAX_SPIFFE_ID_BYTES = 2048
MAX_TRUST_DOMAIN_BYTES = 255
IDENTITY_CACHE_SIZE = 4096

_TRUST_DOMAIN_CHARS = re.compile(r"[a-z0-9._-]+")
_SEGMENT_CHARS = re.compile(r"[a-zA-Z0-9._-]+")


def _shown(text: str) -> str:
    """``text`` as it appears in an error message: quoted, escaped, and cut to a readable length."""
    return repr(text) if len(text) <= 120 else repr(text[:117] + "...")


def _check_trust_domain(trust_domain: str, where: str) -> None:
    if not trust_domain:
        raise InvalidSvid(
            f"{where}: the trust domain is missing (expected spiffe://example.org/...)"
        )
    if "@" in trust_domain:
        raise InvalidSvid(f"{where}: a SPIFFE ID has no userinfo ('user@') before the trust domain")
    if trust_domain.startswith("["):
        raise InvalidSvid(f"{where}: an IPv6 address cannot be a trust domain")
    if ":" in trust_domain:
        raise InvalidSvid(f"{where}: a SPIFFE ID has no port (':') after the trust domain")
    if len(trust_domain.encode()) > MAX_TRUST_DOMAIN_BYTES:
        raise InvalidSvid(
            f"{where}: the trust domain is {len(trust_domain.encode())} bytes long; "
            f"the maximum is {MAX_TRUST_DOMAIN_BYTES}"
        )
    if _TRUST_DOMAIN_CHARS.fullmatch(trust_domain) is None:
        if "%" in trust_domain:
            problem = "must not contain percent-encoded characters"
        elif _TRUST_DOMAIN_CHARS.fullmatch(trust_domain.lower()) is not None:
            problem = "must be lowercase"
        else:
            problem = "may contain only lowercase letters, digits, '.', '-' and '_'"
        raise InvalidSvid(f"{where}: the trust domain {_shown(trust_domain)} {problem}")


def _check_path(path: str, where: str) -> None:
    if not path:
        return
    if not path.startswith("/"):
        raise InvalidSvid(f"{where}: the path must be empty or begin with '/'")
    segments = path[1:].split("/")
    for index, segment in enumerate(segments):
        if not segment:
            if index == len(segments) - 1:
                raise InvalidSvid(f"{where}: the path must not end with '/'")
            raise InvalidSvid(f"{where}: the path must not contain an empty segment ('//')")
        if segment in (".", ".."):
            raise InvalidSvid(f"{where}: the path must not contain a '.' or '..' segment")
        if _SEGMENT_CHARS.fullmatch(segment) is None:
            problem = (
                "must not contain percent-encoded characters"
                if "%" in segment
                else "may contain only letters, digits, '.', '-' and '_'"
            )
            raise InvalidSvid(f"{where}: the path segment {_shown(segment)} {problem}")


@dataclass(frozen=True)
class SpiffeId:
    """A valid SPIFFE ID. ``path`` is ``""`` (the trust domain itself) or begins with ``/``.

    Constructing one checks both parts, so every ``SpiffeId`` in the program is well formed.
    """

    trust_domain: str
    path: str = ""

    def __post_init__(self) -> None:
        where = f"invalid SPIFFE ID {_shown(SCHEME_PREFIX + self.trust_domain + self.path)}"
        _check_trust_domain(self.trust_domain, where)
        _check_path(self.path, where)
        if len(str(self).encode()) > MAX_SPIFFE_ID_BYTES:
            raise InvalidSvid(f"{where}: longer than {MAX_SPIFFE_ID_BYTES} bytes")

    def __str__(self) -> str:
        return f"{SCHEME_PREFIX}{self.trust_domain}{self.path}"

    @property
    def segments(self) -> tuple[str, ...]:
        """The path segments: ``("agent", "demo")`` for ``spiffe://td/agent/demo``."""
        return tuple(self.path[1:].split("/")) if self.path else ()

    def member_of(self, trust_domain: str) -> bool:
        return self.trust_domain == trust_domain


def parse_spiffe_id(text: str) -> SpiffeId:
    """Parse ``spiffe://trust-domain/path``; raise ``InvalidSvid`` saying exactly what is wrong."""
    where = f"invalid SPIFFE ID {_shown(text)}"
    if not text:
        raise InvalidSvid("invalid SPIFFE ID: it is empty")
    size = len(text.encode())
    if size > MAX_SPIFFE_ID_BYTES:
        raise InvalidSvid(f"{where}: it is {size} bytes long; the maximum is {MAX_SPIFFE_ID_BYTES}")
    if not text.startswith(SCHEME_PREFIX):
        if text[: len(SCHEME_PREFIX)].lower() == SCHEME_PREFIX:
            raise InvalidSvid(f"{where}: the scheme must be lowercase 'spiffe://'")
        raise InvalidSvid(f"{where}: the scheme must be 'spiffe://'")
    rest = text[len(SCHEME_PREFIX) :]
    if "?" in rest:
        raise InvalidSvid(f"{where}: a SPIFFE ID has no query ('?')")
    if "#" in rest:
        raise InvalidSvid(f"{where}: a SPIFFE ID has no fragment ('#')")
    trust_domain, slash, path = rest.partition("/")
    _check_trust_domain(trust_domain, where)
    _check_path(slash + path, where)
    return SpiffeId(trust_domain, slash + path)


def parse_trust_domain(text: str) -> str:
    """Check a trust domain name (``example.org``, not ``spiffe://example.org``) and return it."""
    where = f"invalid trust domain {_shown(text)}"
    if "/" in text or text.startswith(SCHEME_PREFIX):
        raise InvalidSvid(f"{where}: give the name alone ('example.org'), not a URI or a path")
    _check_trust_domain(text, where)
    return text


class Role(StrEnum):
    """Which service a peer may call, from the first segment of its SPIFFE ID path (API.md)."""

    AGENT = "agent"
    MCP = "mcp"
    OPERATOR = "operator"


@dataclass(frozen=True)
class PeerIdentity:
    """The authenticated peer of an mTLS connection.

    ``role`` and ``name`` come from the path: ``/agent/demo`` is ``(AGENT, "demo")`` and
    ``/agent/team/a`` is ``(AGENT, "team/a")``. Any other path (``/broker``, ``/agent``) has role
    ``None`` and the whole path, without its leading ``/``, as its name.
    ``cert_sha256`` is the lowercase hex SHA-256 of the leaf certificate's DER encoding.
    """

    spiffe_id: SpiffeId
    role: Role | None
    name: str
    cert_sha256: str

    @property
    def x5t_s256(self) -> str:
        """RFC 8705 ``x5t#S256``: base64url, without padding, of the certificate's SHA-256."""
        digest = bytes.fromhex(self.cert_sha256)
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    @classmethod
    def of(cls, spiffe_id: SpiffeId, cert_sha256: str) -> PeerIdentity:
        segments = spiffe_id.segments
        roles = {role.value: role for role in Role}
        if len(segments) >= 2 and segments[0] in roles:
            return cls(spiffe_id, roles[segments[0]], "/".join(segments[1:]), cert_sha256)
        return cls(spiffe_id, None, spiffe_id.path.removeprefix("/"), cert_sha256)


def _key_usage_problem(cert: x509.Certificate) -> str | None:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is not None and constraints.ca:
        return "is a CA certificate (basicConstraints cA=true); an X.509-SVID leaf has cA=false"
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None
    if usage.key_cert_sign:
        return "has key usage keyCertSign, which an X.509-SVID leaf must not have"
    if usage.crl_sign:
        return "has key usage cRLSign, which an X.509-SVID leaf must not have"
    if not usage.digital_signature:
        return "lacks key usage digitalSignature, which an X.509-SVID leaf must have"
    return None


def validate_svid(cert: x509.Certificate, trust_domain: str) -> SpiffeId:
    """Check ``cert`` is an X.509-SVID leaf of ``trust_domain`` (X509-SVID.md 5.2); return its ID.

    Raises ``InvalidSvid`` naming the first problem found.
    """
    try:
        problem = _key_usage_problem(cert)
        try:
            names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            uris = names.get_values_for_type(x509.UniformResourceIdentifier)
        except x509.ExtensionNotFound:
            uris = []
    except (ValueError, x509.DuplicateExtension) as exc:
        raise InvalidSvid(f"certificate extensions cannot be parsed: {exc}") from exc
    if problem is not None:
        raise InvalidSvid(f"certificate {problem}")
    if len(uris) != 1:
        count = "no URI SAN" if not uris else f"{len(uris)} URI SANs"
        raise InvalidSvid(f"certificate has {count}; an X.509-SVID has exactly one")
    try:
        spiffe_id = parse_spiffe_id(uris[0])
    except InvalidSvid as exc:
        raise InvalidSvid(f"certificate URI SAN is not a SPIFFE ID: {exc.message}") from exc
    if spiffe_id.trust_domain != trust_domain:
        raise InvalidSvid(
            f"certificate SPIFFE ID {spiffe_id} is in trust domain {spiffe_id.trust_domain!r}, "
            f"not the configured {trust_domain!r}"
        )
    if not spiffe_id.path:
        raise InvalidSvid(
            f"certificate SPIFFE ID {spiffe_id} has no path: it names a trust domain, not a "
            "workload, and an X.509-SVID leaf needs a non-root path"
        )
    return spiffe_id


def _identity(cert: x509.Certificate, der: bytes, trust_domain: str) -> PeerIdentity:
    spiffe_id = validate_svid(cert, trust_domain)
    return PeerIdentity.of(spiffe_id, hashlib.sha256(der).hexdigest())


@functools.lru_cache(maxsize=IDENTITY_CACHE_SIZE)
def _identity_from_pem(pem: bytes, trust_domain: str) -> PeerIdentity:
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise InvalidSvid("certificate is not a PEM-encoded X.509 certificate") from exc
    return _identity(cert, cert.public_bytes(Encoding.DER), trust_domain)


@functools.lru_cache(maxsize=IDENTITY_CACHE_SIZE)
def _identity_from_der(der: bytes, trust_domain: str) -> PeerIdentity:
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise InvalidSvid("certificate is not a DER-encoded X.509 certificate") from exc
    return _identity(cert, der, trust_domain)


def identity_from_pem(pem: bytes, trust_domain: str) -> PeerIdentity:
    """The identity in a PEM leaf certificate (the first one, if a chain is given), validated.

    Results are cached (LRU, 4096 entries) so the per-call cost on an established connection is a
    dictionary lookup. Failures are not cached.
    """
    return _identity_from_pem(pem, trust_domain)


def identity_from_der(der: bytes, trust_domain: str) -> PeerIdentity:
    """As ``identity_from_pem``, for a DER-encoded leaf certificate."""
    return _identity_from_der(der, trust_domain)


def clear_identity_cache() -> None:
    """Forget cached identities (for tests: the trust domain is part of the cache key already)."""
    _identity_from_pem.cache_clear()
    _identity_from_der.cache_clear()
