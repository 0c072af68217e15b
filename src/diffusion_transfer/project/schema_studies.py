"""Typed ``studies.<name>``: a grid of runs over parameter overrides
(``diffusion_transfer.studies`` runs it; re-exported by ``schema.py``)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from diffusion_transfer.project.schema_base import StrictParams


class StudyParams(StrictParams):
    """One study under ``studies.<name>`` (``studies/spec.py`` makes its points)."""

    pipeline: str | None = Field(None, description="the run's pipeline, unless the grid varies 'pipeline'")
    description: str = ""
    base: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]]
    outputs: list[str] | None = Field(None, description="compute only these outputs of the run's namespace "
                                      "(e.g. [metrics]) and what they need; default: the whole pipeline")

    @field_validator("grid")
    @classmethod
    def _grid(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        if not grid:
            raise ValueError("the grid needs at least one axis")
        for axis, values in grid.items():
            if not values:
                raise ValueError(f"grid axis {axis!r} has no values")
            kinds = {isinstance(v, dict) for v in values}
            if len(kinds) > 1:
                raise ValueError(f"grid axis {axis!r} mixes override mappings and plain values")
        return grid
