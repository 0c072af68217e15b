"""Contact sheets (pure PIL): a labelled grid of images, and the two-panel
kept / dropped sheet of a curation."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_PAD = 3
_BG = (255, 255, 255)
_FG = (20, 20, 20)
_PANEL_GAP = 10


@lru_cache(maxsize=1)
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=10)  # Pillow >= 10.1 with FreeType
    except (TypeError, OSError, ImportError):  # pragma: no cover - older Pillow
        return ImageFont.load_default()


def _text_size(text: str) -> tuple[int, int]:
    left, top, right, bottom = _font().getbbox(text or " ")
    return int(math.ceil(right - min(left, 0))), int(math.ceil(bottom - min(top, 0)))


@lru_cache(maxsize=1)
def _line_height() -> int:
    return _text_size("Ag|")[1] + 2


def _fit(text: str, width: int) -> str:
    if _text_size(text)[0] <= width:
        return text
    while text and _text_size(text + "..")[0] > width:
        text = text[:-1]
    return text + ".." if text else ""


def _auto_scale(height: int) -> int:
    return max(1, 64 // max(1, height))


def contact_sheet(
    images_uint8: np.ndarray,
    labels: Sequence[str] | None = None,
    columns: int = 16,
    scale: int | None = 2,
    title: str | None = None,
) -> Image.Image:
    """A grid of images, each upscaled ``scale`` times with NEAREST.

    ``labels`` (one per image; ``"\\n"`` for several lines) are drawn under
    each image, truncated to its width. ``scale=None`` picks one so that
    cells are at least 64 px. An empty array gives a sheet saying "(none)".
    """
    images = np.asarray(images_uint8)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        if not (images.size == 0 and images.ndim >= 1):
            raise ValueError(f"contact_sheet expects uint8 images (N, H, W, 3), got {images.dtype} {images.shape}")
    if isinstance(columns, bool) or not isinstance(columns, (int, np.integer)) or columns < 1:
        raise ValueError(f"columns must be a positive integer, got {columns!r}")
    n = len(images)
    if labels is not None and len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} images")
    h, w = (int(images.shape[1]), int(images.shape[2])) if images.ndim == 4 else (32, 32)
    if scale is None:
        scale = _auto_scale(h)
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    cw, ch = w * scale, h * scale
    line_h = _line_height()
    label_lines = max((len(str(lab).split("\n")) for lab in labels), default=0) if labels is not None else 0
    label_h = label_lines * line_h + (2 if label_lines else 0)
    title_h = line_h + 2 * _PAD if title else 0

    cols = min(int(columns), max(n, 1))
    rows = math.ceil(n / cols) if n else 1
    width = max(_PAD + cols * (cw + _PAD), (_text_size(title)[0] + 2 * _PAD) if title else 0)
    height = title_h + _PAD + rows * (ch + label_h + _PAD)
    sheet = Image.new("RGB", (width, height), _BG)
    draw = ImageDraw.Draw(sheet)
    font = _font()
    if title:
        draw.text((_PAD, _PAD), title, fill=_FG, font=font)
    if n == 0:
        draw.text((_PAD, title_h + _PAD), "(none)", fill=_FG, font=font)
        return sheet
    for k in range(n):
        r, c = divmod(k, cols)
        x = _PAD + c * (cw + _PAD)
        y = title_h + _PAD + r * (ch + label_h + _PAD)
        tile = Image.fromarray(np.ascontiguousarray(images[k]))
        if scale != 1:
            tile = tile.resize((cw, ch), Image.Resampling.NEAREST)
        sheet.paste(tile, (x, y))
        if labels is not None:
            for j, line in enumerate(str(labels[k]).split("\n")):
                draw.text((x, y + ch + 1 + j * line_h), _fit(line, cw), fill=_FG, font=font)
    return sheet


def _spread(indices: np.ndarray, k: int, scores: np.ndarray | None, descending: bool) -> np.ndarray:
    """Up to ``k`` of ``indices``, evenly spread over their score order (or index order)."""
    if scores is not None:
        order = np.argsort(scores[indices], kind="stable")
        indices = indices[order[::-1]] if descending else indices[order]
    if len(indices) <= k:
        return indices
    picks = np.unique(np.linspace(0, len(indices) - 1, k).round().astype(np.int64))
    return indices[picks]


def curation_contact_sheet(
    images: np.ndarray,
    kept_idx: Sequence[int],
    dropped_idx: Sequence[int],
    max_each: int = 64,
    *,
    names: Sequence[str] | None = None,
    scores: Any = None,
    tags: Mapping[int, str] | None = None,
    labels: Sequence[str] | None = None,
    columns: int = 16,
    scale: int | None = None,
    title: str | None = None,
) -> Image.Image:
    """Two labelled panels, kept above dropped, of at most ``max_each`` images each.

    With more images than ``max_each``, an even spread over the score order
    (highest first) is shown, so both extremes and the borderline appear.
    Each image is labelled with its name and score when given, plus
    ``tags[i]`` (e.g. "excluded") for the images in ``tags``. ``labels`` (one
    per image in ``images``) replaces the name/score lines when given.
    """
    images = np.asarray(images)
    if isinstance(max_each, bool) or not isinstance(max_each, (int, np.integer)) or max_each < 1:
        raise ValueError(f"max_each must be a positive integer, got {max_each!r}")
    kept = np.asarray(kept_idx, dtype=np.int64).reshape(-1)
    dropped = np.asarray(dropped_idx, dtype=np.int64).reshape(-1)
    for what, idx in (("kept_idx", kept), ("dropped_idx", dropped)):
        if len(idx) and (idx.min() < 0 or idx.max() >= len(images)):
            raise ValueError(f"{what} out of range for {len(images)} images")
    sc = None if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)
    if sc is not None and len(sc) != len(images):
        raise ValueError(f"{len(sc)} scores for {len(images)} images")
    if names is not None and len(names) != len(images):
        raise ValueError(f"{len(names)} names for {len(images)} images")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"{len(labels)} labels for {len(images)} images")

    def label(i: int) -> str:
        parts = []
        if labels is not None:
            parts.append(str(labels[i]))
        elif names is not None:
            parts.append(str(names[i]))
        if sc is not None and labels is None:
            parts.append(f"{sc[i]:.3f}")
        if tags:
            parts.append(str(tags.get(i, "")))
        return "\n".join(parts)

    panels = []
    for what, idx in (("kept", kept), ("dropped", dropped)):
        shown = _spread(idx, int(max_each), sc, descending=True)
        caption = f"{what}: {len(idx)}" + (f" (showing {len(shown)})" if len(shown) < len(idx) else "")
        with_labels = names is not None or sc is not None or bool(tags) or labels is not None
        cell_labels = [label(int(i)) for i in shown] if with_labels else None
        panels.append(
            contact_sheet(images[shown] if len(shown) else images[:0], cell_labels, columns=columns,
                          scale=scale, title=caption)
        )
    title_h = (_line_height() + 2 * _PAD) if title else 0
    width = max(max(p.width for p in panels), (_text_size(title)[0] + 2 * _PAD) if title else 0)
    height = title_h + sum(p.height for p in panels) + _PANEL_GAP
    sheet = Image.new("RGB", (width, height), _BG)
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((_PAD, _PAD), title, fill=_FG, font=_font())
    y = title_h
    sheet.paste(panels[0], (0, y))
    y += panels[0].height
    draw.line([(0, y + _PANEL_GAP // 2), (width, y + _PANEL_GAP // 2)], fill=(160, 160, 160), width=1)
    sheet.paste(panels[1], (0, y + _PANEL_GAP))
    return sheet


__all__ = ["contact_sheet", "curation_contact_sheet"]


def labelled_rows(rows: list[tuple[str, np.ndarray]], scale: int = 2) -> Image.Image:
    """One row per label: the label, then the row's images (uint8 ``(n, H, W, 3)``)
    side by side, each enlarged ``scale`` times (nearest neighbour)."""
    n = max(r.shape[0] for _, r in rows)
    h, w = rows[0][1].shape[1] * scale, rows[0][1].shape[2] * scale
    label_w = 8 + 6 * max(len(label) for label, _ in rows)
    sheet = Image.new("RGB", (label_w + n * (w + 2), len(rows) * (h + 2)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (label, images) in enumerate(rows):
        y = r * (h + 2)
        draw.text((4, y + h // 2 - 5), label, fill="black")
        for i, img in enumerate(images):
            sheet.paste(Image.fromarray(img).resize((w, h), Image.NEAREST), (label_w + i * (w + 2), y))
    return sheet
