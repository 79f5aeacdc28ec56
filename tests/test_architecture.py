"""The package's shape (docs/architecture.md), checked from the source: imports point down, no cycles, no
service imports another, one command-line entry point, no oversized files."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "tbedge"

# Layer of each top-level part of the package: a module may import only from a higher number (further down)
# or from its own part.
LAYERS = {
    "__main__": -1, "cli": 0,
    "tools": 1,  # bench's Keras baseline child uses build.export
    "build": 2,
    "services": 3, "train": 3,
    "outputs": 4, "calibration": 4,
    "runtime": 5,
    "datasets": 6, "schema": 6, "fsio": 6, "inputs": 6, "errors": 7, "": 8,  # "" = tbedge/__init__.py
}
# The services proper: none may import another (shared code goes down a layer).
SERVICES = {"tbedge.services.screen", "tbedge.services.segment", "tbedge.services.watch",
            "tbedge.services.listen", "tbedge.services.ui"}


def _module(p: Path) -> str:
    parts = ["tbedge", *p.relative_to(PKG).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the tbedge modules it imports (anywhere in the file, lazy imports included)."""
    mods = {_module(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rpartition(".")[0]
        for n in ast.walk(ast.parse(p.read_text())):
            targets = []
            if isinstance(n, ast.ImportFrom):
                base = n.module or ""
                if n.level:
                    up = pkg.split(".")[:len(pkg.split(".")) - (n.level - 1)]
                    base = ".".join(up + ([n.module] if n.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in n.names]
            elif isinstance(n, ast.Import):
                targets = [a.name for a in n.names]
            graph[m] |= {t for t in targets if t in mods and t != m}
    return graph


def test_every_relative_import_resolves():
    """A moved module leaves no import behind (lazy imports inside functions are checked too)."""
    mods = {_module(p) for p in PKG.rglob("*.py")}
    bad = []
    for p in PKG.rglob("*.py"):
        m = _module(p)
        pkg = m if p.name == "__init__.py" else m.rpartition(".")[0]
        for n in ast.walk(ast.parse(p.read_text())):
            if isinstance(n, ast.ImportFrom) and n.level:
                up = pkg.split(".")[:len(pkg.split(".")) - (n.level - 1)]
                base = ".".join(up + ([n.module] if n.module else []))
                if base not in mods:
                    bad.append(f"{m}:{n.lineno} from {'.' * n.level}{n.module or ''}")
                elif not n.module:
                    bad += [f"{m}:{n.lineno} {a.name}" for a in n.names if f"{base}.{a.name}" not in mods
                            and a.name not in _names(PKG.joinpath(*base.split(".")[1:], "__init__.py"))]
    assert not bad, bad


def _names(init: Path) -> set[str]:
    """Top-level names a package's __init__ defines (``from . import x`` may name one)."""
    if not init.exists():
        return set()
    out = set()
    for n in ast.parse(init.read_text()).body:
        if isinstance(n, ast.Assign):
            out |= {t.id for t in n.targets if isinstance(t, ast.Name)}
        elif isinstance(n, ast.FunctionDef | ast.ClassDef):
            out.add(n.name)
        elif isinstance(n, ast.ImportFrom | ast.Import):
            out |= {(a.asname or a.name).split(".")[0] for a in n.names}
    return out


def _part(mod: str) -> str:
    return mod.split(".")[1] if mod.count(".") else ""


def test_imports_point_down():
    bad = [f"{a} -> {b}" for a, deps in import_graph().items() for b in deps
           if _part(a) != _part(b) and LAYERS[_part(a)] >= LAYERS[_part(b)]]
    assert not bad, "\n".join(sorted(bad))


def test_every_part_has_a_layer():
    assert {_part(m) for m in import_graph()} <= set(LAYERS)


def test_no_import_cycle():
    graph = import_graph()
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if d.startswith(m + "."):  # a package importing its own submodules is not a cycle
                continue
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(d):] + [d]))
            if d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_no_service_imports_another():
    graph = import_graph()
    bad = [f"{a} -> {b}" for a in SERVICES for b in graph[a] if b in SERVICES]
    assert not bad, bad


def test_one_command_line_entry_point():
    """typer's ``tbedge`` is the only parser: no argparse anywhere in the package."""
    users = [str(p.relative_to(PKG)) for p in PKG.rglob("*.py") if "argparse" in p.read_text()]
    assert not users, users


def test_no_oversized_file_or_function():
    big_files = {str(p.relative_to(PKG)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > 520}
    assert not big_files, big_files
    long_fns = []
    for p in PKG.rglob("*.py"):
        for n in ast.walk(ast.parse(p.read_text())):
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.end_lineno - n.lineno + 1 > 80:
                doc = ast.get_docstring(n) or ""
                if "Long because" not in doc:
                    long_fns.append(f"{p.relative_to(PKG)}:{n.name} ({n.end_lineno - n.lineno + 1} lines)")
    assert not long_fns, long_fns
