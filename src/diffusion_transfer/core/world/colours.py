"""FaceWorld colours: skin and hair palettes, RGB helpers and the per-face
palette of each style (used by :mod:`.drawing`)."""

from __future__ import annotations

import colorsys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from diffusion_transfer.core.world.render import FaceAttributes

SKIN = {
    "pale": (248, 226, 212),
    "light": (234, 190, 156),
    "tan": (198, 145, 100),
    "brown": (140, 92, 60),
    "dark": (82, 53, 37),
}
HAIR = {
    "black": (26, 22, 22),
    "brown": (106, 62, 30),
    "blond": (234, 198, 110),
    "red": (190, 62, 26),
    "grey": (170, 170, 174),
}
# Sketch: grey levels (pencil shading) for skin and hair.
SKETCH_SKIN = {"pale": 252, "light": 238, "tan": 218, "brown": 190, "dark": 160}
SKETCH_HAIR = {"black": 60, "brown": 105, "blond": 220, "red": 140, "grey": 180}

RGB = tuple[int, int, int]


def clip_rgb(c) -> RGB:
    return tuple(int(min(255, max(0, round(float(x))))) for x in c)  # type: ignore[return-value]


def mix_rgb(a, b, t: float) -> RGB:
    return clip_rgb([x * (1 - t) + y * t for x, y in zip(a, b)])


def scale_rgb(c, f: float) -> RGB:
    return clip_rgb([x * f for x in c])


def hsv_rgb(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return clip_rgb((r * 255, g * 255, b * 255))


def vivid_rgb(c, sat_gain: float, hue_shift: float) -> RGB:
    h, s, v = colorsys.rgb_to_hsv(*(x / 255.0 for x in c))
    return hsv_rgb(h + hue_shift, s * sat_gain, min(1.0, v * 1.05))

def face_palette(attrs: FaceAttributes, j: dict) -> dict:
    style = attrs.style
    noise = lambda k: (j[f"{k}_n0"] - 0.5, j[f"{k}_n1"] - 0.5, j[f"{k}_n2"] - 0.5)  # noqa: E731
    skin = clip_rgb([c + 16 * n for c, n in zip(SKIN[attrs.skin_tone], noise("skin"))])
    hair = clip_rgb([c + 16 * n for c, n in zip(HAIR[attrs.hair_colour], noise("hair"))])
    if attrs.age == "old" and attrs.hair_colour != "grey":
        hair = mix_rgb(hair, (205, 205, 205), 0.3)
    cloth = hsv_rgb(j["cloth_h"], 0.45, 0.3 + 0.4 * j["cloth_v"])
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
        skin = vivid_rgb(skin, 1.25, hs * 0.3)
        hair = vivid_rgb(hair, 1.5, hs)
        cloth = hsv_rgb(j["cloth_h"], 0.85, 0.8)
        iris = hsv_rgb(j["iris_h"], 0.8, 0.6)
        lips = (230, 30, 80) if attrs.gender == "woman" else mix_rgb(scale_rgb(skin, 0.5), (150, 20, 40), 0.4)
        k = int(j["outline_kind"] * 3)
        outline = ((10, 10, 10), (20, 12, 60), (50, 10, 40))[k]
        ow = 0.022
    elif style == "sketch":
        g = SKETCH_SKIN[attrs.skin_tone]
        skin = (g, g, g)
        h = SKETCH_HAIR[attrs.hair_colour]
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
