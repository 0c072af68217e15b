"""Project pipelines, registered explicitly (``find_pipelines`` cannot make
derived names such as ``sdft_aahq``)."""

from __future__ import annotations

from kedro.pipeline import Pipeline

from diffusion_transfer.pipelines import classifier, compare, curate, method, world

METHODS = ("scratch", "naive", "sdft", "attn", "a3ft", "anl", "anl_uncond", "tan")
DATASETS = ("aahq", "metfaces")
# 10-shot targets (TAN protocol). FaceWorld has sunglasses and sketches; the
# others are the paper's FFHQ targets, real folders only (conf/paper).
FEW_SHOT_DATASETS = ("sunglasses", "sketches", "babies", "raphael", "amedeo")


def register_pipelines() -> dict[str, Pipeline]:
    pipelines: dict[str, Pipeline] = {"world": world.create_pipeline()}
    source = method.create_source_pipeline()
    for dataset in DATASETS + FEW_SHOT_DATASETS:
        curation = curate.create_curate_pipeline(dataset, few_shot=dataset in FEW_SHOT_DATASETS)
        pipelines[f"curate_{dataset}"] = curation
        clf = curation + classifier.create_classifier_pipeline(dataset)
        pipelines[f"classifier_{dataset}"] = clf
        runs = []
        for name in METHODS:
            run = (clf if name in method.GUIDED_METHODS else curation) + source + \
                method.create_method_pipeline(name, dataset)
            pipelines[f"{name}_{dataset}"] = run
            runs.append(run)
        pipelines[f"compare_{dataset}"] = sum(runs, Pipeline([])) + compare.create_compare_node_pipeline(
            dataset, METHODS)
    pipelines["__default__"] = pipelines["sdft_aahq"]
    return pipelines
