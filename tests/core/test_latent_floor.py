"""The latent world's FID floors feed the held-out sketches and their reconstructions."""

from __future__ import annotations

from pathlib import Path

from diffusion_transfer.core.metrics.extractors import clip_extractor
from diffusion_transfer.core.models.latent import latent_codec_of
from diffusion_transfer.core.models.unet import load_unet
from diffusion_transfer.core.world.clip_io import load_world_clip
from diffusion_transfer.core.world.domains import render_batch
from diffusion_transfer.core.world.latent_floor import SKETCHES, fid_floors, reference_sketches

WORLD = Path(__file__).resolve().parents[2] / "data" / "06_models" / "world"


def test_real_sketches_against_themselves_score_zero_and_their_reconstructions_do_not():
    autoencoder = latent_codec_of(load_unet(WORLD / "latent_source")).autoencoder
    extractor = clip_extractor(load_world_clip(WORLD / "clip").encode_images)
    same, _ = render_batch(SKETCHES, 12, 32, seed=7)
    floors = fid_floors(autoencoder, same, extractor, n=12, seed=7)
    assert floors["real"]["n_gen"] == floors["real"]["n_ref"] == 12
    assert abs(floors["real"]["fid"]) < 1e-3  # the very images the reference holds
    assert floors["reconstructed"]["fid"] > 1e-2  # the autoencoder changes them


def test_the_reference_is_a_fixed_subset_of_the_sketch_folder():
    folder, _ = render_batch(SKETCHES, 40, 32, seed=0)
    subset = reference_sketches(n_folder=40, max_reference=10)
    assert subset.shape == (10, 32, 32, 3)
    assert all(any((s == f).all() for f in folder) for s in subset)
    assert (reference_sketches(n_folder=40, max_reference=10) == subset).all()
