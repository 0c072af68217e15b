"""Studies (issue 17): a grid declared in conf, each point its own run under
its own data root, resumable, shared stages computed once, a report with the
Pareto front of FID against retention of absent attributes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_tracking import scratch_project

ROOT = Path(__file__).resolve().parents[1]


# --- declaring a study ---------------------------------------------------------------------------


def test_grid_points_in_order_with_mapping_and_pipeline_axes():
    from diffusion_transfer.studies import study_points

    block = {"base": {"train.steps": 600},
             "grid": {"pipeline": ["naive_aahq", "sdft_aahq"],
                      "gamma": [{"methods.sdft.gamma_distill": 3, "methods.sdft.gamma_aux": 3},
                                {"methods.sdft.gamma_distill": 50, "methods.sdft.gamma_aux": 50}]}}
    points = study_points("s", block, {"naive_aahq", "sdft_aahq"})
    assert [(p.pipeline, p.overrides["methods.sdft.gamma_aux"]) for p in points] == [
        ("naive_aahq", 3), ("naive_aahq", 50), ("sdft_aahq", 3), ("sdft_aahq", 50)]
    assert all(p.overrides["train.steps"] == 600 for p in points)
    assert points[0].id.startswith("pipeline-naive-aahq_gamma-3-3_")
    assert points[1].runtime_params() == {"train": {"steps": 600},
                                          "methods": {"sdft": {"gamma_distill": 50, "gamma_aux": 50}}}
    # ids are stable and change with any override
    again = study_points("s", block, None)
    assert [p.id for p in again] == [p.id for p in points]
    changed = study_points("s", {**block, "base": {"train.steps": 601}}, None)
    assert not {p.id for p in changed} & {p.id for p in points}


@pytest.mark.parametrize("block, message", [
    ({"pipeline": "sdft_aahq", "grid": {}}, "studies.bad.grid"),
    ({"pipeline": "sdft_aahq", "grid": {"train.steps": []}}, "grid axis 'train.steps' has no values"),
    ({"grid": {"train.steps": [1]}}, "set 'pipeline' or a grid axis 'pipeline'"),
    ({"pipeline": "sdft_nowhere", "grid": {"train.steps": [1]}}, "'studies.bad.pipeline': no pipeline 'sdft_nowhere'"),
    ({"pipeline": "sdft_aahq", "grid": {"train.steps": [1]}, "extra": 1}, "studies.bad.extra"),
    ({"pipeline": "sdft_aahq", "base": {"train": 5}, "grid": {"train.steps": [1]}}, "override 'train.steps'"),
])
def test_bad_studies_name_the_key(block, message):
    from diffusion_transfer.project.schema import InvalidParametersError
    from diffusion_transfer.studies import study_points

    with pytest.raises(InvalidParametersError, match=message.replace("(", r"\(").replace(".", r"\.")):
        study_points("bad", block, {"sdft_aahq"})


def test_every_shipped_study_expands_on_registered_pipelines():
    from diffusion_transfer.pipeline_registry import register_pipelines
    from diffusion_transfer.studies.runner import declared_studies

    studies, root = declared_studies(ROOT, None)
    from diffusion_transfer.studies import study_points

    names = set(register_pipelines())
    sizes = {name: len(study_points(name, block, names)) for name, block in studies.items()}
    assert sizes == {"weighting_aahq": 3, "weighting_metfaces": 3, "lambdas_aahq": 18, "lambdas_metfaces": 18,
                     "steps_aahq": 6, "steps_metfaces": 6, "naive_path_aahq": 14, "edit_strength_aahq": 3,
                     "anl_table1_lsketches": 28, "a3ft_table1_metfaces": 6,
                     "a3ft_steps_metfaces": 12, "anl_steps_lsketches_1k": 12,
                     "every_method_aahq": 21, "every_method_metfaces": 21,  # 7 methods x 3 training seeds
                     "every_method_sunglasses": 21, "every_method_sketches": 21,
                     "translation_aahq": 6, "translation_metfaces": 6,  # naive and SDFT x 3 training seeds
                     "editing_aahq": 6, "editing_metfaces": 6,  # Asyrp on naive's and SDFT's models x 3 seeds
                     "text_to_image_aahq": 18,  # 3 methods x full / LoRA x 3 training seeds
                     "sdft_settings_aahq": 9, "naive_short_aahq": 12,  # the README's candidate rows x 3 seeds
                     "weighting_seeds_aahq": 9, "weighting_seeds_metfaces": 9,  # constant, 2 min-SNRs x 3 seeds
                     "steps_seeds_aahq": 12, "steps_seeds_metfaces": 12}  # 2 methods x 2 lengths x 3 seeds
    assert root == ROOT / "data" / "studies"
    weightings = [p.overrides["methods.sdft.weighting"] for p in study_points("weighting_aahq",
                                                                              studies["weighting_aahq"], names)]
    assert weightings == ["constant", "min_snr", "p2"]
    from diffusion_transfer.studies.runner import points_of

    for name in studies:  # their 'outputs' name outputs of their runs (checked before any compute)
        points, _ = points_of(name, ROOT, None)
        assert all(p.outputs in (None, ("metrics",)) for p in points)


def test_outputs_must_be_the_runs_own(tmp_path):
    from diffusion_transfer.studies.runner import _check_outputs
    from diffusion_transfer.studies.spec import Point
    from diffusion_transfer.project.schema import InvalidParametersError

    produced = {"sdft_aahq.metrics", "sdft_aahq.report", "aahq_curated"}
    _check_outputs("s", Point("s", "sdft_aahq", {}, {}, ("metrics",)), produced)
    with pytest.raises(InvalidParametersError, match=r"studies\.s\.outputs.*no output sdft_aahq\.metrix; its "
                                                     r"outputs: metrics, report"):
        _check_outputs("s", Point("s", "sdft_aahq", {}, {}, ("metrix",)), produced)


def test_shared_signature_leaves_out_what_only_the_method_run_reads():
    from diffusion_transfer.studies.runner import _run_independent

    block = {"curation": {"top_n": 24}, "method_overrides": {"sdft": {"lambda_aux": 1.0}}, "train": {"steps": 9}}
    assert _run_independent("datasets.aahq", block) == {"curation": {"top_n": 24}}
    assert _run_independent("datasets", {"aahq": block}) == {"aahq": {"curation": {"top_n": 24}}}
    assert _run_independent("sampling", {"train": 1}) == {"train": 1}  # only datasets.<d>.train is left out


def test_shared_signature_reads_a_sources_sampling_as_its_nodes_get_it():
    """The source samples read ``params:sources.<s>.sampling`` (the hook's merge of
    ``sampling`` and ``sources.<s>.sampling``): a point changing either is not shared."""
    from diffusion_transfer.studies.runner import _lookup

    params = {"sampling": {"steps": 40, "n_samples": 8}, "sources": {"ldm": {"sampling": {"steps": 200}}, "ffhq": {}}}
    assert _lookup(params, "sources.ldm.sampling") == {"steps": 200, "n_samples": 8}
    assert _lookup(params, "sources.ffhq.sampling") == {"steps": 40, "n_samples": 8}
    assert _lookup(params, "sources.ldm") == {"sampling": {"steps": 200}}  # any other key: as conf gives it


def test_feature_files_of_finished_points_are_copied_once_and_never_half_written(tmp_path):
    from diffusion_transfer.studies.runner import reuse_feature_cache

    cache = "04_feature/fid_cache"
    for point, files in (("a", {"ref_x.npy": b"ref", "gen_src.npy": b"src"}), ("b", {"gen_b.npy": b"b"})):
        (tmp_path / point / cache).mkdir(parents=True)
        for name, data in files.items():
            (tmp_path / point / cache / name).write_bytes(data)
    (tmp_path / "a" / cache / ".gen_y.npy.tmp123.npy").write_bytes(b"half")  # a write under way in point a
    (tmp_path / "c" / cache).mkdir(parents=True)
    (tmp_path / "c" / cache / "ref_x.npy").write_bytes(b"own")
    assert reuse_feature_cache(cache, tmp_path / "c") == 2
    got = {f.name: f.read_bytes() for f in (tmp_path / "c" / cache).iterdir()}
    assert got == {"ref_x.npy": b"own", "gen_src.npy": b"src", "gen_b.npy": b"b"}  # its own file is kept
    assert reuse_feature_cache(cache, tmp_path / "c") == 0
    assert reuse_feature_cache(None, tmp_path / "c") == 0  # a cache outside the point's root is shared already


# --- the report ---------------------------------------------------------------------------------


def _row(point: str, fid: float | None, kept: float | None, done: bool = True) -> dict:
    return {"point": point, "done": done, "labels": {"w": point},
            "metrics": {k: v for k, v in (("fid", fid), ("retention_of_absent.mean", kept)) if v is not None}}


def test_pareto_front_by_hand():
    from diffusion_transfer.studies import pareto_front

    rows = [_row("a", 10.0, 0.5), _row("b", 12.0, 0.7), _row("c", 11.0, 0.4),  # c: a is better on both
            _row("d", 10.0, 0.5),  # ties with a: neither dominates the other
            _row("e", 9.0, 0.1), _row("f", 15.0, 0.7),  # f: b has the same retention and a lower FID
            _row("g", None, 0.9), _row("h", 1.0, 1.0, done=False)]  # no FID; not run
    assert pareto_front(rows) == {"a", "b", "d", "e"}


def _edit_point(root: Path, point, rows: dict) -> None:
    folder = root / point.id
    (folder / "08_reporting" / point.namespace).mkdir(parents=True)
    (folder / "08_reporting" / point.namespace / "edit_metrics.json").write_text(json.dumps(
        {"rows": rows, "reconstruction": {"retention": 0.9}}))
    (folder / "point.json").write_text(json.dumps({"run_seconds": 1.0}))


def test_an_edit_study_reports_each_prompt_and_picks_its_point_by_the_declared_rule(tmp_path):
    from diffusion_transfer.studies import write_study_report
    from diffusion_transfer.studies.spec import Point

    points = [Point("strength", "edit_source_aahq", {"editing.lr": lr}, {"editing.lr": lr}) for lr in (0.5, 0.1, 0.02)]
    assert points[0].namespace == "source_aahq" and points[0].is_edit

    def prompt(success, faces, preservation=0.8):
        return {"label": "p", "s_dir": 0.1, "success": success, "preservation": preservation, "face_rate": faces}

    # lr 0.5: the best mean success (0.6) but one prompt's edits are not faces (0.5 < 0.9): not eligible.
    _edit_point(tmp_path, points[0], {"smiling": prompt(0.8, 1.0), "sad": prompt(0.4, 0.5)})
    # lr 0.1: mean success (0.5 + 0.3) / 2 = 0.4; the n/a prompt (angry) is left out of the means.
    _edit_point(tmp_path, points[1], {"smiling": prompt(0.5, 0.95), "sad": prompt(0.3, 0.9),
                                      "angry": prompt(None, 0.92, None)})
    # lr 0.02: faces kept, mean success 0.2.
    _edit_point(tmp_path, points[2], {"smiling": prompt(0.2, 1.0), "sad": prompt(0.2, 1.0)})
    report = write_study_report("strength", points, tmp_path)
    record = json.loads((tmp_path / "study.json").read_text())
    assert record["chosen"] == points[1].id
    row = next(r for r in record["rows"] if r["point"] == points[1].id)
    assert row["means"]["success"] == pytest.approx(0.4)
    assert row["means"]["min_face_rate"] == pytest.approx(0.9)
    text = report.read_text()
    assert f"**Chosen point: {points[1].id}**" in text and "0.400" in text
    assert (tmp_path / "edit_means.png").stat().st_size > 0


def test_an_edit_study_with_no_point_keeping_faces_chooses_none():
    from diffusion_transfer.studies.edit_report import chosen_point

    rows = [{"point": "a", "done": True, "means": {"success": 0.9, "preservation": 0.5, "min_face_rate": 0.2}},
            {"point": "b", "done": False}]
    assert chosen_point(rows) is None


# --- a smoke-sized study, end to end -------------------------------------------------------------------


def _study(proj: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "diffusion_transfer.studies", *args, "--env", "smoke",
                           "--project", str(proj)], cwd=proj, env=env, capture_output=True, text=True, timeout=3000)


@pytest.mark.slow
def test_the_smoke_study_runs_each_point_once_tracked_and_reports_it(tmp_path):
    from mlflow.tracking import MlflowClient

    from diffusion_transfer.studies import pareto_front

    proj = scratch_project(tmp_path)
    store = f"sqlite:///{tmp_path / 'store.db'}"
    env = {**os.environ, "DT_TRACKING": "on", "MLFLOW_TRACKING_URI": store}
    done = _study(proj, env, "run", "smoke")
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    root = proj / "data" / "smoke" / "studies" / "smoke"
    first, second = "weighting-constant", "weighting-p2"
    folders = {f.name.rsplit("_", 1)[0]: f for f in root.iterdir() if f.is_dir()}
    assert set(folders) == {first, second}
    records = {k: json.loads((f / "point.json").read_text()) for k, f in folders.items()}
    metrics = {k: json.loads((f / "08_reporting" / "sdft_aahq" / "metrics.json").read_text())
               for k, f in folders.items()}
    # each point ran its own weighting (the resolved run says so) under its own data root
    for key, weighting in ((first, "constant"), (second, "p2")):
        history = json.loads((folders[key] / "08_reporting" / "sdft_aahq" / "training_history.json").read_text())
        assert history["run"]["hyperparameters"]["weighting"] == weighting
        checkpoints = Path(history["checkpoint_dir"])
        assert (checkpoints if checkpoints.is_absolute() else proj / checkpoints).is_relative_to(folders[key])
        # outputs: [metrics]: what metrics.json needs ran, translation and the domain classifier did not
        assert records[key]["outputs"] == ["sdft_aahq.metrics"]
        assert not (folders[key] / "08_reporting" / "sdft_aahq" / "translation_metrics.json").exists()
        assert not (folders[key] / "06_models" / "classifiers").exists()
    # the second point reused the shared stages (curation, classifier, source samples...): never rendered FaceWorld
    assert records[second]["shared"]["reused_from"] == folders[first].name
    assert records[second]["shared"]["signature"] == records[first]["shared"]["signature"]
    assert (folders[first] / "01_raw").is_dir() and not (folders[second] / "01_raw").exists()
    # ... and the first point's FID features (reference set, source samples) instead of recomputing them
    assert records[first]["shared"]["feature_files_reused"] == 0
    assert records[second]["shared"]["feature_files_reused"] >= 2
    cache = [folders[k] / records[k]["shared"]["feature_cache"] for k in (first, second)]
    assert {f.name for f in cache[0].glob("ref_*.npy")} <= {f.name for f in cache[1].glob("ref_*.npy")}
    # the report: a row per point with its metrics, the Pareto front re-derived from metrics.json
    study = json.loads((root / "study.json").read_text())
    rows = {r["point"].rsplit("_", 1)[0]: r for r in study["rows"]}
    for key in (first, second):
        finetuned = metrics[key]["models"]["finetuned"]
        assert rows[key]["metrics"]["fid"] == pytest.approx(finetuned["fid"])
        assert rows[key]["metrics"]["retention_of_absent.mean"] == pytest.approx(finetuned["retention_of_absent"]["mean"])
    by_hand = pareto_front([{"point": k, "done": True, "metrics": {
        "fid": m["models"]["finetuned"]["fid"], "retention_of_absent.mean":
        m["models"]["finetuned"]["retention_of_absent"]["mean"]}} for k, m in metrics.items()])
    assert {p.rsplit("_", 1)[0] for p in study["pareto_front"]} == by_hand
    report = (root / "study.md").read_text()
    assert "2 of 2 points run" in report and report.count("| weighting-") == 2
    assert (root / "fid_vs_retention.png").stat().st_size > 0
    # tracked: one mlflow run per point in the study's experiment, named and tagged after it
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("study_smoke").experiment_id])
    assert sorted(r.data.tags["study_point"] for r in runs) == sorted(f.name for f in folders.values())
    for run in runs:
        key = run.data.tags["study_point"].rsplit("_", 1)[0]
        assert run.info.run_name == f"smoke/{run.data.tags['study_point']}"
        assert run.data.metrics["fid"] == pytest.approx(metrics[key]["models"]["finetuned"]["fid"])
    # resumable: a second run skips both points (no new mlflow run), and list marks them done
    again = _study(proj, env, "run", "smoke")
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(client.search_runs([runs[0].info.experiment_id])) == 2
    listed = _study(proj, env, "list")
    assert listed.returncode == 0 and "smoke: 2 points, 2 done" in listed.stdout
    _edits_reuse_the_smoke_run(proj, env, folders[first])


def _edits_reuse_the_smoke_run(proj: Path, env: dict, trained: Path) -> None:
    """smoke_edit (reuse_runs_from: [smoke]) edits the constant-weighting model the smoke study trained:
    the run is copied in, not trained again, and only the edit stage runs."""
    model = Path("06_models") / "sdft_aahq" / "model"
    before = {f.relative_to(trained): (f.read_bytes(), f.stat().st_mtime_ns) for f in (trained / model).rglob("*")
              if f.is_file()}
    done = _study(proj, {**env, "DT_TRACKING": "off"}, "run", "smoke_edit")
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    (folder,) = [f for f in (trained.parent.parent / "smoke_edit").iterdir() if f.is_dir()]
    record = json.loads((folder / "point.json").read_text())
    assert record["reused_run_from"]["from"] == f"smoke/{trained.name}"
    assert record["pipelines_run"] == ["sdft_aahq", "edit_sdft_aahq"]
    # the same bytes with the same times: copied in, not trained again (a retrained model would be written now)
    assert {f.relative_to(folder): (f.read_bytes(), f.stat().st_mtime_ns) for f in (folder / model).rglob("*")
            if f.is_file()} == before
    edits = json.loads((folder / "08_reporting" / "sdft_aahq" / "edit_metrics.json").read_text())
    assert set(edits["rows"]) == {"smiling", "sad", "angry", "young", "old"}
    assert "1 of 1 points run" in (folder.parent / "study.md").read_text()


def test_an_unknown_study_names_the_declared_ones():
    done = subprocess.run([sys.executable, "-m", "diffusion_transfer.studies", "run", "nope", "--env", "smoke"],
                          cwd=ROOT, env={**os.environ, "DT_TRACKING": "off"}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 1
    assert "Error: no study 'nope'" in done.stderr and "smoke" in done.stderr and "weighting_aahq" in done.stderr
