"""Project pipelines, registered explicitly (``find_pipelines`` cannot make
derived names such as ``sdft_aahq``).

Datasets and source domains come from the active environment's parameters
(``datasets`` and ``sources``, see ``declared.py``); methods from the one
method registry (``core.methods.METHODS``). Declaring ``datasets.mydata`` in
``conf/local`` makes ``curate_mydata``, ``classifier_mydata``,
``<method>_mydata``, ``edit_<method>_mydata``, ``edit_source_mydata``,
``anl_conditions_mydata`` and ``compare_mydata`` (every run, every edit run,
then the tables); ``anl_augment_mydata`` too where it declares ``augmentation``."""

from __future__ import annotations

import logging
from typing import Any

from kedro.pipeline import Pipeline

from diffusion_transfer.core.methods.registry import methods_for
from diffusion_transfer.project.config import active_parameters
from diffusion_transfer.project.declared import declarations
from diffusion_transfer.pipelines.anl_augment.pipeline import create_anl_augment_pipeline
from diffusion_transfer.pipelines.anl_conditions.pipeline import create_anl_conditions_pipeline
from diffusion_transfer.pipelines.compare.pipeline import create_compare_node_pipeline
from diffusion_transfer.pipelines.convert.pipeline import create_pipeline as create_convert_pipeline
from diffusion_transfer.pipelines.curate.pipeline import create_curate_pipeline
from diffusion_transfer.pipelines.domain_classifier.pipeline import create_classifier_pipeline
from diffusion_transfer.pipelines.edit.pipeline import create_edit_pipeline
from diffusion_transfer.pipelines.method_run import (create_method_pipeline, create_source_pipeline,
                                                     create_text_to_image_method_pipeline)
from diffusion_transfer.pipelines.sample.pipeline import create_source_sampling_pipeline
from diffusion_transfer.pipelines.tables import SOURCE_RUN
from diffusion_transfer.pipelines.world.pipeline import create_pipeline as create_world_pipeline

log = logging.getLogger(__name__)


def register_pipelines(parameters: dict[str, Any] | None = None) -> dict[str, Pipeline]:
    decl = declarations(active_parameters() if parameters is None else parameters)
    for why in decl.refused.values():  # the other datasets' pipelines are made as usual
        log.warning(why)
    pipelines: dict[str, Pipeline] = {"world": create_world_pipeline(), "convert_source": create_convert_pipeline()}
    for name, target in decl.datasets.items():
        entries, sampling = target.source.entries, target.source.sampling_param
        source = create_source_pipeline(entries, target.source.prefix, sampling)
        curation = create_curate_pipeline(name, target.raw_entry, entries["source_model"], target.few_shot)
        pipelines[f"curate_{name}"] = curation
        clf = curation + create_classifier_pipeline(name, entries)
        if not target.source.has_images:  # the source model's samples stand in for its images
            clf += create_source_sampling_pipeline(entries, target.source.prefix, sampling)
        pipelines[f"classifier_{name}"] = clf
        runs, methods = [], methods_for(target.source.text_to_image)  # DreamBooth: text-to-image sources only
        bank = create_source_sampling_pipeline(entries, target.source.prefix, sampling).only_nodes_with_outputs(
            entries["noise_bank"])
        for m in methods:
            # every run needs the classifier: TAN trains with it, EGSDE translates with it; a text-to-image
            # source's runs: captions, fine-tuning, samples and the report (the pre-run check names the methods)
            run = (curation + bank + create_text_to_image_method_pipeline(m, name, entries, sampling)
                   if target.source.text_to_image
                   else clf + source + create_method_pipeline(m, name, entries, sampling))
            pipelines[f"{m}_{name}"] = run
            runs.append(run)
            # Asyrp text editing of the run's fine-tuned model, on demand (training f_t per
            # prompt is costly): it reads the model <m>_<name> wrote, or the pre-run check says so.
            pipelines[f"edit_{m}_{name}"] = create_edit_pipeline(m, name, entries)
        # ANL's own sampling experiments on the model anl_<name> wrote (app. A, Figs. 3, 7-16)
        pipelines[f"anl_conditions_{name}"] = curation + bank + create_anl_conditions_pipeline(name, entries, sampling)
        if target.params.augmentation is not None:  # ANL Table 2 on that model, for a dataset with labels
            pipelines[f"anl_augment_{name}"] = curation + create_anl_augment_pipeline(name, target.raw_entry, sampling)
        # the baseline row of the Table 2 analogue: Asyrp on the source model itself
        pipelines[f"edit_source_{name}"] = curation + create_edit_pipeline(SOURCE_RUN, name, entries)
        edits = [pipelines[f"edit_{m}_{name}"] for m in (SOURCE_RUN, *methods)]
        pipelines[f"compare_{name}"] = (sum(runs, Pipeline([])) + sum(edits, Pipeline([]))
                                        + create_compare_node_pipeline(name, methods))
    default = "sdft_aahq" if "sdft_aahq" in pipelines else next(
        (f"sdft_{name}" for name in decl.datasets), "world")
    pipelines["__default__"] = pipelines[default]
    return pipelines
