"""The evaluation CLIP (the edit stage's): age pairs in training, both captions
of an age pair name the age, captions without age pairs are drawn as before,
and the committed weights read age."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from diffusion_transfer.core.world.captions import caption, caption_variants
from diffusion_transfer.core.world.clip_eval import evaluate_world_clip
from diffusion_transfer.core.world.clip_io import load_world_clip
from diffusion_transfer.core.world.clip_train import WorldClipConfig, _batch_captions, _render_pair_pool
from diffusion_transfer.core.world.render import ATTRIBUTES, STYLES, sample_attributes

ROOT = Path(__file__).resolve().parents[2]
WORLD = ROOT / "data" / "06_models" / "world"
HELD_OUT_SEED = 424242  # render seeds below TRAIN_SEED_OFFSET: never seen in training
AGE_BAR = 0.90  # the other attributes' bar; the committed weights read age at 0.945-0.99 a style
# an age word before the gender noun ("an old painting" is a style, not an age)
AGE_NOUN = re.compile(r"\b(young|youthful|old|elderly|aged) (man|male|guy|woman|female|lady)\b")


def _names_age(text: str) -> bool:
    return AGE_NOUN.search(text) is not None


def test_name_age_draws_the_same_numbers_and_always_names_the_age():
    named = 0
    for i in range(200):
        attrs = sample_attributes(np.random.default_rng(i), STYLES[i % 4])
        plain_rng, named_rng = np.random.default_rng(1000 + i), np.random.default_rng(1000 + i)
        plain = caption_variants(attrs, plain_rng)
        with_age = caption_variants(attrs, named_rng, name_age=True)
        # the random stream is untouched, so the curation CLIP's captions are unchanged
        assert plain_rng.random() == named_rng.random()
        assert _names_age(with_age), with_age
        named += _names_age(plain)
        if _names_age(plain):  # already named: the same caption
            assert plain == with_age
    assert 60 < named < 140  # without name_age, about half name the age


def test_age_pairs_differ_in_age_only_and_both_captions_name_it():
    cfg = WorldClipConfig(pool_pairs=24, batch_size=8, pair_flips=(("age", 1.0),))
    images, attrs = _render_pair_pool(cfg, seed=5, progress=False)
    assert images.shape == (48, 32, 32, 3)
    for a, b in zip(attrs[0::2], attrs[1::2]):
        assert a.age != b.age and replace(b, age=a.age) == a
    captions = _batch_captions(attrs, np.random.default_rng(0), canonical_p=1.0)
    for text in captions:
        # canonical_p 1.0 would give the canonical caption, which omits the age
        assert _names_age(text), text
    assert len(set(captions)) == len(captions)


def _captions_before_age_pairs(attrs, rng, canonical_p):
    """_batch_captions as it was before age pairs (the curation CLIP was trained with it)."""
    seen, out = set(), []
    for a in attrs:
        text = caption(a) if rng.random() < canonical_p else caption_variants(a, rng)
        tries = 0
        while text in seen and tries < 20:
            text = caption_variants(a, rng)
            tries += 1
        seen.add(text)
        out.append(text)
    return out


def test_pairs_without_age_flips_are_captioned_as_before():
    cfg = WorldClipConfig(pool_pairs=64, batch_size=8)  # the curation CLIP's flips: no age
    _, attrs = _render_pair_pool(cfg, seed=5, progress=False)
    assert all(a.age == b.age for a, b in zip(attrs[0::2], attrs[1::2]))
    for seed in range(3):
        assert _batch_captions(attrs, np.random.default_rng(seed), 0.35) == \
            _captions_before_age_pairs(attrs, np.random.default_rng(seed), 0.35)


def test_age_is_a_flippable_attribute_and_others_are_still_refused():
    assert WorldClipConfig(pair_flips=(("age", 1.0),)).pair_flips == (("age", 1.0),)
    with pytest.raises(ValueError, match="hair_style"):
        WorldClipConfig(pair_flips=(("hair_style", 1.0),))
    assert ATTRIBUTES["age"] == ("young", "old")


@pytest.fixture(scope="module")
def evaluation_clip():
    return load_world_clip(WORLD / "evaluation_clip")


def test_evaluation_clip_reads_age(evaluation_clip):
    """The curation bars (eyewear, expression, the AAHQ ranking) are checked for both
    CLIPs in test_world_models.py; age is the evaluation CLIP's own."""
    acc = evaluate_world_clip(evaluation_clip, n_per_style=200, seed=HELD_OUT_SEED, attributes=("age",))
    for style in STYLES:  # the curation CLIP reads age at 0.52-0.57
        assert acc["age"][style] >= AGE_BAR, (style, acc["age"])


def test_the_edit_stage_reads_the_evaluation_clip_and_curation_the_curation_clip():
    import yaml

    catalog = yaml.safe_load((ROOT / "conf" / "base" / "catalog.yml").read_text())
    assert catalog["evaluation_clip"]["path"] == "data/06_models/world/evaluation_clip"
    assert catalog["curation_clip"]["path"] == "data/06_models/world/clip"
    assert catalog["condition_clip"]["path"] == "data/06_models/world/clip"
