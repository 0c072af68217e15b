"""Captions of a text-to-image dataset: diffusers' image-folder convention, a
``metadata.jsonl`` beside the images with one ``{"file_name": ..., "text": ...}``
per line (the ``imagefolder`` loader of 🤗 datasets, which diffusers'
train_text_to_image.py reads with ``--caption_column text``), or one
instance prompt for every image (DreamBooth's ``--instance_prompt``)."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["CAPTIONS_FILE", "CaptionError", "captions_for", "read_captions"]

CAPTIONS_FILE = "metadata.jsonl"


class CaptionError(ValueError):
    """A dataset's captions are missing or unreadable; the message names the file and the fix."""


def read_captions(folder: str | Path) -> dict[str, str]:
    """``folder/metadata.jsonl`` as {file name: caption}; empty without the file."""
    path = Path(folder) / CAPTIONS_FILE
    if not path.is_file():
        return {}
    out: dict[str, str] = {}
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as err:
            raise CaptionError(f"{path} line {i} is not JSON ({err}): write one "
                               '{"file_name": "0001.png", "text": "a caption"} per line') from None
        if not isinstance(record, dict) or not isinstance(record.get("file_name"), str) \
                or not isinstance(record.get("text"), str):
            raise CaptionError(f"{path} line {i} needs \"file_name\" and \"text\" (strings), got {line[:80]!r}")
        out[Path(record["file_name"]).name] = record["text"]
    return out


def captions_for(names: list[str], captions: dict[str, str], instance_prompt: str | None, where: str) -> list[str]:
    """The caption of each image ``names``: its line of metadata.jsonl, else
    the instance prompt; ``where`` names the settings in the error."""
    missing = [n for n in names if n not in captions]
    if missing and instance_prompt is None:
        listed = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise CaptionError(f"{where}: {len(missing)} training image(s) have no caption ({listed}): add a line "
                           f"for each to the folder's {CAPTIONS_FILE} ({{\"file_name\": ..., \"text\": ...}}), "
                           "or set the dataset's instance_prompt (one prompt for every image)")
    return [captions.get(n, instance_prompt or "") for n in names]
