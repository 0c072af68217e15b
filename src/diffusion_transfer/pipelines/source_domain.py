"""The source domain's images, or the source model's own samples in their place.

A user with a downloaded model rarely has the images it was trained on, so
``sources.<s>.images`` may be null. The two stages that need source-domain
images then take the source model's samples (``<prefix>source_samples``,
drawn from the shared noise bank) and say so: the domain classifier's class 0
(TAN's guidance, EGSDE's realism energy) and the translation inputs. Every
other stage needs no source-domain image."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from diffusion_transfer.core.data.images import ImageFolderError, ingest_images

#: How reports name the stand-in.
SAMPLES_ORIGIN = "the source model's own samples (sources.<s>.images is not set)"


@dataclass
class SourceImages:
    images: np.ndarray  # (N, H, W, 3) uint8
    names: list[str]
    origin: str  # the folder, or SAMPLES_ORIGIN
    skipped: list[tuple[str, str]] = field(default_factory=list)
    records: dict = field(default_factory=dict)


def source_images(source, size: int, files: list | None = None) -> SourceImages:
    """``source`` (an image folder, or the source model's samples) at ``size``;
    ``files`` restricts a folder to those files (its subset, read alone)."""
    if isinstance(source, dict) and "images" in source:  # the source model's samples
        images = source["images"].numpy()
        if images.shape[1] != size:
            raise ImageFolderError(f"the source model's samples are {images.shape[1]} px, the stage needs {size}")
        return SourceImages(images, [f"source_sample_{i:05d}" for i in range(len(images))], SAMPLES_ORIGIN)
    ingest = ingest_images(files if files is not None else source.files, resolution=size)
    return SourceImages(ingest.images, list(ingest.names), str(source.root), list(ingest.skipped),
                        getattr(source, "records", {}) or {})


def source_count(source) -> int:
    """How many images there are to draw from."""
    return len(source["images"]) if isinstance(source, dict) and "images" in source else len(source.files)
