"""The catalog of every environment, built as ``kedro run`` builds it (the
project's settings: OmegaConfigLoader, ``base`` under the run environment):

- everything a training node makes (the world models, fine-tuned models,
  domain classifiers, the converted source model) is saved, never left in a
  MemoryDataset;
- every environment writes under its own data root (``conf/<env>/globals.yml``),
  so ``--env=smoke`` or ``--env=paper`` never overwrites the demo's results,
  while the inputs that ship with the project or come from outside keep their paths.
"""

from __future__ import annotations

import functools
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENVS = ("base", "smoke", "paper", "local")
# Where each environment writes; base's (and so local's) is the demo's `data/`.
DATA_ROOTS = {"base": "data", "local": "data", "smoke": "data/smoke", "paper": "data/paper"}
# Parameters that name a folder the pipelines write (checkpoints, caches).
OUTPUT_PARAMETER_KEYS = {"checkpoints", "features", "cache_dir", "checkpoint_dir", "embeddings_cache"}


@functools.cache
def _env(env: str) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """(catalog, parameters, globals) of ``env``, loaded like a KedroContext does."""
    from kedro.framework.project import settings
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(ROOT)  # `settings` are the project's
    loader = settings.CONFIG_LOADER_CLASS(conf_source=str(ROOT / settings.CONF_SOURCE), env=env,
                                          **settings.CONFIG_LOADER_ARGS)
    catalog = settings.DATA_CATALOG_CLASS.from_config(loader["catalog"])
    return catalog, loader["parameters"], loader["globals"]


@functools.cache
def _pipelines(env: str) -> dict[str, Any]:
    """The registered pipelines of ``env`` (the registry reads the datasets it declares)."""
    import inspect

    from diffusion_transfer.pipeline_registry import register_pipelines

    if inspect.signature(register_pipelines).parameters:
        return register_pipelines(_env(env)[1])
    return register_pipelines()


def _config(catalog: Any, name: str) -> dict[str, Any] | None:
    """The dataset configuration ``name`` resolves to: an explicit entry or a
    dataset factory pattern; None when Kedro would make it a MemoryDataset."""
    resolver = catalog.config_resolver
    if name in resolver.config:
        return resolver.config[name]
    if name in catalog:  # a dataset factory pattern (or a user catch-all)
        return resolver.resolve_pattern(name)
    return None


def _is_training_node(node: Any) -> bool:
    return bool({"train", "world"} & node.tags) or node.name == "convert_source"


def _training_outputs(env: str) -> dict[str, str]:
    """Output dataset -> the training node that makes it, over every registered pipeline."""
    return {out: node.name for pipe in _pipelines(env).values() for node in pipe.nodes if _is_training_node(node)
            for out in node.outputs}


@pytest.mark.parametrize("env", ENVS)
def test_every_training_output_is_saved_in_every_environment(env):
    catalog = _env(env)[0]
    outputs = _training_outputs(env)
    trainers = set(outputs.values())
    # the test is not vacuous: the world models, a fine-tune, a domain classifier, the conversion
    assert {"train_source_model", "train_world_clip", "train_attribute_classifier", "sdft_aahq.finetune",
            "anl_metfaces.finetune", "classifier_sunglasses", "convert_source"} <= trainers
    lost = {}
    for name, node in sorted(outputs.items()):
        cfg = _config(catalog, name)
        if cfg is None or str(cfg.get("type", "")).rsplit(".", 1)[-1] == "MemoryDataset":
            lost[name] = node
    assert not lost, f"conf/{env}: these training outputs would be MemoryDatasets (lost after the run): {lost}"


# --- each environment writes under its own data root ------------------------------------


def _norm(path: str) -> str:
    return str(PurePosixPath(path.replace("\\", "/")))


@functools.cache
def _output_paths(env: str) -> dict[str, str]:
    """Every location ``env`` writes: the catalog path of every node output of
    every registered pipeline, the FaceWorld folders rendered on demand, and
    the output folders among the parameters (checkpoints, caches)."""
    from diffusion_transfer.project.schema import ConditionParams

    catalog, params, _ = _env(env)
    paths: dict[str, str] = {}
    for pipe in _pipelines(env).values():
        for node in pipe.nodes:
            for name in node.outputs:
                cfg = _config(catalog, name)
                assert cfg is not None, f"conf/{env}: {name} has no catalog entry"
                path = cfg.get("filepath") or cfg.get("path")
                assert path, f"conf/{env}: {name} has no path"
                paths[name] = _norm(path)
    for name, cfg in catalog.config_resolver.config.items():
        if cfg.get("faceworld"):  # ImageFolderDataset renders a missing FaceWorld folder: a write
            paths[name] = _norm(cfg["path"])

    def walk(node: Any, prefix: str) -> None:
        for key, value in node.items():
            label = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(value, f"{label}.")
            elif isinstance(value, str) and (key in OUTPUT_PARAMETER_KEYS or label.startswith("paths.")):
                paths[f"params:{label}"] = _norm(value)

    walk(params, "")  # curation's CLIP cache: datasets.<d>.curation.embeddings_cache, else paths.features
    # ANL's embedding cache, configured or the code default
    condition = ConditionParams(**params["methods"]["anl"].get("condition", {}))
    paths["params:methods.anl.condition.embeddings_cache"] = _norm(condition.embeddings_cache)
    return paths


def _inside(path: str, folder: str) -> bool:
    return PurePosixPath(path) == PurePosixPath(folder) or PurePosixPath(folder) in PurePosixPath(path).parents


@pytest.mark.parametrize("env", ENVS)
def test_each_environment_declares_its_data_root(env):
    assert _env(env)[2]["data_root"] == DATA_ROOTS[env]


@pytest.mark.parametrize("env", ["smoke", "paper"])
def test_an_environment_writes_only_under_its_own_data_root(env):
    root = DATA_ROOTS[env]
    paths = _output_paths(env)
    outside = {name: path for name, path in paths.items() if not _inside(path, root)}
    assert not outside, f"conf/{env} writes outside {root}/: {outside}"
    base = {PurePosixPath(p) for p in _output_paths("base").values()}
    inside_base = {parent for p in base for parent in p.parents}  # folders base writes into
    clashes = {name: path for name, path in paths.items()  # the same path, or one inside the other
               if PurePosixPath(path) in base | inside_base or base & set(PurePosixPath(path).parents)}
    assert not clashes, f"conf/{env} writes where conf/base does: {clashes}"


def test_base_keeps_the_demo_paths():
    paths = _output_paths("base")
    assert paths["sdft_aahq.report"] == "data/08_reporting/sdft_aahq/report.md"
    assert paths["aahq_curation_summary"] == "data/08_reporting/curate_aahq/summary.json"
    assert paths["sdft_aahq.finetuned_model"] == "data/06_models/sdft_aahq/model"
    assert paths["built_source_model"] == "data/06_models/world/source"
    assert paths["built_world_clip"] == "data/06_models/world/clip"
    assert paths["built_world_evaluation_clip"] == "data/06_models/world/evaluation_clip"
    assert paths["built_attribute_classifier"] == "data/06_models/world/classifier"
    assert paths["aahq_raw"] == "data/01_raw/faceworld_aahq"
    assert paths["params:paths.checkpoints"] == "data/06_models/checkpoints"
    assert paths["params:paths.features"] == "data/04_feature"  # curation's cache: data/04_feature/clip_embeddings
    assert paths["params:evaluation.cache_dir"] == "data/04_feature/fid_cache"
    assert paths["params:world.source.checkpoint_dir"] == "data/06_models/checkpoints/world_source"
    assert paths["params:methods.anl.condition.embeddings_cache"] == "data/04_feature/anl_conditions"
    assert _output_paths("local") == paths  # conf/local is empty in the repository


@pytest.mark.parametrize("env", ["smoke", "paper"])
def test_inputs_keep_their_paths(env):
    """The committed FaceWorld models and the real folders and weights are read
    where they are, whatever the environment's data root."""
    catalog, params, _ = _env(env)
    if env == "smoke":
        for name, folder in (("source_model", "source"), ("attribute_classifier", "classifier"),
                             ("curation_clip", "clip")):
            assert _norm(catalog.config_resolver.config[name]["path"]) == f"data/06_models/world/{folder}"
    else:
        assert _norm(catalog.config_resolver.config["aahq_raw"]["path"]) == "data/01_raw/aahq"
        assert _norm(catalog.config_resolver.config["curation_clip"]["pretrained"]) == \
            "data/00_weights/clip_vit_b32_openai.pt"
        assert params["evaluation"]["inception_path"] == "data/00_weights/inception-2015-12-05.pt"
        # paper's source model is the convert_source output of the same environment
        assert catalog.config_resolver.config["source_model"]["path"] == \
            catalog.config_resolver.config["converted_source_model"]["path"]
    assert _norm(catalog.config_resolver.config["church_source_model"]["path"]) == "data/06_models/ddpm_church_256"

