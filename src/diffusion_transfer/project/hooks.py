"""The project's Kedro hook: before any node runs, the parameters are
resolved once (``resolved.py``), the pre-run checks run (inputs, models,
folders, outputs), and nodes are handed the typed, resolved values; on an
error, the failing node's name."""

from __future__ import annotations

from typing import Any

from kedro.framework.hooks import hook_impl

from diffusion_transfer.project.declared import declarations, path_datasets
from diffusion_transfer.project.preflight import check_inputs, check_models
from diffusion_transfer.project.preflight_folders import check_image_folders, check_outputs_writable
from diffusion_transfer.project.preflight_precision import check_cpu_precision
from diffusion_transfer.project.resolved import resolve_parameters, typed_parameters


class ValidateParametersHook:
    @hook_impl
    def after_context_created(self, context) -> None:
        self._context = context  # (pipelines follow the context's config: project/config.py)

    @hook_impl
    def after_catalog_created(self, catalog, parameters: dict[str, Any]) -> None:
        """Datasets and source models declared as paths become catalog entries."""
        # Kedro passes the catalog's parameter entries: the whole tree is under "parameters".
        decl = declarations(parameters.get("parameters", parameters))
        for name, dataset in path_datasets(decl).items():
            catalog[name] = dataset
        for source in decl.sources.values():  # a catalog-entry model gets its source's class_label too
            model = catalog.get(source.entries["source_model"]) if source.params.class_label is not None else None
            if model is not None and hasattr(model, "class_label"):
                model.class_label = source.params.class_label

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        params = self._context.params  # as conf gives them (project/context.py)
        resolved = resolve_parameters(params)
        check_inputs(pipeline, catalog, params)
        check_models(pipeline, catalog, params)
        check_image_folders(pipeline, catalog, params)
        check_outputs_writable(pipeline, catalog, params)
        check_cpu_precision(pipeline, resolved)  # bf16 on a CPU without it (issue 35)
        read = {name for node in pipeline.nodes for name in node.inputs}
        for name, value in typed_parameters(resolved).items():
            if name in read:
                catalog[name] = value

    @hook_impl
    def on_node_error(self, error: Exception, node) -> None:
        """The failing node, for the one-paragraph error of ``kedro run`` (cli.py)."""
        error.add_note(f"in node '{node.name}':")
