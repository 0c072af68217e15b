"""Real CLIP weights through open_clip (``conf/paper``: ViT-B/32 ``openai``).

Weights come from a local file; the hub is used only when the ``pretrained``
value is an open_clip tag and the machine is online. Offline, a missing file
fails fast with a message naming it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F


class ClipLoadError(RuntimeError):
    pass


class OpenClipEncoder:
    """``encode_images`` takes float images in [-1, 1] at any resolution and
    returns L2-normalised embeddings; ``encode_text`` takes strings."""

    def __init__(self, model, tokenizer, name: str, weights_label: str):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.weights_label = weights_label
        visual = model.visual
        size = visual.image_size
        self.image_size = size[0] if isinstance(size, (tuple, list)) else int(size)
        self.mean = torch.tensor(getattr(visual, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
        self.std = torch.tensor(getattr(visual, "image_std", None) or (0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)

    @torch.no_grad()
    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() + 1) / 2
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False,
                              antialias=True)
        x = (x - self.mean) / self.std
        return F.normalize(self.model.encode_image(x), dim=-1)

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        return F.normalize(self.model.encode_text(self.tokenizer(list(prompts))), dim=-1)


def missing_open_clip_weights(model_name: str, pretrained: str | None) -> str | None:
    """Why the open_clip weights cannot be had without compute or network, or
    None: a local file that is missing, or a release tag while offline."""
    if not pretrained:
        return f"CLIP {model_name}: no weights configured ('pretrained' is empty)"
    is_path = os.sep in pretrained or pretrained.endswith((".pt", ".bin", ".safetensors"))
    if is_path and not Path(pretrained).is_file():
        return (f"CLIP weights not found: {pretrained}. Download the open_clip {model_name} weights "
                f"(e.g. the 'openai' release) on a machine with internet and copy the file to that path.")
    if not is_path and os.environ.get("HF_HUB_OFFLINE") == "1":
        return (f"CLIP {model_name} pretrained={pretrained!r} needs a download but HF_HUB_OFFLINE=1; "
                f"set 'pretrained' to a local weights file instead.")
    return None


def load_open_clip(model_name: str, pretrained: str | None) -> OpenClipEncoder:
    import open_clip

    problem = missing_open_clip_weights(model_name, pretrained)
    if problem:
        raise ClipLoadError(problem)
    model = open_clip.create_model(model_name, pretrained=pretrained)
    return OpenClipEncoder(model, open_clip.get_tokenizer(model_name), name=f"open_clip {model_name}",
                           weights_label=f"open_clip {model_name} ({pretrained})")
