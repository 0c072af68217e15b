"""Image folders: a real dataset on disk, or a FaceWorld domain rendered into
the folder on first load. Either way the pipeline receives the same
:class:`ImageFolder`, so no code path exists only for the demo."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from diffusion_transfer.core.data.images import list_image_files
from diffusion_transfer.core.world.domains import read_records, render_domain


@dataclass
class ImageFolder:
    root: Path
    files: list[Path]
    #: Per-file records (FaceWorld ``attributes.jsonl``), keyed by file name; empty for real data.
    records: dict[str, dict] = field(default_factory=dict)
    source: str = "folder"
    #: ``(line, reason)`` for each ``attributes.jsonl`` line that could not be used.
    sidecar_problems: list[tuple[str, str]] = field(default_factory=list)


class ImageFolderDataset(AbstractDataset[None, ImageFolder]):
    """Loads the list of files in ``path`` (read-only).

    Args:
        path: the folder.
        faceworld: optional ``{domain, n, size, seed}``; when given, the FaceWorld
            domain is rendered into ``path`` if it is not there yet.
        download_hint: shown when a real folder is missing (where the data
            comes from and where to put it).
    """

    def __init__(self, path: str, faceworld: dict[str, Any] | None = None, download_hint: str = "",
                 metadata: dict[str, Any] | None = None):
        self._path = Path(path)
        self._faceworld = faceworld
        self._hint = download_hint
        self.metadata = metadata

    def load(self) -> ImageFolder:
        if self._faceworld:
            fw = dict(self._faceworld)
            render_domain(fw.pop("domain"), self._path, **fw)
            records = {r["file"]: r for r in read_records(self._path)}
            return ImageFolder(self._path, list_image_files(self._path), records, source="faceworld")
        if not self._path.is_dir():
            hint = f" {self._hint}" if self._hint else ""
            raise DatasetError(f"Image folder {self._path} does not exist.{hint}")
        records, problems = _read_sidecar(self._path / "attributes.jsonl")
        return ImageFolder(self._path, list_image_files(self._path), records, sidecar_problems=problems)

    def missing(self) -> str | None:
        """For the pre-run check: why loading would fail, or None."""
        if self._faceworld or self._path.is_dir():
            return None
        if self._path.exists():
            return f"{self._path} is a file, not a folder: set the parameter or catalog entry to the image folder."
        return f"image folder {self._path} does not exist." + (f" {self._hint}" if self._hint else "")

    @property
    def path(self) -> Path:
        return self._path

    @property
    def rendered(self) -> bool:
        """A FaceWorld domain, rendered into the folder on load."""
        return bool(self._faceworld)

    def save(self, data: None) -> None:
        raise DatasetError("ImageFolderDataset is read-only")

    def _exists(self) -> bool:
        return self._path.is_dir() or bool(self._faceworld)

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path), "faceworld": self._faceworld}


def _read_sidecar(path: Path) -> tuple[dict[str, dict], list[tuple[str, str]]]:
    """A real folder's optional ``attributes.jsonl``: the records by file name,
    and ``(line, reason)`` for each line that is not a JSON object with a ``file``."""
    import json

    records: dict[str, dict] = {}
    problems: list[tuple[str, str]] = []
    if not path.is_file():
        return records, problems
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as err:
            problems.append((f"{path.name} line {number}", f"not valid JSON ({err})"))
            continue
        if not isinstance(record, dict) or not isinstance(record.get("file"), str):
            problems.append((f"{path.name} line {number}", "a record without a 'file' name"))
            continue
        records[record["file"]] = record
    return records, problems
