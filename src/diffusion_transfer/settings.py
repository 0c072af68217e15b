"""Kedro project settings."""

from diffusion_transfer.config import ProjectConfigLoader
from diffusion_transfer.distributed import DistributedRunHook
from diffusion_transfer.hooks import ValidateParametersHook

# DistributedRunHook: under torchrun / accelerate launch only rank 0 writes catalog outputs.
HOOKS = (ValidateParametersHook(), DistributedRunHook())

CONFIG_LOADER_CLASS = ProjectConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # Environments override individual nested parameters (smoke sets
    # train.steps without repeating the rest of train).
    "merge_strategy": {"parameters": "soft"},
}
