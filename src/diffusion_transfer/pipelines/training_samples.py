"""Samples during training: every ``train.sample_every`` steps, the model
being trained samples a few fixed noises (a short DDIM run), beside the
source model's samples of the same noises.

:class:`TrainingSampler` is the training loop's ``on_log`` callback (the loop
itself is untouched): it samples at the first logged step at or after each
multiple of ``sample_every`` (every multiple when ``log_every`` divides it).
The rows are kept in ``training_samples.npz`` beside the run's checkpoints,
so a resumed run keeps the rows sampled before the interruption.
:func:`training_samples_strip` turns them into the report's strip
(``data/08_reporting/<run>/training_samples.png``); ``tracking`` logs each row
to mlflow as an image with its step.

Sampling uses its own noise and no random draw of the training run (DDIM with
eta 0, under a forked RNG), so a run trains the same weights with or without
samples (tests/test_tracking.py checks it). With ``num_processes > 1`` the
callback runs in a worker holding a copy of the initial model: only the source
and the final model are sampled then.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from diffusion_transfer.core.data.contact_sheet import labelled_rows
from diffusion_transfer.core.data.images import to_uint8
from diffusion_transfer.pipelines.model_space import to_images
from diffusion_transfer.core.sampling import make_noise_bank, model_eps_fn, sample_ddim

log = logging.getLogger(__name__)

SAMPLES_FILE = "training_samples.npz"
#: The strip shows at most this many training rows (evenly spread, the last kept); mlflow gets all.
MAX_STRIP_ROWS = 12
#: Offset of the samples' noise seed from ``train.seed`` (apart from the loop's own streams).
NOISE_SEED_OFFSET = 7919


def sample_rows_key(step: int) -> str:
    return f"step_{step:07d}"


class TrainingSampler:
    """``on_log`` callback sampling ``student`` every ``every`` steps (see the module docstring).

    ``settings``: ``{"every", "n", "steps"}`` (``TrainParams.sample_settings``);
    ``conditions`` (ANL): one condition per noise for the conditional student."""

    def __init__(self, student: torch.nn.Module, source_model: torch.nn.Module, schedule, settings: dict[str, int],
                 seed: int, out_file: str | os.PathLike[str], conditions: torch.Tensor | None = None) -> None:
        self.student, self.source_model, self.schedule = student, source_model, schedule
        self.every, self.ddim_steps = int(settings["every"]), int(settings["steps"])
        n = int(settings["n"])
        size = int(source_model.config.sample_size)
        channels = int(getattr(source_model.config, "in_channels", 3))
        self.noise = make_noise_bank(n, (channels, size, size), seed=seed + NOISE_SEED_OFFSET)
        self.conditions = None if conditions is None else conditions[torch.arange(n) % conditions.shape[0]]
        self.out_file = Path(out_file)
        self.rows: dict[str, np.ndarray] = load_rows(self.out_file)
        steps = [int(k[5:]) for k in self.rows if k.startswith("step_")]
        self._last = max(steps, default=0)

    def __call__(self, record: dict[str, float]) -> None:
        step = int(record["step"])
        if self.every <= 0 or step // self.every <= self._last // self.every:
            return
        self._ensure_source_row()
        self.rows[sample_rows_key(step)] = self._sample(self.student, self.conditions)
        self._last = step
        self._save()

    def finish(self, final_model: torch.nn.Module, label: str) -> dict[str, Any]:
        """Add the final model's row (``label``, e.g. "final (EMA)"); returns the history's entry."""
        self._ensure_source_row()
        self.rows["final"] = self._sample(final_model, self.conditions)
        self._save()
        steps = sorted(int(k[5:]) for k in self.rows if k.startswith("step_"))
        return {"every": self.every, "n": int(self.noise.shape[0]), "ddim_steps": self.ddim_steps,
                "steps": steps, "final": label, "file": str(self.out_file)}

    def _ensure_source_row(self) -> None:
        if "source" not in self.rows:
            self.rows["source"] = self._sample(self.source_model, None)

    def _sample(self, model: torch.nn.Module, conditions: torch.Tensor | None) -> np.ndarray:
        device = next(self.student.parameters()).device
        own = next(model.parameters(), None)  # none: a view of the student (the source under LoRA: lora.py)
        home = own.device if own is not None else device  # the source model may live elsewhere (not the teacher)
        was_training = model.training
        fork = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
        with fork:
            model.to(device).eval()
            try:
                ctx = model.conditioned(conditions.to(device)) if conditions is not None else contextlib.nullcontext()
                with ctx:
                    x0 = sample_ddim(model_eps_fn(model, self.schedule), self.noise.to(device), self.schedule,
                                     steps=self.ddim_steps, generator=torch.Generator().manual_seed(0))
            finally:
                model.train(was_training)
                model.to(home)
        return to_uint8(to_images(model, x0.float()).cpu())  # a latent model's rows, decoded

    def _save(self) -> None:
        self.out_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out_file.with_name(self.out_file.name + ".part.npz")
        np.savez(tmp, **self.rows)
        os.replace(tmp, self.out_file)


def training_sampler(run: dict[str, Any], config, student: torch.nn.Module, source_model: torch.nn.Module, schedule,
                     conditions: torch.Tensor | None, checkpoint_dir: Path) -> TrainingSampler | None:
    """The sampler of a resolved run (``run["samples"]``, from ``train.sample_every``); None when off."""
    settings = run.get("samples")
    if not settings:
        return None
    if config.num_processes > 1:
        log.warning("%s: train.sample_every samples only the source and the final model with num_processes > 1 "
                    "(the on_log callback runs in a worker without the live model)", run["run"])
    return TrainingSampler(student, source_model, schedule, settings, config.seed, Path(checkpoint_dir) / SAMPLES_FILE,
                           conditions)


def load_rows(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The rows saved so far: ``source``, ``step_NNNNNNN`` ..., ``final``; empty without a file."""
    path = Path(path)
    if not path.exists():
        return {}
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def ordered_rows(rows: dict[str, np.ndarray], final_label: str = "final") -> list[tuple[str, np.ndarray]]:
    """(label, images) in strip order: source, the training steps, the final model."""
    steps = sorted(k for k in rows if k.startswith("step_"))
    out = [("source", rows["source"])] if "source" in rows else []
    out += [(f"step {int(k[5:])}", rows[k]) for k in steps]
    if "final" in rows:
        out.append((final_label, rows["final"]))
    return out


def spread(items: list[Any], k: int) -> list[Any]:
    """At most ``k`` items, evenly spread, the first and last kept."""
    if len(items) <= k:
        return list(items)
    idx = np.unique(np.round(np.linspace(0, len(items) - 1, k)).astype(int))
    return [items[i] for i in idx]


def training_samples_strip(history: dict) -> Image.Image:
    """The report's strip: the source model's row, then the model being trained
    at each sampled step (at most ``MAX_STRIP_ROWS``), then the final model; a
    one-line note image when samples were off."""
    meta = history.get("training_samples")
    rows = load_rows(meta["file"]) if meta else {}
    if not rows:
        why = "off (train.sample_every)" if not meta else f"missing ({meta['file']})"
        text = f"samples during training: {why}"
        img = Image.new("RGB", (8 * len(text) + 16, 24), "white")
        ImageDraw.Draw(img).text((8, 6), text, fill="black")
        return img
    final = meta.get("final", "final")
    ordered = ordered_rows(rows, final)
    steps = [r for r in ordered if r[0].startswith("step ")]
    return labelled_rows([r for r in ordered if r[0] == "source"] + spread(steps, MAX_STRIP_ROWS)
                          + [r for r in ordered if r[0] == final])


def training_samples_lines(history: dict) -> list[str]:
    """The report's lines for the strip (none when samples were off)."""
    meta = history.get("training_samples")
    if not meta:
        return []
    return ["", "### Samples during training", "",
            f"Every {meta['every']} steps, {meta['n']} fixed noises, DDIM {meta['ddim_steps']} steps: the source "
            f"model's row, then the model being trained (live weights), then the {meta['final']} model.", "",
            "![samples during training](training_samples.png)"]
