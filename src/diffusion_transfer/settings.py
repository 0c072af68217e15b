"""Kedro project settings."""

from diffusion_transfer.project.config import LOADER_ARGS, ProjectConfigLoader
from diffusion_transfer.project.context import ProjectContext
from diffusion_transfer.project.distributed import DistributedRunHook
from diffusion_transfer.project.hooks import ValidateParametersHook
from diffusion_transfer.project.startup import MallocTuningHook
from diffusion_transfer.tracking import TrackingHook

# MallocTuningHook: glibc's malloc tuned for large CPU tensors when the run starts (core/allocator.py).
# DistributedRunHook: under torchrun / accelerate launch only rank 0 writes catalog outputs.
# TrackingHook: kedro-mlflow's hook when tracking is on (tracking.enabled, DT_TRACKING; docs/TRACKING.md),
# so kedro-mlflow's own auto-registered copy is turned off here.
HOOKS = (MallocTuningHook(), ValidateParametersHook(), DistributedRunHook(), TrackingHook())
DISABLE_HOOKS_FOR_PLUGINS = ("kedro-mlflow", "kedro_mlflow")

CONFIG_LOADER_CLASS = ProjectConfigLoader
CONFIG_LOADER_ARGS = LOADER_ARGS

# Parameters are validated once, by the project's hook (project/context.py says why).
CONTEXT_CLASS = ProjectContext
