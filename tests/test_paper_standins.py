"""``--env=paper`` end to end with stand-ins: the pre-run check names every
missing dataset and weight file; with tiny stand-ins put exactly there (random
images and randomly initialised weights, never real ones), the same
``sdft_aahq`` pipeline runs to its report at 32x32 (benchmarks/paper_rehearsal.py
--scale tiny, step by step)."""

from __future__ import annotations

import json

import pytest

from tests._pipeline_helpers import load_script

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def rehearsal():
    return load_script("benchmarks/paper_rehearsal.py")


def test_paper_sdft_aahq_names_what_is_missing_then_runs_on_stand_ins(tmp_path, rehearsal):
    # the rehearsal's own steps (benchmarks/paper_rehearsal.py --scale tiny), checked one by one
    proj = rehearsal.scratch_project(tmp_path)
    missing = rehearsal.missing_inputs(proj, "sdft_aahq")
    assert set(missing) == {"aahq_raw", "source_images", "source_model", "curation_clip", "evaluation_clip",
                            "evaluation.inception_path", "evaluation.lpips_backbone_weights",
                            "evaluation.identity_weights"}
    assert missing["source_model"] == proj / "data" / "paper" / "06_models" / "ffhq_p2_diffusers"
    placed = rehearsal.place_stand_ins(proj, missing, "tiny")
    assert set(placed) == set(missing) and all(path.exists() for path in missing.values())
    hook = rehearsal.NodeCostHook()
    rehearsal.run_pipeline(proj, "sdft_aahq", rehearsal.TINY_RUN, hooks=(hook,))
    nodes = [row["node"] for row in hook.rows]
    assert "sdft_aahq.finetune" in nodes and nodes[-1] == "sdft_aahq.report"
    assert all(row["wall_s"] >= 0 and row["peak_rss_mib"] > 100 for row in hook.rows)
    out = proj / "data" / "paper" / "08_reporting" / "sdft_aahq"  # conf/paper/globals.yml
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["models"]["finetuned"]["fid"] >= 0
    assert "inception-2015-12-05.pt" in metrics["weights"]["fid_kid"]
    assert "substitute" not in metrics["weights"]["lpips"].lower()  # a backbone file was given
    assert "attributes" not in metrics["weights"]  # FaceWorld only
    report = (out / "report.md").read_text()
    assert "## Domain translation" in report and "| EGSDE |" in report and "ID ↑" in report
    translation = json.loads((out / "translation_metrics.json").read_text())
    assert all(-1 <= row["identity"] <= 1 for row in translation["rows"].values())
    assert "ArcFace IR-SE50" in translation["weights"]["identity"]
    history = json.loads((out / "training_history.json").read_text())
    assert history["run"]["hyperparameters"]["gamma_aux"] == 50.0  # the paper's AAHQ values
