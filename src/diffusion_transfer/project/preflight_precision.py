"""Pre-run check of the precision keys (issue 35): ``bf16`` on a CPU without
native bf16 arithmetic (``core/cpu_precision.py``) stops the run before any
node runs, in one paragraph naming every such key and the fix. On a GPU the
keys are the GPU's business and nothing is checked."""

from __future__ import annotations

from typing import Any

import torch

from diffusion_transfer.core.cpu_precision import bf16_refusal
from diffusion_transfer.core.methods import SDFT_VARIANTS
from diffusion_transfer.core.methods.sdft import teacher_autocast_dtype
from diffusion_transfer.project.schema import InvalidParametersError


def _bf16_teacher(hyperparameters: dict[str, Any]) -> bool:
    """SDFT's teacher forward under bf16 autocast on a CPU (``SDFTLoss.teacher_dtype``)."""
    variant = SDFT_VARIANTS.get(hyperparameters.get("variant"), {})
    dtype = hyperparameters.get("teacher_dtype", variant.get("teacher_dtype"))
    return teacher_autocast_dtype(dtype, "cpu") == torch.bfloat16


def _bf16_keys(read: set[str], resolved: Any) -> list[str]:
    """The YAML keys set to bf16 that this pipeline's nodes read."""
    keys: list[str] = []
    if "params:train" in read:
        runs = [resolved.runs[name] for name in resolved.runs]
        keys += [f"train.mixed_precision (run {run.name}, with methods.{run.method}.train and "
                 f"datasets.{run.dataset}.train)" for run in runs if run.train.mixed_precision == "bf16"]
        keys += [f"methods.{run.method}.teacher_dtype (run {run.name}; 'half' is bfloat16 on a CPU, and variant "
                 "authors_code sets it)" for run in runs if run.method == "sdft" and _bf16_teacher(run.hyperparameters)]
    if "params:classifier" in read:  # the domain classifier trains with its own train block
        keys += [f"classifier.train.mixed_precision (with classifier.datasets.{name})"
                 for name, block in resolved.classifiers.items() if block.train.get("mixed_precision") == "bf16"]
    evaluation = resolved.blocks.get("evaluation")
    if "params:evaluation" in read and evaluation is not None and evaluation.precision == "bf16":
        keys.append("evaluation.precision")
    sampling = resolved.blocks.get("sampling")
    if "params:sampling" in read and sampling is not None and sampling.precision == "bf16":
        keys.append("sampling.precision")
    keys += [f"sampling.precision (with sources.{name}.sampling)" for name, block in resolved.sampling.items()
             if f"params:sources.{name}.sampling" in read and block.precision == "bf16"]
    translation = resolved.blocks.get("translation")
    if "params:translation" in read and translation is not None and translation.precision == "bf16":
        keys.append("translation.precision")
    return list(dict.fromkeys(keys))


def check_cpu_precision(pipeline, resolved: Any) -> None:
    """Refuse ``bf16`` keys the pipeline reads when it will run on a CPU
    without native bf16; ``"no"`` (float32) is the fix."""
    if torch.cuda.is_available():
        return
    read = {name for node in pipeline.nodes for name in node.inputs}
    keys = _bf16_keys(read, resolved)
    key = keys[0].split(" ")[0] if keys else ""
    first = bf16_refusal(key, "float32" if key.endswith("teacher_dtype") else '"no"') if keys else None
    # first is None: no bf16 key, or a CPU with bf16
    if first is None:
        return
    others = "".join(f"\n  - {k}" for k in keys)
    raise InvalidParametersError(f"{first} Nothing was computed.\nEvery key set to bf16 that this run reads:{others}")
