from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from pathlib import Path
from typing import TypeVar

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store

from broker.adapters import pki
from broker.cli.ca import ca as ca_group
from broker.cli.ca import dev as dev_group
from broker.core.errors import InvalidSvid
from broker.core.spiffe import Role, SpiffeId, identity_from_pem, validate_svid
from tests.support.certs import load_ca, make_ca, write_pair

TD = "example.org"
_E = TypeVar("_E", bound=x509.ExtensionType)
NOW = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _ext(cert: x509.Certificate, kind: type[_E]) -> x509.Extension[_E]:
    return cert.extensions.get_extension_for_class(kind)


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "ca"
    pki.init_ca(directory, TD, now=NOW)
    return directory


# --- init_ca --------------------------------------------------------------------------------------


def test_init_ca_writes_an_svid_signing_certificate(tmp_path: Path) -> None:
    cert_path = pki.init_ca(tmp_path / "ca", TD, now=NOW)
    assert cert_path == tmp_path / "ca" / "ca.crt"
    cert = _cert(cert_path)
    constraints = _ext(cert, x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    assert constraints.value.path_length is None
    usage = _ext(cert, x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    assert not usage.value.digital_signature
    uris = _ext(cert, x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier
    )
    assert uris == ["spiffe://example.org"]
    assert _ext(cert, x509.SubjectKeyIdentifier).value.digest
    assert cert.subject.rfc4514_string() == "CN=broker dev CA (example.org),O=broker dev PKI"
    assert cert.not_valid_after_utc == NOW + dt.timedelta(days=3650)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.signature_hash_algorithm is not None
    assert cert.signature_hash_algorithm.name == "sha256"
    cert.verify_directly_issued_by(cert)  # self-signed


def test_init_ca_key_is_private_and_matches(ca_dir: Path) -> None:
    key_path = ca_dir / "ca.key"
    assert _mode(key_path) == 0o600
    assert _mode(ca_dir) == 0o700
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"
    assert key.public_key() == _cert(ca_dir / "ca.crt").public_key()
    assert sorted(p.name for p in ca_dir.iterdir()) == ["ca.crt", "ca.key"]  # no temp files left


def test_init_ca_refuses_to_overwrite(ca_dir: Path) -> None:
    before = (ca_dir / "ca.key").read_bytes()
    with pytest.raises(FileExistsError, match="already exists"):
        pki.init_ca(ca_dir, TD)
    assert (ca_dir / "ca.key").read_bytes() == before
    pki.init_ca(ca_dir, TD, force=True)
    assert (ca_dir / "ca.key").read_bytes() != before
    assert _mode(ca_dir / "ca.key") == 0o600


@pytest.mark.parametrize("trust_domain", ["Example.org", "", "spiffe://example.org", "a/b"])
def test_init_ca_rejects_bad_trust_domains(tmp_path: Path, trust_domain: str) -> None:
    with pytest.raises(InvalidSvid):
        pki.init_ca(tmp_path, trust_domain)
    assert not (tmp_path / "ca.key").exists()


def test_init_ca_requires_an_aware_clock(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        pki.init_ca(tmp_path, TD, now=dt.datetime(2030, 1, 1))


# --- issue ----------------------------------------------------------------------------------------


def test_issued_leaf_is_an_svid_that_chains_to_the_ca(ca_dir: Path, tmp_path: Path) -> None:
    cert_path, key_path = pki.issue(
        ca_dir, "spiffe://example.org/agent/demo", tmp_path / "out" / "demo", now=NOW
    )
    assert (cert_path, key_path) == (tmp_path / "out" / "demo.crt", tmp_path / "out" / "demo.key")
    leaf, ca_cert = _cert(cert_path), _cert(ca_dir / "ca.crt")
    leaf.verify_directly_issued_by(ca_cert)
    assert validate_svid(leaf, TD) == SpiffeId(TD, "/agent/demo")
    peer = identity_from_pem(cert_path.read_bytes(), TD)
    assert (peer.role, peer.name) == (Role.AGENT, "demo")

    verified = (
        PolicyBuilder().store(Store([ca_cert])).time(NOW).build_client_verifier().verify(leaf, [])
    )
    assert verified.subjects is not None
    assert x509.UniformResourceIdentifier("spiffe://example.org/agent/demo") in verified.subjects

    assert _mode(key_path) == 0o600
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert key.public_key() == leaf.public_key()


def test_leaf_profile(ca_dir: Path, tmp_path: Path) -> None:
    cert_path, _ = pki.issue(ca_dir, "spiffe://example.org/mcp/docs", tmp_path / "d", now=NOW)
    leaf, ca_cert = _cert(cert_path), _cert(ca_dir / "ca.crt")
    constraints = _ext(leaf, x509.BasicConstraints)
    assert constraints.critical
    assert not constraints.value.ca
    usage = _ext(leaf, x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    assert usage.value.key_agreement
    assert not usage.value.key_cert_sign
    assert not usage.value.crl_sign
    assert list(_ext(leaf, x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    ]
    ca_ski = _ext(ca_cert, x509.SubjectKeyIdentifier).value.digest
    assert _ext(leaf, x509.AuthorityKeyIdentifier).value.key_identifier == ca_ski
    assert _ext(leaf, x509.SubjectKeyIdentifier).value.digest != ca_ski
    assert leaf.issuer == ca_cert.subject
    assert 0 < leaf.serial_number < 2**128
    assert leaf.not_valid_before_utc == NOW - dt.timedelta(minutes=5)
    assert leaf.not_valid_after_utc == NOW + dt.timedelta(days=30)


def test_serials_are_random(ca_dir: Path, tmp_path: Path) -> None:
    serials = {
        _cert(
            pki.issue(ca_dir, "spiffe://example.org/agent/a", tmp_path / f"a{i}")[0]
        ).serial_number
        for i in range(5)
    }
    assert len(serials) == 5


def test_dns_names_and_ip_addresses(ca_dir: Path, tmp_path: Path) -> None:
    cert_path, _ = pki.issue(
        ca_dir,
        "spiffe://example.org/broker",
        tmp_path / "broker",
        dns_names=["localhost", "127.0.0.1", "::1", "broker.internal"],
        now=NOW,
    )
    leaf = _cert(cert_path)
    names = _ext(leaf, x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://example.org/broker"
    ]
    assert names.get_values_for_type(x509.DNSName) == ["localhost", "broker.internal"]
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    verifier_for = PolicyBuilder().store(Store([_cert(ca_dir / "ca.crt")])).time(NOW)
    for subject in (
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ):
        verifier_for.build_server_verifier(subject).verify(leaf, [])
    assert validate_svid(leaf, TD) == SpiffeId(TD, "/broker")


@pytest.mark.parametrize("dns", ["", "bad name", "-x.example", "a..b", "x" * 64 + ".example"])
def test_bad_dns_names(ca_dir: Path, tmp_path: Path, dns: str) -> None:
    with pytest.raises(ValueError, match="neither a DNS name nor an IP address"):
        pki.issue(ca_dir, "spiffe://example.org/broker", tmp_path / "b", dns_names=[dns])
    assert not (tmp_path / "b.key").exists()


def test_leaf_never_outlives_the_ca(tmp_path: Path) -> None:
    pki.init_ca(tmp_path, TD, ttl=3600, now=NOW)
    cert_path, _ = pki.issue(tmp_path, "spiffe://example.org/agent/a", tmp_path / "a", now=NOW)
    assert _cert(cert_path).not_valid_after_utc == NOW + dt.timedelta(hours=1)
    with pytest.raises(ValueError, match="CA certificate expired"):
        pki.issue(
            tmp_path, "spiffe://example.org/agent/a", tmp_path / "a", now=NOW + dt.timedelta(days=1)
        )


@pytest.mark.parametrize(
    ("spiffe_id", "error", "message"),
    [
        ("spiffe://other.org/agent/a", ValueError, "not in the CA's trust domain 'example.org'"),
        ("spiffe://example.org", ValueError, "has no path"),
        ("spiffe://example.org/agent/a/", InvalidSvid, "must not end with '/'"),
        ("agent/a", InvalidSvid, "scheme must be 'spiffe://'"),
    ],
)
def test_issue_rejects(
    ca_dir: Path, tmp_path: Path, spiffe_id: str, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        pki.issue(ca_dir, spiffe_id, tmp_path / "x")
    assert not (tmp_path / "x.key").exists()


def test_issue_without_a_ca(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no CA in"):
        pki.issue(tmp_path, "spiffe://example.org/agent/a", tmp_path / "a")


def test_load_ca_rejects_a_mismatched_key(ca_dir: Path) -> None:
    other = make_ca(TD)
    (ca_dir / "ca.key").write_bytes(other.key_pem)
    with pytest.raises(ValueError, match="is not the private key of"):
        pki.load_ca(ca_dir)


def test_load_ca_does_not_echo_key_bytes(ca_dir: Path) -> None:
    (ca_dir / "ca.key").write_bytes(
        b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n"
    )
    with pytest.raises(ValueError, match="readable PEM") as caught:
        pki.load_ca(ca_dir)
    assert "c2VjcmV0" not in str(caught.value)


# --- ensure_dev_pki -------------------------------------------------------------------------------


def _all_dev_files(directory: Path) -> set[Path]:
    names = ["ca", *pki.DEV_IDENTITIES]
    return {directory / f"{name}.{ext}" for name in names for ext in ("crt", "key")}


def test_dev_identities_match_the_api() -> None:
    assert pki.DEV_IDENTITIES == {
        "broker": "spiffe://dev.local/broker",
        "agent-demo": "spiffe://dev.local/agent/demo",
        "mcp-docs": "spiffe://dev.local/mcp/docs",
        "mcp-repo": "spiffe://dev.local/mcp/repo",
        "mcp-secrets": "spiffe://dev.local/mcp/secrets",
        "mcp-deploy": "spiffe://dev.local/mcp/deploy",
        "mcp-files": "spiffe://dev.local/mcp/files",
        "mcp-everything": "spiffe://dev.local/mcp/everything",
        "operator-admin": "spiffe://dev.local/operator/admin",
    }


def test_ensure_dev_pki_creates_everything_once(tmp_path: Path) -> None:
    directory = tmp_path / ".broker-dev"
    written = pki.ensure_dev_pki(directory, now=NOW)
    assert set(written) == _all_dev_files(directory)
    assert len(written) == len(set(written))
    ca_cert = _cert(directory / "ca.crt")
    for name, spiffe_id in pki.DEV_IDENTITIES.items():
        leaf = _cert(directory / f"{name}.crt")
        leaf.verify_directly_issued_by(ca_cert)
        assert str(validate_svid(leaf, "dev.local")) == spiffe_id
        assert leaf.not_valid_after_utc == NOW + dt.timedelta(days=365)
        assert _mode(directory / f"{name}.key") == 0o600
    assert _mode(directory / "ca.key") == 0o600
    broker_names = _ext(_cert(directory / "broker.crt"), x509.SubjectAlternativeName).value
    assert broker_names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert len(broker_names.get_values_for_type(x509.IPAddress)) == 2
    guard_names = _ext(_cert(directory / "mcp-files.crt"), x509.SubjectAlternativeName).value
    assert len(guard_names.get_values_for_type(x509.IPAddress)) == 2  # `broker guard --tls`

    snapshot = {path: path.read_bytes() for path in _all_dev_files(directory)}
    assert pki.ensure_dev_pki(directory, now=NOW + dt.timedelta(days=30)) == []
    assert {path: path.read_bytes() for path in _all_dev_files(directory)} == snapshot


def test_ensure_dev_pki_reissues_an_expiring_leaf(tmp_path: Path) -> None:
    pki.ensure_dev_pki(tmp_path, now=NOW)
    pki.issue(tmp_path, "spiffe://dev.local/agent/demo", tmp_path / "agent-demo", ttl=3600, now=NOW)
    before = (tmp_path / "mcp-docs.crt").read_bytes()
    written = pki.ensure_dev_pki(tmp_path, now=NOW)
    assert written == [tmp_path / "agent-demo.crt", tmp_path / "agent-demo.key"]
    assert _cert(tmp_path / "agent-demo.crt").not_valid_after_utc == NOW + dt.timedelta(days=365)
    assert (tmp_path / "mcp-docs.crt").read_bytes() == before


def test_ensure_dev_pki_reissues_expired_leaves(tmp_path: Path) -> None:
    pki.ensure_dev_pki(tmp_path, now=NOW)
    later = NOW + dt.timedelta(days=366)
    written = pki.ensure_dev_pki(tmp_path, now=later)
    assert set(written) == _all_dev_files(tmp_path) - {tmp_path / "ca.crt", tmp_path / "ca.key"}
    assert _cert(tmp_path / "broker.crt").not_valid_after_utc == later + dt.timedelta(days=365)


def test_ensure_dev_pki_repairs_damage(tmp_path: Path) -> None:
    pki.ensure_dev_pki(tmp_path, now=NOW)
    (tmp_path / "mcp-repo.key").unlink()
    foreign = make_ca("dev.local")
    write_pair(tmp_path, "mcp-secrets", *foreign.issue(["spiffe://dev.local/mcp/secrets"]))
    (tmp_path / "mcp-deploy.crt").write_bytes(b"not a certificate")
    written = pki.ensure_dev_pki(tmp_path, now=NOW)
    assert {path.stem for path in written} == {"mcp-repo", "mcp-secrets", "mcp-deploy"}
    ca_cert = _cert(tmp_path / "ca.crt")
    for name in ("mcp-repo", "mcp-secrets", "mcp-deploy"):
        _cert(tmp_path / f"{name}.crt").verify_directly_issued_by(ca_cert)


def test_ensure_dev_pki_replaces_an_expiring_ca(tmp_path: Path) -> None:
    pki.init_ca(tmp_path, "dev.local", ttl=3600, now=NOW)
    written = pki.ensure_dev_pki(tmp_path, now=NOW)
    assert set(written) == _all_dev_files(tmp_path)
    assert _cert(tmp_path / "ca.crt").not_valid_after_utc == NOW + dt.timedelta(days=3650)


def test_ensure_dev_pki_refuses_another_trust_domain(tmp_path: Path) -> None:
    pki.init_ca(tmp_path, "prod.example", now=NOW)
    with pytest.raises(ValueError, match=r"trust domain 'prod\.example', not 'dev\.local'"):
        pki.ensure_dev_pki(tmp_path, now=NOW)


def test_ensure_dev_pki_in_another_trust_domain(tmp_path: Path) -> None:
    pki.ensure_dev_pki(tmp_path, "test.local", now=NOW)
    leaf = _cert(tmp_path / "agent-demo.crt")
    assert validate_svid(leaf, "test.local") == SpiffeId("test.local", "/agent/demo")


# --- CLI ------------------------------------------------------------------------------------------


def _no_key_material(output: str) -> None:
    assert "PRIVATE KEY" not in output
    assert "-----BEGIN" not in output


def test_cli_ca_init_and_issue(tmp_path: Path) -> None:
    runner = CliRunner()
    directory = tmp_path / "ca"
    result = runner.invoke(ca_group, ["init", "--dir", str(directory), "--trust-domain", TD])
    assert result.exit_code == 0, result.output
    assert f"wrote {directory / 'ca.crt'}" in result.output
    assert "spiffe://example.org" in result.output
    _no_key_material(result.output)

    result = runner.invoke(ca_group, ["init", "--dir", str(directory), "--trust-domain", TD])
    assert result.exit_code == 1
    assert "pass --force" in result.output

    out = tmp_path / "certs" / "broker"
    result = runner.invoke(
        ca_group,
        [
            "issue",
            "--dir",
            str(directory),
            "--spiffe-id",
            "spiffe://example.org/broker",
            "--out",
            str(out),
            "--ttl",
            "1h30m",
            "--dns",
            "localhost",
            "--dns",
            "127.0.0.1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"wrote {out}.crt" in result.output
    assert f"wrote {out}.key" in result.output
    _no_key_material(result.output)
    leaf = _cert(Path(f"{out}.crt"))
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert lifetime == dt.timedelta(hours=1, minutes=35)  # ttl plus 5 minutes of clock skew
    names = _ext(leaf, x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]

    result = runner.invoke(
        ca_group, ["init", "--dir", str(directory), "--trust-domain", TD, "--force", "--ttl", "1d"]
    )
    assert result.exit_code == 0, result.output


def test_cli_errors_are_actionable(tmp_path: Path) -> None:
    runner = CliRunner()
    empty = tmp_path / "empty"
    args = ["issue", "--dir", str(empty), "--spiffe-id", "spiffe://x/agent/a", "--out", "a"]
    result = runner.invoke(ca_group, args)
    assert result.exit_code == 1
    assert f"no CA in {empty}: run `broker ca init --dir {empty} --trust-domain TD` first" in (
        result.output
    )

    result = runner.invoke(ca_group, ["init", "--dir", str(tmp_path), "--trust-domain", "Bad.TD"])
    assert result.exit_code == 1
    assert "must be lowercase" in result.output

    result = runner.invoke(
        ca_group, ["init", "--dir", str(tmp_path), "--trust-domain", TD, "--ttl", "ten years"]
    )
    assert result.exit_code == 2
    assert "expected whole seconds" in result.output

    runner.invoke(ca_group, ["init", "--dir", str(tmp_path), "--trust-domain", TD])
    args = ["issue", "--dir", str(tmp_path), "--spiffe-id", "spiffe://other.org/a", "--out", "a"]
    result = runner.invoke(ca_group, args)
    assert result.exit_code == 1
    assert "not in the CA's trust domain" in result.output


def test_cli_dev_init(tmp_path: Path) -> None:
    runner = CliRunner()
    directory = tmp_path / ".broker-dev"
    result = runner.invoke(dev_group, ["init", "--dir", str(directory)])
    assert result.exit_code == 0, result.output
    assert result.output.count("wrote ") == len(_all_dev_files(directory))
    _no_key_material(result.output)
    result = runner.invoke(dev_group, ["init", "--dir", str(directory)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"dev PKI already present in {directory}"


def test_support_load_ca_issues_leaves_that_chain(ca_dir: Path) -> None:
    support_ca = load_ca(ca_dir)
    assert support_ca.trust_domain == TD
    pem, _ = support_ca.issue(["spiffe://example.org/agent/a", "spiffe://example.org/agent/b"])
    x509.load_pem_x509_certificate(pem).verify_directly_issued_by(_cert(ca_dir / "ca.crt"))
