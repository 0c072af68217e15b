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
    #: Seed replicates of every grid combination: training seeds 0..N-1 (``train.seed``), each sampled
    #: with ``sampling_seeds`` seeds from ``first_sampling_seed`` on (``sampling.seed``): the grid axis
    #: ``replicate`` the study report summarises (mean, sd, range) and takes verdicts from.
    replicates: int = Field(1, ge=1)
    sampling_seeds: int = Field(1, ge=1)
    first_sampling_seed: int = 1234
    #: Studies whose finished runs a point may start from: a point of one of them with the same method run
    #: (an edit point's is the run it edits), the same overrides and the same env has its files copied in
    #: before the run, so only what it lacks is computed (studies/reuse.py).
    reuse_runs_from: list[str] = Field(default_factory=list)

    def replicate_axis(self) -> list[dict[str, int]]:
        """The ``replicate`` axis ``replicates`` and ``sampling_seeds`` make (empty for one of each)."""
        if self.replicates == 1 and self.sampling_seeds == 1:
            return []
        return [{"train.seed": i, "sampling.seed": self.first_sampling_seed + j}
                for i in range(self.replicates) for j in range(self.sampling_seeds)]

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
