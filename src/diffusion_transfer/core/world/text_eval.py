"""Held-out quality of the text world's model (docs/FACEWORLD.md, "The text
world"): prompts are the canonical captions of held-out attribute draws
(photos, portraits and artworks in turn), one DDIM sample each, drawn as
``StableDiffusionPipeline`` draws them (:mod:`..sampling.text_to_image`). For
each guidance scale:

- ``face_rate``: the share the attribute classifier judges faces;
- ``clip_score``: the world CLIP's cosine similarity of each sample to its
  prompt, x100 (CLIPScore's scale), beside the same score of renders drawn
  with the prompt's attributes (``clip_score_renders``: what a perfect model
  gets) and of the samples against another sample's prompt
  (``clip_score_shuffled``: what ignoring the prompt gets);
- ``agreement``: the share whose style the world CLIP reads as the prompt's,
  and whose expression, eyewear and gender the attribute classifier reads
  as the prompt's (among the samples judged faces).

``python -m diffusion_transfer.core.world.text_eval [--n 150] [--steps 40]``
prints the numbers as JSON (the committed models under data/06_models/world/).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from diffusion_transfer.core.models.text_to_image import text_conditioning_of
from diffusion_transfer.core.models.unet import load_unet
from diffusion_transfer.core.sampling import make_noise_bank
from diffusion_transfer.core.sampling.text_to_image import model_scheduler, sample_text_to_image
from diffusion_transfer.core.world.autoencoder import LATENT_CLASSES
from diffusion_transfer.core.world.captions import STYLE_PHRASES, caption
from diffusion_transfer.core.world.classifier import predict_attributes
from diffusion_transfer.core.world.classifier_io import load_attribute_classifier
from diffusion_transfer.core.world.clip_io import load_world_clip
from diffusion_transfer.core.world.render import STYLES, FaceAttributes, render_face, sample_attributes

#: Attribute and noise seed of the evaluation: the model trained on seed 0's renders.
HELD_OUT_SEED = 424242
#: What the attribute classifier checks against the prompt.
PROMPTED = ("expression", "eyewear", "gender")


def held_out_prompts(n: int, seed: int = HELD_OUT_SEED) -> list[FaceAttributes]:
    """``n`` attribute draws, uniform, styles :data:`LATENT_CLASSES` in turn."""
    rng = np.random.default_rng([seed, 34])
    return [sample_attributes(rng, LATENT_CLASSES[i % len(LATENT_CLASSES)]) for i in range(n)]


def prompt_samples(model, prompts: list[str], steps: int, guidance_scale: float = 1.0,
                   seed: int = HELD_OUT_SEED, batch_size: int = 50) -> torch.Tensor:
    """One decoded DDIM sample (eta 0) per prompt, float in [-1, 1]; guidance
    against the empty prompt when ``guidance_scale`` > 1."""
    text = text_conditioning_of(model)
    size = int(model.config.sample_size)
    noise = make_noise_bank(len(prompts), (int(model.config.in_channels), size, size), seed=seed)
    out = []
    with torch.no_grad():
        for i in range(0, len(prompts), batch_size):
            embeds = text.encode(prompts[i:i + batch_size])
            negative = text.empty().expand(len(embeds), -1, -1)
            out.append(sample_text_to_image(model, model_scheduler(model), noise[i:i + batch_size], embeds,
                                            negative, guidance_scale, steps))
    return torch.cat(out)


def clip_scores(clip, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """CLIPScore-style ``100 * max(cos(image, prompt), 0)`` per image, with the world CLIP."""
    unique = sorted(set(prompts))
    txt = clip.encode_text(unique)
    rows = torch.tensor([unique.index(p) for p in prompts])
    return 100 * (clip.encode_images(images) * txt[rows]).sum(-1).clamp(min=0)


def sample_quality(images: torch.Tensor, attrs: list[FaceAttributes], classifier, clip) -> dict:
    """Face rate, CLIP score (and its shuffled-prompt floor) and prompt agreement of ``images``."""
    prompts = [caption(a) for a in attrs]
    preds = predict_attributes(classifier, images)
    faces = [p["is_face"] for p in preds]
    styles = clip.zero_shot(images, [STYLE_PHRASES[s] for s in STYLES]).argmax(-1)
    agree = {"style": float(np.mean([STYLES[int(s)] == a.style for s, a in zip(styles, attrs)]))}
    for key in PROMPTED:
        hits = [p[key] == getattr(a, key) for p, a, f in zip(preds, attrs, faces) if f]
        agree[key] = float(np.mean(hits)) if hits else 0.0
    shuffled = prompts[1:] + prompts[:1]
    return {"face_rate": round(float(np.mean(faces)), 3),
            "clip_score": round(float(clip_scores(clip, images, prompts).mean()), 2),
            "clip_score_shuffled": round(float(clip_scores(clip, images, shuffled).mean()), 2),
            "agreement": {k: round(v, 3) for k, v in agree.items()}}


def renders_of(attrs: list[FaceAttributes], seed: int = HELD_OUT_SEED) -> torch.Tensor:
    """A render of each attribute set (the reference a perfect model would match), float in [-1, 1]."""
    images = np.stack([render_face(a, 32, seed + i) for i, a in enumerate(attrs)])
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", default="data/06_models/world")
    parser.add_argument("--model", default=None, help="the text-to-image folder (default: <world>/text_source)")
    parser.add_argument("--n", type=int, default=150, help="prompts (one sample each)")
    parser.add_argument("--steps", type=int, default=40, help="DDIM steps")
    parser.add_argument("--guidance", type=float, nargs="*", default=[1.0, 3.0],
                        help="classifier-free guidance scales (1: none)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    world = Path(args.world)
    t0 = time.perf_counter()
    model = load_unet(args.model or world / "text_source")
    classifier, clip = load_attribute_classifier(world / "classifier"), load_world_clip(world / "clip")
    attrs = held_out_prompts(args.n)
    prompts = [caption(a) for a in attrs]
    renders = sample_quality(renders_of(attrs), attrs, classifier, clip)
    result = {"renders": renders,
              "samples": {f"guidance {g:g}": sample_quality(prompt_samples(model, prompts, args.steps, g), attrs,
                                                            classifier, clip) for g in args.guidance},
              "n_prompts": args.n, "ddim_steps": args.steps, "wall_s": round(time.perf_counter() - t0, 1)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
