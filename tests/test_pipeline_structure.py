"""The layout of ``pipelines/`` (issue 16): one folder per stage, each with
``nodes.py`` (the node functions) and ``pipeline.py`` (the wiring).

No snapshot of the registered pipelines is kept (it would go stale with every
new node); these are the invariants that hold whatever the stages contain.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PIPELINES = Path(__file__).resolve().parents[1] / "src" / "diffusion_transfer" / "pipelines"
STAGES = ("curate", "domain_classifier", "finetune", "sample", "translate", "evaluate", "report", "compare", "edit",
          "anl_conditions", "anl_augment", "world", "convert")
#: libraries a factory has no use for: the compute lives in nodes.py
HEAVY = {"torch", "numpy", "PIL", "matplotlib", "diffusers", "open_clip", "transformers"}
#: node functions defined outside a stage's nodes.py, and why
NODES_ELSEWHERE = {"diffusion_transfer.pipelines.training_samples": "the samples-during-training strip (issue 17) lives "
                                                          "beside the sampler the training loop calls"}


def _top_level_imports(path: Path) -> set[str]:
    names = set()
    for stmt in ast.parse(path.read_text()).body:
        if isinstance(stmt, ast.Import):
            names |= {alias.name for alias in stmt.names}
        elif isinstance(stmt, ast.ImportFrom) and stmt.level == 0 and stmt.module:
            names.add(stmt.module)
    return names


def test_every_stage_folder_is_there_and_nothing_else_is():
    folders = {p.name for p in PIPELINES.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == set(STAGES)
    for stage in STAGES:
        for part in ("__init__.py", "nodes.py", "pipeline.py"):
            assert (PIPELINES / stage / part).is_file(), f"pipelines/{stage}/{part} is missing"


@pytest.mark.parametrize("stage", STAGES)
def test_pipeline_py_only_wires(stage):
    """pipeline.py imports no compute library and defines factories only;
    nodes.py builds no pipeline."""
    pipeline_py = PIPELINES / stage / "pipeline.py"
    heavy = {m for m in _top_level_imports(pipeline_py) if m.split(".")[0] in HEAVY}
    assert not heavy, f"pipelines/{stage}/pipeline.py imports {sorted(heavy)} at module level"
    functions = [s.name for s in ast.parse(pipeline_py.read_text()).body if isinstance(s, ast.FunctionDef)]
    assert functions and all(f.startswith("create_") and f.endswith("pipeline") for f in functions), functions
    assert not any(m.startswith("kedro.pipeline") for m in _top_level_imports(PIPELINES / stage / "nodes.py"))


def test_stage_packages_import_nothing_on_their_own():
    """An ``__init__.py`` that imported its pipeline would pull the stage's
    nodes (and torch) into everything that reads one schema module."""
    for stage in STAGES:
        assert not _top_level_imports(PIPELINES / stage / "__init__.py"), stage


def _imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function (``from a import b``: a and a.b)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


@pytest.mark.parametrize("stage", STAGES)
def test_no_stage_imports_another_stages_nodes(stage):
    """What several stages share (tables, labels, constants) lives in a module
    they all import (``pipelines/tables.py``, the core registries), so a stage's
    nodes change without reaching into the others."""
    for part in ("nodes.py", "pipeline.py"):
        others = {m for m in _imported_modules(PIPELINES / stage / part)
                  if m.startswith("diffusion_transfer.pipelines.") and m.endswith(".nodes")
                  and m.split(".")[2] != stage}
        assert not others, f"pipelines/{stage}/{part} imports another stage's nodes: {sorted(others)}"


def test_the_stage_import_check_sees_one_inside_a_function(tmp_path):
    path = tmp_path / "nodes.py"
    path.write_text("def f():\n    from diffusion_transfer.pipelines import report\n"
                    "    from diffusion_transfer.pipelines.edit.nodes import SOURCE_RUN\n")
    assert "diffusion_transfer.pipelines.edit.nodes" in _imported_modules(path)


def test_every_registered_node_runs_a_stage_node_function():
    from diffusion_transfer.pipeline_registry import register_pipelines

    pipes = register_pipelines()
    modules = {getattr(n.func, "__module__", None) for p in pipes.values() for n in p.nodes}
    stray = {m for m in modules if m not in NODES_ELSEWHERE
             and not (m.startswith("diffusion_transfer.pipelines.") and m.endswith(".nodes")
                      and m.split(".")[2] in STAGES)}
    assert not stray, f"node functions defined outside pipelines/<stage>/nodes.py: {sorted(stray)}"
    # the method template uses every stage it composes
    run_modules = {n.func.__module__.split(".")[2] for n in pipes["sdft_aahq"].nodes
                   if n.func.__module__.startswith("diffusion_transfer.pipelines.")}
    assert {"finetune", "sample", "translate", "evaluate", "report", "curate", "domain_classifier"} <= run_modules
