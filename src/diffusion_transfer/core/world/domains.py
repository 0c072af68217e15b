"""FaceWorld domains: named, seeded image sets rendered to folders or to memory.

A folder written by :func:`render_domain` holds ``00000.png ...``, an
``attributes.jsonl`` (one JSON object a line: ``file``, ``caption``, ``style``
and every attribute) and a ``world.json`` manifest.  It is written to a
temporary sibling folder and renamed into place, so a crash never leaves a
half-written domain.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .captions import caption
from .render import ATTRIBUTES, STYLES, FaceAttributes, render_face, sample_attributes, validate_probs

#: Bump when the renderer's output changes, so cached folders are re-rendered.
WORLD_VERSION = 1

MANIFEST = "world.json"
RECORDS = "attributes.jsonl"


@dataclass(frozen=True)
class DomainSpec:
    """A named FaceWorld domain: a style, a size and attribute distributions.

    ``styles``: a class-labelled mix instead of one style; image ``i`` is
    drawn in ``styles[i % len(styles)]`` (balanced, and every prefix too),
    and ``style`` must be its first. Empty (every single-style domain): only
    ``style``, exactly as before the field existed."""

    name: str
    style: str
    n_images: int
    probs: dict = field(default_factory=dict)
    description: str = ""
    styles: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ValueError(f"domain {self.name!r}: invalid style {self.style!r}")
        if self.styles and (self.styles[0] != self.style or any(s not in STYLES for s in self.styles)):
            raise ValueError(f"domain {self.name!r}: styles must be styles of {STYLES} starting with "
                             f"style {self.style!r}, got {self.styles}")
        if self.n_images < 0:
            raise ValueError(f"domain {self.name!r}: n_images must be >= 0")
        validate_probs(self.probs)


DOMAINS: dict[str, DomainSpec] = {
    spec.name: spec
    for spec in (
        DomainSpec(
            name="faceworld_ffhq",
            style="photo",
            n_images=4000,
            probs={},
            description="Photo-style faces, every attribute uniform (FFHQ stand-in, the source domain).",
        ),
        DomainSpec(
            name="faceworld_metfaces",
            style="portrait",
            n_images=400,
            probs={
                "expression": {"neutral": 0.9, "sad": 0.1, "smile": 0.0, "grin": 0.0},
                "eyewear": {"none": 0.96, "glasses": 0.04, "sunglasses": 0.0},
                "skin_tone": {"pale": 0.5, "light": 0.5, "tan": 0.0, "brown": 0.0, "dark": 0.0},
            },
            description=(
                "Old-painting portraits (MetFaces stand-in), biased: mostly expressionless, "
                "never smiling or grinning, a few glasses that curation must remove, "
                "no sunglasses, pale or light skin only."
            ),
        ),
        DomainSpec(
            name="faceworld_aahq",
            style="artwork",
            n_images=3000,
            probs={},
            description=(
                "Flat vivid artworks (AAHQ stand-in), diverse; CLIP filtering later keeps "
                "the expressionless men without glasses."
            ),
        ),
        DomainSpec(
            name="faceworld_sunglasses",
            style="photo",
            n_images=200,
            probs={"eyewear": {"sunglasses": 1.0}},
            description="Photo faces that all wear sunglasses: the few-shot source pool.",
        ),
        DomainSpec(
            name="faceworld_sketches",
            style="sketch",
            n_images=200,
            probs={},
            description="Pencil sketches, attributes uniform: a few-shot target style.",
        ),
        # The latent world (issue 31, docs/FACEWORLD.md): the classes of the class-conditional
        # latent source model (the ImageNet LDM stand-in) and a target of a class it never saw.
        DomainSpec(
            name="faceworld_latent_classes",
            style="photo",
            styles=("photo", "portrait", "artwork"),
            n_images=6000,
            probs={},
            description=(
                "Photos, portraits and artworks in turn, attributes uniform: the classes "
                "of the class-conditional latent source model (ImageNet stand-in)."
            ),
        ),
        DomainSpec(
            name="faceworld_latent_sketches",
            style="sketch",
            n_images=3000,
            probs={},
            description=(
                "Pencil sketches, attributes uniform: the latent world's target, a class the "
                "latent source never saw (ANL's CelebA / Flowers / Cars), whole and as subsets."
            ),
        ),
    )
}


def get_domain(spec_or_name: DomainSpec | str) -> DomainSpec:
    if isinstance(spec_or_name, DomainSpec):
        return spec_or_name
    try:
        return DOMAINS[spec_or_name]
    except KeyError:
        raise KeyError(
            f"unknown FaceWorld domain {spec_or_name!r}; known: {sorted(DOMAINS)}"
        ) from None


def _iter_domain(
    spec: DomainSpec, n: int, size: int, seed: int
) -> Iterator[tuple[FaceAttributes, np.ndarray]]:
    """Image ``i`` depends only on (domain name, seed, i): prefixes are stable in ``n``."""
    salt = zlib.crc32(spec.name.encode("utf-8"))
    for i in range(n):
        rng = np.random.default_rng([int(seed), salt, i])
        style = spec.styles[i % len(spec.styles)] if spec.styles else spec.style
        attrs = sample_attributes(rng, style, spec.probs)
        render_seed = int(rng.integers(0, 2**63 - 1))
        yield attrs, render_face(attrs, size=size, seed=render_seed)


def render_batch(
    spec_or_name: DomainSpec | str, n: int, size: int = 32, seed: int = 0
) -> tuple[np.ndarray, list[FaceAttributes]]:
    """In-memory render: uint8 ``(n, size, size, 3)`` and the attributes of each image.

    Same images as :func:`render_domain` with the same arguments.
    """
    spec = get_domain(spec_or_name)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    attrs: list[FaceAttributes] = []
    for i, (a, img) in enumerate(_iter_domain(spec, n, size, seed)):
        images[i] = img
        attrs.append(a)
    return images, attrs


def _manifest(spec: DomainSpec, size: int, n: int, seed: int) -> dict:
    manifest = {
        "name": spec.name,
        "style": spec.style,
        "size": int(size),
        "n": int(n),
        "seed": int(seed),
        "probs": {k: dict(v) for k, v in spec.probs.items()},
        "version": WORLD_VERSION,
    }
    if spec.styles:  # single-style domains keep the manifest they always had
        manifest["styles"] = list(spec.styles)
    return manifest


def _is_complete(out_dir: Path, manifest: dict) -> bool:
    try:
        existing = json.loads((out_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if existing != manifest or not (out_dir / RECORDS).is_file():
        return False
    return all((out_dir / f"{i:05d}.png").is_file() for i in range(manifest["n"]))


def render_domain(
    name: DomainSpec | str,
    out_dir: str | os.PathLike,
    size: int = 32,
    n: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Render a domain to ``out_dir`` (PNGs + ``attributes.jsonl`` + ``world.json``).

    A no-op when ``out_dir`` already holds a complete render with the same
    name, size, n, seed and renderer version.  A previous render with other
    settings is replaced; a non-empty folder that is not a FaceWorld render is
    refused (``FileExistsError``) rather than deleted.
    """
    spec = get_domain(name)
    n = spec.n_images if n is None else int(n)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    out_dir = Path(out_dir)
    manifest = _manifest(spec, size, n, seed)
    if _is_complete(out_dir, manifest):
        return out_dir
    if out_dir.exists():
        if not out_dir.is_dir():
            raise FileExistsError(f"{out_dir} exists and is not a folder")
        if any(out_dir.iterdir()) and not (out_dir / MANIFEST).exists():
            raise FileExistsError(
                f"{out_dir} is not empty and holds no FaceWorld render ({MANIFEST}); "
                "refusing to overwrite it"
            )

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes 0700 folders
    try:
        items = _iter_domain(spec, n, size, seed)
        if progress:
            from tqdm.auto import tqdm

            items = tqdm(items, total=n, desc=f"render {spec.name}", unit="img")
        with open(tmp / RECORDS, "w", encoding="utf-8") as fh:
            for i, (attrs, img) in enumerate(items):
                fname = f"{i:05d}.png"
                buf = io.BytesIO()  # much faster than Image.save(path) for tiny files
                Image.fromarray(img, "RGB").save(buf, format="PNG")
                (tmp / fname).write_bytes(buf.getvalue())
                rec = {"file": fname, "caption": caption(attrs), **attrs.to_dict()}
                fh.write(json.dumps(rec, sort_keys=False) + "\n")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        # swap into place: move any old render aside, rename, then delete the old one
        old = None
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, old / "d")
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def read_records(folder: str | os.PathLike) -> list[dict]:
    """Read ``attributes.jsonl`` from a rendered domain folder."""
    path = Path(folder) / RECORDS
    if not path.is_file():
        raise FileNotFoundError(
            f"no {RECORDS} in {Path(folder)}: not a FaceWorld domain folder "
            "(render it with render_domain or the world pipeline)"
        )
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


__all__ = [
    "ATTRIBUTES",
    "DOMAINS",
    "DomainSpec",
    "get_domain",
    "read_records",
    "render_batch",
    "render_domain",
]
