"""Project pipelines, registered explicitly (``find_pipelines`` cannot make
derived names such as ``sdft_aahq``)."""

from __future__ import annotations

from kedro.pipeline import Pipeline

from diffusion_transfer.pipelines import compare, curate, method, world

METHODS = ("scratch", "naive", "sdft", "attn", "a3ft", "anl", "anl_uncond")
DATASETS = ("aahq", "metfaces")


def register_pipelines() -> dict[str, Pipeline]:
    pipelines: dict[str, Pipeline] = {"world": world.create_pipeline()}
    source = method.create_source_pipeline()
    for dataset in DATASETS:
        curation = curate.create_curate_pipeline(dataset)
        pipelines[f"curate_{dataset}"] = curation
        runs = []
        for name in METHODS:
            run = curation + source + method.create_method_pipeline(name, dataset)
            pipelines[f"{name}_{dataset}"] = run
            runs.append(run)
        pipelines[f"compare_{dataset}"] = sum(runs, Pipeline([])) + compare.create_compare_node_pipeline(
            dataset, METHODS)
    pipelines["__default__"] = pipelines["sdft_aahq"]
    return pipelines
