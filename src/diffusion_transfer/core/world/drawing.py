"""FaceWorld drawing: the face-relative canvas, backgrounds, the per-image
random scalars, the face itself and the style finish (drawn supersampled, then
Lanczos-downsampled).  :mod:`.render` puts them together."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from diffusion_transfer.core.world.colours import RGB, face_palette, hsv_rgb, mix_rgb, scale_rgb

if TYPE_CHECKING:
    from diffusion_transfer.core.world.render import FaceAttributes


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
        c1 = hsv_rgb(hue, 0.18 + 0.2 * j["bg_s"], 0.62 + 0.25 * j["bg_v"])
        c2 = hsv_rgb(hue2, 0.25 + 0.25 * j["bg_s"], 0.25 + 0.15 * j["bg_v"])
    elif style == "portrait":
        h = 0.04 + 0.12 * hue  # browns / olives
        c1 = hsv_rgb(h, 0.45 + 0.3 * j["bg_s"], 0.08 + 0.08 * j["bg_v"])
        c2 = hsv_rgb(h + 0.02, 0.55, 0.36 + 0.10 * j["bg_v"])
    elif style == "artwork":
        c1 = hsv_rgb(hue, 0.65 + 0.35 * j["bg_s"], 0.85 + 0.15 * j["bg_v"])
        c2 = hsv_rgb(hue2, 0.8, 0.30 + 0.15 * j["bg_v"])
    else:  # sketch: paper
        return (248, 248, 248), (150, 150, 150), (195, 195, 195)
    return c1, c2, mix_rgb(c1, c2, 0.45)


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


def background_image(kind: str, style: str, n: int, j: dict) -> Image.Image:
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


def draw_jitter(rng: np.random.Generator) -> dict:
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
def draw_face(img: Image.Image, attrs: FaceAttributes, j: dict, S: int) -> None:
    pal = face_palette(attrs, j)
    sc = 0.94 + 0.12 * j["scale"]
    cx = S * (0.5 + (j["dx"] - 0.5) * 0.09)
    cy = S * (0.52 + (j["dy"] - 0.5) * 0.07)
    cv = _Canvas(img, cx, cy, S * sc, pal["outline"], pal["ow"] * S)
    skin, hair = pal["skin"], pal["hair"]
    man = attrs.gender == "man"
    old = attrs.age == "old"
    sketch = attrs.style == "sketch"
    line_col = pal["outline"] or scale_rgb(skin, 0.62)
    dark_line = (40, 30, 30) if not sketch else (45, 45, 45)

    face_hw = 0.25 if man else 0.232
    face_hh = 0.31

    # shoulders and neck
    cv.shapes([("ellipse", 0.0, 0.58, 0.44, 0.22, pal["cloth"])])
    cv.shapes([("rect", 0.0, 0.33, 0.085, 0.13, scale_rgb(skin, 0.86))])

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
        cv.shapes([("ellipse", s * face_hw, -0.02, 0.045, 0.07, scale_rgb(skin, 0.93)) for s in (-1, 1)])

    # face oval (+ square jaw for men)
    face_items: list[tuple] = [("ellipse", 0.0, 0.0, face_hw, face_hh, skin)]
    if man:
        face_items.append(("rrect", 0.0, 0.145, face_hw * 0.93, 0.155, skin, 0.09))
    cv.shapes(face_items)

    # photo shading: a soft darker side of the face
    if attrs.style in ("photo", "portrait"):
        side = -1 if j["light_dir"] < 0.5 else 1
        cv.shapes([("chord", side * 0.02, 0.0, face_hw, face_hh, scale_rgb(skin, 0.9),
                    ((-80, 80) if side > 0 else (100, 260)))], outline=False)

    # beard shadow / blush
    if man:
        shade = mix_rgb(skin, hair, 0.28) if not sketch else scale_rgb(skin, 0.86)
        cv.shapes([("chord", 0.0, 0.13, 0.215, 0.185, shade, (0, 180))], outline=False)
    elif not sketch:
        blush = mix_rgb(skin, (232, 110, 120), 0.3)
        cv.shapes([("ellipse", s * 0.145, 0.075, 0.05, 0.03, blush) for s in (-1, 1)], outline=False)

    # fringe on the forehead
    if attrs.hair_style != "bald":
        hh = 0.17 if man else 0.19
        cv.shapes([("chord", 0.0, -0.195, face_hw + 0.02, hh, hair, (180, 360))])
    else:
        # shine on a bald head
        if not sketch:
            cv.shapes([("ellipse", -0.06, -0.23, 0.07, 0.035, mix_rgb(skin, (255, 255, 255), 0.35))],
                      outline=False)

    # wrinkles for old faces
    if old:
        wcol = scale_rgb(skin, 0.66) if not sketch else (110, 110, 110)
        for s in (-1, 1):
            cv.line([(s * 0.075, 0.06), (s * 0.125, 0.19)], wcol, 0.022)  # nasolabial
            cv.arc(s * 0.11, 0.0, 0.05, 0.03, 20, 160, wcol, 0.016)  # eye bags
        if attrs.hair_style == "bald":
            for yy in (-0.2, -0.16):
                cv.line([(-0.1, yy), (0.1, yy)], wcol, 0.016)

    ey = -0.04 + (j["eye_y"] - 0.5) * 0.02
    # eyebrows
    brow = scale_rgb(hair, 0.55) if attrs.hair_style != "bald" else scale_rgb(skin, 0.45)
    if old:
        brow = mix_rgb(brow, (200, 200, 200), 0.4)
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


def finish_image(img: Image.Image, size: int, style: str, rng: np.random.Generator, j: dict) -> np.ndarray:
    S = img.size[0]
    if style == "photo":
        img = img.filter(ImageFilter.BoxBlur(S / 96))
    elif style == "portrait":
        img = img.filter(ImageFilter.BoxBlur(S / 128))
    small = img.resize((size, size), Image.LANCZOS)
    x = np.asarray(small, dtype=np.float32)
    x = _stylize(x, style, rng, j)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


