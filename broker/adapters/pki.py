"""A small development CA that issues X.509-SVIDs (ECDSA P-256, SHA-256).

Certificates follow https://github.com/spiffe/spiffe/blob/main/standards/X509-SVID.md: the CA
is an SVID signing certificate (section 3.2: ``cA=true``, ``keyCertSign``, the trust domain's
SPIFFE ID ``spiffe://TD`` with no path); a leaf carries exactly one URI SAN with a non-root path,
``cA=false``, critical key usage ``digitalSignature`` and extended key usage serverAuth +
clientAuth (sections 3.1, 4.1, 4.3, 4.4). Profiles follow RFC 5280 (subject and authority key
identifiers, positive serials).

This is for development and tests, not a production CA: no revocation, no HSM, keys on disk (mode
0600, written atomically). In production, point the broker at SPIRE or another SPIFFE issuer.

The builders (``build_ca_certificate``, ``build_leaf_certificate``) are pure; ``init_ca``, ``issue``
and ``ensure_dev_pki`` are their file-system edge.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from broker.core.errors import InvalidSvid
from broker.core.spiffe import SpiffeId, parse_spiffe_id, parse_trust_domain

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "DEV_IDENTITIES",
    "DEV_TRUST_DOMAIN",
    "CertificateAuthority",
    "build_ca_certificate",
    "build_leaf_certificate",
    "ensure_dev_pki",
    "init_ca",
    "issue",
    "load_ca",
]

DAY = 86_400.0
CA_TTL = 3_650 * DAY
LEAF_TTL = 30 * DAY
DEV_LEAF_TTL = 365 * DAY
RENEW_WITHIN = 1 * DAY
CLOCK_SKEW = dt.timedelta(minutes=5)
CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
ORGANIZATION = "broker dev PKI"

DEV_TRUST_DOMAIN = "dev.local"
DEV_IDENTITIES: dict[str, str] = {
    "broker": "spiffe://dev.local/broker",
    "agent-demo": "spiffe://dev.local/agent/demo",
    "mcp-docs": "spiffe://dev.local/mcp/docs",
    "mcp-repo": "spiffe://dev.local/mcp/repo",
    "mcp-secrets": "spiffe://dev.local/mcp/secrets",
    "mcp-deploy": "spiffe://dev.local/mcp/deploy",
    "mcp-files": "spiffe://dev.local/mcp/files",  # broker guard: npm server-filesystem
    "mcp-everything": "spiffe://dev.local/mcp/everything",  # broker guard: npm server-everything
    "operator-admin": "spiffe://dev.local/operator/admin",
}
"""The dev PKI of API.md: file name (``NAME.crt`` / ``NAME.key``) -> SPIFFE ID."""
_LOOPBACK = ("localhost", "127.0.0.1", "::1")
# Servers clients reach over HTTPS by address: the broker, and the guards (`broker guard --tls`).
DEV_DNS_NAMES: dict[str, tuple[str, ...]] = {
    "broker": _LOOPBACK,
    "mcp-files": _LOOPBACK,
    "mcp-everything": _LOOPBACK,
}

_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


@dataclass(frozen=True)
class CertificateAuthority:
    """A loaded CA: its certificate, its key and the trust domain its URI SAN names."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey = field(repr=False)
    trust_domain: str


def _utc(now: dt.datetime | None) -> dt.datetime:
    if now is None:
        return dt.datetime.now(dt.UTC)
    if now.tzinfo is None:
        raise ValueError("now must be a timezone-aware datetime")
    return now.astimezone(dt.UTC)


def _serial() -> int:
    """A random positive serial of up to 128 bits (RFC 5280 4.1.2.2: at most 20 octets)."""
    return secrets.randbits(128) or 1


def _name(common_name: str) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION)]
    if len(common_name) <= 64:  # the X.520 upper bound for a common name
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _general_names(dns_names: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for name in dns_names:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(name)))
            continue
        except ValueError:
            pass
        labels = name.removeprefix("*.").removesuffix(".").split(".")
        if len(name) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
            raise ValueError(f"{name!r} is neither a DNS name nor an IP address")
        names.append(x509.DNSName(name))
    return names


def build_ca_certificate(
    key: ec.EllipticCurvePrivateKey, trust_domain: str, *, ttl: float, now: dt.datetime
) -> x509.Certificate:
    """A self-signed X.509-SVID signing certificate for ``trust_domain`` (X509-SVID.md 3.2)."""
    trust_domain = parse_trust_domain(trust_domain)
    if ttl <= 0:
        raise ValueError(f"CA ttl must be positive, got {ttl} seconds")
    subject = _name(f"broker dev CA ({trust_domain})")
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(seconds=ttl))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(str(SpiffeId(trust_domain)))]
            ),
            critical=False,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )


def build_leaf_certificate(
    ca: CertificateAuthority,
    spiffe_id: SpiffeId,
    public_key: ec.EllipticCurvePublicKey,
    *,
    ttl: float,
    now: dt.datetime,
    dns_names: Sequence[str] = (),
) -> x509.Certificate:
    """An X.509-SVID leaf for ``spiffe_id`` signed by ``ca`` (X509-SVID.md 3.1, 4.1, 4.3, 4.4).

    Valid from ``now`` minus 5 minutes (clock skew) until ``now + ttl``, cut at the CA's expiry.
    Each of ``dns_names`` becomes a DNS SAN, or an IP address SAN if it parses as one.
    """
    if spiffe_id.trust_domain != ca.trust_domain:
        raise ValueError(
            f"{spiffe_id} is not in the CA's trust domain {ca.trust_domain!r}: a CA issues "
            "SVIDs for its own trust domain only"
        )
    if not spiffe_id.path:
        raise ValueError(
            f"{spiffe_id} has no path: an X.509-SVID leaf needs one (e.g. /agent/NAME)"
        )
    if ttl <= 0:
        raise ValueError(f"leaf ttl must be positive, got {ttl} seconds")
    ca_expiry = ca.cert.not_valid_after_utc
    if ca_expiry <= now:
        raise ValueError(f"the CA certificate expired at {ca_expiry.isoformat()}")
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    sans = [x509.UniformResourceIdentifier(str(spiffe_id)), *_general_names(dns_names)]
    return (
        x509.CertificateBuilder()
        .subject_name(_name(str(spiffe_id)))
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(_serial())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(min(now + dt.timedelta(seconds=ttl), ca_expiry))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(ca.key, hashes.SHA256())
    )


def _write_atomic(path: Path, data: bytes, *, private: bool) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``.

    A private file is created with mode 0600 (and fchmod'ed to exactly that, whatever the umask), so
    the key is never readable by others, not even for an instant.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags, 0o600 if private else 0o644)
    try:
        if private:
            os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            fd = -1
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def init_ca(
    directory: Path,
    trust_domain: str,
    *,
    ttl: float = CA_TTL,
    now: dt.datetime | None = None,
    force: bool = False,
) -> Path:
    """Create a CA for ``trust_domain`` in ``directory`` (``ca.crt``, ``ca.key``); return ca.crt.

    Refuses with ``FileExistsError`` when ``ca.key`` exists, unless ``force``: replacing a CA makes
    every certificate it issued untrusted.
    """
    directory = Path(directory)
    key_path, cert_path = directory / CA_KEY_FILE, directory / CA_CERT_FILE
    if key_path.exists() and not force:
        raise FileExistsError(
            f"{key_path} already exists; replacing the CA would invalidate every certificate it "
            "issued (use force to do it anyway)"
        )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = build_ca_certificate(key, trust_domain, ttl=ttl, now=_utc(now))
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_atomic(key_path, _key_pem(key), private=True)
    _write_atomic(cert_path, _cert_pem(cert), private=False)
    return cert_path


def load_ca(directory: Path) -> CertificateAuthority:
    """Load the CA that ``init_ca`` wrote to ``directory``.

    Raises ``FileNotFoundError`` when there is none, ``ValueError`` when the files are not a CA
    certificate and its key.
    """
    directory = Path(directory)
    cert_path, key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
    for path in (cert_path, key_path):
        if not path.is_file():
            raise FileNotFoundError(f"no CA in {directory}: {path.name} does not exist")
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        # The key's parse error could quote key bytes in some backends: name the file only.
        raise ValueError(
            f"{directory} does not hold a readable PEM CA certificate and key"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise ValueError(f"{key_path} is not the private key of {cert_path}")
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        (uri,) = names.get_values_for_type(x509.UniformResourceIdentifier)
        ca_id = parse_spiffe_id(uri)
    except (x509.ExtensionNotFound, ValueError, InvalidSvid) as exc:
        raise ValueError(f"{cert_path} has no single spiffe://TRUST-DOMAIN URI SAN") from exc
    if ca_id.path:
        raise ValueError(
            f"{cert_path} names {ca_id}; a signing certificate's SPIFFE ID has no path"
        )
    return CertificateAuthority(cert, key, ca_id.trust_domain)


def _issue_with(
    ca: CertificateAuthority,
    spiffe_id: SpiffeId,
    out_prefix: Path,
    *,
    ttl: float,
    dns_names: Sequence[str],
    now: dt.datetime,
) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = build_leaf_certificate(
        ca, spiffe_id, key.public_key(), ttl=ttl, now=now, dns_names=dns_names
    )
    cert_path = out_prefix.with_name(out_prefix.name + ".crt")
    key_path = out_prefix.with_name(out_prefix.name + ".key")
    out_prefix.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_atomic(key_path, _key_pem(key), private=True)
    _write_atomic(cert_path, _cert_pem(cert), private=False)
    return cert_path, key_path


def issue(
    directory: Path,
    spiffe_id: str,
    out_prefix: Path,
    *,
    ttl: float = LEAF_TTL,
    dns_names: Sequence[str] = (),
    now: dt.datetime | None = None,
) -> tuple[Path, Path]:
    """Issue an X.509-SVID for ``spiffe_id`` from the CA in ``directory``.

    Writes ``PREFIX.crt`` (the leaf) and ``PREFIX.key`` (mode 0600) and returns their paths.
    Raises ``FileNotFoundError`` when ``directory`` holds no CA, ``InvalidSvid`` for a malformed
    SPIFFE ID and ``ValueError`` for one outside the CA's trust domain or a bad DNS name.
    """
    ca = load_ca(directory)
    parsed = parse_spiffe_id(spiffe_id)
    return _issue_with(ca, parsed, Path(out_prefix), ttl=ttl, dns_names=dns_names, now=_utc(now))


def _needs_renewal(
    cert_path: Path, key_path: Path, ca: CertificateAuthority, want: SpiffeId, now: dt.datetime
) -> bool:
    """Whether a dev leaf is missing, unreadable, expiring within a day or not what it should be."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        cert.verify_directly_issued_by(ca.cert)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = names.get_values_for_type(x509.UniformResourceIdentifier)
    except (OSError, ValueError, TypeError, x509.ExtensionNotFound, InvalidSignature):
        return True
    expiring = cert.not_valid_after_utc - now < dt.timedelta(seconds=RENEW_WITHIN)
    return expiring or uris != [str(want)] or key.public_key() != cert.public_key()


def ensure_dev_pki(
    directory: Path, trust_domain: str = DEV_TRUST_DOMAIN, *, now: dt.datetime | None = None
) -> list[Path]:
    """Create the dev PKI of API.md in ``directory`` once; return the files written.

    Idempotent: a file that exists and is still good is left alone. A leaf is re-issued when it is
    missing, expires within a day, does not match its key or was not issued by the current CA; the
    CA is re-created (and so every leaf re-issued) when it is missing or expires within a day.
    Raises ``ValueError`` if ``directory`` holds a CA for another trust domain.
    """
    directory = Path(directory)
    when = _utc(now)
    written: list[Path] = []
    try:
        ca: CertificateAuthority | None = load_ca(directory)
    except FileNotFoundError:
        ca = None
    if ca is not None and ca.trust_domain != trust_domain:
        raise ValueError(
            f"{directory} holds a CA for trust domain {ca.trust_domain!r}, not {trust_domain!r}; "
            "remove it or use another directory"
        )
    if ca is None or ca.cert.not_valid_after_utc - when < dt.timedelta(seconds=RENEW_WITHIN):
        written.append(directory / CA_KEY_FILE)
        written.append(init_ca(directory, trust_domain, now=when, force=True))
        ca = load_ca(directory)
    for name, dev_id in DEV_IDENTITIES.items():
        spiffe_id = SpiffeId(trust_domain, parse_spiffe_id(dev_id).path)
        cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
        if _needs_renewal(cert_path, key_path, ca, spiffe_id, when):
            dns = DEV_DNS_NAMES.get(name, ())
            written.extend(
                _issue_with(
                    ca, spiffe_id, directory / name, ttl=DEV_LEAF_TTL, dns_names=dns, now=when
                )
            )
    return written
