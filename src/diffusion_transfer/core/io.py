"""Atomic file writes: write to a temporary sibling, then rename into place."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary file path next to ``path``; rename it onto ``path`` on
    success, delete it on error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_file(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """:func:`atomic_path` for a writer: ``write(fh)`` fills the temporary file
    (opened ``"wb"``), which is flushed and fsynced before it is renamed onto ``path``."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; on success it replaces
    ``path`` (the old directory, if any, is removed only after the new one is
    complete)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def atomic_write_folder(folder: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_dir)`` then move ``tmp_dir`` into place as ``folder``
    (the previous folder, if any, is replaced only once the new one is complete).

    Unlike :func:`atomic_dir`: the new folder is made 0755 (``mkdtemp`` gives
    0700), the previous folder is moved to a unique name and is put back if
    the final rename fails."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    old = None
    try:
        os.chmod(tmp, 0o755)
        write(tmp)
        if folder.exists():
            old = folder.parent / f".{folder.name}.old-{os.getpid()}-{time.time_ns()}"
            os.replace(folder, old)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not folder.exists():
            os.replace(old, folder)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def write_json_atomic(data: Any, path: str | Path) -> None:
    with atomic_path(path, ".json") as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str))


def require_weights_folder(folder: str | Path, weights_file: str, meta_file: str, what: str,
                           rebuild_hint: str) -> tuple[Path, Path]:
    """Paths of a saved model's weights and JSON metadata in ``folder``; a
    missing file raises ``FileNotFoundError`` naming it and how to get it back."""
    folder = Path(folder)
    weights, meta = folder / weights_file, folder / meta_file
    missing = [p.name for p in (weights, meta) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{what} not found in folder {folder} (missing {', '.join(missing)}). {rebuild_hint}")
    return weights, meta
