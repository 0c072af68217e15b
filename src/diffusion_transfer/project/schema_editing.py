"""Typed ``editing`` parameters (the Asyrp edit stage, SDFT Table 2 / app. E)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from diffusion_transfer.core.editing.train import AsyrpConfig
from diffusion_transfer.project.schema_base import StrictParams, parse


class PromptParams(StrictParams):
    """One edit: ``source`` -> ``target`` texts, paired one to one (or one
    source for all); the text direction is the mean of the pairs'."""

    source: list[str] = Field(min_length=1)
    target: list[str] = Field(min_length=1)
    #: Epochs for this prompt (SDFT app. E: 3 for sad, angry, old); null: editing.epochs.
    epochs: int | None = Field(None, ge=1)
    #: Shown in tables and grids, e.g. "angry (FaceWorld: frowning)"; null: the key.
    label: str | None = None
    #: FaceWorld edit success: the attribute and values the prompt moves toward;
    #: null: core.metrics.editing.PROMPT_ATTRIBUTES (angry: none, n/a).
    attribute: str | None = None
    values: list[str] = Field(default_factory=list)

    @field_validator("source", "target")
    @classmethod
    def _texts(cls, v: list[str]) -> list[str]:
        if not all(isinstance(s, str) and s.strip() for s in v):
            raise ValueError("texts must be non-empty strings")
        return v

    @model_validator(mode="after")
    def _pairs(self) -> "PromptParams":
        if len(self.source) != 1 and len(self.source) != len(self.target):
            raise ValueError(f"source ({len(self.source)} texts) and target ({len(self.target)}) must pair up, "
                             "or source must be one text")
        if (self.attribute is None) != (not self.values):
            raise ValueError("attribute and values go together")
        return self


class EditingParams(StrictParams):
    """Defaults: SDFT appendix E (100 training images, 50 training steps, 100
    inversion steps, 5 epochs, editing range 0.5T, 500 test images) and
    Asyrp_official's script_train.sh (lr 0.5, L1 weight 3, CLIP weight 1,
    t_boost 200 of 1000 steps, batch 1)."""

    prompts: dict[str, PromptParams] = Field(min_length=1)
    n_train: int = Field(100, ge=1)
    n_test: int = Field(500, ge=1)
    epochs: int = Field(5, ge=1)
    train_steps: int = Field(50, ge=1)
    inversion_steps: int = Field(100, ge=1)
    #: Generative steps when editing the test images (Asyrp --n_test_step).
    steps: int = Field(100, ge=1)
    #: Fractions of T: edit in [t_edit, T]; stochastic (eta = 1) below t_boost.
    t_edit: float = Field(0.5, ge=0.0, le=1.0)
    t_boost: float = Field(0.2, ge=0.0, le=1.0)
    lr: float = Field(0.5, gt=0.0)
    lr_step_epochs: int = Field(3, ge=1)
    lr_gamma: float = Field(0.1, gt=0.0)
    clip_weight: float = Field(1.0, ge=0.0)
    l1_weight: float = Field(3.0, ge=0.0)
    #: Edit strength: Delta h is multiplied by this (Asyrp hs_coeff).
    scale: float = 1.0
    batch_size: int = Field(1, ge=1)
    edit_batch_size: int = Field(16, ge=1)
    use_timestep: bool = True
    seed: int = 0
    grid_inputs: int = Field(8, ge=1)

    @model_validator(mode="after")
    def _interval(self) -> "EditingParams":
        if self.t_boost > self.t_edit:
            raise ValueError(f"t_boost ({self.t_boost}) must not exceed t_edit ({self.t_edit})")
        bad = [k for k in self.prompts if not k or "." in k or "/" in k]
        if bad:
            raise ValueError(f"prompt names must be non-empty, without '.' or '/': {bad}")
        return self

    def label(self, prompt: str) -> str:
        return self.prompts[prompt].label or prompt

    def asyrp_config(self, prompt: str, t_edit: int) -> AsyrpConfig:
        """The core training config of one prompt (``t_edit`` as a timestep)."""
        p = self.prompts[prompt]
        return AsyrpConfig(epochs=p.epochs or self.epochs, train_steps=self.train_steps,
                           inversion_steps=self.inversion_steps, t_edit=t_edit, lr=self.lr,
                           lr_step_epochs=self.lr_step_epochs, lr_gamma=self.lr_gamma, batch_size=self.batch_size,
                           clip_weight=self.clip_weight, l1_weight=self.l1_weight, scale=self.scale,
                           use_timestep=self.use_timestep, seed=self.seed)


def editing_for(editing: dict[str, Any] | None, dataset: dict[str, Any] | None = None) -> EditingParams:
    """``editing`` with ``datasets.<name>.editing`` merged over it (a prompt
    given there replaces that prompt; other keys replace their value);
    errors name both blocks."""
    if dataset is not None and not isinstance(dataset, dict):  # DatasetParams
        dataset = {"name": dataset.name, "editing": dataset.editing}
    overrides = (dataset or {}).get("editing") or {}
    merged = dict(editing or {})
    for key, value in overrides.items():
        merged[key] = {**(merged.get(key) or {}), **value} if isinstance(value, dict) else value
    where = f"editing (with datasets.{dataset.get('name')}.editing)" if overrides else "editing"
    return parse(EditingParams, merged, where)
