"""FaceWorld captions: the canonical caption of a face and random variants
(synonyms, word order) for training the world CLIP."""

from __future__ import annotations

import numpy as np

from diffusion_transfer.core.world.render import FaceAttributes


STYLE_PHRASES = {
    "photo": "a photo",
    "portrait": "a realistic painting",
    "artwork": "an artwork",
    "sketch": "a pencil sketch",
}
EXPRESSION_WORDS = {"neutral": "expressionless", "smile": "smiling", "grin": "grinning", "sad": "sad"}
EYEWEAR_PHRASES = {
    "none": "without glasses",
    "glasses": "with glasses",
    "sunglasses": "with sunglasses",
}

_STYLE_SYNONYMS = {
    "photo": ("a photo", "a photograph", "a picture", "a portrait photo"),
    "portrait": ("a realistic painting", "an oil painting", "a classical painting", "an old painting"),
    "artwork": ("an artwork", "a digital illustration", "a colourful drawing", "a cartoon"),
    "sketch": ("a pencil sketch", "a pencil drawing", "a sketch", "a graphite drawing"),
}
_EXPRESSION_SYNONYMS = {
    "neutral": ("expressionless", "neutral", "serious", "straight-faced"),
    "smile": ("smiling", "happy", "gently smiling"),
    "grin": ("grinning", "laughing", "broadly grinning"),
    "sad": ("sad", "unhappy", "frowning"),
}
_GENDER_SYNONYMS = {"man": ("man", "male", "guy"), "woman": ("woman", "female", "lady")}
_EYEWEAR_SYNONYMS = {
    "none": ("without glasses", "with no glasses", "with no eyewear"),
    "glasses": ("with glasses", "wearing glasses", "with spectacles"),
    "sunglasses": ("with sunglasses", "wearing sunglasses", "with dark shades"),
}
_AGE_SYNONYMS = {"young": ("young", "youthful"), "old": ("old", "elderly", "aged")}
_BACKGROUND_PHRASES = {
    "plain": ("on a plain background", "against a plain backdrop"),
    "gradient": ("on a gradient background", "against a gradient backdrop"),
    "pattern": ("on a patterned background", "against a patterned backdrop"),
}


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def caption(attrs: FaceAttributes) -> str:
    """Canonical caption, e.g. ``"a realistic painting of an expressionless man without glasses"``."""
    expr = EXPRESSION_WORDS[attrs.expression]
    return (
        f"{STYLE_PHRASES[attrs.style]} of {_article(expr)} {expr} "
        f"{attrs.gender} {EYEWEAR_PHRASES[attrs.eyewear]}"
    )


def _pick(rng: np.random.Generator, options: tuple[str, ...], canonical_p: float = 0.5) -> str:
    """First option (the canonical word) with ``canonical_p``, else any other."""
    if len(options) == 1 or rng.random() < canonical_p:
        return options[0]
    return options[1 + int(rng.integers(len(options) - 1))]


def caption_variants(attrs: FaceAttributes, rng: np.random.Generator, name_age: bool = False) -> str:
    """A randomly varied, richer caption for contrastive training.

    Always mentions expression, gender and eyewear (possibly via a synonym);
    optionally age (always with ``name_age``), hair, skin tone and background,
    in varying order. ``name_age`` draws the same random numbers, so captions
    without it are unchanged.
    """
    style = _pick(rng, _STYLE_SYNONYMS[attrs.style])
    expr = _pick(rng, _EXPRESSION_SYNONYMS[attrs.expression])
    gender = _pick(rng, _GENDER_SYNONYMS[attrs.gender], 0.7)
    eyewear = _pick(rng, _EYEWEAR_SYNONYMS[attrs.eyewear], 0.6)
    age = _pick(rng, _AGE_SYNONYMS[attrs.age], 0.6)
    if attrs.hair_style == "bald":
        hair = "bald"
    else:
        hair = f"with {attrs.hair_style} {attrs.hair_colour} hair"
    skin = f"with {attrs.skin_tone} skin"
    bg = _pick(rng, _BACKGROUND_PHRASES[attrs.background])

    extras = [e for e in (hair, skin, bg) if rng.random() < 0.5]
    use_age = rng.random() < 0.5 or name_age
    template = int(rng.integers(4))
    noun = f"{age} {gender}" if use_age else gender
    if template == 0:
        text = f"{style} of {_article(expr)} {expr} {noun} {eyewear}"
    elif template == 1:
        text = f"{_article(expr)} {expr} {noun} {eyewear}, {style.split(' ', 1)[1]}"
    elif template == 2:
        text = f"{style} of {_article(noun)} {noun} {eyewear}, {expr}"
    else:
        text = f"{style}: {_article(noun)} {noun}, {expr}, {eyewear}"
    if extras:
        order = rng.permutation(len(extras))
        text = text + ", " + ", ".join(extras[i] for i in order)
    return text


__all__ = ["EXPRESSION_WORDS", "EYEWEAR_PHRASES", "STYLE_PHRASES", "caption", "caption_variants"]
