"""Reading the broker's configuration documents from files: the registry, the Cedar policies and
the policy test cases. The parsing and validation are the pure core's (``parse_registry``,
``parse_policies``, ``parse_cases``); this module only reads, and names the file in errors."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from broker.adapters.yamlfile import load_yaml_file
from broker.core.errors import ConfigError
from broker.core.policy.cases import PolicyCase, parse_cases
from broker.core.policy.engine import PolicyEngine
from broker.core.policy.loader import LoadedPolicies, parse_policies
from broker.core.registry import Registry, parse_registry


def load_registry(path: Path, trust_domain: str) -> Registry:
    """Read and validate the YAML registry at ``path``; ConfigError names the offending key."""
    return parse_registry(load_yaml_file(path, "registry"), trust_domain, source="registry")


def load_cases(path: Path) -> tuple[PolicyCase, ...]:
    """Read and validate a case file; ConfigError names the offending key."""
    return parse_cases(load_yaml_file(path, "cases"))


def policy_files(source: Path | Sequence[Path]) -> tuple[Path, ...]:
    """The ``*.cedar`` files of a directory (sorted by name), or the given files in order."""
    if isinstance(source, Path):
        if source.is_dir():
            files = tuple(sorted(source.glob("*.cedar")))
            if not files:
                raise ConfigError("policy", f"no *.cedar files in {source}")
            return files
        return (source,)
    if not source:
        raise ConfigError("policy", "no policy files given")
    return tuple(source)


def load_policies(source: Path | Sequence[Path]) -> LoadedPolicies:
    """Read, parse and validate the policies; ConfigError("policy/FILE", problem) on any fault."""
    named: list[tuple[str, str]] = []
    for path in policy_files(source):
        try:
            named.append((path.name, path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"policy/{path.name}", f"cannot read {path}: {exc}") from exc
    return parse_policies(named)


def policy_source(source: Path | Sequence[Path]) -> Callable[[], LoadedPolicies]:
    """What ``PolicyEngine`` calls to (re-)load the policies of ``source`` (a directory of
    ``*.cedar`` files, or a list of files): read afresh on every call, i.e. on every reload."""
    return lambda: load_policies(source)


def policy_engine(
    source: Path | Sequence[Path], registry: Registry, *, check_requests: bool = False
) -> PolicyEngine:
    """The engine for the policies of ``source`` (see ``policy_source``) and ``registry``."""
    return PolicyEngine(policy_source(source), registry, check_requests=check_requests)
