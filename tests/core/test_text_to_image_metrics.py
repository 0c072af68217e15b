"""The text-to-image metrics (core/metrics/text_to_image.py, issue 34)
re-derived by hand on tiny inputs: the CLIP score (torchmetrics' CLIPScore:
max(100 x mean cosine, 0)) and the shares of samples showing an absent
concept, with the share kept from source to fine-tuned sample."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffusion_transfer.core.metrics.text_to_image import clip_score, concept_rates
from diffusion_transfer.project.schema import EvaluationParams, InvalidParametersError, parse
from tests._pipeline_helpers import ROOT

#: one embedding per image, chosen by the image's grey level (0, 100, 200)
IMAGE_EMB = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
TEXT_EMB = {"a": [1.0, 0.0], "b": [0.0, -2.0]}  # normalised by the metric: b is (0, -1)


def _encode_images(x: torch.Tensor) -> torch.Tensor:
    level = x[:, 0, 0, 0]  # [-1, 1]: 0 -> -1, 100 -> -0.22, 200 -> 0.57
    return IMAGE_EMB[(level > -0.5).long() + (level > 0.5).long()]


def _encode_text(prompts: list[str]) -> torch.Tensor:
    return torch.tensor([TEXT_EMB[p] for p in prompts])


def _images(levels) -> np.ndarray:
    return np.stack([np.full((4, 4, 3), v, dtype=np.uint8) for v in levels])


def test_the_clip_score_is_100_times_the_mean_cosine_clipped_at_zero():
    # cosines: image 0 with "a" 1; image 1 with "b" -1; image 2 with "a" 1/sqrt(2)
    out = clip_score(_encode_images, _encode_text, _images([0, 100, 200]), ["a", "b", "a"])
    assert out["n"] == 3
    assert out["clip_score"] == pytest.approx(100 * (1 - 1 + 1 / math.sqrt(2)) / 3, abs=1e-4)
    assert out["per_prompt"]["a"] == pytest.approx(100 * (1 + 1 / math.sqrt(2)) / 2, abs=1e-4)
    assert out["per_prompt"]["b"] == 0.0  # 100 x -1, clipped
    only_b = clip_score(_encode_images, _encode_text, _images([100]), ["b"])
    assert only_b["clip_score"] == 0.0


def test_the_clip_score_needs_one_prompt_per_image():
    with pytest.raises(ValueError, match="one prompt per image"):
        clip_score(_encode_images, _encode_text, _images([0, 100]), ["a"])


def test_the_clip_score_with_the_evaluation_clip_is_its_own_embeddings_cosine():
    """On FaceWorld's evaluation CLIP (the catalog's evaluation_clip), by hand
    through its open_clip towers: normalised input, L2-normalised embeddings."""
    # deferred: open_clip takes a second to import; only this test needs it
    from diffusion_transfer.core.world.clip_io import load_world_clip

    clip = load_world_clip(ROOT / "data" / "06_models" / "world" / "evaluation_clip")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    prompts = ["a photo of a smiling woman with glasses", "a pencil sketch of a sad man", "a photo of a smiling "
               "woman with glasses"]
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad():
        img = torch.nn.functional.normalize(clip.model.encode_image(clip.normalise(x)), dim=-1)
        txt = torch.nn.functional.normalize(clip.model.encode_text(clip.tokenizer(prompts)), dim=-1)
    by_hand = max(100 * float((img * txt).sum(-1).mean()), 0.0)
    out = clip_score(clip.encode_images, clip.encode_text, images, prompts)
    assert out["clip_score"] == pytest.approx(by_hand, abs=1e-3)


def test_the_shares_showing_a_concept_and_the_share_kept_by_hand():
    face = {"is_face": True}
    src = [{**face, "eyewear": "glasses", "gender": "woman"}, {**face, "eyewear": "glasses", "gender": "man"},
           {"is_face": False, "eyewear": "glasses", "gender": "woman"}, {**face, "eyewear": "none", "gender": "woman"}]
    trg = [{**face, "eyewear": "glasses", "gender": "woman"}, {**face, "eyewear": "none", "gender": "man"},
           {**face, "eyewear": "glasses"}, {"is_face": False, "eyewear": "glasses", "gender": "woman"}]
    glasses = concept_rates(src, trg, {"eyewear": ["glasses"]})
    # source: samples 0, 1 (2 is no face); fine-tuned: 0, 2 (3 is no face); kept: 0 of {0, 1}
    assert glasses == {"source_rate": 0.5, "finetuned_rate": 0.5, "kept": 0.5, "n_source_showing": 2, "n": 4}
    both = concept_rates(src, trg, {"eyewear": ["glasses", "sunglasses"], "gender": ["woman"]})
    # every attribute must hold: only pair 0 (fine-tuned 2 has no gender reading)
    assert both == {"source_rate": 0.25, "finetuned_rate": 0.25, "kept": 1.0, "n_source_showing": 1, "n": 4}
    old = concept_rates(src, trg, {"age": ["old"]})
    assert old["source_rate"] == 0.0 and old["kept"] is None  # nothing to keep


def test_an_absent_prompt_the_classifier_cannot_read_is_refused_naming_its_key():
    bad = {"text_to_image": {"absent_prompts": [{"prompt": "a man with a monocle", "shows": {"eyewear": ["monocle"]}},
                                                {"prompt": "a hat", "shows": {"hat": ["red"]}}]}}
    with pytest.raises(InvalidParametersError) as err:
        parse(EvaluationParams, bad, "evaluation")
    message = str(err.value)
    assert "evaluation.text_to_image.absent_prompts.0.shows" in message
    assert "eyewear needs values among none, glasses, sunglasses" in message
    assert "evaluation.text_to_image.absent_prompts.1.shows" in message and "'hat' is not an attribute" in message
