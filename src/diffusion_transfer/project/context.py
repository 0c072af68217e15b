"""The project's Kedro context: parameters reach the catalog as configuration
gives them.

Kedro 1.7 would build the pydantic models that node signatures name from the
raw parameters, before any hook runs. This project validates and resolves its
parameters once, in the hook (``resolved.py``: overrides merged across blocks,
presets expanded, errors naming the YAML key), and hands nodes the typed
results; a second, earlier validation would only answer a bad value with
another message."""

from __future__ import annotations

from typing import Any

from kedro.framework.context import KedroContext


class ProjectContext(KedroContext):
    @property
    def params(self) -> dict[str, Any]:
        """The parameters as conf (and ``--params``) give them."""
        return self.config_loader["parameters"]
