"""``broker ca`` (a development CA issuing X.509-SVIDs) and ``broker dev`` (the fixed dev PKI).

Thin: parse options, call ``broker.adapters.pki``, print the paths written. Key material is never
printed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click
from cryptography import x509

from broker.adapters import pki
from broker.core.durations import format_duration, parse_duration
from broker.core.errors import InvalidSvid

__all__ = ["DURATION", "DurationParam", "ca", "dev"]


class DurationParam(click.ParamType[float]):
    """A click option type for durations: ``90s``, ``24h``, ``7d``, ``1h30m`` or plain seconds."""

    name = "duration"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, int | float):
            return float(value)
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = DurationParam()

_DIR = click.Path(file_okay=False, path_type=Path)


def _describe(cert_path: Path) -> str:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    uris = ", ".join(names.get_values_for_type(x509.UniformResourceIdentifier))
    return f"{uris}, expires {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%SZ}"


@click.group()
def ca() -> None:
    """A development CA that issues X.509-SVIDs (not for production: use SPIRE there)."""


@ca.command("init")
@click.option(
    "--dir", "directory", type=_DIR, required=True, help="Where to write ca.crt and ca.key."
)
@click.option("--trust-domain", required=True, help="The SPIFFE trust domain, e.g. example.org.")
@click.option(
    "--ttl",
    type=DURATION,
    default=format_duration(pki.CA_TTL),
    show_default=True,
    help="Lifetime of the CA certificate.",
)
@click.option(
    "--force", is_flag=True, help="Replace an existing CA (its certificates stop working)."
)
def init_command(directory: Path, trust_domain: str, ttl: float, force: bool) -> None:
    """Create a CA for TRUST_DOMAIN: DIR/ca.crt and DIR/ca.key (mode 0600)."""
    try:
        cert_path = pki.init_ca(directory, trust_domain, ttl=ttl, force=force)
    except FileExistsError as exc:
        raise click.ClickException(
            f"a CA already exists in {directory}: pass --force to replace it "
            "(every certificate it issued will stop being trusted)"
        ) from exc
    except InvalidSvid as exc:
        raise click.ClickException(exc.message) from exc
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {cert_path} (CA certificate: {_describe(cert_path)})")
    click.echo(f"wrote {directory / pki.CA_KEY_FILE} (CA private key, mode 0600)")


@ca.command("issue")
@click.option("--dir", "directory", type=_DIR, required=True, help="The CA's directory.")
@click.option("--spiffe-id", required=True, help="e.g. spiffe://example.org/agent/NAME")
@click.option(
    "--out",
    "out_prefix",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Write PREFIX.crt and PREFIX.key.",
)
@click.option(
    "--ttl",
    type=DURATION,
    default=format_duration(pki.LEAF_TTL),
    show_default=True,
    help="Lifetime of the certificate.",
)
@click.option(
    "--dns", "dns_names", multiple=True, help="Extra DNS name or IP address SAN (repeatable)."
)
def issue_command(
    directory: Path, spiffe_id: str, out_prefix: Path, ttl: float, dns_names: Sequence[str]
) -> None:
    """Issue an X.509-SVID for SPIFFE_ID: PREFIX.crt and PREFIX.key (mode 0600)."""
    try:
        cert_path, key_path = pki.issue(
            directory, spiffe_id, out_prefix, ttl=ttl, dns_names=dns_names
        )
    except FileNotFoundError as exc:
        raise click.ClickException(
            f"no CA in {directory}: run `broker ca init --dir {directory} --trust-domain TD` first"
        ) from exc
    except InvalidSvid as exc:
        raise click.ClickException(exc.message) from exc
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {cert_path} ({_describe(cert_path)})")
    click.echo(f"wrote {key_path} (private key, mode 0600)")


@click.group()
def dev() -> None:
    """The fixed development setup of API.md (trust domain dev.local)."""


@dev.command("init")
@click.option(
    "--dir",
    "directory",
    type=_DIR,
    default=Path(".broker-dev"),
    show_default=True,
    help="Where the dev PKI lives.",
)
def dev_init_command(directory: Path) -> None:
    """Create the dev CA and a certificate for each dev identity, once; renew expiring ones."""
    try:
        written = pki.ensure_dev_pki(directory)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    if not written:
        click.echo(f"dev PKI already present in {directory}")
        return
    for path in written:
        click.echo(f"wrote {path}")
