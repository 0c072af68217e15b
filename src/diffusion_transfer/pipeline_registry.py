"""Project pipelines, registered explicitly (``find_pipelines`` cannot make
derived names such as ``sdft_aahq``)."""

from __future__ import annotations

from kedro.pipeline import Pipeline

from diffusion_transfer.pipelines import classifier, compare, convert, curate, method, world

METHODS = ("scratch", "naive", "sdft", "attn", "a3ft", "anl", "anl_uncond", "tan")
DATASETS = ("aahq", "metfaces")
# 10-shot targets (TAN protocol). FaceWorld has sunglasses and sketches; the
# others are the paper's targets, real folders only (conf/paper).
FEW_SHOT_DATASETS = ("sunglasses", "sketches", "babies", "raphael", "amedeo", "haunted_houses",
                     "landscape_drawings")
# Source domains: catalog prefix of their model, images, noise bank and
# samples, and the targets adapted from them (TAN section 4: FFHQ and LSUN Church).
SOURCES = {
    "ffhq": ("", ("aahq", "metfaces", "sunglasses", "sketches", "babies", "raphael", "amedeo")),
    "church": ("church_", ("haunted_houses", "landscape_drawings")),
}
SOURCE_PREFIX = {dataset: prefix for prefix, targets in SOURCES.values() for dataset in targets}


def register_pipelines() -> dict[str, Pipeline]:
    pipelines: dict[str, Pipeline] = {"world": world.create_pipeline(), "convert_source": convert.create_pipeline()}
    for dataset in DATASETS + FEW_SHOT_DATASETS:
        prefix = SOURCE_PREFIX[dataset]
        source = method.create_source_pipeline(prefix)
        curation = curate.create_curate_pipeline(dataset, few_shot=dataset in FEW_SHOT_DATASETS)
        pipelines[f"curate_{dataset}"] = curation
        clf = curation + classifier.create_classifier_pipeline(dataset, prefix)
        pipelines[f"classifier_{dataset}"] = clf
        runs = []
        for name in METHODS:
            # every run needs the classifier: TAN trains with it, EGSDE translates with it
            run = clf + source + method.create_method_pipeline(name, dataset, prefix)
            pipelines[f"{name}_{dataset}"] = run
            runs.append(run)
        pipelines[f"compare_{dataset}"] = sum(runs, Pipeline([])) + compare.create_compare_node_pipeline(
            dataset, METHODS)
    pipelines["__default__"] = pipelines["sdft_aahq"]
    return pipelines
