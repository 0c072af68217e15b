"""Atomic file writes: write to a temporary sibling, then rename into place.

A write that fails for lack of space (ENOSPC, EDQUOT, or torch's
``enforce fail`` / ``PytorchStreamWriter failed`` with less free space than
the write needs) raises :class:`DiskFullError`, naming the folder, the bytes
needed and the bytes free; the previous file stays in place."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator


_NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
#: What torch's writer says when a write of the zip container fails (a full disk among other causes).
_TORCH_WRITE_FAILED = ("enforce fail", "PytorchStreamWriter failed", "file write failed")


class DiskFullError(OSError):
    """A write that failed for lack of space; the message names the folder,
    the bytes needed and the bytes free, and says that the previous files
    were kept."""

    def __init__(self, folder: Path, needed: int | None, free: int) -> None:
        super().__init__(errno.ENOSPC, "No space left on device", str(folder))
        self.folder, self.needed, self.free = folder, needed, free

    def __str__(self) -> str:
        needs = f"about {self.needed} bytes" if self.needed else "more space"
        return (f"not enough space to write in {self.folder}: the write needs {needs} and {self.free} bytes "
                "are free. The previous files there were kept; free space (or point the output somewhere with "
                "room) and run again, a rerun resumes from the last checkpoint")


def free_bytes(folder: str | Path) -> int:
    """Free bytes on the file system of ``folder`` (or of its nearest existing parent)."""
    path = Path(folder).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def disk_full_error(err: BaseException, folder: str | Path, needed: int | None) -> DiskFullError | None:
    """``err`` as a :class:`DiskFullError` when it is a failure for lack of
    space in ``folder`` (a write of about ``needed`` bytes), else None."""
    if isinstance(err, DiskFullError):
        return err
    free = free_bytes(folder)
    needed = int(needed) if needed else None
    if isinstance(err, OSError) and err.errno in _NO_SPACE_ERRNOS:
        return DiskFullError(Path(folder), needed, free)
    if isinstance(err, RuntimeError) and any(s in str(err) for s in _TORCH_WRITE_FAILED) and free < (needed or 1):
        return DiskFullError(Path(folder), needed, free)
    return None


@contextmanager
def space_checked(folder: str | Path, needed: int | None = None) -> Iterator[None]:
    """Run a write into ``folder`` of about ``needed`` bytes; a failure for
    lack of space is raised as :class:`DiskFullError` (from the original)."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        full = disk_full_error(err, folder, needed)
        if full is None or full is err:
            raise
        raise full from err


def payload_bytes(value: Any) -> int:
    """The bytes of the tensors and arrays in ``value`` (nested dicts, lists,
    modules' state dicts): what writing it needs, at least."""
    if hasattr(value, "state_dict") and callable(value.state_dict):
        value = value.state_dict()
    if isinstance(value, dict):
        return sum(payload_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(payload_bytes(v) for v in value)
    if hasattr(value, "element_size") and hasattr(value, "numel"):
        return int(value.element_size() * value.numel())
    return int(getattr(value, "nbytes", 0) or 0)


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


@contextmanager
def atomic_path(path: str | Path, suffix: str = "", needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary file path next to ``path``; rename it onto ``path`` on
    success, delete it on error (lack of space: :class:`DiskFullError`, the
    bytes needed being ``needed`` or, at least, what was written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except (OSError, RuntimeError) as err:
        full = disk_full_error(err, path.parent, max(needed or 0, _size(tmp_path)))
        if full is None or full is err:
            raise
        raise full from err
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


def atomic_write_folder(folder: str | Path, write: Callable[[Path], None], needed: int | None = None) -> Path:
    """Call ``write(tmp_dir)`` then move ``tmp_dir`` into place as ``folder``
    (the previous folder, if any, is replaced only once the new one is complete).

    Unlike :func:`atomic_dir`: the new folder is made 0755 (``mkdtemp`` gives
    0700), the previous folder is moved to a unique name and is put back if
    the final rename fails. Lack of space raises :class:`DiskFullError`."""
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
    except BaseException as err:
        written = _size(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not folder.exists():
            os.replace(old, folder)
        full = disk_full_error(err, folder.parent, max(needed or 0, written)) \
            if isinstance(err, (OSError, RuntimeError)) else None
        if full is not None and full is not err:
            raise full from err
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


def tensor_digest(tensors: Iterable[Any]) -> bytes:
    """sha256 of the tensors' raw bytes, in order (any dtype, bf16 included): the
    key of a cache or a checkpoint that must change with any weight or image."""
    import torch  # deferred: the rest of this module is plain file handling

    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.digest()
