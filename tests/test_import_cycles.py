"""No import cycles anywhere in ``diffusion_transfer``, and no unexplained import inside a function.

The graph holds every import statement of a module, at the top level and
inside functions alike: an import moved into a function only hides a cycle
until that function runs. An edge goes to the module an import names (a
submodule when ``from package import name`` names one); parent packages,
which Python initialises first, are left out, and so are the imports under
``if TYPE_CHECKING:``, which never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "diffusion_transfer"
CHECKED = (PACKAGE,)


def module_files(src: Path = SRC) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    files = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = path
    return files


def _absolute(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of ``from <level dots><target> import ...`` inside ``module``."""
    if level == 0:
        return target or ""
    base = module.split(".")
    base = base if is_package else base[:-1]  # a package's own dots start at itself
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, target] if target else base)


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None) if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except the bodies of ``if TYPE_CHECKING:``."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if _is_type_checking(node):
            todo.extend(node.orelse)  # type: ignore[attr-defined]
            continue
        todo.extend(ast.iter_child_nodes(node))


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The modules of the package that ``module`` imports anywhere in its file."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, is_package, node.level, node.module)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return {name for name in found if name in known and name != module}


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    files = module_files(src)
    known = set(files)
    return {name: imports_of(name, path, known) for name, path in files.items()}


def find_cycles(graph: dict[str, set[str]], within: tuple[str, ...]) -> list[list[str]]:
    """Strongly connected components (Tarjan) with more than one module, or a
    self-import, among the modules under ``within``."""
    nodes = sorted(n for n in graph if n.startswith(within))
    inside = set(nodes)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node] & inside):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1 or node in graph[node]:
                cycles.append(sorted(component))

    for node in nodes:
        if node not in index:
            visit(node)
    return cycles


def test_graph_sees_relative_and_function_level_imports(tmp_path):
    pkg = tmp_path / PACKAGE
    (pkg / "core" / "sub").mkdir(parents=True)
    for name in ("__init__.py", "core/__init__.py", "core/sub/__init__.py"):
        (pkg / name).write_text("")
    (pkg / "core" / "a.py").write_text("from .sub import b\n")
    (pkg / "core" / "sub" / "b.py").write_text("def f():\n    from ..a import x\n")
    (pkg / "core" / "sub" / "c.py").write_text(
        "from typing import TYPE_CHECKING\nfrom . import b\nimport diffusion_transfer.core.a\n"
        "if TYPE_CHECKING:\n    from .d import Hint\n"
    )
    (pkg / "core" / "sub" / "d.py").write_text("from .c import y\n")
    graph = import_graph(tmp_path)
    assert graph[f"{PACKAGE}.core.a"] == {f"{PACKAGE}.core.sub.b"}
    assert graph[f"{PACKAGE}.core.sub.b"] == {f"{PACKAGE}.core.a"}  # inside a function
    assert graph[f"{PACKAGE}.core.sub.c"] == {f"{PACKAGE}.core.sub.b", f"{PACKAGE}.core.a"}
    assert find_cycles(graph, CHECKED) == [[f"{PACKAGE}.core.a", f"{PACKAGE}.core.sub.b"]]


@pytest.mark.parametrize("package", CHECKED)
def test_no_import_cycles(package):
    graph = import_graph()
    assert graph, f"no modules found under {SRC / PACKAGE}"
    cycles = find_cycles(graph, (package,))
    assert not cycles, "import cycles (move the shared names to a module both can import):\n" + "\n".join(
        " <-> ".join(c) for c in cycles
    )


def function_level_imports(path: Path, known: set[str], module: str) -> list[tuple[int, str]]:
    """(line, imported module) of each import of a package module made inside a
    function of ``path`` with no comment on its line or the line above."""
    lines = path.read_text().splitlines()
    tree = ast.parse("\n".join(lines), filename=str(path))
    found = []
    for func in ast.walk(tree):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(func):
            if isinstance(node, ast.ImportFrom):
                target = _absolute(module, path.name == "__init__.py", node.level, node.module)
            elif isinstance(node, ast.Import):
                target = next((a.name for a in node.names if a.name in known), "")
            else:
                continue
            if not (target == PACKAGE or target.startswith(PACKAGE + ".")):
                continue
            said = "#" in lines[node.lineno - 1] or lines[node.lineno - 2].strip().startswith("#")
            if not said:
                found.append((node.lineno, target))
    return sorted(set(found))


def test_function_level_import_check_sees_a_bare_one(tmp_path):
    pkg = tmp_path / PACKAGE
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "b.py").write_text("X = 1\n")
    (pkg / "a.py").write_text(
        "def f():\n    from diffusion_transfer.b import X\n"
        "def g():\n    # deferred: breaks a cycle\n    from .b import X\n"
        "def h():\n    import json\n")
    files = module_files(tmp_path)
    assert function_level_imports(files[f"{PACKAGE}.a"], set(files), f"{PACKAGE}.a") == [(2, f"{PACKAGE}.b")]


def test_imports_inside_functions_say_why():
    """Only where they defer a heavy import or break a real dependency, each with
    a comment (on its line or the line above) saying which."""
    files = module_files()
    bare = [f"{path.relative_to(SRC)}:{line}: {target}" for name, path in files.items()
            for line, target in function_level_imports(path, set(files), name)]
    assert not bare, ("imports inside functions without a comment saying why (move them to the top of the "
                      "module, or say what they defer or which cycle they break):\n" + "\n".join(bare))


def test_models_hold_networks_not_methods():
    """core/models holds the networks; the losses that train them (core/methods,
    core/training) sit above it and import it, never the other way round."""
    above = (f"{PACKAGE}.core.methods", f"{PACKAGE}.core.training")
    upward = sorted(f"{name} -> {target}" for name, targets in import_graph().items()
                    if name.startswith(f"{PACKAGE}.core.models") for target in targets if target.startswith(above))
    assert not upward, "core/models imports from the layers above it:\n" + "\n".join(upward)
