"""Empirical risk minimisation of an image classifier (the ERM column of ANL
Table 2): cross-entropy on labelled images, trained by the shared loop
(``loop.train``: AdamW, random minibatches, horizontal flips), and its test
accuracy."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.nn import functional as F

from .config import TrainConfig
from .loop import train

__all__ = ["accuracy", "cross_entropy_loss", "mean_std", "train_erm"]


def cross_entropy_loss(model, images, teacher=None, generator=None, condition=None) -> dict[str, torch.Tensor]:
    """The loop's loss: the images' labels arrive as ``condition``."""
    if condition is None:
        raise ValueError("ERM needs the labels as condition=")
    labels = condition.long().view(-1)
    logits = model(images)
    return {"loss": F.cross_entropy(logits.float(), labels),
            "accuracy": (logits.argmax(dim=1) == labels).float().mean().detach()}


def train_erm(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, config: TrainConfig | dict[str, Any],
              desc: str = "ERM") -> torch.nn.Module:
    """``model`` trained by cross-entropy on ``images`` (N, 3, H, W) in [-1, 1]
    with integer ``labels`` (N,); returned in eval mode (the EMA when the config has one)."""
    result = train(model, cross_entropy_loss, images, config, conditions=labels.long(), desc=desc, latents=False)
    return result.final_model.eval()


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> float:
    """Share of ``images`` whose arg-max class is their label."""
    if len(images) == 0:
        raise ValueError("no test images: accuracy is undefined")
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(images), batch_size):
        logits = model(images[i:i + batch_size].to(device))
        correct += int((logits.argmax(dim=1).cpu() == labels[i:i + batch_size].long()).sum())
    return correct / len(images)


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1); no std for one value."""
    n = len(values)
    mean = sum(values) / n
    return mean, (math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None)
