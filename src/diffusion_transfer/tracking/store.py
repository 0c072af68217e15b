"""Is the tracking store writable? Checked before mlflow is imported, so an
unwritable local store costs one warning at once, not minutes of mlflow's
retries before the run goes on untracked (issue 32).

Only a local store is probed (``sqlite:///<file>``, ``file://<folder>`` or a
plain path, relative to the project as kedro-mlflow takes it): a file is
created and deleted in its folder, or in the nearest folder that exists
(mlflow would create the rest). A server (``http://``, a database URL) is
left to mlflow."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

DEFAULT_STORE = "mlflow.db"


def tracking_uri(configured: str | None, project: Path) -> str:
    """The store a run would use: mlflow.yml's ``server.mlflow_tracking_uri``,
    else ``MLFLOW_TRACKING_URI``, else the project's SQLite file."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or \
        f"sqlite:///{(Path(project) / DEFAULT_STORE).as_posix()}"


def local_store_folder(uri: str, project: Path) -> tuple[Path, Path | None] | None:
    """The folder a local store writes in and its database file (None for a
    file store); None for a store that is not local."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
        if not path or path == ":memory:":
            return None
        db = Path(unquote(path.split("?", 1)[0]))  # sqlite:////abs.db is absolute, sqlite:///rel.db relative
        db = db if db.is_absolute() else Path(project) / db
        return db.parent, db
    if parsed.scheme == "file":
        return Path(unquote(parsed.path)), None
    if parsed.scheme and len(parsed.scheme) > 1:  # a server or a database; "C:" is a Windows drive
        return None
    path = Path(uri)
    return (path if path.is_absolute() else Path(project) / path), None


def unwritable_store(uri: str, project: Path) -> tuple[Path, str] | None:
    """``(folder, why)`` when the local store ``uri`` cannot be written; None
    when it can, or when it is not a local store."""
    found = local_store_folder(uri, project)
    if found is None:
        return None
    folder, db = found
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        probe_write(existing)
        if db is not None and db.exists():
            with open(db, "ab"):
                pass  # opened for writing, nothing written
    except OSError as err:
        return folder, str(err.strerror or err)
    return None


def probe_write(folder: Path) -> None:
    """Create and delete a file in ``folder``; raises ``OSError`` when it cannot."""
    if not folder.is_dir():
        raise NotADirectoryError(20, "Not a directory", str(folder))
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".dt-tracking-probe-"):
        pass
