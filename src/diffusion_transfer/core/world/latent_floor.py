"""The FID floors of the latent world's sketch target (docs/RESULTS.md, ANL
Table 1 analogue): what a perfect model would score under the runs' protocol.

- *real*: held-out pencil sketches, drawn like the dataset (another seed), as
  many as a run's samples, against the runs' reference subset: FID's bias at
  this sample size, the best any model can show;
- *reconstructed*: the same sketches through the frozen autoencoder (encode,
  quantise, decode), the best a latent model on it can show, since every
  sample is decoded by it.

``python -m diffusion_transfer.core.world.latent_floor [--n 256]`` prints them
as JSON, with the real Inception features (clean-fid's preprocessing).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from diffusion_transfer.core.data.images import to_tensor, to_uint8
from diffusion_transfer.core.metrics.extractors import FeatureExtractor, inception_extractor
from diffusion_transfer.core.metrics.fid import compute_fid_kid
from diffusion_transfer.core.models.latent import latent_codec_of
from diffusion_transfer.core.models.unet import load_unet
from diffusion_transfer.core.world.autoencoder import reconstruct
from diffusion_transfer.core.world.domains import render_batch
from diffusion_transfer.core.world.latent_eval import HELD_OUT_SEED

SKETCHES = "faceworld_latent_sketches"


def reference_sketches(n_folder: int = 3000, max_reference: int = 1000) -> np.ndarray:
    """The sketch folder the runs read (seed 0) and the fixed subset their FID
    compares against (``pipelines/evaluation.reference_subset``'s rule)."""
    images, _ = render_batch(SKETCHES, n_folder, 32, seed=0)
    keep = np.sort(np.random.default_rng(0).choice(n_folder, max_reference, replace=False))
    return images[keep]


def fid_floors(autoencoder, reference: np.ndarray, extractor: FeatureExtractor, n: int = 256,
               seed: int = HELD_OUT_SEED, cache: Path | None = None) -> dict[str, dict]:
    """FID/KID of ``n`` held-out sketches and of their reconstructions against
    ``reference`` (its features kept in ``cache``, computed once)."""
    real, _ = render_batch(SKETCHES, n, 32, seed=seed)
    with torch.no_grad():
        recon = to_uint8(reconstruct(autoencoder, to_tensor(real)))
    keys = ("fid", "kid_x1e3", "n_gen", "n_ref")
    return {name: {k: compute_fid_kid(images, reference, extractor, ref_cache=cache)[k] for k in keys}
            for name, images in (("real", real), ("reconstructed", recon))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", default="data/06_models/world")
    parser.add_argument("--n", type=int, default=256, help="held-out sketches (a run's sampling.n_samples)")
    parser.add_argument("--seeds", type=int, nargs="*", default=[HELD_OUT_SEED, HELD_OUT_SEED + 1])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    autoencoder = latent_codec_of(load_unet(Path(args.world) / "latent_source")).autoencoder
    reference, extractor = reference_sketches(), inception_extractor()
    with tempfile.TemporaryDirectory() as cache:
        result = {f"seed {s}": fid_floors(autoencoder, reference, extractor, args.n, s, Path(cache))
                  for s in args.seeds}
    result.update(features=extractor.weights, n_reference=len(reference), wall_s=round(time.perf_counter() - t0, 1))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
