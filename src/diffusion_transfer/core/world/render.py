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
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

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
# Captions
# --------------------------------------------------------------------------- #
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


def caption_variants(attrs: FaceAttributes, rng: np.random.Generator) -> str:
    """A randomly varied, richer caption for contrastive training.

    Always mentions expression, gender and eyewear (possibly via a synonym);
    optionally age, hair, skin tone and background, in varying order.
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
    use_age = rng.random() < 0.5
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


# --------------------------------------------------------------------------- #
# Colours
# --------------------------------------------------------------------------- #
_SKIN = {
    "pale": (248, 226, 212),
    "light": (234, 190, 156),
    "tan": (198, 145, 100),
    "brown": (140, 92, 60),
    "dark": (82, 53, 37),
}
_HAIR = {
    "black": (26, 22, 22),
    "brown": (106, 62, 30),
    "blond": (234, 198, 110),
    "red": (190, 62, 26),
    "grey": (170, 170, 174),
}
# Sketch: grey levels (pencil shading) for skin and hair.
_SKETCH_SKIN = {"pale": 252, "light": 238, "tan": 218, "brown": 190, "dark": 160}
_SKETCH_HAIR = {"black": 60, "brown": 105, "blond": 220, "red": 140, "grey": 180}

RGB = tuple[int, int, int]


def _clip_rgb(c) -> RGB:
    return tuple(int(min(255, max(0, round(float(x))))) for x in c)  # type: ignore[return-value]


def _mix(a, b, t: float) -> RGB:
    return _clip_rgb([x * (1 - t) + y * t for x, y in zip(a, b)])


def _scale(c, f: float) -> RGB:
    return _clip_rgb([x * f for x in c])


def _hsv(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return _clip_rgb((r * 255, g * 255, b * 255))


def _vivid(c, sat_gain: float, hue_shift: float) -> RGB:
    h, s, v = colorsys.rgb_to_hsv(*(x / 255.0 for x in c))
    return _hsv(h + hue_shift, s * sat_gain, min(1.0, v * 1.05))


# --------------------------------------------------------------------------- #
# Drawing helpers
# --------------------------------------------------------------------------- #
class _Canvas:
    """Draws shapes in face-relative units; optional outline via expanded silhouette."""

    def __init__(self, img: Image.Image, cx: float, cy: float, unit: float,
                 outline: RGB | None, outline_w: float):
        self.img = img
        self.draw = ImageDraw.Draw(img)
        self.cx, self.cy, self.u = cx, cy, unit
        self.outline = outline
        self.ow = outline_w

    def box(self, x: float, y: float, hw: float, hh: float, grow: float = 0.0) -> list[float]:
        u = self.u
        return [self.cx + (x - hw) * u - grow, self.cy + (y - hh) * u - grow,
                self.cx + (x + hw) * u + grow, self.cy + (y + hh) * u + grow]

    def pt(self, x: float, y: float) -> tuple[float, float]:
        return (self.cx + x * self.u, self.cy + y * self.u)

    def w(self, width: float) -> int:
        return max(1, int(round(width * self.u)))

    def shapes(self, items: list[tuple], outline: bool = True) -> None:
        """items: (kind, x, y, hw, hh, fill[, extra]); outlines drawn first as a silhouette."""
        if outline and self.outline is not None:
            for it in items:
                self._one(it, self.outline, self.ow)
        for it in items:
            self._one(it, it[5], 0.0)

    def _one(self, it: tuple, fill: RGB, grow: float) -> None:
        kind, x, y, hw, hh = it[:5]
        b = self.box(x, y, hw, hh, grow)
        d = self.draw
        if kind == "ellipse":
            d.ellipse(b, fill=fill)
        elif kind == "rect":
            d.rectangle(b, fill=fill)
        elif kind == "rrect":
            d.rounded_rectangle(b, radius=it[6] * self.u + grow, fill=fill)
        elif kind == "chord":
            start, end = it[6]
            d.chord(b, start, end, fill=fill)
        else:  # pragma: no cover - internal
            raise ValueError(kind)

    def line(self, pts: list[tuple[float, float]], fill: RGB, width: float) -> None:
        self.draw.line([self.pt(*p) for p in pts], fill=fill, width=self.w(width), joint="curve")

    def arc(self, x, y, hw, hh, start, end, fill: RGB, width: float) -> None:
        self.draw.arc(self.box(x, y, hw, hh), start, end, fill=fill, width=self.w(width))


@lru_cache(maxsize=16)
def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:n, 0:n].astype(np.float32) / max(n - 1, 1)
    return ys, xs


def _bg_colours(style: str, j: dict) -> tuple[RGB, RGB, RGB]:
    """(main colour, second gradient colour, pattern colour) for a style."""
    hue, hue2 = j["bg_hue"], j["bg_hue2"]
    if style == "photo":
        c1 = _hsv(hue, 0.18 + 0.2 * j["bg_s"], 0.62 + 0.25 * j["bg_v"])
        c2 = _hsv(hue2, 0.25 + 0.25 * j["bg_s"], 0.25 + 0.15 * j["bg_v"])
    elif style == "portrait":
        h = 0.04 + 0.12 * hue  # browns / olives
        c1 = _hsv(h, 0.45 + 0.3 * j["bg_s"], 0.08 + 0.08 * j["bg_v"])
        c2 = _hsv(h + 0.02, 0.55, 0.36 + 0.10 * j["bg_v"])
    elif style == "artwork":
        c1 = _hsv(hue, 0.65 + 0.35 * j["bg_s"], 0.85 + 0.15 * j["bg_v"])
        c2 = _hsv(hue2, 0.8, 0.30 + 0.15 * j["bg_v"])
    else:  # sketch: paper
        return (248, 248, 248), (150, 150, 150), (195, 195, 195)
    return c1, c2, _mix(c1, c2, 0.45)


@lru_cache(maxsize=256)
def _gradient_mask(n: int, diagonal: bool, flip: bool) -> Image.Image:
    ys, xs = _grid(n)
    t = 0.5 * (xs + ys) if diagonal else xs
    if flip:
        t = 1.0 - t
    return Image.fromarray(np.rint(t * 255).astype(np.uint8), "L")


@lru_cache(maxsize=256)
def _pattern_mask(n: int, kind: int, period_q: int) -> Image.Image:
    """Stripes (vertical, horizontal, diagonal) or checks; period ~4-6 px at output size."""
    ys, xs = _grid(n)
    period = 0.13 + 0.06 * period_q / 7.0
    if kind == 3:
        mask = (np.floor(xs / period) + np.floor(ys / period)) % 2
    else:
        v = (xs, ys, (xs + ys) * 0.7071)[kind]
        mask = np.floor(v / (period * 0.5)) % 2
    return Image.fromarray((mask * 255).astype(np.uint8), "L")


def _background_image(kind: str, style: str, n: int, j: dict) -> Image.Image:
    """Background at supersampled resolution as an RGB PIL image."""
    c1, c2, c_alt = _bg_colours(style, j)
    base = Image.new("RGB", (n, n), c1)
    if kind == "plain":
        return base
    if kind == "gradient":
        mask = _gradient_mask(n, j["grad_dir"] >= 0.5, j["grad_flip"] < 0.5)
        return Image.composite(Image.new("RGB", (n, n), c2), base, mask)
    mask = _pattern_mask(n, min(int(j["pat_kind"] * 4), 3), min(int(j["pat_period"] * 8), 7))
    return Image.composite(Image.new("RGB", (n, n), c_alt), base, mask)


def _jitter(rng: np.random.Generator) -> dict:
    """All per-image random scalars, drawn in a fixed order (attribute independent)."""
    names = (
        "dx", "dy", "scale", "skin_n0", "skin_n1", "skin_n2", "hair_n0", "hair_n1", "hair_n2",
        "bg_hue", "bg_hue2", "bg_s", "bg_v", "grad_dir", "grad_flip", "pat_kind", "pat_period",
        "cloth_h", "cloth_v", "light_dir", "hue_shift", "outline_kind", "iris_h", "mouth_w",
        "eye_y", "tilt",
    )
    vals = rng.random(len(names))
    return dict(zip(names, (float(v) for v in vals)))


# --------------------------------------------------------------------------- #
# Face drawing
# --------------------------------------------------------------------------- #
def _palette(attrs: FaceAttributes, j: dict) -> dict:
    style = attrs.style
    noise = lambda k: (j[f"{k}_n0"] - 0.5, j[f"{k}_n1"] - 0.5, j[f"{k}_n2"] - 0.5)  # noqa: E731
    skin = _clip_rgb([c + 16 * n for c, n in zip(_SKIN[attrs.skin_tone], noise("skin"))])
    hair = _clip_rgb([c + 16 * n for c, n in zip(_HAIR[attrs.hair_colour], noise("hair"))])
    if attrs.age == "old" and attrs.hair_colour != "grey":
        hair = _mix(hair, (205, 205, 205), 0.3)
    cloth = _hsv(j["cloth_h"], 0.45, 0.3 + 0.4 * j["cloth_v"])
    iris = (45, 32, 25)
    skin_lum = 0.299 * skin[0] + 0.587 * skin[1] + 0.114 * skin[2]
    if attrs.gender == "woman":
        lips = (196, 48, 64)
    else:  # dark enough on light skin, light enough on dark skin
        lips = (112, 34, 34) if skin_lum > 115 else (178, 96, 92)
    mouth_in = (95, 18, 28)
    teeth = (250, 250, 245)
    frame = (22, 22, 28)
    lens = (14, 14, 20)
    eye_white = (246, 246, 244)
    outline = None
    ow = 0.0
    if style == "artwork":
        hs = (j["hue_shift"] - 0.5) * 0.06
        skin = _vivid(skin, 1.25, hs * 0.3)
        hair = _vivid(hair, 1.5, hs)
        cloth = _hsv(j["cloth_h"], 0.85, 0.8)
        iris = _hsv(j["iris_h"], 0.8, 0.6)
        lips = (230, 30, 80) if attrs.gender == "woman" else _mix(_scale(skin, 0.5), (150, 20, 40), 0.4)
        k = int(j["outline_kind"] * 3)
        outline = ((10, 10, 10), (20, 12, 60), (50, 10, 40))[k]
        ow = 0.022
    elif style == "sketch":
        g = _SKETCH_SKIN[attrs.skin_tone]
        skin = (g, g, g)
        h = _SKETCH_HAIR[attrs.hair_colour]
        if attrs.age == "old" and attrs.hair_colour != "grey":
            h = int(h * 0.7 + 210 * 0.3)
        hair = (h, h, h)
        cloth = (250, 250, 250)
        iris = (40, 40, 40)
        lips = (110, 110, 110) if attrs.gender == "woman" else (70, 70, 70)
        mouth_in = (60, 60, 60)
        frame = (30, 30, 30)
        lens = (45, 45, 45)
        eye_white = (252, 252, 252)
        outline = (55, 55, 55)
        ow = 0.018
    return dict(skin=skin, hair=hair, cloth=cloth, iris=iris, lips=lips, mouth_in=mouth_in,
                teeth=teeth, frame=frame, lens=lens, eye_white=eye_white, outline=outline, ow=ow)


def _draw_face(img: Image.Image, attrs: FaceAttributes, j: dict, S: int) -> None:
    pal = _palette(attrs, j)
    sc = 0.94 + 0.12 * j["scale"]
    cx = S * (0.5 + (j["dx"] - 0.5) * 0.09)
    cy = S * (0.52 + (j["dy"] - 0.5) * 0.07)
    cv = _Canvas(img, cx, cy, S * sc, pal["outline"], pal["ow"] * S)
    skin, hair = pal["skin"], pal["hair"]
    man = attrs.gender == "man"
    old = attrs.age == "old"
    sketch = attrs.style == "sketch"
    line_col = pal["outline"] or _scale(skin, 0.62)
    dark_line = (40, 30, 30) if not sketch else (45, 45, 45)

    face_hw = 0.25 if man else 0.232
    face_hh = 0.31

    # shoulders and neck
    cv.shapes([("ellipse", 0.0, 0.58, 0.44, 0.22, pal["cloth"])])
    cv.shapes([("rect", 0.0, 0.33, 0.085, 0.13, _scale(skin, 0.86))])

    # hair behind the head
    if attrs.hair_style == "long":
        cv.shapes([
            ("ellipse", 0.0, -0.17, 0.315, 0.20, hair),
            ("rrect", 0.0, 0.08, 0.315, 0.34, hair, 0.12),
        ])
    elif attrs.hair_style == "short":
        if man:
            cv.shapes([("ellipse", 0.0, -0.11, 0.272, 0.255, hair)])
        else:  # bob to the jaw
            cv.shapes([
                ("ellipse", 0.0, -0.15, 0.30, 0.22, hair),
                ("rrect", 0.0, -0.02, 0.30, 0.15, hair, 0.08),
            ])

    # ears (visible when bald or with a short male cut)
    if attrs.hair_style == "bald" or (attrs.hair_style == "short" and man):
        cv.shapes([("ellipse", s * face_hw, -0.02, 0.045, 0.07, _scale(skin, 0.93)) for s in (-1, 1)])

    # face oval (+ square jaw for men)
    face_items: list[tuple] = [("ellipse", 0.0, 0.0, face_hw, face_hh, skin)]
    if man:
        face_items.append(("rrect", 0.0, 0.145, face_hw * 0.93, 0.155, skin, 0.09))
    cv.shapes(face_items)

    # photo shading: a soft darker side of the face
    if attrs.style in ("photo", "portrait"):
        side = -1 if j["light_dir"] < 0.5 else 1
        cv.shapes([("chord", side * 0.02, 0.0, face_hw, face_hh, _scale(skin, 0.9),
                    ((-80, 80) if side > 0 else (100, 260)))], outline=False)

    # beard shadow / blush
    if man:
        shade = _mix(skin, hair, 0.28) if not sketch else _scale(skin, 0.86)
        cv.shapes([("chord", 0.0, 0.13, 0.215, 0.185, shade, (0, 180))], outline=False)
    elif not sketch:
        blush = _mix(skin, (232, 110, 120), 0.3)
        cv.shapes([("ellipse", s * 0.145, 0.075, 0.05, 0.03, blush) for s in (-1, 1)], outline=False)

    # fringe on the forehead
    if attrs.hair_style != "bald":
        hh = 0.17 if man else 0.19
        cv.shapes([("chord", 0.0, -0.195, face_hw + 0.02, hh, hair, (180, 360))])
    else:
        # shine on a bald head
        if not sketch:
            cv.shapes([("ellipse", -0.06, -0.23, 0.07, 0.035, _mix(skin, (255, 255, 255), 0.35))],
                      outline=False)

    # wrinkles for old faces
    if old:
        wcol = _scale(skin, 0.66) if not sketch else (110, 110, 110)
        for s in (-1, 1):
            cv.line([(s * 0.075, 0.06), (s * 0.125, 0.19)], wcol, 0.022)  # nasolabial
            cv.arc(s * 0.11, 0.0, 0.05, 0.03, 20, 160, wcol, 0.016)  # eye bags
        if attrs.hair_style == "bald":
            for yy in (-0.2, -0.16):
                cv.line([(-0.1, yy), (0.1, yy)], wcol, 0.016)

    ey = -0.04 + (j["eye_y"] - 0.5) * 0.02
    # eyebrows
    brow = _scale(hair, 0.55) if attrs.hair_style != "bald" else _scale(skin, 0.45)
    if old:
        brow = _mix(brow, (200, 200, 200), 0.4)
    if sketch:
        brow = (60, 60, 60)
    for s in (-1, 1):
        if man:
            cv.line([(s * 0.045, ey - 0.075), (s * 0.175, ey - 0.08)], brow, 0.036)
        else:
            cv.arc(s * 0.11, ey - 0.055, 0.065, 0.035, 200, 340, brow, 0.022)

    # eyes
    for s in (-1, 1):
        if attrs.eyewear != "sunglasses":
            cv.shapes([("ellipse", s * 0.11, ey, 0.058, 0.036, pal["eye_white"])])
            cv.shapes([("ellipse", s * 0.11, ey, 0.03, 0.03, pal["iris"])], outline=False)
            if not man:  # eyelashes
                cv.line([(s * 0.16, ey - 0.02), (s * 0.19, ey - 0.05)], dark_line, 0.018)

    # nose
    cv.line([(0.0, ey + 0.04), (0.018, ey + 0.12), (-0.01, ey + 0.125)], line_col, 0.02)

    # mouth
    my = 0.165
    mw = 0.105 + 0.01 * j["mouth_w"]
    lw = 0.04 if man else 0.046
    lips = pal["lips"]
    if attrs.expression == "neutral":
        cv.line([(-mw, my), (mw, my)], lips, lw)
    elif attrs.expression == "smile":
        cv.arc(0.0, my - 0.07, mw, 0.1, 10, 170, lips, lw)
    elif attrs.expression == "sad":
        cv.arc(0.0, my + 0.075, mw, 0.07, 200, 340, lips, lw)
    else:  # grin: open mouth with a white band of teeth
        cv.shapes([("chord", 0.0, my - 0.03, mw * 1.18, 0.105, pal["mouth_in"], (0, 180))])
        cv.shapes([("rect", 0.0, my - 0.012, mw * 1.0, 0.02, pal["teeth"])], outline=False)
        cv.arc(0.0, my - 0.03, mw * 1.18, 0.105, 0, 180, lips, 0.02)
        cv.line([(-mw * 1.18, my - 0.03), (mw * 1.18, my - 0.03)], lips, 0.02)

    # eyewear
    if attrs.eyewear == "glasses":
        fw = 0.03
        for s in (-1, 1):
            cv.draw.rounded_rectangle(cv.box(s * 0.11, ey, 0.088, 0.07), radius=0.03 * cv.u,
                                      outline=pal["frame"], width=cv.w(fw))
            cv.line([(s * 0.198, ey - 0.03), (s * (face_hw + 0.01), ey - 0.045)], pal["frame"], 0.025)
        cv.line([(-0.022, ey - 0.02), (0.022, ey - 0.02)], pal["frame"], fw)
    elif attrs.eyewear == "sunglasses":
        for s in (-1, 1):
            cv.draw.rounded_rectangle(cv.box(s * 0.112, ey + 0.005, 0.098, 0.078),
                                      radius=0.045 * cv.u, fill=pal["lens"],
                                      outline=pal["frame"], width=cv.w(0.015))
            if attrs.style in ("photo", "artwork"):
                cv.line([(s * 0.112 - 0.06, ey - 0.03), (s * 0.112 - 0.025, ey - 0.05)],
                        (90, 90, 105), 0.018)
            cv.line([(s * 0.205, ey - 0.03), (s * (face_hw + 0.01), ey - 0.045)], pal["frame"], 0.03)
        cv.line([(-0.03, ey - 0.02), (0.03, ey - 0.02)], pal["frame"], 0.035)


def _stylize(x: np.ndarray, style: str, rng: np.random.Generator, j: dict) -> np.ndarray:
    """Post-process a float (n, n, 3) image at output size."""
    n = x.shape[0]
    ys, xs = _grid(n)
    if style == "photo":
        d = 1.0 if j["light_dir"] < 0.5 else -1.0
        light = 1.0 + 0.10 * d * (xs - 0.5) - 0.06 * ((xs - 0.5) ** 2 + (ys - 0.5) ** 2)
        x = x * light[..., None] + rng.normal(0.0, 2.0, size=(n, n, 1)).astype(np.float32)
    elif style == "portrait":
        lum = x @ np.array([0.299, 0.587, 0.114], np.float32)
        sepia = lum[..., None] * np.array([1.08, 0.90, 0.62], np.float32)
        x = 0.6 * x + 0.4 * sepia
        x = x * np.array([1.0, 0.95, 0.80], np.float32) + np.array([10, 6, 0], np.float32)
        vign = 1.18 - 1.0 * ((xs - 0.5) ** 2 + (ys - 0.45) ** 2)  # spotlight on the sitter
        weave = 5.0 * np.cos(np.pi * np.arange(n))[None, :] * np.cos(np.pi * np.arange(n))[:, None]
        grain = rng.normal(0.0, 4.0, size=(n, n, 1)).astype(np.float32)
        x = x * vign[..., None] + weave[..., None].astype(np.float32) + grain
    elif style == "artwork":
        lum = (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
        x = lum + 1.15 * (x - lum)
    else:  # sketch: grey pencil on paper
        lum = x @ np.array([0.299, 0.587, 0.114], np.float32)
        lum = 255.0 - (255.0 - lum) * 1.05
        lum = lum + rng.normal(0.0, 4.0, size=(n, n)).astype(np.float32)
        x = np.repeat(lum[..., None], 3, axis=2)
    return x


def _finish(img: Image.Image, size: int, style: str, rng: np.random.Generator, j: dict) -> np.ndarray:
    S = img.size[0]
    if style == "photo":
        img = img.filter(ImageFilter.BoxBlur(S / 96))
    elif style == "portrait":
        img = img.filter(ImageFilter.BoxBlur(S / 128))
    small = img.resize((size, size), Image.LANCZOS)
    x = np.asarray(small, dtype=np.float32)
    x = _stylize(x, style, rng, j)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def render_face(attrs: FaceAttributes, size: int = 32, seed: int = 0) -> np.ndarray:
    """Render one face as uint8 ``(size, size, 3)``; deterministic in ``(attrs, size, seed)``."""
    if not isinstance(attrs, FaceAttributes):
        attrs = FaceAttributes.from_dict(attrs)  # type: ignore[arg-type]
    if size < 8:
        raise ValueError(f"size must be >= 8, got {size}")
    rng = np.random.default_rng(seed)
    j = _jitter(rng)
    S = size * SUPERSAMPLE
    img = _background_image(attrs.background, attrs.style, S, j)
    _draw_face(img, attrs, j, S)
    return _finish(img, size, attrs.style, rng, j)


# --------------------------------------------------------------------------- #
# Negatives
# --------------------------------------------------------------------------- #
NON_FACE_KINDS = ("blobs", "stripes", "noise", "scrambled", "parts")


def render_non_face(rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A "not a face" image (blobs, stripes, smooth noise, scrambled faces, loose parts)."""
    kind = NON_FACE_KINDS[int(rng.integers(len(NON_FACE_KINDS)))]
    style = STYLES[int(rng.integers(len(STYLES)))]
    S = size * SUPERSAMPLE
    j = _jitter(rng)
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
        img = _background_image(bgk, style, S, j)
        d = ImageDraw.Draw(img)
        if kind == "blobs":
            for _ in range(int(rng.integers(3, 9))):
                x0, y0 = rng.random(2) * S
                w, h = (0.1 + 0.4 * rng.random(2)) * S
                col = _hsv(rng.random(), rng.random(), 0.2 + 0.8 * rng.random())
                if rng.random() < 0.5:
                    d.ellipse([x0 - w / 2, y0 - h / 2, x0 + w / 2, y0 + h / 2], fill=col)
                else:
                    d.rectangle([x0 - w / 2, y0 - h / 2, x0 + w / 2, y0 + h / 2], fill=col)
        elif kind == "stripes":
            ang = rng.random() * math.pi
            period = (0.08 + 0.25 * rng.random()) * S
            cols = [_hsv(rng.random(), rng.random(), 0.2 + 0.8 * rng.random()) for _ in range(2)]
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
                    col = _SKIN[ATTRIBUTES["skin_tone"][int(rng.integers(5))]]
                    d.ellipse([x0 - 2 * r, y0 - 2.6 * r, x0 + 2 * r, y0 + 2.6 * r], fill=col)
    return _finish(img, size, style, rng, j)


__all__ = [
    "ATTRIBUTES",
    "STYLES",
    "FaceAttributes",
    "sample_attributes",
    "validate_probs",
    "render_face",
    "render_non_face",
    "caption",
    "caption_variants",
]
