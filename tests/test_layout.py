"""The package's shape (DESIGN.md): one job per room, imports in one direction, no module too long to read.

    pytest tests/test_layout.py

Read from the source with `ast`, so it checks every import, including those inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "ngpt"
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every ngpt module `path` imports (`from ngpt.x import y` counts ngpt.x, and ngpt.x.y when that is a module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("ngpt")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ngpt"):
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES}
    return out


FILES = {module_name(p): p for p in PKG.rglob("*.py")}
MODULES = set(FILES)
GRAPH = {name: imports_of(path) for name, path in FILES.items()}


def test_no_module_is_too_long_to_read():
    long = {name: n for name, p in FILES.items() if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


def test_the_model_file_is_architecture_only():
    lines = len(FILES["ngpt.model"].read_text(encoding="utf-8").splitlines())
    assert lines <= 320
    assert {m for m in GRAPH["ngpt.model"] if m != "ngpt.settings" and not m.startswith("ngpt.kernels")} == set()


def test_nothing_below_the_cli_imports_it():
    assert sorted(n for n, deps in GRAPH.items() if not n.startswith("ngpt.cli") and n != "ngpt.__main__"
                  and any(d.startswith("ngpt.cli") for d in deps)) == []


def test_inference_export_hub_serve_never_import_training():
    rooms = ("ngpt.engine", "ngpt.inference", "ngpt.sampling", "ngpt.checkpoint", "ngpt.export", "ngpt.hub",
             "ngpt.serve", "ngpt.bench.quality")
    offenders = {n: sorted(d for d in deps if d.startswith("ngpt.train"))
                 for n, deps in GRAPH.items() if n.startswith(rooms)}
    assert {n: d for n, d in offenders.items() if d} == {}


def test_no_import_circle():
    """Module-level imports only: a function-local import is how a module defers a heavy dependency."""
    top = {}
    for name, path in FILES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        deps = set()
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ngpt"):
                deps.add(node.module)
                deps |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("ngpt")}
        top[name] = {d for d in deps if d in MODULES and d != name}

    def package_parents(name: str) -> set[str]:  # importing ngpt.a.b runs ngpt.a first: not a cycle of ours
        parts = name.split(".")
        return {".".join(parts[:i]) for i in range(1, len(parts))}

    seen, stack, cycles = set(), [], []

    def visit(n: str) -> None:
        if n in stack:
            cycles.append(stack[stack.index(n):] + [n])
            return
        if n in seen:
            return
        seen.add(n)
        stack.append(n)
        for d in top.get(n, ()):
            if d not in package_parents(n):
                visit(d)
        stack.pop()

    for n in sorted(top):
        visit(n)
    assert cycles == []


def readme_layout() -> set[str]:
    """The module paths the README's Layout block names (a folder line's own *.py tokens are files in it)."""
    text = (PKG.parent / "README.md").read_text(encoding="utf-8")
    block = text[text.index("## Layout"):].split("```")[1]
    found, stack = set(), []  # stack: (indent, folder)
    for line in block.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        name, *rest = line.split()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        folder = "/".join(f for _, f in stack)
        if name.endswith("/"):
            stack.append((indent, name.rstrip("/")))
            folder = "/".join(f for _, f in stack)
            found |= {f"{folder}/{t}" for t in rest if t.endswith(".py")}
        elif name.endswith(".py"):
            found |= {f"{folder}/{t}" for t in [name, *rest] if t.endswith(".py")}
    return found


def test_the_readme_layout_names_every_module_and_only_those():
    tree = {p.relative_to(PKG.parent).as_posix() for p in PKG.rglob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    named = {p for p in readme_layout() if p.startswith("ngpt/")}
    assert sorted(tree - named) == [], "modules missing from the README's Layout"
    assert sorted(named - tree) == [], "README Layout lines for modules that do not exist"
