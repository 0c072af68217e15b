"""Held-out quality of the latent world's models (docs/FACEWORLD.md, "The
latent world"): the autoencoder's reconstruction PSNR per class (and on
sketches, a class it never saw), and per class label the latent source's
decoded DDIM samples: the share the attribute classifier judges faces and the
share whose style the world CLIP reads as the label's class.

``python -m diffusion_transfer.core.world.latent_eval [--n 200] [--steps 40]``
prints the numbers as JSON (the committed models under data/06_models/world/).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from diffusion_transfer.core.models.class_labels import guided_eps, using_class_label
from diffusion_transfer.core.models.latent import latent_codec_of
from diffusion_transfer.core.models.scheduler_config import scheduler_config_of
from diffusion_transfer.core.models.unet import load_unet
from diffusion_transfer.core.parameterization import schedule_from_scheduler_config
from diffusion_transfer.core.sampling import make_noise_bank, model_eps_fn, sample_ddim
from diffusion_transfer.core.world.autoencoder import LATENT_CLASSES, psnr, reconstruct, render_classes
from diffusion_transfer.core.world.captions import STYLE_PHRASES
from diffusion_transfer.core.world.classifier import predict_attributes
from diffusion_transfer.core.world.classifier_io import load_attribute_classifier
from diffusion_transfer.core.world.clip_io import load_world_clip
from diffusion_transfer.core.world.domains import render_batch
from diffusion_transfer.core.world.render import STYLES

#: Render and noise seeds of the evaluation: neither model trained on them (they used seed 0).
HELD_OUT_SEED = 424242


def reconstruction_psnr(autoencoder, n_per_class: int = 64, seed: int = HELD_OUT_SEED) -> dict[str, float]:
    """PSNR (dB) of encode-quantise-decode on held-out renders, per class and on sketches."""
    images, labels = render_classes(n_per_class * len(LATENT_CLASSES), 32, seed)
    out = {c: psnr(reconstruct(autoencoder, images[labels == i]), images[labels == i])
           for i, c in enumerate(LATENT_CLASSES)}
    sketches = torch.from_numpy(render_batch("faceworld_latent_sketches", n_per_class, 32, seed)[0])
    sketches = sketches.permute(0, 3, 1, 2).float() / 127.5 - 1
    out["sketch (unseen)"] = psnr(reconstruct(autoencoder, sketches), sketches)
    return {k: round(v, 2) for k, v in out.items()}


def class_samples(model, label: int, n: int, steps: int, seed: int = HELD_OUT_SEED,
                  guidance_scale: float = 1.0) -> torch.Tensor:
    """``n`` decoded DDIM samples (eta 0) of class ``label`` (the null label too), float in [-1, 1];
    ``guidance_scale`` > 1: classifier-free guidance against the null label."""
    schedule = schedule_from_scheduler_config(scheduler_config_of(model) or {})
    noise = make_noise_bank(n, (3, *([int(model.config.sample_size)] * 2)), seed=seed + label)
    with torch.no_grad(), using_class_label(model, label):
        eps = guided_eps(model_eps_fn(model, schedule), model, guidance_scale)
        z = sample_ddim(eps, noise, schedule, steps=steps)
        return latent_codec_of(model).decode(z)


def read_styles(clip, images: torch.Tensor) -> list[str]:
    """The world CLIP's zero-shot style ("a photo", "a realistic painting", ...) of each image."""
    probs = clip.zero_shot(images, [STYLE_PHRASES[s] for s in STYLES])
    return [STYLES[int(i)] for i in probs.argmax(-1)]


def sample_quality(model, classifier, clip, n: int, steps: int, guidance_scale: float = 1.0) -> dict[str, dict]:
    """Per label (each class and the null label): face rate and the styles the CLIP reads."""
    out = {}
    for label, name in enumerate([*LATENT_CLASSES, "null label"]):
        images = class_samples(model, label, n, steps, guidance_scale=guidance_scale if label < 3 else 1.0)
        faces = float(np.mean([p["is_face"] for p in predict_attributes(classifier, images)]))
        styles = read_styles(clip, images)
        out[name] = {"face_rate": round(faces, 3),
                     "styles": {s: round(styles.count(s) / len(styles), 3) for s in STYLES if s in styles}}
        if name in STYLES:
            out[name]["style_match"] = round(styles.count(name) / len(styles), 3)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", default="data/06_models/world")
    parser.add_argument("--n", type=int, default=200, help="samples per class label")
    parser.add_argument("--steps", type=int, default=40, help="DDIM steps")
    parser.add_argument("--psnr-n", type=int, default=200, help="held-out renders per class")
    parser.add_argument("--guidance", type=float, nargs="*", default=[1.0, 3.0],
                        help="classifier-free guidance scales to sample the classes with (1: none)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    world = Path(args.world)
    t0 = time.perf_counter()
    model = load_unet(world / "latent_source")
    classifier, clip = load_attribute_classifier(world / "classifier"), load_world_clip(world / "clip")
    result = {"psnr_db": reconstruction_psnr(latent_codec_of(model).autoencoder, args.psnr_n),
              "samples": {f"guidance {g:g}": sample_quality(model, classifier, clip, args.n, args.steps, g)
                          for g in args.guidance},
              "n_per_label": args.n, "ddim_steps": args.steps, "wall_s": round(time.perf_counter() - t0, 1)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
