"""The import rules of docs/architecture.md, enforced by walking every module's AST.

protocol → stdlib only (and never asyncio, socket, ssl, logging); transport → protocol;
broker → protocol, storage.api; client → protocol, transport; and so on. A lower layer never
imports a higher one. Packages that do not exist yet are simply not checked.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "tidemq"

# package → the tidemq packages it may import ("*" = anything).
ALLOWED: dict[str, set[str]] = {
    "protocol": set(),
    "transport": {"protocol"},
    "storage.api": {"protocol"},
    "storage": {"storage.api", "protocol"},
    "broker": {"protocol", "storage.api"},
    "auth": {"broker.hooks", "broker.interfaces", "protocol", "storage.api"},
    "extensions": {"broker.hooks", "broker.interfaces", "protocol", "storage.api"},
    "rules": {"broker.hooks", "broker.interfaces", "protocol", "storage.api"},
    "cluster": {"broker.hooks", "broker.interfaces", "protocol", "storage.api"},
    "client": {"protocol", "transport"},
    # tidemq bench: a user of the client library, never of the broker.
    "benchtool": {"client", "protocol"},
    "bridges": {"client", "broker.hooks", "protocol"},
    "api": {"broker", "storage.api", "rules", "auth", "protocol"},
}
# Standard-library modules the sans-IO protocol package must never touch.
PROTOCOL_FORBIDDEN_STDLIB = {"asyncio", "socket", "ssl", "logging", "selectors", "threading"}
# The composition root: no layer may import it.
COMPOSITION_ROOTS = ("tidemq.app", "tidemq.cli")
# Modules every package may import: the package root (version) only.
ALWAYS_ALLOWED = {"tidemq"}


def _layer_of(module: str) -> str | None:
    """The layer key of a dotted module below tidemq (most specific match wins)."""
    parts = module.split(".")
    if parts[0] != "tidemq" or len(parts) < 2:
        return None
    two = ".".join(parts[1:3])
    if two in ALLOWED:
        return two
    return parts[1] if parts[1] in ALLOWED else None


def _imports(path: Path, module: str) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.append(target)
            # `from tidemq import broker` imports the subpackage.
            found.extend(f"{target}.{alias.name}" for alias in node.names if target == "tidemq")
    return found


def _modules() -> list[tuple[Path, str]]:
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out.append((path, ".".join(parts)))
    return out


def _allowed(layer: str, target: str) -> bool:
    if target in ALWAYS_ALLOWED:
        return True
    target_layer = _layer_of(target)
    if target_layer is None:
        return True  # app, cli, config, log, testing: checked below
    if (
        target_layer == layer
        or target_layer.startswith(layer + ".")
        or layer.startswith(target_layer + ".")
    ):
        return True
    rel = target.removeprefix("tidemq.")
    return any(rel == a or rel.startswith(a + ".") or target_layer == a for a in ALLOWED[layer])


def _is_composition_root(target: str) -> bool:
    # Whole module names only: tidemq.client is not tidemq.cli.
    return any(target == root or target.startswith(root + ".") for root in COMPOSITION_ROOTS)


def violations() -> list[str]:
    bad = []
    for path, module in _modules():
        layer = _layer_of(module)
        for target in _imports(path, module):
            top = target.split(".")[0]
            if layer == "protocol":
                if top in PROTOCOL_FORBIDDEN_STDLIB:
                    bad.append(f"{module} imports {target} (protocol is sans-IO)")
                elif top != "tidemq" and top not in sys.stdlib_module_names and top != "":
                    bad.append(f"{module} imports third-party {target}")
                elif top == "tidemq" and not target.startswith("tidemq.protocol"):
                    bad.append(f"{module} imports {target} (protocol imports nothing of ours)")
                continue
            if layer is None or top != "tidemq":
                continue
            if _is_composition_root(target):
                bad.append(f"{module} imports the composition root {target}")
            elif not _allowed(layer, target):
                bad.append(f"{module} ({layer}) may not import {target}")
    return bad


def test_layering_rules_hold() -> None:
    assert violations() == []


@pytest.mark.parametrize(
    ("layer", "target", "ok"),
    [
        ("protocol", "tidemq.protocol.codec", True),
        ("broker", "tidemq.protocol", True),
        ("broker", "tidemq.storage.api", True),
        ("broker", "tidemq.storage.sqlite", False),
        ("broker", "tidemq.transport.tcp", False),
        ("broker", "tidemq.client", False),
        ("client", "tidemq.broker", False),
        ("benchtool", "tidemq.client", True),
        ("benchtool", "tidemq.broker", False),
        ("client", "tidemq.transport.tls", True),
        ("transport", "tidemq.broker.session", False),
        ("auth", "tidemq.broker.hooks", True),
        ("auth", "tidemq.broker.session", False),
    ],
)
def test_rule_table(layer: str, target: str, ok: bool) -> None:
    """The checker itself tells allowed from forbidden imports."""
    assert _allowed(layer, target) is ok


def test_checker_catches_a_forbidden_protocol_import(tmp_path: Path) -> None:
    module = tmp_path / "bad.py"
    module.write_text("import asyncio\nfrom ..broker import session\n")
    found = _imports(module, "tidemq.protocol.bad")
    assert "asyncio" in found
    assert "tidemq.broker" in found


def test_composition_root_match_is_by_whole_name() -> None:
    assert _is_composition_root("tidemq.cli")
    assert _is_composition_root("tidemq.app.sub")
    assert not _is_composition_root("tidemq.client.builder")
    assert not _is_composition_root("tidemq.application")
