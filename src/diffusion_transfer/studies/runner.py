"""Running a study: every point is its own ``kedro run`` of its pipeline with
its overrides (``--params``) under its own data root,
``<data root>/studies/<study>/<point id>/`` (``DT_DATA_ROOT``), in a fresh
Python process (no state carried from one run to the next).

Resumable at two levels: a point with ``point.json`` is done and skipped; a
point stopped half-way reruns with ``only_missing_outputs`` (nodes whose
outputs exist are skipped; training resumes from its checkpoints).

The stages that do not depend on the method run (curation, the domain
classifier, the noise bank, the source model's samples, the translation
inputs: the pipeline's nodes outside the run's namespace) are computed once:
a point copies their outputs from a finished point of the same study whose
shared stages read the same parameter values (their signature), and Kedro
skips them. ``datasets.<d>.method_overrides`` and ``datasets.<d>.train`` are
left out of the signature: only the method run reads them
(``pipelines/finetune/nodes.py:resolve_run``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from diffusion_transfer.project.config import DATA_ROOT_ENV
from diffusion_transfer.project.declared import supplied_conf
from diffusion_transfer.core.io import atomic_path
from diffusion_transfer.project.resolved import resolve_parameters
from diffusion_transfer.project.schema import InvalidParametersError
from diffusion_transfer.studies.report import write_study_report
from diffusion_transfer.studies.reuse import POINT_RECORD, SPEC_FILE, reuse_finished_run
from diffusion_transfer.studies.spec import Point, namespace_of, study_points
from diffusion_transfer.tracking.hook import POINT_ENV, STUDY_ENV

log = logging.getLogger(__name__)

#: Parameter subtrees only the method run reads: left out of the shared stages' signature.
_RUN_ONLY = re.compile(r"^datasets\.[^.]+\.(method_overrides|train)$")


def _loader(project: Path, env: str | None, runtime_params: dict[str, Any] | None = None):
    from kedro.framework.project import settings
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)
    return settings.CONFIG_LOADER_CLASS(conf_source=str(project / settings.CONF_SOURCE), env=env,
                                        runtime_params=runtime_params, **settings.CONFIG_LOADER_ARGS)


def declared_studies(project: Path, env: str | None) -> tuple[dict[str, Any], Path]:
    """``studies`` of ``env``'s parameters and where its studies write (``<data root>/studies``)."""
    loader = _loader(project, env)
    return loader["parameters"].get("studies") or {}, project / loader["globals"]["data_root"] / "studies"


def points_of(name: str, project: Path, env: str | None) -> tuple[list[Point], Path]:
    """The study's points and its folder; an unknown study names the ones declared."""
    from kedro.framework.project import pipelines

    studies, root = declared_studies(project, env)
    if name not in studies:
        raise InvalidParametersError(f"no study {name!r} in 'studies' (env {env or 'local'}); declared: "
                                     f"{', '.join(sorted(studies)) or 'none'} (conf/base/parameters_studies.yml)")
    points = study_points(name, studies[name], set(pipelines))
    unknown = sorted({s for p in points for s in p.reuse_from} - set(studies))
    if unknown:
        raise InvalidParametersError(f"Invalid parameters in 'studies.{name}.reuse_runs_from': no study "
                                     f"{', '.join(map(repr, unknown))}; declared: {', '.join(sorted(studies))}")
    for point in points:
        produced = set().union(*(pipelines[n].all_outputs() for n in point.run_pipelines(set(pipelines))))
        _check_outputs(name, point, produced)
    return points, root / name


def _check_outputs(name: str, point: Point, produced: set[str]) -> None:
    """``outputs`` must name outputs of the run's namespace (before any compute)."""
    missing = [o for o in point.to_outputs() or [] if o not in produced]
    if missing:
        prefix = f"{point.namespace}."
        known = sorted(o[len(prefix):] for o in produced if o.startswith(prefix) and "." not in o[len(prefix):])
        raise InvalidParametersError(f"Invalid parameters in 'studies.{name}.outputs': {point.pipeline} has no "
                                     f"output {', '.join(missing)}; its outputs: {', '.join(known)}")


def is_done(point_root: Path) -> bool:
    return (point_root / POINT_RECORD).is_file()


def run_study(name: str, project: Path, env: str | None = None, in_process: bool = False,
              only: list[str] | None = None) -> Path:
    """Run the study's points not done yet (``only``: these point ids), then
    write its report; returns the report's path."""
    project = Path(project).resolve()
    every_point, root = points_of(name, project, env)
    points = every_point
    if only:
        unknown = sorted(set(only) - {p.id for p in points})
        if unknown:
            raise InvalidParametersError(f"study {name!r} has no point {', '.join(unknown)}; its points: "
                                         f"{', '.join(p.id for p in points)}")
        points = [p for p in points if p.id in only]
    check_points(name, [p for p in points if not is_done(root / p.id)], project, env, root)
    for i, point in enumerate(points, 1):
        where = root / point.id
        if is_done(where):
            log.info("study %s: point %d/%d %s done, skipped", name, i, len(points), point.id)
            continue
        log.info("study %s: point %d/%d %s (%s) in %s", name, i, len(points), point.id, point.pipeline, where)
        run_point(point, project, env, where, in_process)
        write_study_report(name, every_point, root)  # the report grows with every point
    return write_study_report(name, every_point, root)


def check_points(name: str, points: list[Point], project: Path, env: str | None, root: Path) -> None:
    """Validate every point's parameters as its run will read them (``env``'s
    conf with the point's overrides, under its own data root) before any
    point runs; one error lists each point that fails and why."""
    failures = []
    for point in points:
        spec = {"data_root": os.path.relpath(root / point.id, project), "study": name, "point": point.id,
                "project": str(project)}
        with _point_environment(spec):
            params = _loader(project, env, point.runtime_params())["parameters"]
            try:
                resolve_parameters(params)
            except InvalidParametersError as err:
                failures.append(f"studies.{name}: point {point.id}: " + str(err).replace("\n", "\n    "))
    if failures:
        raise InvalidParametersError(f"Invalid parameters in 'studies.{name}': {len(failures)} of its "
                                     f"{len(points)} points to run do not validate (nothing was run):\n  "
                                     + "\n  ".join(failures))


def run_point(point: Point, project: Path, env: str | None, point_root: Path, in_process: bool = False) -> dict:
    """Run one point (a fresh process unless ``in_process``); returns its record."""
    point_root.mkdir(parents=True, exist_ok=True)
    spec = {"study": point.study, "point": point.id, "pipeline": point.pipeline, "overrides": point.overrides,
            "labels": point.labels, "outputs": point.to_outputs(), "env": env, "project": str(project),
            "data_root": os.path.relpath(point_root, project), "reuse_runs_from": list(point.reuse_from)}
    spec_path = point_root / SPEC_FILE
    spec_path.write_text(json.dumps(spec, indent=2, default=str))
    if in_process:
        return execute_point(spec_path)
    done = subprocess.run([sys.executable, "-m", "diffusion_transfer.studies", "point", str(spec_path)],
                          cwd=project, env=os.environ.copy())
    if done.returncode != 0:
        raise RuntimeError(f"study {point.study!r}: point {point.id} ({point.pipeline}) failed (exit status "
                           f"{done.returncode}); its output is above. Rerun the study to resume it.")
    return json.loads((point_root / POINT_RECORD).read_text())


@contextlib.contextmanager
def _point_environment(spec: dict[str, Any]) -> Iterator[None]:
    """The point's data root and study tags, and the project as working folder."""
    keys = {DATA_ROOT_ENV: spec["data_root"], STUDY_ENV: spec["study"], POINT_ENV: spec["point"]}
    saved = {k: os.environ.get(k) for k in keys}
    cwd = Path.cwd()
    os.environ.update(keys)
    os.chdir(spec["project"])
    try:
        yield
    finally:
        os.chdir(cwd)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def execute_point(spec_path: Path) -> dict[str, Any]:
    """The point's ``kedro run``: start from a finished run of a study it may
    reuse (``reuse_runs_from``), reuse the shared stages' outputs of a finished
    point with the same signature, run the missing nodes, write ``point.json``."""
    from kedro.framework.project import pipelines
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    spec = json.loads(Path(spec_path).read_text())
    project, point_root = Path(spec["project"]), Path(spec["project"]) / spec["data_root"]
    point = Point(spec["study"], spec["pipeline"], spec["overrides"])
    runtime = point.runtime_params()
    with _point_environment(spec):
        bootstrap_project(project)  # the registry is empty until the project is configured
        names = point.run_pipelines(set(pipelines))
        run = reuse_finished_run(point_root, tuple(spec.get("reuse_runs_from") or ()), names[0],
                                 spec["overrides"], spec["env"])
        shared = shared_stage(project, spec["env"], runtime, names, point_root)
        reused = reuse_shared_outputs(shared, point_root)
        features = reuse_feature_cache(shared.get("feature_cache"), point_root)
        # an edit point that also trains its model runs only what its edits need
        outputs = spec.get("outputs") or (sorted(pipelines[point.pipeline].all_outputs()) if len(names) > 1 else None)
        start = time.perf_counter()
        with KedroSession.create(project_path=project, env=spec["env"], runtime_params=runtime) as session:
            session.run(pipeline_names=names, only_missing_outputs=True, to_outputs=outputs)
        seconds = time.perf_counter() - start
    record = {**{k: spec.get(k) for k in ("study", "point", "pipeline", "overrides", "labels", "outputs", "env")},
              "data_root": spec["data_root"], "run_seconds": round(seconds, 1), "pipelines_run": names,
              "reused_run_from": run,
              "shared": {**shared, "reused_from": reused, "feature_files_reused": features}}
    (point_root / POINT_RECORD).write_text(json.dumps(record, indent=2, default=str))
    return record


def _run_independent(name: str, value: Any) -> Any:
    """``value`` of parameter ``name`` without the subtrees only the method run reads."""
    if not isinstance(value, dict):
        return value
    return {k: _run_independent(f"{name}.{k}", v) for k, v in value.items() if not _RUN_ONLY.match(f"{name}.{k}")}


def _lookup(params: dict[str, Any], dotted: str) -> Any:
    supplied = supplied_conf(params, dotted)
    if supplied is not None:  # a parameter the hook supplies (declared.sampling_param): not in conf as such
        return supplied
    node: Any = params
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def shared_stage(project: Path, env: str | None, runtime: dict[str, Any], pipeline_names: list[str],
                 point_root: Path) -> dict[str, Any]:
    """The pipelines' nodes outside the run's namespace (that of the last: an
    edit run's): the signature of the parameter values they read and their
    output files (relative to the data root)."""
    from kedro.framework.project import pipelines, settings
    from kedro.pipeline import Pipeline

    loader = _loader(project, env, runtime)
    params = loader["parameters"]
    pipeline = sum((pipelines[name] for name in pipeline_names), Pipeline([]))
    namespace = namespace_of(pipeline_names[-1])
    shared = [n for n in pipeline.nodes if (n.namespace or "").split(".")[0] != namespace]
    names = sorted({i for n in shared for i in n.inputs if i.startswith("params:") or i == "parameters"})
    values = {n: _run_independent(n[7:], _lookup(params, n[7:])) if n != "parameters" else params for n in names}
    text = json.dumps([env, values], sort_keys=True, default=str)
    for root in (str(point_root.resolve()), loader["globals"]["data_root"]):  # paths under the point's own root
        text = text.replace(root, "<data_root>")
    signature = hashlib.sha256(text.encode()).hexdigest()[:16]
    catalog = settings.DATA_CATALOG_CLASS.from_config(loader["catalog"])
    files = set()
    for name in {o for n in shared for o in n.outputs}:
        path = _catalog_path(catalog, name, project)
        if path is not None and path.resolve().is_relative_to(point_root.resolve()):
            files.add(path.resolve().relative_to(point_root.resolve()).as_posix())
    cache = _lookup(params, "evaluation.cache_dir")
    cache = (Path(cache) if Path(cache).is_absolute() else project / cache).resolve() if cache else None
    return {"signature": signature, "files": sorted(files), "nodes": sorted(n.name for n in shared),
            "feature_cache": (cache.relative_to(point_root.resolve()).as_posix()
                              if cache is not None and cache.is_relative_to(point_root.resolve()) else None)}


def reuse_feature_cache(cache: str | None, point_root: Path) -> int:
    """Copy the FID/KID feature files (``evaluation.cache_dir``, relative to
    the data root) of every other point of the study that this point lacks;
    returns how many. The files are keyed by image content and weights, so
    any point's are valid here: the reference set's and the source samples'
    features are computed once per study instead of once per point."""
    if cache is None:
        return 0
    here = point_root / cache
    copied = 0
    for sibling in sorted(point_root.parent.iterdir()):
        there = sibling / cache
        if sibling == point_root or not there.is_dir():
            continue
        for src in there.glob("*.npy"):
            dst = here / src.name
            if src.name.startswith(".") or dst.exists():  # a dot file is a write still under way
                continue
            with atomic_path(dst, ".npy") as tmp:  # a half-copied file never passes for a cache entry
                shutil.copy2(src, tmp)
            copied += 1
    return copied


def _catalog_path(catalog: Any, name: str, project: Path) -> Path | None:
    resolver = catalog.config_resolver
    config = resolver.config.get(name) or (resolver.resolve_pattern(name) if name in catalog else None) or {}
    where = config.get("filepath") or config.get("path")
    if not where:
        return None
    path = Path(str(where).removeprefix("file://"))
    return path if path.is_absolute() else project / path


def reuse_shared_outputs(shared: dict[str, Any], point_root: Path) -> str | None:
    """Copy the shared stages' outputs from a finished sibling point with the
    same signature (files missing here only); returns its id, or None."""
    for sibling in sorted(point_root.parent.iterdir()):
        record_path = sibling / POINT_RECORD
        if sibling == point_root or not record_path.is_file():
            continue
        record = json.loads(record_path.read_text())
        if record.get("shared", {}).get("signature") != shared["signature"]:
            continue
        for rel in shared["files"]:
            src, dst = sibling / rel, point_root / rel
            if dst.exists() or not src.exists():
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dst)
            else:
                shutil.copy2(src, dst)
        log.info("%s: shared stages' outputs copied from %s", point_root.name, sibling.name)
        return sibling.name
    return None
