"""Certificates for negative tests: build exactly the odd certificate a test needs.

``broker.adapters.pki`` only issues well-formed X.509-SVIDs; this factory can also make a leaf from
another CA, an expired leaf, two URI SANs, no SAN at all, a CA certificate used as a client leaf,
missing key usage bits, a foreign trust domain::

    ca = make_ca("dev.local")
    cert_pem, key_pem = ca.issue(["spiffe://dev.local/agent/a", "spiffe://dev.local/agent/b"])
    write_pair(tmp_path, "two-uris", cert_pem, key_pem)
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from broker.adapters import pki

__all__ = ["CA", "load_ca", "make_ca", "write_pair"]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key_usage(
    *, digital_signature: bool, key_cert_sign: bool, crl_sign: bool, key_agreement: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=key_agreement,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass
class CA:
    """A throwaway CA held in memory."""

    trust_domain: str
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey = field(repr=False)

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self.key)

    def issue(
        self,
        uri_sans: Sequence[str],
        *,
        dns: Sequence[str] = (),
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        is_ca: bool = False,
        basic_constraints: bool = True,
        key_usage: bool = True,
        digital_signature: bool = True,
        key_cert_sign: bool = False,
        crl_sign: bool = False,
        extended_key_usage: bool = True,
        subject_cn: str = "test leaf",
    ) -> tuple[bytes, bytes]:
        """A leaf signed by this CA, as (cert PEM, key PEM); each keyword bends one rule.

        ``not_before`` defaults to an hour ago and ``not_after`` to a day from now. With
        ``basic_constraints=False`` or ``key_usage=False`` the extension is left out altogether.
        """
        now = _now()
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - dt.timedelta(hours=1))
            .not_valid_after(not_after or now + dt.timedelta(days=1))
        )
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri) for uri in uri_sans]
        for name in dns:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                names.append(x509.DNSName(name))
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        if basic_constraints:
            builder = builder.add_extension(
                x509.BasicConstraints(ca=is_ca, path_length=None), critical=True
            )
        if key_usage:
            builder = builder.add_extension(
                _key_usage(
                    digital_signature=digital_signature,
                    key_cert_sign=key_cert_sign,
                    crl_sign=crl_sign,
                ),
                critical=True,
            )
        if extended_key_usage:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        ca_ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def make_ca(
    trust_domain: str = "dev.local",
    *,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    common_name: str | None = None,
) -> CA:
    """A self-signed SVID signing certificate for ``trust_domain`` (URI SAN ``spiffe://TD``)."""
    now = _now()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, common_name or f"test CA ({trust_domain})"[:64])]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(hours=1))
        .not_valid_after(not_after or now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            _key_usage(digital_signature=False, key_cert_sign=True, crl_sign=True), critical=True
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CA(trust_domain, cert, key)


def load_ca(directory: Path) -> CA:
    """The CA that ``broker.adapters.pki`` wrote to ``directory`` (e.g. the dev PKI), to issue odd
    leaves that chain to a real trust bundle."""
    loaded = pki.load_ca(directory)
    return CA(loaded.trust_domain, loaded.cert, loaded.key)


def write_pair(directory: Path, name: str, cert_pem: bytes, key_pem: bytes) -> tuple[Path, Path]:
    """Write ``NAME.crt`` and ``NAME.key`` (mode 0600) into ``directory``; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert_pem)
    key_path.touch(mode=0o600)
    key_path.chmod(0o600)
    key_path.write_bytes(key_pem)
    return cert_path, key_path
