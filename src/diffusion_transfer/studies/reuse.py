"""Starting a point from a run another study already made
(``studies.<name>.reuse_runs_from``).

Two studies often need the same method run: ``translation_aahq`` trains naive
fine-tuning and SDFT with seeds 0-2 and ``every_method_aahq`` does too; an
edit study (``editing_aahq``) edits those very models. A point whose study
names other studies in ``reuse_runs_from`` looks there for a finished point
(its ``point.json`` written) of the same method run, the same overrides and the
same env, and copies that point's files it lacks before its own ``kedro run``
(``only_missing_outputs``), which then computes only the rest: the translate
stage, or the edits. The copied point is recorded in ``point.json``
(``reused_run_from``), so every number keeps its provenance.

Reuse is declared, never implied: a study that names none recomputes its
runs, as after a code change one should.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

POINT_RECORD = "point.json"
SPEC_FILE = "spec.json"


def finished_run(studies_root: Path, studies: tuple[str, ...], pipeline: str, overrides: dict[str, Any],
                 env: str | None) -> Path | None:
    """The first finished point (in ``studies``' order, then by id) of those
    studies that ran ``pipeline`` with ``overrides`` in ``env``, or None."""
    for study in studies:
        for record_path in sorted((studies_root / study).glob(f"*/{POINT_RECORD}")):
            record = json.loads(record_path.read_text())
            if (record.get("pipeline"), record.get("overrides"), record.get("env")) == (pipeline, overrides, env):
                return record_path.parent
    return None


def copy_missing(source: Path, point_root: Path) -> int:
    """Copy every file of ``source`` that ``point_root`` lacks (not its run
    record or spec, not a dot file: a write still under way); returns how many."""
    copied = 0
    for src in sorted(source.rglob("*")):
        rel = src.relative_to(source)
        if not src.is_file() or rel.as_posix() in (POINT_RECORD, SPEC_FILE) or \
                any(part.startswith(".") for part in rel.parts):
            continue
        dst = point_root / rel
        if dst.exists():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
        copied += 1
    return copied


def reuse_finished_run(point_root: Path, studies: tuple[str, ...], pipeline: str, overrides: dict[str, Any],
                       env: str | None) -> dict[str, Any] | None:
    """Copy in the finished run of ``pipeline`` with these overrides from one
    of ``studies`` (siblings of the point's study folder); returns where it
    came from (``study/point``) and how many files, or None when none is done."""
    if not studies:
        return None
    studies_root = point_root.parent.parent
    source = finished_run(studies_root, studies, pipeline, overrides, env)
    if source is None:
        log.info("%s: no finished %s run with these overrides in %s; running it", point_root.name, pipeline,
                 ", ".join(studies))
        return None
    copied = copy_missing(source, point_root)
    where = source.relative_to(studies_root).as_posix()
    log.info("%s: %d files of the finished run %s copied in", point_root.name, copied, where)
    return {"from": where, "files": copied}
