"""Strict YAML loading for configuration files: safe loader, duplicate keys refused.

PyYAML keeps the last of two equal mapping keys without a word; in a registry or a case file that
silently drops a tool or a case, so this loader refuses the file instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from broker.core.errors import ConfigError


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys in a mapping."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[object] = set()
    for key_node, _value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def load_yaml_file(path: Path, key: str) -> object:
    """Read and parse ``path``; any problem is a ConfigError naming ``key``."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(key, f"cannot read {path}: {exc}") from exc
    return load_yaml_text(text, key)


def load_yaml_text(text: str, key: str) -> object:
    """Parse YAML text with the strict loader; errors become a ConfigError naming ``key``."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        where = ""
        if exc.problem_mark is not None:
            where = f" at line {exc.problem_mark.line + 1}, column {exc.problem_mark.column + 1}"
        raise ConfigError(key, f"invalid YAML: {exc.problem}{where}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(key, f"invalid YAML: {exc}") from exc
