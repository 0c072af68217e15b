"""Intra-LPIPS (CDC / TAN protocol): diversity of few-shot generations.

1. Each generated sample is assigned to the training image at the smallest
   LPIPS distance (clusters, one per training image).
2. In each cluster, the mean LPIPS over all pairs of at most
   ``max_per_cluster`` members (the first ones, in sample order; the protocol
   uses 50).
3. The mean of the cluster means. Clusters with fewer than two members have no
   pair and are left out (listed in the result).

``distance(a, b) -> (B,)`` is any paired image distance, normally
:class:`~.lpips_metric.LPIPSMetric` (whose label says whether it is real
LPIPS or the substitute).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

__all__ = ["intra_lpips", "nearest_assignment"]

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _paired(distance: Distance, a: torch.Tensor, b: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([distance(a[i : i + batch_size], b[i : i + batch_size]).float().reshape(-1)
                      for i in range(0, a.shape[0], batch_size)])


def nearest_assignment(samples: torch.Tensor, train: torch.Tensor, distance: Distance,
                       batch_size: int = 64) -> torch.Tensor:
    """Index of the nearest training image for each sample, shape (N,)."""
    dists = torch.stack([
        _paired(distance, samples, train[j : j + 1].expand_as(samples), batch_size) for j in range(train.shape[0])
    ], dim=1)  # (N, K)
    return dists.argmin(dim=1)


def intra_lpips(samples: torch.Tensor, train: torch.Tensor, distance: Distance, max_per_cluster: int = 50,
                batch_size: int = 64) -> dict[str, Any]:
    """``{"intra_lpips", "std", "clusters": [...], "empty_or_single": [...]}``."""
    if samples.ndim != 4 or train.ndim != 4 or samples.shape[1:] != train.shape[1:]:
        raise ValueError(f"samples {tuple(samples.shape)} and training images {tuple(train.shape)} must be "
                         "(N, 3, H, W) batches of the same image size")
    if train.shape[0] < 1 or samples.shape[0] < 2:
        raise ValueError("intra-LPIPS needs at least one training image and two samples")
    if max_per_cluster < 2:
        raise ValueError(f"max_per_cluster must be >= 2, got {max_per_cluster}")
    assign = nearest_assignment(samples, train, distance, batch_size)
    clusters, skipped = [], []
    for j in range(train.shape[0]):
        members = torch.nonzero(assign == j).flatten()[:max_per_cluster]
        if members.numel() < 2:
            skipped.append({"train_index": j, "size": int((assign == j).sum())})
            continue
        ii, jj = torch.triu_indices(members.numel(), members.numel(), offset=1)
        d = _paired(distance, samples[members[ii]], samples[members[jj]], batch_size)
        clusters.append({"train_index": j, "size": int((assign == j).sum()), "used": int(members.numel()),
                         "mean": float(d.mean())})
    if not clusters:
        raise ValueError("no cluster has two members: generate more samples")
    means = torch.tensor([c["mean"] for c in clusters])
    return {"intra_lpips": float(means.mean()), "std": float(means.std()) if len(clusters) > 1 else 0.0,
            "clusters": clusters, "empty_or_single": skipped}
