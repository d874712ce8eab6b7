"""``broker policy``: validate, test and explain Cedar policies offline (no broker needed).

    broker policy validate [--policies DIR] [--registry FILE] [--trust-domain TD]
    broker policy test     [--cases FILE] [--policies DIR] [--registry FILE]
    broker policy explain  --agent ID --server S --tool T [--taint T] [--approved] [--not-in-plan]

Every command exits 1 with the file and the problem when the policies, registry or cases are
invalid; ``test`` also exits 1 when any case does not get its expected decision.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from broker.adapters.files import load_cases, load_registry, policy_engine
from broker.cli.keys import reload_policy
from broker.core.clock import SystemClock
from broker.core.errors import ConfigError, NotFound
from broker.core.policy.cases import effect_name, run_cases
from broker.core.policy.engine import PolicyEngine
from broker.core.policy.model import TAINTS, Decision, PolicyRequest
from broker.core.registry import Registry, tier_ttl_cap

DEFAULT_POLICIES = Path("examples/dev/policies")
DEFAULT_REGISTRY = Path("examples/dev/registry.yaml")
DEFAULT_CASES = Path("examples/dev/policy-cases.yaml")
DEFAULT_TRUST_DOMAIN = "dev.local"

_F = TypeVar("_F", bound=Callable[..., Any])


def _engine_options(command: _F) -> _F:
    """--policies, --registry and --trust-domain, shared by every subcommand."""
    options = (
        click.option(
            "--policies",
            type=click.Path(path_type=Path),
            default=DEFAULT_POLICIES,
            show_default=True,
            help="A directory of *.cedar files, or one file.",
        ),
        click.option(
            "--registry",
            type=click.Path(path_type=Path),
            default=DEFAULT_REGISTRY,
            show_default=True,
            help="The server and agent registry (YAML).",
        ),
        click.option(
            "--trust-domain",
            default=DEFAULT_TRUST_DOMAIN,
            show_default=True,
            help="SPIFFE trust domain of the registry's IDs.",
        ),
    )
    for option in reversed(options):
        command = option(command)
    return command


def _config_errors(command: _F) -> _F:
    """Turn a ConfigError into 'Error: KEY: problem' on stderr and exit status 1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ConfigError as exc:
            raise click.ClickException(exc.message) from exc
        except ValueError as exc:  # e.g. a malformed --trust-domain
            raise click.ClickException(str(exc)) from exc

    return wrapper  # type: ignore[return-value]


def _load(policies: Path, registry_path: Path, trust_domain: str) -> tuple[PolicyEngine, Registry]:
    registry = load_registry(registry_path, trust_domain)
    return policy_engine(policies, registry), registry


@click.group("policy")
def policy() -> None:
    """Validate, test and explain Cedar policies (see docs/policy.md)."""


@policy.command()
@_engine_options
@_config_errors
def validate(policies: Path, registry: Path, trust_domain: str) -> None:
    """Check the registry and that every policy parses and validates against the schema."""
    engine, reg = _load(policies, registry, trust_domain)
    tools = sum(len(s.tools) for s in reg.servers)
    click.echo(
        f"OK: {engine.policy_count} policies in {len(engine.files)} file(s) under {policies} "
        "validate against the schema"
    )
    click.echo(
        f"    registry {registry}: {len(reg.servers)} servers, {tools} tools, "
        f"{len(reg.agents)} agents (trust domain {trust_domain})"
    )
    click.echo(f"    policy digest sha256:{engine.digest}")
    for info in engine.policies:
        ttl = f", @ttl {info.ttl} s" if info.ttl is not None else ""
        click.echo(f"    - {info.id} ({info.effect}, {info.source}{ttl})")


@policy.command()
@click.option(
    "--cases",
    "cases_path",
    type=click.Path(path_type=Path),
    default=DEFAULT_CASES,
    show_default=True,
    help="The case file (format in its header comment).",
)
@_engine_options
@_config_errors
def test(cases_path: Path, policies: Path, registry: Path, trust_domain: str) -> None:
    """Run the expected decisions of a case file; exit 1 on any mismatch."""
    engine, _ = _load(policies, registry, trust_domain)
    results = run_cases(engine, load_cases(cases_path))
    failed = 0
    for result in results:
        decision = result.decision
        got = effect_name(decision.effect) if decision else "error"
        ids = f" [{', '.join(decision.policy_ids)}]" if decision and decision.policy_ids else ""
        if result.passed:
            click.echo(f"PASS  {result.case.name}: {got}{ids}")
        else:
            failed += 1
            click.echo(f"FAIL  {result.case.name}: {'; '.join(result.problems)}{ids}")
    click.echo(f"{len(results) - failed} passed, {failed} failed")
    if failed:
        raise click.exceptions.Exit(1)


@policy.command()
@click.option("--agent", required=True, help="The agent's SPIFFE ID.")
@click.option("--server", required=True, help="The server's registry name or SPIFFE ID.")
@click.option("--tool", required=True, help="The tool name.")
@click.option(
    "--taint",
    type=click.Choice(TAINTS),
    default="clean",
    show_default=True,
)
@click.option("--approved", is_flag=True, help="As if an operator approved the step.")
@click.option("--not-in-plan", is_flag=True, help="The task has a plan and the step is not in it.")
@click.option("--intent", default="", help="The task's intent.")
@click.option("--on-behalf-of", default="", help="The user the task acts for.")
@click.option("--delegation-depth", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--now", type=int, default=None, help="Decision time, epoch seconds [now].")
@_engine_options
@_config_errors
def explain(
    agent: str,
    server: str,
    tool: str,
    taint: str,
    approved: bool,
    not_in_plan: bool,
    intent: str,
    on_behalf_of: str,
    delegation_depth: int,
    now: int | None,
    policies: Path,
    registry: Path,
    trust_domain: str,
) -> None:
    """Show the decision for one tool call, the policies that made it, and the TTL cap."""
    engine, reg = _load(policies, registry, trust_domain)
    try:
        server_entry = reg.server(server)
        tool_entry = reg.tool(server_entry, tool)
    except NotFound as exc:
        raise click.ClickException(exc.message) from exc
    known = "registered" if reg.agent(agent) else "not in the registry"
    decision = engine.decide(
        PolicyRequest(
            agent=agent,
            server=server_entry,
            tool=tool_entry,
            now=SystemClock().now() if now is None else now,
            intent=intent,
            taint=taint,
            in_plan=not not_in_plan,
            has_plan=not_in_plan,
            approved=approved,
            delegation_depth=delegation_depth,
            on_behalf_of=on_behalf_of,
        )
    )
    click.echo(f"decision: {effect_name(decision.effect)}")
    click.echo(f"policies: {', '.join(decision.policy_ids) or '(none)'}")
    click.echo(f"ttl cap:  {_ttl_text(decision, server_entry.tier)}")
    click.echo("reasons:")
    for reason in decision.reasons:
        click.echo(f"  - {reason}")
    click.echo(
        f"request:  agent {agent} ({known}); server {server_entry.name} "
        f"({server_entry.spiffe_id}, tier {server_entry.tier}); tool {tool_entry.name} "
        f"(risk {tool_entry.risk.value}); taint {taint}; approved {_yes(approved)}; "
        f"in plan {_yes(not not_in_plan)}"
    )


def _ttl_text(decision: Decision, tier: int) -> str:
    tier_cap = tier_ttl_cap(tier)
    if decision.ttl_cap is None:
        return f"{tier_cap} s (tier {tier}; no @ttl in the determining policies)"
    cap = min(tier_cap, decision.ttl_cap)
    return f"{cap} s (tier {tier}: {tier_cap} s, @ttl: {decision.ttl_cap} s)"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


policy.add_command(reload_policy)  # the operator command `broker policy reload`
