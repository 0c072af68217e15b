"""A study point that starts from another study's finished run
(``reuse_runs_from``, studies/reuse.py), an edit point that trains the model it
edits when none is reused, and the edit table over seed replicates, by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from diffusion_transfer.project.schema import InvalidParametersError
from diffusion_transfer.studies.edit_replicates import edit_replicate_table
from diffusion_transfer.studies.reuse import finished_run, reuse_finished_run
from diffusion_transfer.studies.spec import Point, study_points

SEED0 = {"train.seed": 0, "sampling.seed": 1234}


def _finished(studies: Path, study: str, point: str, pipeline: str, overrides: dict, env: str | None = None,
              files: dict[str, str] | None = None, done: bool = True) -> Path:
    folder = studies / study / point
    folder.mkdir(parents=True)
    for rel, text in (files or {}).items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    (folder / "spec.json").write_text("{}")
    if done:
        (folder / "point.json").write_text(json.dumps({"pipeline": pipeline, "overrides": overrides, "env": env}))
    return folder


def test_only_a_finished_run_of_the_same_pipeline_overrides_and_env_is_reused(tmp_path):
    _finished(tmp_path, "a", "p1", "sdft_aahq", {**SEED0, "train.seed": 1})  # another seed
    _finished(tmp_path, "a", "p2", "sdft_aahq", SEED0, env="paper")          # another env
    _finished(tmp_path, "a", "p3", "naive_aahq", SEED0)                      # another method
    _finished(tmp_path, "a", "p4", "sdft_aahq", SEED0, done=False)           # stopped half-way
    assert finished_run(tmp_path, ("a",), "sdft_aahq", SEED0, None) is None
    _finished(tmp_path, "b", "p5", "sdft_aahq", SEED0)
    _finished(tmp_path, "c", "p6", "sdft_aahq", SEED0)
    # the declared order decides between two studies that both hold the run
    assert finished_run(tmp_path, ("c", "b"), "sdft_aahq", SEED0, None) == tmp_path / "c" / "p6"
    assert finished_run(tmp_path, ("b",), "sdft_aahq", SEED0, None) == tmp_path / "b" / "p5"


def test_reuse_copies_only_what_the_point_lacks_and_never_its_record(tmp_path):
    _finished(tmp_path, "translation", "p", "sdft_aahq", SEED0,
              files={"06_models/sdft_aahq/model.safetensors": "trained", "08_reporting/sdft_aahq/metrics.json": "{}",
                     "07_model_output/.samples.tmp": "half-written"})
    here = tmp_path / "editing" / "q"
    (here / "08_reporting" / "sdft_aahq").mkdir(parents=True)
    (here / "08_reporting" / "sdft_aahq" / "metrics.json").write_text("mine")
    assert reuse_finished_run(here, (), "sdft_aahq", SEED0, None) is None  # no study named: nothing reused
    assert not (here / "06_models").exists()
    got = reuse_finished_run(here, ("translation",), "sdft_aahq", SEED0, None)
    assert got == {"from": "translation/p", "files": 1}
    assert (here / "06_models" / "sdft_aahq" / "model.safetensors").read_text() == "trained"
    assert (here / "08_reporting" / "sdft_aahq" / "metrics.json").read_text() == "mine"  # nothing written is lost
    assert not (here / "point.json").exists() and not (here / "spec.json").exists()
    assert not (here / "07_model_output").exists()  # a dot file is a write under way
    assert reuse_finished_run(here, ("translation",), "naive_aahq", SEED0, None) is None


def test_an_edit_point_runs_its_method_run_first_unless_it_edits_the_source_model():
    registered = {"sdft_aahq", "edit_sdft_aahq", "edit_source_aahq"}
    assert Point("s", "edit_sdft_aahq", {}).run_pipelines(registered) == ["sdft_aahq", "edit_sdft_aahq"]
    assert Point("s", "edit_source_aahq", {}).run_pipelines(registered) == ["edit_source_aahq"]
    assert Point("s", "sdft_aahq", {}).run_pipelines(registered) == ["sdft_aahq"]


def test_reuse_runs_from_is_carried_to_every_point_and_leaves_ids_alone():
    block = {"replicates": 2, "grid": {"pipeline": ["naive_aahq"]}}
    plain = study_points("s", block)
    reusing = study_points("s", {**block, "reuse_runs_from": ["t"]})
    assert [p.reuse_from for p in reusing] == [("t",), ("t",)] and [p.reuse_from for p in plain] == [(), ()]
    assert [p.id for p in plain] == [p.id for p in reusing]  # the same run, the same id in any study


def test_an_unknown_study_to_reuse_names_the_key(monkeypatch):
    from diffusion_transfer.studies import runner

    root = Path(__file__).resolve().parents[1]
    points, _ = runner.points_of("editing_aahq", root, None)
    assert points[0].reuse_from == ("translation_aahq", "every_method_aahq")
    declared = runner.declared_studies

    def with_a_typo(project, env):
        studies, where = declared(project, env)
        return {**studies, "smoke": {**studies["smoke"], "reuse_runs_from": ["nope"]}}, where

    monkeypatch.setattr(runner, "declared_studies", with_a_typo)
    with pytest.raises(InvalidParametersError, match=r"studies\.smoke\.reuse_runs_from': no study 'nope'"):
        runner.points_of("smoke", root, "smoke")


def _edit_row(pipeline: str, replicate: str, young: float, s_dir: float, done: bool = True) -> dict:
    row = {"point": f"{pipeline}-{replicate}", "pipeline": pipeline, "done": done,
           "labels": {"replicate": replicate, "pipeline": pipeline}}
    if done:
        row.update(means={"s_dir": s_dir, "success": young / 2, "preservation": 0.9, "min_face_rate": 1.0},
                   prompts={"young": {"success": young}, "angry": {"success": None}}, reconstruction=0.88)
    return row


def test_the_edit_table_gives_each_measure_its_spread_best_mean_and_separated_pipelines():
    rows = [_edit_row("edit_naive_aahq", r, y, s) for r, y, s in (("0", 0.40, -0.02), ("1", 0.44, -0.01),
                                                                   ("2", 0.42, 0.00))]
    rows += [_edit_row("edit_sdft_aahq", r, y, s) for r, y, s in (("0", 0.50, -0.015), ("1", 0.46, 0.01),
                                                                  ("2", 0.48, 0.02))]
    rows.append(_edit_row("edit_sdft_aahq", "3", 0.0, 0.0, done=False))  # not run: not counted
    lines = edit_replicate_table(rows)
    header = lines[4].split(" | ")
    assert "young success" in header[-2] and "angry success" not in lines[4]  # n/a everywhere: no column
    naive = next(line for line in lines if line.startswith("| edit_naive_aahq |")).split(" | ")
    sdft = next(line for line in lines if line.startswith("| edit_sdft_aahq |")).split(" | ")
    assert naive[1] == "3" and sdft[1] == "3"
    # young: naive 0.40-0.44 (mean 0.42, sd 0.02), SDFT 0.46-0.50 (mean 0.48): ranges apart -> separated
    assert sdft[header.index("young success")] == "**0.480 ± 0.020 [0.460, 0.500]**"
    assert naive[header.index("young success")] == "0.420 ± 0.020 [0.400, 0.440]"
    # mean S_dir: naive [-0.02, 0.00] against SDFT [-0.015, 0.02]: overlapping, SDFT's mean best, no verdict
    assert sdft[header.index("mean S_dir")].startswith("**0.005 ±")
    assert naive[-1].strip(" |") == "mean edit success, young success"
    assert sdft[-1].strip(" |") == ""
    # preservation ties (0.9 each, sd 0): the first of the best is bold, the other is not separated from it
    assert "mean preservation" not in naive[-1]


def test_no_replicate_axis_no_edit_table():
    row = _edit_row("edit_source_aahq", "0", 0.4, 0.0)
    row["labels"] = {"editing.lr": "0.02"}
    assert edit_replicate_table([row]) == []
