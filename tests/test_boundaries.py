"""The layout's import rules, checked on the source (no compiler, no device).

Data flows one way: CLI -> commands -> engines (search, tune) -> devices/rpc and codegen's
public face -> bundle. So: nothing imports ``host/cli.py``; host imports from codegen only the
names ``codegen/__init__.py`` exports; codegen imports no host, gRPC or proto code; the
passes and the emitters do not import each other; no module imports itself back through a
cycle (function-level and type-only imports count: they are cycles a reader must untangle).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import codegen

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("host", "codegen")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


MODULES = _sources()


def _imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_pkg = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.append((mod, [a.name for a in node.names], node.lineno))
    return found


def _edges(name: str, path: Path) -> set[str]:
    """The project modules ``name`` imports (a ``from pkg import sub`` names the submodule)."""
    out = set()
    for mod, names, _ in _imports(name, path):
        subs = [f"{mod}.{n}" for n in names if f"{mod}.{n}" in MODULES]
        if subs:
            out.update(subs)
        elif mod in MODULES:
            out.add(mod)
        else:  # ``import a.b.c`` of a module we have: its longest known prefix
            parts = mod.split(".")
            while parts and ".".join(parts) not in MODULES:
                parts.pop()
            if parts:
                out.add(".".join(parts))
    out.discard(name)
    return out


def _where(pred) -> list[str]:
    bad = []
    for name, path in MODULES.items():
        for mod, names, line in _imports(name, path):
            if pred(name, mod, names):
                bad.append(f"{path.relative_to(ROOT)}:{line}: {mod} {names or ''}".rstrip())
    return bad


def test_nothing_imports_the_cli():
    bad = _where(lambda name, mod, names: name != "host.cli" and (
        mod == "host.cli" or (mod == "host" and "cli" in names)))
    assert not bad, "host/cli.py is the top of the tree; move what these need out of it:\n" \
        + "\n".join(bad)


def test_host_uses_only_codegens_public_face():
    exported = set(codegen.__all__)

    def wrong(name, mod, names):
        if not name.startswith("host") or not (mod == "codegen" or mod.startswith("codegen.")):
            return False
        return mod != "codegen" or bool(set(names) - exported)

    bad = _where(wrong)
    assert not bad, ("host imports codegen internals; export the name from codegen/__init__.py "
                     "and import it from there:\n" + "\n".join(bad))


def test_codegen_imports_no_host_grpc_or_proto():
    def wrong(name, mod, names):
        top = mod.split(".")[0]
        return name.startswith("codegen") and (top in ("host", "grpc", "google")
                                               or "_pb2" in mod)

    bad = _where(wrong)
    assert not bad, "codegen must stay on its side of the Bundle:\n" + "\n".join(bad)


@pytest.mark.parametrize("src, dst", [("codegen.passes", "codegen.emit"),
                                      ("codegen.emit", "codegen.passes")])
def test_passes_and_emitters_do_not_import_each_other(src, dst):
    bad = _where(lambda name, mod, names: (name == src or name.startswith(src + ".")) and (
        mod == dst or mod.startswith(dst + ".")
        or (mod == dst.rsplit(".", 1)[0] and dst.rsplit(".", 1)[1] in names)))
    assert not bad, (f"{src} imports {dst}: decisions shared by both belong in codegen/cost.py "
                     "or the LR records:\n" + "\n".join(bad))


def test_no_import_cycles():
    graph = {name: _edges(name, path) for name, path in MODULES.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles (each line: modules that import each other):\n" + \
        "\n".join(", ".join(c) for c in cycles)


def test_no_argparse_fakes_or_duck_typed_devices():
    """Devices declare their traits; nothing fakes an argparse Namespace to reach a helper."""
    pattern = re.compile(r"SimpleNamespace|getattr\([^)]*device")
    bad = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
           for p in (ROOT / "host").rglob("*.py")
           for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
           if pattern.search(line)]
    assert not bad, "\n".join(bad)


def test_the_checks_see_the_tree():
    """The rules above would pass vacuously on an empty or misread tree."""
    assert {"host.cli", "codegen", "codegen.compile"} <= set(MODULES)
    assert "codegen" in _edges("host.cli", MODULES["host.cli"]) or any(
        "codegen" in _edges(n, p) for n, p in MODULES.items() if n.startswith("host.commands"))
    assert len(MODULES) > 60
