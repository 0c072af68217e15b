"""An image classifier from the library: torchvision's ResNet-18 / ResNet-50
with ``num_classes`` outputs, from scratch or from a local torchvision
state_dict (ImageNet weights: every layer but the last, ``fc``, which gets the
new classes). It takes images in [-1, 1] and normalises them as torchvision's
ImageNet models expect."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision import models

__all__ = ["ARCHITECTURES", "ImageClassifier", "build_image_classifier"]

#: The architectures a configuration can name, and their torchvision constructors.
ARCHITECTURES = {"resnet18": models.resnet18, "resnet50": models.resnet50}
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class ImageClassifier(nn.Module):
    """``net`` on images in [-1, 1], mapped to ImageNet's normalisation first."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(((images + 1) / 2 - self.mean) / self.std)


def build_image_classifier(arch: str, num_classes: int, weights: str | Path | None = None) -> ImageClassifier:
    """``arch`` with ``num_classes`` outputs; with ``weights`` (a torchvision
    state_dict file), every layer but ``fc`` loaded from it. Raises ValueError
    when the file does not fit the architecture."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)}")
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
    net = ARCHITECTURES[arch](weights=None, num_classes=num_classes)
    if weights is not None:
        state = torch.load(str(weights), map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        if not isinstance(state, dict):
            raise ValueError(f"{weights} holds no state_dict")
        state = {k.removeprefix("module."): v for k, v in state.items()}
        try:
            missing, unexpected = net.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")},
                                                      strict=False)
        except RuntimeError as err:  # a tensor of another shape
            raise ValueError(f"{weights} does not fit torchvision's {arch}: {str(err).splitlines()[-1]}") from None
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing or unexpected:
            raise ValueError(f"{weights} does not fit torchvision's {arch}: missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}")
    return ImageClassifier(net)
