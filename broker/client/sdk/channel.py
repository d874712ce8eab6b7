"""Workload credentials (an X.509-SVID, its key and the trust bundle) and mTLS channels to the
broker, shared by the agent SDK and the MCP server verifier.

The identity a caller has at the broker is the SPIFFE ID in its certificate's URI SAN; read
here so that an MCP server knows its own audience without being told twice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509

from broker.core.errors import ConfigError
from broker.core.spiffe import PeerIdentity, identity_from_pem, parse_spiffe_id

PathLike = str | os.PathLike[str]

# Reconnect quickly after a broker restart. (No client keepalive pings: the broker's default
# ping policy would answer frequent ones with GOAWAY; the feed's heartbeats detect a dead peer.)
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
)


@dataclass(frozen=True)
class WorkloadCredentials:
    """PEM bytes of a workload's certificate, private key and trust bundle (CA certificates)."""

    ca: bytes
    cert: bytes
    key: bytes

    @classmethod
    def from_files(cls, ca: PathLike, cert: PathLike, key: PathLike) -> WorkloadCredentials:
        def read(path: PathLike, what: str) -> bytes:
            try:
                return Path(path).read_bytes()
            except OSError as exc:
                raise ConfigError(what, f"cannot read {path}: {exc.strerror}") from None

        return cls(read(ca, "ca"), read(cert, "cert"), read(key, "key"))

    @classmethod
    def from_dev_dir(cls, directory: PathLike, name: str) -> WorkloadCredentials:
        """The dev PKI layout of API.md: ``DIR/ca.crt``, ``DIR/NAME.crt``, ``DIR/NAME.key``."""
        d = Path(directory)
        return cls.from_files(d / "ca.crt", d / f"{name}.crt", d / f"{name}.key")

    def identity(self) -> PeerIdentity:
        """This workload's identity, from the SPIFFE ID in its certificate (validated as an
        X.509-SVID of that ID's trust domain)."""
        try:
            cert = x509.load_pem_x509_certificate(self.cert)
            uris = cert.extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            ).value.get_values_for_type(x509.UniformResourceIdentifier)
        except (ValueError, x509.ExtensionNotFound):
            raise ConfigError("cert", "is not an X.509-SVID (no URI SAN)") from None
        if len(uris) != 1:
            raise ConfigError(
                "cert", f"an X.509-SVID has exactly one URI SAN, this has {len(uris)}"
            )
        return identity_from_pem(self.cert, parse_spiffe_id(uris[0]).trust_domain)

    def __repr__(self) -> str:
        return "WorkloadCredentials(ca=..., cert=..., key=[secure])"


def secure_channel(address: str, creds: WorkloadCredentials) -> grpc.aio.Channel:
    """A grpc.aio channel to the broker at ``address`` (``host:port``) over mutual TLS."""
    tls = grpc.ssl_channel_credentials(creds.ca, creds.key, creds.cert)
    return grpc.aio.secure_channel(address, tls, options=CHANNEL_OPTIONS)
