"""Face-identity similarity: the cosine between ArcFace embeddings of two
images of the same face (Asyrp's ID metric; pSp's identity loss is 1 minus it).

Preprocessing is pSp's ``IDLoss.extract_feats``, which Asyrp reuses: the
image is pooled to 256x256, cropped to the face box ``[35:223, 32:220]`` of an
FFHQ-aligned face, and pooled to ArcFace's 112x112.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from diffusion_transfer.core.models.arcface import load_arcface
from diffusion_transfer.core.weights import resolve_weights

_FACE_BOX = (35, 223, 32, 220)  # rows, then columns, on a 256x256 FFHQ-aligned face


def face_crop(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, 3, 112, 112): pSp's identity crop."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"identity metric input must be a (B, 3, H, W) tensor in [-1, 1], got {tuple(x.shape)}")
    if x.shape[-2:] != (256, 256):
        x = F.adaptive_avg_pool2d(x, (256, 256))
    top, bottom, left, right = _FACE_BOX
    return F.adaptive_avg_pool2d(x[:, :, top:bottom, left:right], (112, 112))


class IdentitySimilarity:
    """``IdentitySimilarity(weights)(a, b) -> (B,)`` ArcFace cosines in [-1, 1].

    ``weights``: a local ``model_ir_se50.pth`` or the id ``arcface-ir-se50``
    (see :mod:`diffusion_transfer.core.weights`). ``label`` names the weights.
    """

    def __init__(self, weights: str | os.PathLike, device: str | torch.device = "cpu", batch_size: int = 64) -> None:
        path = resolve_weights(weights, "the ArcFace IR-SE50 weights (model_ir_se50.pth)")
        self.device = torch.device(device)
        self.model = load_arcface(path).to(self.device)
        self.batch_size = batch_size
        self.label = f"ArcFace IR-SE50 cosine ({path.name}; pSp face crop, 112x112)"

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        out = [self.model(face_crop(x[i : i + self.batch_size].to(self.device, torch.float32))).cpu()
               for i in range(0, len(x), self.batch_size)]
        return torch.cat(out) if out else torch.empty(0, 512)

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape != b.shape:
            raise ValueError(f"identity inputs must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
        return (self.embed(a) * self.embed(b)).sum(dim=1)
