"""A text-to-image model's frozen text encoder and tokenizer, kept with its
UNet (the Stable Diffusion 1.x/2.x pipeline layout).

A diffusers pipeline folder with ``text_encoder/`` and ``tokenizer/`` beside
a ``UNet2DConditionModel`` in ``unet/`` (and ``vae/``: a latent model,
core/models/latent.py) is a text-to-image model: its UNet attends to the
text encoder's last hidden states of a prompt (``encoder_hidden_states``,
as ``StableDiffusionPipeline.encode_prompt`` makes them without
``clip_skip``). :func:`load_text_conditioning` reads the two parts with the
classes ``model_index.json`` names (``CLIPTextModel`` / ``CLIPTokenizer``
by default), offline; the result is attached to the UNet as a plain
attribute (like the latent codec: outside the ``state_dict``, never trained,
shared by deep copies), and :func:`model_output` passes a ``condition``
of a text-conditioned model as ``encoder_hidden_states``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .wrapping import attached, unwrap

__all__ = ["TEXT_PARTS", "TextConditioning", "attach_text_conditioning", "is_text_to_image_folder",
           "load_text_conditioning", "text_conditioning_of"]

#: The text parts of a Stable Diffusion folder and the classes used when model_index.json names none.
TEXT_PARTS = {"text_encoder": ("transformers", "CLIPTextModel"), "tokenizer": ("transformers", "CLIPTokenizer")}


class TextConditioning:
    """A frozen text encoder and its tokenizer: ``encode(prompts)`` gives the
    UNet's ``encoder_hidden_states`` (B, L, D), float32, without gradients."""

    def __init__(self, text_encoder: torch.nn.Module, tokenizer: Any, classes: dict[str, tuple[str, str]]) -> None:
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.classes = dict(classes)  # part -> (library, class), for model_index.json
        self._empty: torch.Tensor | None = None

    def __deepcopy__(self, memo: dict) -> "TextConditioning":
        return self

    @torch.no_grad()
    def encode(self, prompts: list[str], batch_size: int = 32) -> torch.Tensor:
        """The last hidden states of ``prompts``, padded to the tokenizer's
        ``model_max_length`` as ``StableDiffusionPipeline.encode_prompt`` does."""
        device = next(self.text_encoder.parameters()).device
        out = []
        for i in range(0, len(prompts), batch_size):
            ids = self.tokenizer(list(prompts[i : i + batch_size]), padding="max_length", truncation=True,
                                 max_length=self.tokenizer.model_max_length, return_tensors="pt").input_ids
            out.append(self.text_encoder(ids.to(device))[0].float().cpu())
        return torch.cat(out)

    def empty(self) -> torch.Tensor:
        """The empty prompt's hidden states (1, L, D), encoded once."""
        if self._empty is None:
            self._empty = self.encode([""])
        return self._empty

    def save(self, folder: Path) -> dict[str, list[str]]:
        """``text_encoder/`` and ``tokenizer/`` into ``folder``; their model_index.json entries."""
        self.text_encoder.save_pretrained(str(folder / "text_encoder"), safe_serialization=True)
        self.tokenizer.save_pretrained(str(folder / "tokenizer"))
        config = folder / "text_encoder" / "config.json"
        values = json.loads(config.read_text())
        if values.pop("_name_or_path", None) is not None:  # a path of this machine: clones' outputs would differ
            config.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
        return {part: list(spec) for part, spec in self.classes.items()}


def text_conditioning_of(model: torch.nn.Module | None) -> TextConditioning | None:
    """The text encoder a text-to-image model is conditioned by, or None."""
    return None if model is None else attached(model, "text_conditioning", TextConditioning)


def attach_text_conditioning(model: torch.nn.Module, text: TextConditioning | None) -> torch.nn.Module:
    if text is not None:
        object.__setattr__(unwrap(model), "text_conditioning", text)
    return model


def _index(folder: Path) -> dict[str, Any]:
    try:
        value = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def is_text_to_image_folder(folder: str | Path) -> bool:
    """True for a Stable Diffusion-layout folder: ``text_encoder/`` and
    ``tokenizer/`` beside ``unet/`` (whatever model_index.json says)."""
    folder = Path(folder)
    return (folder / "unet").is_dir() and all((folder / part).is_dir() for part in TEXT_PARTS)


def part_classes(folder: Path) -> dict[str, tuple[str, str]]:
    """The (library, class) of each text part: model_index.json's, else CLIP's."""
    index = _index(folder)
    out = {}
    for part, default in TEXT_PARTS.items():
        spec = index.get(part)
        ok = isinstance(spec, list) and len(spec) == 2 and all(isinstance(s, str) for s in spec)
        out[part] = (spec[0], spec[1]) if ok else default
    return out


def load_text_conditioning(folder: str | Path) -> TextConditioning | None:
    """The frozen text encoder and tokenizer of a Stable Diffusion-layout
    folder, loaded offline with the classes its model_index.json names; None
    for a folder without them."""
    folder = Path(folder)
    if not is_text_to_image_folder(folder):
        return None
    import transformers  # deferred: transformers takes seconds to import, and only text-to-image models need it

    classes = part_classes(folder)
    loaded = {}
    for part, (library, cls_name) in classes.items():
        if library != "transformers" or not hasattr(transformers, cls_name):
            raise ValueError(f"{folder / 'model_index.json'} names {library}.{cls_name} for {part}/; a text "
                             "encoder and tokenizer must be transformers classes (CLIPTextModel, CLIPTokenizer)")
        loaded[part] = getattr(transformers, cls_name).from_pretrained(str(folder / part), local_files_only=True)
    return TextConditioning(loaded["text_encoder"], loaded["tokenizer"], classes)
