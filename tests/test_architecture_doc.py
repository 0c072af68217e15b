"""docs/ARCHITECTURE.md: its generated module list matches the source (it is
regenerated in memory by docs/architecture.py and compared), and the layers
import in the direction its prose states."""

from __future__ import annotations

import ast
import re

from tests._pipeline_helpers import ROOT, load_script
from tests.test_import_cycles import module_files

PACKAGE = "diffusion_transfer"
#: The parameter types nodes receive: the one import against the layers' arrow.
NODE_CONTRACT = {f"{PACKAGE}.project.schema", f"{PACKAGE}.project.schema_editing", f"{PACKAGE}.project.resolved"}


def _generator():
    return load_script("docs/architecture.py")


def test_the_generated_module_list_is_current():
    doc = ROOT / "docs" / "ARCHITECTURE.md"
    committed = doc.read_text()
    assert _generator().rewritten(committed) == committed, (
        "docs/ARCHITECTURE.md's module list is stale: run .venv/bin/python docs/architecture.py")


def test_the_list_names_every_module_under_its_package():
    generated = _generator().generated()
    sections = dict(re.findall(r"### `(.+?)/`\n(.*?)(?=\n### |\Z)", generated, re.S))
    for name, path in module_files().items():
        folder = path.parent.relative_to(ROOT / "src").as_posix()
        assert f"- `{path.name}`" in sections[folder], f"{name} is missing from the list"


def test_a_summary_is_the_first_sentence_and_abbreviations_do_not_end_it():
    first = _generator().first_sentence
    assert first("Noise schedules, e.g. linear. More here.") == "Noise schedules, e.g. linear."
    assert first("Wrapped over\n  two lines: done.\n\nNext paragraph.") == "Wrapped over two lines: done."
    assert first("No full stop") == "No full stop"
    assert first(None) == ""


def _imports(path, modules: set[str]) -> set[str]:
    """The modules of the package that ``path`` imports, at any depth of its
    code (``from package import module`` counts as the module, not the package)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            submodules = {f"{node.module}.{a.name}" for a in node.names} & modules
            found |= submodules or {node.module}
    return found & modules


def _layer(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def layer_violations(files: dict) -> list[str]:
    """Imports against core <- datasets <- pipelines <- project: core imports no
    other layer and no Kedro, datasets no pipelines or project, pipelines of
    project only the node contract, which itself reaches nothing of pipelines."""
    modules = set(files)
    forbidden = {"core": {"datasets", "pipelines", "project", "tracking", "studies"},
                 "datasets": {"pipelines", "project", "tracking", "studies"},
                 "pipelines": {"tracking", "studies"}}
    wrong = []
    for module, path in files.items():
        layer = _layer(module)
        for target in _imports(path, modules):
            if _layer(target) in forbidden.get(layer, set()) or (
                    layer == "pipelines" and _layer(target) == "project" and target not in NODE_CONTRACT):
                wrong.append(f"{module} -> {target}")
        if layer == "core" and re.search(r"^\s*(from|import) kedro\b", path.read_text(), re.M):
            wrong.append(f"{module} -> kedro")
    reached, todo = set(), [m for m in NODE_CONTRACT if m in files]
    while todo:  # everything the contract modules import, transitively
        for target in _imports(files[todo.pop()], modules) - reached:
            reached.add(target)
            todo.append(target)
    return sorted(wrong + [f"the node contract reaches {t}" for t in reached if _layer(t) == "pipelines"])


def test_the_layers_import_in_the_documented_direction():
    wrong = layer_violations(module_files())
    assert not wrong, "imports against docs/ARCHITECTURE.md's layers:\n" + "\n".join(wrong)


def test_the_layer_check_sees_each_kind_of_wrong_import(tmp_path):
    package = tmp_path / PACKAGE
    sources = {
        "core/a.py": "def f():\n    from diffusion_transfer.pipelines import b\n",
        "core/k.py": "from kedro.io import AbstractDataset\n",
        "pipelines/b.py": "from diffusion_transfer.project import hooks, schema\n",
        "project/hooks.py": "",
        "project/schema.py": "import diffusion_transfer.pipelines.c\n",
        "pipelines/c.py": "",
    }
    for name, text in sources.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    assert layer_violations(module_files(tmp_path)) == [
        f"{PACKAGE}.core.a -> {PACKAGE}.pipelines.b",
        f"{PACKAGE}.core.k -> kedro",
        f"{PACKAGE}.pipelines.b -> {PACKAGE}.project.hooks",
        f"the node contract reaches {PACKAGE}.pipelines.c",
    ]
