"""Kedro project settings."""

from diffusion_transfer.config import ProjectConfigLoader
from diffusion_transfer.hooks import ValidateParametersHook

HOOKS = (ValidateParametersHook(),)

CONFIG_LOADER_CLASS = ProjectConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # Environments override individual nested parameters (smoke sets
    # train.steps without repeating the rest of train).
    "merge_strategy": {"parameters": "soft"},
}
