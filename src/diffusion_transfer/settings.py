"""Kedro project settings."""

from kedro.config import OmegaConfigLoader

from diffusion_transfer.hooks import ValidateParametersHook

HOOKS = (ValidateParametersHook(),)

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # Environments override individual nested parameters (smoke sets
    # train.steps without repeating the rest of train).
    "merge_strategy": {"parameters": "soft"},
}
