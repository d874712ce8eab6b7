"""Cedar policy texts: parse once, validate against the schema, read the annotations.

Every policy must carry a unique ``@id("...")``: it is the name decisions, audit records and
POLICY_DENIED messages use. Two more annotations mean something to the broker:

- ``@ttl("N")`` on a permit: credentials it grants live at most N seconds (tightens the tier cap);
- ``@reason("text")``: the human sentence reported when the policy determines a decision.

Cedar: https://docs.cedarpolicy.com/ (policy syntax, schema, validation).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from types import MappingProxyType
from typing import Any

import cedarpy
from cedarpy import pst

from broker.core.errors import ConfigError

APPROVED = "approved"  # the context attribute that approval re-evaluation flips
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}")
_CEDAR_ID = re.compile(r"\bpolicy\d+\b")


@cache
def schema_text() -> str:
    """The Cedar schema shipped with the package (``broker/core/policy/schema.cedarschema``)."""
    return resources.files("broker.core.policy").joinpath("schema.cedarschema").read_text("utf-8")


@cache
def schema() -> Any:
    """The parsed schema handle (a ``cedarpy.Schema``), parsed once per process."""
    return cedarpy.Schema.from_str(schema_text())


@dataclass(frozen=True, slots=True)
class PolicyInfo:
    """What the broker reads from one policy besides its logic."""

    id: str  # the @id annotation
    effect: str  # "permit" | "forbid"
    source: str  # the file it came from
    ttl: int | None  # @ttl, permits only
    reason: str | None  # @reason
    approval_sensitive: bool  # its conditions read context.approved (or the context as a whole)


@dataclass(frozen=True, slots=True)
class LoadedPolicies:
    """A parsed, validated policy set and what the broker needs to explain its decisions."""

    policy_set: Any  # cedarpy.PolicySet: parsed once, reused for every decision
    by_cedar_id: Mapping[str, PolicyInfo]  # Cedar's positional id (policy0, ...) -> info
    files: tuple[str, ...]  # the file names, in load order
    digest: str  # SHA-256 (hex) over each file's name and text, in load order

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(info.id for info in self.by_cedar_id.values())


def parse_policies(files: Sequence[tuple[str, str]]) -> LoadedPolicies:
    """Parse and validate policy texts given as ``(file name, text)`` pairs, in order;
    ConfigError("policy/FILE", problem) on any fault. Reading the files is the caller's
    (``broker.adapters.files.load_policies``)."""
    if not files:
        raise ConfigError("policy", "no policy files given")
    texts: list[str] = []
    sources: dict[str, str] = {}  # @id -> file name
    digest = hashlib.sha256()
    for file_name, text in files:
        key = f"policy/{file_name}"
        for info in _check_file(text, file_name):
            if info.id in sources:
                raise ConfigError(key, f'duplicate @id("{info.id}"): also in {sources[info.id]}')
            sources[info.id] = file_name
        texts.append(text)
        name = file_name.encode()
        body = text.encode()
        digest.update(b"%d:%s%d:%s" % (len(name), name, len(body), body))

    # One parse of all the files together: the handle every decision reuses.
    combined = "\n".join(texts)
    policy_set = cedarpy.PolicySet.from_str(combined)
    by_cedar_id = {
        cedar_id: _info(template, sources[template.annotations["id"]])
        for cedar_id, template in policy_set.to_pst().static_policies.items()
    }
    if len(by_cedar_id) != len(sources):  # pragma: no cover - would be a Cedar parser change
        raise ConfigError("policy", "the combined policy set does not match its files")
    names = tuple(name for name, _ in files)
    return LoadedPolicies(policy_set, MappingProxyType(by_cedar_id), names, digest.hexdigest())


def _check_file(text: str, name: str) -> list[PolicyInfo]:
    """Parse and validate one file on its own, so that an error names its file."""
    key = f"policy/{name}"
    try:
        parsed = cedarpy.PolicySet.from_str(text)
        tree = parsed.to_pst()
    except ValueError as exc:
        raise ConfigError(key, f"cannot parse: {exc}") from exc
    if tree.templates:
        raise ConfigError(key, "templates (?principal / ?resource slots) are not supported")
    infos: dict[str, PolicyInfo] = {}
    for cedar_id, template in tree.static_policies.items():
        where = f"{cedar_id} (the {_ordinal(cedar_id)} policy of the file)"
        policy_id = template.annotations.get("id")
        if policy_id is None or not _ID.fullmatch(policy_id):
            raise ConfigError(
                key,
                f'{where}: every policy needs an @id("...") annotation of letters, digits and '
                f"'_.:/-' (got {policy_id!r})",
            )
        infos[cedar_id] = _info(template, name)
    result = cedarpy.validate_policies(text, schema())
    if not result.validation_passed:
        problems = "; ".join(
            rename_ids(f"{e.policy_id}: {e.error}" if e.policy_id else e.error, infos)
            for e in result.errors
        )
        raise ConfigError(key, f"does not validate against the schema: {problems}")
    return list(infos.values())


def _info(template: Any, source: str) -> PolicyInfo:
    annotations: Mapping[str, str] = template.annotations
    policy_id = annotations["id"]
    key = f"policy/{source}"
    ttl: int | None = None
    if "ttl" in annotations:
        raw = annotations["ttl"]
        if template.effect != "permit":
            raise ConfigError(key, f"{policy_id}: @ttl only means something on a permit policy")
        if not raw.isdigit() or not 0 < int(raw) <= 86_400:
            raise ConfigError(key, f'{policy_id}: @ttl("{raw}") must be whole seconds, 1-86400')
        ttl = int(raw)
    return PolicyInfo(
        id=policy_id,
        effect=template.effect,
        source=source,
        ttl=ttl,
        reason=annotations.get("reason") or None,
        approval_sensitive=any(_reads_approved(clause) for clause in template.clauses),
    )


def _reads_approved(node: object) -> bool:
    """Whether an expression can depend on ``context.approved``. Conservative: any use of the
    context other than reading (or testing for) another named attribute counts."""
    if isinstance(node, pst.GetAttr) and _is_context(node.base):
        return node.attr == APPROVED
    if isinstance(node, pst.HasAttr) and _is_context(node.base):
        return APPROVED in node.attrs
    if _is_context(node):
        return True
    if isinstance(node, tuple):
        return any(_reads_approved(item) for item in node)
    if isinstance(node, Mapping):
        return any(_reads_approved(item) for item in node.values())
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        return any(_reads_approved(getattr(node, f.name)) for f in dataclasses.fields(node))
    return False


def _is_context(node: object) -> bool:
    return isinstance(node, pst.Var) and node.name == "context"


def rename_ids(message: str, infos: Mapping[str, PolicyInfo]) -> str:
    """Replace Cedar's positional ids (policy0) with the @id annotations in a message."""
    return _CEDAR_ID.sub(
        lambda m: infos[m.group(0)].id if m.group(0) in infos else m.group(0), message
    )


def _ordinal(cedar_id: str) -> str:
    n = int(cedar_id.removeprefix("policy")) + 1
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
