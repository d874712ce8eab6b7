"""The package's layers, enforced: the folder says what a module may import (docs/architecture.md).

    core      pure: no I/O, no network or server libraries, imports only core
    app       use cases on ports: core and app
    adapters  I/O behind the ports: core, app and adapters
    rpc       the gRPC edge: core, app, adapters and rpc
    client    the [client] extra (verifier, MCP guard, gateway, agent SDK): core, client,
              the generated stubs and ``broker.rpc.convert``; never cedarpy or redis
    cli       the command line: anything (its server commands import lazily)

An AST walk, not an import: every ``import`` anywhere in a module counts, lazy ones included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "broker"

ALLOWED: dict[str, tuple[str, ...]] = {
    "core": ("core",),
    "app": ("core", "app"),
    "adapters": ("core", "app", "adapters"),
    "rpc": ("core", "app", "adapters", "rpc", "_proto"),
    "client": ("core", "client", "_proto", "rpc.convert"),
}
# Libraries a layer must not import (besides the layer rule above).
FORBIDDEN_LIBS: dict[str, tuple[str, ...]] = {
    "core": (
        "grpc",
        "grpc_status",
        "redis",
        "hvac",
        "starlette",
        "mcp",
        "httpx",
        "yaml",
        "uvicorn",
        "anyio",
        "requests",
        "click",
        "socket",
        "subprocess",
        "fcntl",
        "shutil",
        "tempfile",
        "sqlite3",
        "http",
        "urllib.request",
    ),
    "app": ("grpc", "redis", "hvac", "starlette", "mcp", "httpx", "uvicorn", "click"),
    "client": ("cedarpy", "redis", "hvac"),
}
# Calls that touch files, refused in core.
# Calls that touch files, refused in core: the builtin open(), pathlib's file methods, and os's.
PATH_CALLS = {
    "read_text",
    "read_bytes",
    "write_text",
    "write_bytes",
    "mkdir",
    "unlink",
    "rmdir",
    "glob",
    "rglob",
    "iterdir",
    "touch",
    "chmod",
}
OS_CALLS = {
    "open",
    "fdopen",
    "replace",
    "rename",
    "remove",
    "unlink",
    "fsync",
    "makedirs",
    "mkdir",
    "listdir",
    "scandir",
    "stat",
    "chmod",
    "fchmod",
    "walk",
}
# core reads one package data file (the Cedar schema shipped inside the package), no user files.
FILE_CALL_EXEMPT = {("core/policy/loader.py", "read_text")}


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "_proto" not in p.parts)


def _layer(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else "(top)"


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
            if node.module == "broker":  # from broker import x
                found += [(node.lineno, f"broker.{alias.name}") for alias in node.names]
    return found


def _violations(path: Path) -> list[str]:
    layer = _layer(path)
    rel = path.relative_to(PACKAGE).as_posix()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    problems = []
    for line, name in _imports(tree):
        if name.startswith("broker.") and layer in ALLOWED:
            target = name.removeprefix("broker.")
            ok = any(target == a or target.startswith(a + ".") for a in ALLOWED[layer])
            if not ok:
                problems.append(
                    f"{rel}:{line} imports {name} ({layer} may import {', '.join(ALLOWED[layer])})"
                )
        for lib in FORBIDDEN_LIBS.get(layer, ()):
            if name == lib or name.startswith(lib + "."):
                problems.append(f"{rel}:{line} imports {name} (not in {layer})")
    if layer == "core":
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            fn = node.func
            if isinstance(fn, ast.Name) and fn.id == "open":
                called = "open"
            elif (
                isinstance(fn, ast.Attribute)
                and isinstance(fn.value, ast.Name)
                and (fn.value.id == "os" and fn.attr in OS_CALLS)
            ):
                called = f"os.{fn.attr}"
            elif isinstance(fn, ast.Attribute) and fn.attr in PATH_CALLS:
                called = fn.attr
            else:
                continue
            if (rel, called) not in FILE_CALL_EXEMPT:
                problems.append(f"{rel}:{node.lineno} calls {called}() (core touches no files)")
    return problems


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_module_respects_its_layer(path: Path) -> None:
    assert _violations(path) == []


def test_the_walk_sees_a_violation(tmp_path: Path) -> None:
    """The rule can fail: a core module importing redis and reading a file is caught."""
    bad = PACKAGE / "core" / "_layer_probe.py"
    assert not bad.exists()
    tree_text = (
        "import os\nimport redis\nfrom broker.app import feed\n\n"
        "def f(p):\n    os.replace(p, p)\n    return open(p).read() + p.read_text()\n"
    )
    try:
        bad.write_text(tree_text)
        problems = _violations(bad)
    finally:
        bad.unlink()
    assert any("imports redis" in p for p in problems)
    assert any("imports broker.app" in p for p in problems)
    assert any("calls read_text()" in p for p in problems)
    assert any("calls open()" in p for p in problems)
    assert any("calls os.replace()" in p for p in problems)


def test_top_level_holds_no_modules() -> None:
    """Every module lives in a layer's folder: a new top-level module would escape the rules."""
    top = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert top == []
