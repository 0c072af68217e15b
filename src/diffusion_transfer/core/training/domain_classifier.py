"""Training the noisy domain classifier p(domain | x_t, t) (the network is
:mod:`diffusion_transfer.core.models.domain_classifier`): its loss for the
shared training loop, and its held-out accuracy by timestep.

Both noise images with the source model's schedule at t drawn along the whole
reverse process, since TAN and EGSDE query the classifier at every step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F

from ..models.domain_classifier import DomainClassifier
from ..schedule import NoiseSchedule, randn, sample_timesteps

__all__ = ["accuracy_by_timestep", "domain_classifier_loss"]


def domain_classifier_loss(schedule: NoiseSchedule):
    """An EDM-style loss for the training loop: images arrive with their domain
    label as ``condition``; each is noised at a uniform t (the classifier must
    work along the whole reverse process). Returns loss and accuracy."""

    def loss_fn(model, images, teacher=None, generator=None, condition=None):
        if condition is None:
            raise ValueError("the domain classifier's loss needs the labels as condition=")
        t = sample_timesteps(images.shape[0], schedule.num_timesteps, images, generator)
        x_t = schedule.q_sample(images, t, randn(tuple(images.shape), images, generator))
        logits = model(x_t, t)
        labels = condition.long().view(-1)
        loss = F.cross_entropy(logits.float(), labels)
        accuracy = (logits.argmax(dim=1) == labels).float().mean()
        return {"loss": loss, "accuracy": accuracy.detach()}

    return loss_fn


@torch.no_grad()
def accuracy_by_timestep(model: DomainClassifier, images: torch.Tensor, labels: torch.Tensor,
                         schedule: NoiseSchedule, buckets: int = 10, repeats: int = 2, seed: int = 0,
                         batch_size: int = 256) -> list[dict[str, Any]]:
    """Held-out accuracy per bucket of t (equal-width buckets over [0, T)):
    each image is noised ``repeats`` times at t drawn uniformly inside each bucket."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    T = schedule.num_timesteps
    edges = torch.linspace(0, T, buckets + 1).long()
    rows = []
    for b in range(buckets):
        lo, hi = int(edges[b]), int(edges[b + 1])
        correct = total = 0
        for _ in range(repeats):
            for s in range(0, images.shape[0], batch_size):
                x0, y = images[s:s + batch_size], labels[s:s + batch_size].long()
                t = torch.randint(lo, hi, (x0.shape[0],), generator=g)
                x_t = schedule.q_sample(x0, t, randn(tuple(x0.shape), x0, g))
                correct += int((model(x_t, t).argmax(dim=1) == y).sum())
                total += int(x0.shape[0])
        rows.append({"t_from": lo, "t_to": hi - 1, "accuracy": correct / total, "n": total})
    return rows
