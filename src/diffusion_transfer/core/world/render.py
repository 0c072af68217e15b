"""FaceWorld renderer: procedural, labelled, face-like images (numpy + PIL only).

Every image is drawn at ``SUPERSAMPLE`` times the requested size with
``PIL.ImageDraw`` and downsampled with Lanczos, so that thin features (glasses
frames, mouth lines) survive at 32x32 as antialiased strokes.  Everything is
deterministic from the ``seed`` given to :func:`render_face`; all random draws
happen in a fixed order that does not depend on the attributes, so two renders
with the same seed and different attributes differ only where the attributes
are drawn (the tests rely on this).

Styles: ``photo`` (FFHQ stand-in), ``portrait`` (MetFaces stand-in),
``artwork`` (AAHQ stand-in) and ``sketch`` (a few-shot style).

The drawing itself lives in :mod:`.drawing` and :mod:`.colours`; captions in
:mod:`.captions`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

import numpy as np
from PIL import Image, ImageDraw

from diffusion_transfer.core.world.colours import SKIN, hsv_rgb
from diffusion_transfer.core.world.drawing import background_image, draw_face, draw_jitter, finish_image

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "skin_tone": ("pale", "light", "tan", "brown", "dark"),
    "hair_colour": ("black", "brown", "blond", "red", "grey"),
    "hair_style": ("short", "long", "bald"),
    "expression": ("neutral", "smile", "grin", "sad"),
    "eyewear": ("none", "glasses", "sunglasses"),
    "gender": ("man", "woman"),
    "age": ("young", "old"),
    "background": ("plain", "gradient", "pattern"),
}

STYLES: tuple[str, ...] = ("photo", "portrait", "artwork", "sketch")

#: Images are drawn at this multiple of the output size, then Lanczos-downsampled.
SUPERSAMPLE = 4

Probs = Mapping[str, Mapping[str, float]]


# --------------------------------------------------------------------------- #
# Attributes
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class FaceAttributes:
    """One face's labels: the eight attributes plus the rendering style."""

    skin_tone: str
    hair_colour: str
    hair_style: str
    expression: str
    eyewear: str
    gender: str
    age: str
    background: str
    style: str = "photo"

    def __post_init__(self) -> None:
        for name, values in ATTRIBUTES.items():
            value = getattr(self, name)
            if value not in values:
                raise ValueError(
                    f"invalid value {value!r} for attribute {name!r}; expected one of {values}"
                )
        if self.style not in STYLES:
            raise ValueError(f"invalid style {self.style!r}; expected one of {STYLES}")

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> FaceAttributes:
        """Build from a mapping; extra keys (e.g. ``file``, ``caption``) are ignored."""
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in data and n != "style"]
        if missing:
            raise ValueError(f"missing attribute(s) {missing} in {dict(data)!r}")
        return cls(**{n: str(data[n]) for n in names if n in data})


def validate_probs(probs: Probs | None) -> dict[str, dict[str, float]]:
    """Check and normalise per-attribute distributions.

    ``probs`` maps an attribute name to ``{value: weight}``.  Values of that
    attribute not listed get probability 0; weights are normalised to sum to 1.
    Raises ``ValueError`` naming the attribute (and value) on any problem.
    """
    if probs is None:
        return {}
    if not isinstance(probs, Mapping):
        raise ValueError(f"probs must be a mapping of attribute -> distribution, got {type(probs)}")
    out: dict[str, dict[str, float]] = {}
    for attr, dist in probs.items():
        if attr not in ATTRIBUTES:
            raise ValueError(
                f"unknown attribute {attr!r} in probs; expected one of {tuple(ATTRIBUTES)}"
            )
        if not isinstance(dist, Mapping):
            raise ValueError(f"probs for attribute {attr!r} must be a mapping value -> weight")
        weights: dict[str, float] = {v: 0.0 for v in ATTRIBUTES[attr]}
        for value, p in dist.items():
            if value not in ATTRIBUTES[attr]:
                raise ValueError(
                    f"unknown value {value!r} for attribute {attr!r}; "
                    f"expected one of {ATTRIBUTES[attr]}"
                )
            try:
                p = float(p)
            except (TypeError, ValueError):
                raise ValueError(f"probability of {attr}={value!r} is not a number: {p!r}") from None
            if not math.isfinite(p) or p < 0:
                raise ValueError(f"probability of {attr}={value!r} must be finite and >= 0, got {p}")
            weights[value] = p
        total = sum(weights.values())
        if total <= 0:
            raise ValueError(f"probabilities for attribute {attr!r} sum to zero")
        out[attr] = {v: w / total for v, w in weights.items()}
    return out


def sample_attributes(
    rng: np.random.Generator, style: str, probs: Probs | None = None
) -> FaceAttributes:
    """Draw one set of attributes: uniform unless ``probs`` gives a distribution.

    Exactly one ``rng.random()`` draw per attribute, in ``ATTRIBUTES`` order, so
    the stream does not depend on ``probs``.  Zero-probability values are never
    returned.
    """
    if style not in STYLES:
        raise ValueError(f"invalid style {style!r}; expected one of {STYLES}")
    dists = validate_probs(probs)
    chosen: dict[str, str] = {}
    for attr, values in ATTRIBUTES.items():
        u = float(rng.random())
        if attr in dists:
            support = [v for v in values if dists[attr][v] > 0]
            cum = np.cumsum([dists[attr][v] for v in support])
            idx = int(np.searchsorted(cum / cum[-1], u, side="right"))
            chosen[attr] = support[min(idx, len(support) - 1)]
        else:
            chosen[attr] = values[min(int(u * len(values)), len(values) - 1)]
    return FaceAttributes(**chosen, style=style)


# --------------------------------------------------------------------------- #
# Rendering
# --------------------------------------------------------------------------- #
def render_face(attrs: FaceAttributes, size: int = 32, seed: int = 0) -> np.ndarray:
    """Render one face as uint8 ``(size, size, 3)``; deterministic in ``(attrs, size, seed)``."""
    if not isinstance(attrs, FaceAttributes):
        attrs = FaceAttributes.from_dict(attrs)  # type: ignore[arg-type]
    if size < 8:
        raise ValueError(f"size must be >= 8, got {size}")
    rng = np.random.default_rng(seed)
    j = draw_jitter(rng)
    S = size * SUPERSAMPLE
    img = background_image(attrs.background, attrs.style, S, j)
    draw_face(img, attrs, j, S)
    return finish_image(img, size, attrs.style, rng, j)


# --------------------------------------------------------------------------- #
# Negatives
# --------------------------------------------------------------------------- #
NON_FACE_KINDS = ("blobs", "stripes", "noise", "scrambled", "parts")


def render_non_face(rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A "not a face" image (blobs, stripes, smooth noise, scrambled faces, loose parts)."""
    kind = NON_FACE_KINDS[int(rng.integers(len(NON_FACE_KINDS)))]
    style = STYLES[int(rng.integers(len(STYLES)))]
    S = size * SUPERSAMPLE
    j = draw_jitter(rng)
    if kind == "scrambled":
        attrs = sample_attributes(rng, style)
        face = render_face(attrs, size, int(rng.integers(2**31)))
        tiles = 4 if size % 4 == 0 else 2
        t = size // tiles
        blocks = [face[r * t:(r + 1) * t, c * t:(c + 1) * t] for r in range(tiles) for c in range(tiles)]
        perm = rng.permutation(len(blocks))
        while np.all(perm == np.arange(len(blocks))):
            perm = rng.permutation(len(blocks))
        out = face.copy()
        for k, p in enumerate(perm):
            r, c = divmod(k, tiles)
            out[r * t:(r + 1) * t, c * t:(c + 1) * t] = np.rot90(blocks[p], int(rng.integers(4)))
        return out
    if kind == "noise":
        k = int(rng.integers(3, 9))
        low = (rng.random((k, k, 3)) * 255).astype(np.uint8)
        img = Image.fromarray(low, "RGB").resize((S, S), Image.BICUBIC)
    else:
        bgk = ATTRIBUTES["background"][int(rng.integers(3))]
        img = background_image(bgk, style, S, j)
        d = ImageDraw.Draw(img)
        if kind == "blobs":
            for _ in range(int(rng.integers(3, 9))):
                x0, y0 = rng.random(2) * S
                w, h = (0.1 + 0.4 * rng.random(2)) * S
                col = hsv_rgb(rng.random(), rng.random(), 0.2 + 0.8 * rng.random())
                if rng.random() < 0.5:
                    d.ellipse([x0 - w / 2, y0 - h / 2, x0 + w / 2, y0 + h / 2], fill=col)
                else:
                    d.rectangle([x0 - w / 2, y0 - h / 2, x0 + w / 2, y0 + h / 2], fill=col)
        elif kind == "stripes":
            ang = rng.random() * math.pi
            period = (0.08 + 0.25 * rng.random()) * S
            cols = [hsv_rgb(rng.random(), rng.random(), 0.2 + 0.8 * rng.random()) for _ in range(2)]
            ys, xs = np.mgrid[0:S, 0:S].astype(np.float32)
            v = xs * math.cos(ang) + ys * math.sin(ang)
            mask = (np.floor(v / period) % 2)[..., None]
            arr = np.array(cols[0], np.float32) * (1 - mask) + np.array(cols[1], np.float32) * mask
            img = Image.fromarray(arr.astype(np.uint8), "RGB")
        else:  # parts: eyes / mouths / lenses scattered, no head
            for _ in range(int(rng.integers(2, 6))):
                x0, y0 = rng.random(2) * S
                r = (0.04 + 0.06 * rng.random()) * S
                part = int(rng.integers(4))
                if part == 0:
                    d.ellipse([x0 - r * 1.5, y0 - r, x0 + r * 1.5, y0 + r], fill=(245, 245, 245))
                    d.ellipse([x0 - r * 0.7, y0 - r * 0.7, x0 + r * 0.7, y0 + r * 0.7], fill=(40, 30, 25))
                elif part == 1:
                    d.line([(x0 - 2 * r, y0), (x0 + 2 * r, y0)], fill=(170, 50, 60), width=max(1, int(r / 2)))
                elif part == 2:
                    d.rounded_rectangle([x0 - 1.8 * r, y0 - 1.4 * r, x0 + 1.8 * r, y0 + 1.4 * r],
                                        radius=r * 0.6, fill=(15, 15, 20))
                else:
                    col = SKIN[ATTRIBUTES["skin_tone"][int(rng.integers(5))]]
                    d.ellipse([x0 - 2 * r, y0 - 2.6 * r, x0 + 2 * r, y0 + 2.6 * r], fill=col)
    return finish_image(img, size, style, rng, j)


__all__ = [
    "ATTRIBUTES",
    "STYLES",
    "FaceAttributes",
    "sample_attributes",
    "validate_probs",
    "render_face",
    "render_non_face",
]
