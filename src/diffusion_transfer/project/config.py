"""The project's config loader: Kedro's OmegaConfigLoader, with

- the names of declared datasets and source domains filled from their keys,
  so that ``datasets.mydata: {...}`` needs no ``name: mydata``;
- a data root of its own for every environment: ``data/<env>`` unless the
  environment's ``globals.yml`` sets ``data_root`` (base and local write
  under ``data``), so a new environment never writes over another's results;
  ``DT_DATA_ROOT`` overrides it (a study point writes under its own folder)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import kedro.framework.project as kedro_project  # its PACKAGE_NAME is set when the project is configured: read late
import yaml
from kedro.config import OmegaConfigLoader

from diffusion_transfer.project.declared import with_declared_names
from diffusion_transfer.project.known_keys import (
    UNKNOWN_KEYS,
    KeyLocator,
    container_conflicts,
    unknown_key_problems,
)
from diffusion_transfer.project.schema import InvalidParametersError

#: Overrides every environment's data root (set by the study runner for each point).
DATA_ROOT_ENV = "DT_DATA_ROOT"

#: The loader's arguments (``settings.CONFIG_LOADER_ARGS`` declares these).
LOADER_ARGS: dict[str, Any] = {
    "base_env": "base",
    "default_run_env": "local",
    # Environments override individual nested parameters (smoke sets
    # train.steps without repeating the rest of train).
    "merge_strategy": {"parameters": "soft"},
}

#: The config loader of the current Kedro context, so that pipelines are
#: registered for the environment being run.
_ACTIVE: dict[str, Any] = {"loader": None}


class ProjectConfigLoader(OmegaConfigLoader):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Kedro (kedro run, kedro viz, notebooks) makes a session's loader before it reads
        # the pipelines: register them from this environment's declared datasets.
        _ACTIVE["loader"] = self
        if kedro_project.PACKAGE_NAME:
            kedro_project.pipelines.configure(f"{kedro_project.PACKAGE_NAME}.pipeline_registry")

    def __getitem__(self, key: str) -> dict[str, Any]:
        try:
            config = super().__getitem__(key)
        except TypeError as err:  # OmegaConf: "Cannot merge incompatible container types", naming nothing
            conflicts = container_conflicts(self.conf_source, self.env or self.default_run_env, self.base_env)
            if key != "parameters" or not conflicts:
                raise
            raise InvalidParametersError("Invalid parameters: a block's shape differs between environments:\n  "
                                         + "\n  ".join(conflicts)) from err
        if key == "parameters":
            self._check_known_keys(config)
            config = with_declared_names(config)
        if key == "globals":
            env = self.env or self.default_run_env
            if env not in (self.base_env, "local", None) and not self._env_sets_data_root(env):
                config = {**config, "data_root": f"data/{env}"}
            if os.environ.get(DATA_ROOT_ENV):  # a study point's own root (diffusion_transfer.studies)
                config = {**config, "data_root": os.environ[DATA_ROOT_ENV]}
        return config

    def _check_known_keys(self, config: dict[str, Any]) -> None:
        """Every key known, before anything reads the parameters (pipelines are
        registered from them); the errors name the file that sets each key."""
        if not unknown_key_problems(config):
            return  # the usual case: the files are read again only to name where a problem is
        locate = KeyLocator(self.conf_source, self.env or self.default_run_env, self.base_env, self.runtime_params)
        raise InvalidParametersError(UNKNOWN_KEYS + "\n  ".join(unknown_key_problems(config, locate)))

    def _env_sets_data_root(self, env: str) -> bool:
        for path in sorted((Path(self.conf_source) / env).glob("globals*.yml")):
            content = yaml.safe_load(path.read_text()) or {}
            if isinstance(content, dict) and "data_root" in content:
                return True
        return False


def active_parameters() -> dict[str, Any]:
    """The parameters of the environment being run: the current Kedro
    context's, else ``$KEDRO_ENV`` (or the default ``local``) over base, as
    ``kedro registry list`` sees them."""
    loader = _ACTIVE["loader"]
    if loader is None or not Path(str(loader.conf_source)).is_dir():  # none yet, or a finished scratch project
        loader = ProjectConfigLoader(conf_source=str(_project_root() / "conf"), env=os.getenv("KEDRO_ENV"),
                                     **LOADER_ARGS)
    return loader["parameters"]


def _project_root() -> Path:
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "conf" / "base").is_dir():
            return folder
    return Path(__file__).resolve().parents[3]
