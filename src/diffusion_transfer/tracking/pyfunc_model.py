"""The fine-tuned model as an mlflow model (the ``pyfunc`` flavour), so that it
can be registered (``mlflow.register_model``) and sampled from anywhere
mlflow loads it (``mlflow.pyfunc.load_model(uri).predict(...)``).

The model folder the catalog saved (``<run>.finetuned_model``) travels as the
artifact ``model``; :class:`FinetunedModel` loads it with the project's own
loader (``core.models.unet.load_unet``) and samples it as the run's
``sample_finetuned`` node does: the noises of ``make_noise_bank(n, shape,
seed)`` through ``generation.generate``, with the run's sampling settings
and schedule (the ``model_config`` logged with it), so the same seed gives
the run's own samples. The project's package goes with it (``code``), and its
requirements are pinned to the versions that logged it (no inference).

Imported only when tracking is on (``logger.RunLogger.log_model``).
"""

from __future__ import annotations

import importlib.metadata
import math
import warnings
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.models import Model, ModelSignature
from mlflow.types.schema import ColSpec, Schema, TensorSpec

import diffusion_transfer
from diffusion_transfer.core.data.images import to_uint8
from diffusion_transfer.core.models.adapted import AdaptedUNet
from diffusion_transfer.core.models.unet import load_unet
from diffusion_transfer.core.sampling import make_noise_bank
from diffusion_transfer.pipelines.generation import generate
from diffusion_transfer.pipelines.model_space import model_input_shape, pixel_size
from diffusion_transfer.pipelines.schedule import model_schedule
from diffusion_transfer.project.schema import SamplingParams

#: The logged model's name in its run (``runs:/<run_id>/finetuned_model``).
MODEL_NAME = "finetuned_model"
ARTIFACT = "model"
#: What loading and sampling the model imports, pinned to the installed versions.
REQUIREMENTS = ("mlflow", "torch", "diffusers", "safetensors", "accelerate", "peft", "numpy", "pandas", "pydantic",
                "tqdm", "pillow", "pyyaml", "huggingface_hub", "kedro")
INPUT_COLUMNS = ("n_samples", "seed", "steps")


def pip_requirements() -> list[str]:
    """``name==version`` of :data:`REQUIREMENTS` as installed (those not installed left out)."""
    pins = []
    for name in REQUIREMENTS:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return pins


def signature(model: Any) -> ModelSignature:
    """In: one request per row (``n_samples``, ``seed``, optional ``steps``);
    out: uint8 images ``(N, H, W, 3)`` at the model's resolution."""
    size = pixel_size(model)
    inputs = Schema([ColSpec("long", "n_samples"), ColSpec("long", "seed"), ColSpec("long", "steps", required=False)])
    return ModelSignature(inputs=inputs, outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, size, size, 3))]))


def log_finetuned_model(client: Any, run_id: str, folder: Path, model: Any, config: dict[str, Any]):
    """Log ``folder`` (the saved fine-tuned ``model``) to ``run_id`` as the
    pyfunc model :data:`MODEL_NAME`; ``config``: the run's ``sampling`` and
    ``schedule`` settings. Returns mlflow's ``ModelInfo``.

    ``mlflow.pyfunc.log_model`` is ``Model.log(flavor=mlflow.pyfunc, ...)``
    for the active run and experiment; this calls it with the run id and a
    logged model made in the run's experiment, as the rest of the project's
    tracking writes (the namespace's run, from whichever thread saved the model)."""
    run = client.get_run(run_id)
    logged = client.create_logged_model(run.info.experiment_id, name=MODEL_NAME, source_run_id=run_id,
                                        params=dict(run.data.params))
    with warnings.catch_warnings():  # an input example would make mlflow load and sample the model now
        warnings.filterwarnings("ignore", message=".*input example was not provided", category=UserWarning)
        return Model.log(
            artifact_path=None, name=MODEL_NAME, flavor=mlflow.pyfunc, run_id=run_id, model_id=logged.model_id,
            python_model=FinetunedModel(config), artifacts={ARTIFACT: str(folder)},
            code_paths=[str(Path(diffusion_transfer.__file__).parent)], pip_requirements=pip_requirements(),
            signature=signature(model), model_config=config)


class FinetunedModel(mlflow.pyfunc.PythonModel):
    """``predict({"n_samples": n, "seed": s[, "steps": k]})``: ``n`` images,
    uint8 ``(n, H, W, 3)``, sampled from the noises seeded ``s`` with the
    run's sampler (``k`` steps, else the run's); a table of several such rows
    gives their images one after the other."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        self.logged = config or {}  # the run's settings; a load's model_config overrides them key by key

    def load_context(self, context) -> None:
        given = context.model_config or {}
        self.sampling, self.schedule = ({**(self.logged.get(part) or {}), **(given.get(part) or {})}
                                        for part in ("sampling", "schedule"))
        self.model = load_unet(context.artifacts[ARTIFACT])
        self.sched = model_schedule(self.model, self.schedule)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        out = [self.generate(**request) for request in _requests(model_input)]
        return np.concatenate(out) if out else np.zeros((0, pixel_size(self.model), pixel_size(self.model), 3),
                                                        np.uint8)

    def generate(self, n_samples: int, seed: int, steps: int | None = None) -> np.ndarray:
        if isinstance(self.model, AdaptedUNet) and self.model.adapter.needs_condition:
            raise ValueError(f"the {self.model.kind} model is conditional: it samples with one CLIP condition per "
                             "noise, which this model's predict does not take; sample it with the project's "
                             "pipelines")
        if n_samples < 1:
            raise ValueError(f"n_samples must be at least 1, got {n_samples}")
        settings = {**self.sampling, "seed": seed, **({"steps": steps} if steps is not None else {})}
        settings.setdefault("n_samples", max(n_samples, 2))  # unused by generate: the noises say how many
        sampling = SamplingParams(**settings)
        noise = make_noise_bank(n_samples, model_input_shape(self.model), seed=seed)
        return to_uint8(generate(self.model, noise, sampling, self.sched, None))


def _requests(model_input: Any) -> list[dict[str, int]]:
    """``{n_samples, seed[, steps]}`` per request: a table's rows (mlflow hands a
    signature's columns over as a pandas DataFrame), a dict, or a list of dicts."""
    if hasattr(model_input, "to_dict") and hasattr(model_input, "columns"):
        rows = model_input.to_dict(orient="records")
    elif isinstance(model_input, dict):
        rows = [model_input]
    elif isinstance(model_input, list) and all(isinstance(r, dict) for r in model_input):
        rows = model_input
    else:
        raise ValueError(f"predict takes {{'n_samples': n, 'seed': s}} (and optionally 'steps'), or a table of such "
                         f"rows; got {type(model_input).__name__}")
    requests = []
    for row in rows:
        given = {k: v for k, v in row.items() if not _missing(v)}
        if set(given) - set(INPUT_COLUMNS) or "n_samples" not in given or "seed" not in given:
            raise ValueError(f"each request needs 'n_samples' and 'seed' (and optionally 'steps'); got {sorted(row)}")
        requests.append({k: _integer(k, v) for k, v in given.items()})
    return requests


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _integer(key: str, value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not float(value).is_integer():
        raise ValueError(f"'{key}' must be a whole number, got {value!r}")
    return int(value)
