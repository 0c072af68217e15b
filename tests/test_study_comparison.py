"""Comparing several studies' runs (``studies compare``): each run of another
method set against the reference method's path at the same FID, with the
source model at the path's start, re-derived by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest


def test_the_reference_is_its_best_run_at_an_equal_or_better_fid():
    from diffusion_transfer.studies.compare import best_at_or_below, best_staircase

    runs = [(260.0, 1.0, 0.0), (150.0, 0.1, 0.03), (100.0, 0.0, 0.01), (180.0, 0.3, 0.05)]
    assert best_at_or_below(runs, 205.0) == (0.3, 0.05)  # of the runs at FID <= 205, the 180 one keeps most
    assert best_at_or_below(runs, 160.0) == (0.1, 0.03)
    assert best_at_or_below(runs, 260.0) == (1.0, 0.0)  # the source model, step 0
    assert best_at_or_below(runs, 99.0) is None  # every run has a worse FID
    # plotted as a staircase (x: retention, y: FID) through the running best
    xs, ys = best_staircase([(100.0, 0.0), (150.0, 0.1), (180.0, 0.05), (260.0, 1.0)])
    assert list(zip(xs, ys)) == [(0.0, 100.0), (0.0, 150.0), (0.1, 150.0), (0.1, 180.0), (0.1, 180.0),
                                 (0.1, 260.0), (1.0, 260.0)]


def test_the_method_of_a_run_pipeline_allows_underscores_in_method_and_dataset():
    from diffusion_transfer.studies.compare import method_of

    assert [method_of(p) for p in ("sdft_aahq", "naive_haunted_houses", "anl_uncond_metfaces", "anl_aahq")] == [
        "sdft", "naive", "anl_uncond", "anl"]


def _rows():
    def row(method, fid, glasses, woman):
        return {"method": method, "runs": [f"{method} {fid}"], "metrics": {
            "fid": fid, "retention_of_absent.eyewear": glasses, "retention_of_absent.gender": woman,
            "retention_of_absent.mean": (glasses + woman) / 2}}
    return [row("naive", 150.0, 0.1, 0.0), row("naive", 180.0, 0.3, 0.6), row("sdft", 205.0, 0.9, 0.5),
            row("sdft", 90.0, 0.0, 0.0)]


def test_a_run_is_set_against_the_reference_s_best_at_its_fid_and_counts_as_more_only_beyond_two_errors():
    from diffusion_transfer.studies.compare import compare_to_reference

    def se(p, n=100):
        return math.sqrt(p * (1 - p) / n)

    rows = _rows()
    compare_to_reference(rows, "naive", source_fid=260.0, counts={"eyewear": 100, "gender": 100})
    assert "at_reference" not in rows[0] and "at_reference" not in rows[1]
    at = rows[2]["at_reference"]
    # glasses: naive's best at FID <= 205 is its 180 run's 0.3
    ref, diff, more = at["retention_of_absent.eyewear"]
    assert ref == 0.3 and diff == pytest.approx(0.6)
    assert more == (0.6 > 2 * math.hypot(se(0.9), se(0.3))) is True
    # woman: the 180 run keeps 0.6, more than the sdft run's 0.5
    ref, diff, more = at["retention_of_absent.gender"]
    assert ref == 0.6 and diff == pytest.approx(-0.1) and more is False
    # the mean: the attributes' errors combined, halved
    ref, diff, more = at["retention_of_absent.mean"]
    sdft_se = math.hypot(se(0.9), se(0.5)) / 2
    naive_se = math.hypot(se(0.3), se(0.6)) / 2
    assert ref == pytest.approx(0.45) and diff == pytest.approx(0.25)
    assert more == (0.25 > 2 * math.hypot(sdft_se, naive_se)) is True
    # better than every naive run's FID: nothing to compare with
    assert set(rows[3]["at_reference"].values()) == {None}


def _done_point(root: Path, point, fid: float, glasses: float, woman: float) -> None:
    folder = root / point.id
    (folder / "08_reporting" / point.namespace).mkdir(parents=True)
    (folder / "point.json").write_text(json.dumps({"run_seconds": 1.0}))
    metrics = {"n_samples": 100, "training_set_attributes": {"absent_values": {"eyewear": ["glasses"],
                                                                               "gender": ["woman"]}},
               "models": {"finetuned": {"fid": fid, "kid_x1e3": 1.0, "lpips_src_trg": 0.1,
                                        "retention_of_absent": {"eyewear": glasses, "gender": woman,
                                                                "mean": (glasses + woman) / 2}},
                          "source": {"fid": 260.0, "face_rate": 1.0,
                                     "frequencies": {"eyewear": {"glasses": 0.3, "none": 0.7},
                                                     "gender": {"woman": 0.5, "man": 0.5}}}}}
    (folder / "08_reporting" / point.namespace / "metrics.json").write_text(json.dumps(metrics))


def test_compare_pools_studies_lists_a_shared_run_once_and_writes_table_and_plot(tmp_path):
    from diffusion_transfer.project.schema import InvalidParametersError
    from diffusion_transfer.studies.compare import write_comparison
    from diffusion_transfer.studies.spec import Point

    naive = Point("steps", "naive_aahq", {"train.steps": 600}, {"pipeline": "naive_aahq"})
    sdft = Point("steps", "sdft_aahq", {"train.steps": 600}, {"pipeline": "sdft_aahq"})
    p2 = Point("weighting", "sdft_aahq", {"methods.sdft.weighting": "p2"}, {"w": "p2"})  # the same run as sdft
    const = Point("weighting", "sdft_aahq", {"methods.sdft.weighting": "constant"}, {"w": "constant"})
    todo = Point("weighting", "sdft_aahq", {"methods.sdft.weighting": "min_snr"}, {"w": "min_snr"})
    _done_point(tmp_path / "steps", naive, 150.0, 0.1, 0.0)
    _done_point(tmp_path / "steps", sdft, 205.0, 0.9, 0.5)
    _done_point(tmp_path / "weighting", p2, 205.0, 0.9, 0.5)
    _done_point(tmp_path / "weighting", const, 255.0, 0.9, 0.9)
    studies = {"steps": ([naive, sdft], tmp_path / "steps"),
               "weighting": ([p2, const, todo], tmp_path / "weighting")}
    md = write_comparison("both", studies, "naive", tmp_path / "both").read_text()
    saved = json.loads((tmp_path / "both" / "comparison.json").read_text())
    assert (tmp_path / "both" / "fid_vs_kept.png").stat().st_size > 0
    assert len(saved["rows"]) == 3 and saved["absent_counts"] == {"eyewear": 30, "gender": 50}
    assert "| 1 | steps: naive_aahq | naive | 150.00 |" in md  # the reference first, then by FID from the top
    assert "| 2 | weighting: constant | sdft | 255.00 |" in md
    assert "| 3 | steps: sdft_aahq<br>weighting: p2 | sdft | 205.00 |" in md
    # glasses at 205 and at 255: naive's only run at a better FID keeps 0.1; bold, beyond 2 errors
    assert md.count("0.900 (0.100, **+0.800**)") == 2
    # woman at 205: 0.5 against 0.0 (naive's 150 run); the source (FID 260) is no better than 255
    assert "0.500 (0.000, **+0.500**)" in md and "0.900 (0.000, **+0.900**)" in md
    assert ("- sdft, glasses: 2 of 2 runs keep more than naive does at an equal or better FID, by over two "
            "standard errors (2 more at all); 0 with a better FID than every naive run.") in md
    with pytest.raises(InvalidParametersError, match="no done run of the reference method 'tan'"):
        write_comparison("both", studies, "tan", tmp_path / "x")


def test_compare_on_the_command_line_names_an_unknown_study(capsys):
    from diffusion_transfer.studies.__main__ import main

    root = Path(__file__).resolve().parents[1]
    assert main(["compare", "steps_aahq", "nope", "--project", str(root)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: no study 'nope'") and "naive_path_aahq" in err


def test_seed_replicates_are_one_row_whose_error_adds_the_replicates_spread(tmp_path):
    """Three sdft seeds that scatter widely are not 'more', though the binomial
    error alone would call the same mean difference more; replicates that agree
    exactly still carry their noise bank's binomial error."""
    from diffusion_transfer.studies.compare import write_comparison
    from diffusion_transfer.studies.spec import Point

    def point(pipeline, seed):
        return Point("every", pipeline, {"train.seed": seed}, {"replicate": f"{seed}-1234", "pipeline": pipeline})

    def binomial(p, n):
        return math.sqrt(p * (1 - p) / n)

    naive = [point("naive_aahq", s) for s in (0, 1)]
    sdft = [point("sdft_aahq", s) for s in (0, 1, 2)]
    for p, fid, glasses in zip(naive, (150.0, 152.0), (0.1, 0.2)):
        _done_point(tmp_path, p, fid, glasses, 0.02)
    for p, fid, glasses in zip(sdft, (200.0, 205.0, 210.0), (0.5, 0.9, 0.1)):
        _done_point(tmp_path, p, fid, glasses, 0.06)
    md = write_comparison("every", {"every": (naive + sdft, tmp_path)}, "naive", tmp_path / "out").read_text()
    rows = json.loads((tmp_path / "out" / "comparison.json").read_text())["rows"]
    assert [(r["method"], r["replicates"]) for r in rows] == [("naive", 2), ("sdft", 3)]
    assert rows[1]["metrics"]["fid"] == pytest.approx(205.0) and rows[1]["replicate_sd"]["fid"] == pytest.approx(5.0)
    assert "| 2 | every: sdft_aahq (3 replicates) | sdft | 205.00 ± 5.00 |" in md
    # glasses (30 source samples): the replicates' errors (sd 0.4 and sqrt(0.005)) with the binomial ones
    sdft_se = math.hypot(0.4 / math.sqrt(3), binomial(0.5, 30))
    naive_se = math.hypot(math.sqrt(0.005) / math.sqrt(2), binomial(0.15, 30))
    diff = 0.5 - 0.15
    assert 2 * math.hypot(binomial(0.5, 30), binomial(0.15, 30)) < diff < 2 * math.hypot(sdft_se, naive_se)
    assert "0.500 (0.150, +0.350)" in md  # not bold
    # woman (50 source samples): every replicate agrees (sd 0), 0.06 against 0.02 is two samples in 50
    assert rows[1]["replicate_sd"]["retention_of_absent.gender"] == 0.0
    assert 0.04 < 2 * math.hypot(binomial(0.06, 50), binomial(0.02, 50))
    assert "0.060 (0.020, +0.040)" in md  # not bold: the shared noise bank's error remains


def test_a_text_to_image_study_reports_clip_score_and_absent_concepts_kept_over_replicates(tmp_path):
    from diffusion_transfer.studies import write_study_report
    from diffusion_transfer.studies.spec import Point

    replicates = [{"train.seed": s, "sampling.seed": 1234} for s in (0, 1)]
    points = [Point("t2i", run, {**r}, {"replicate": r, "pipeline": run})
              for r in replicates for run in ("naive_aahq_text", "sdft_aahq_text")]
    values = {"naive_aahq_text": [(164.0, 58.0, 0.80), (166.0, 57.0, 0.70)],
              "sdft_aahq_text": [(185.0, 52.0, 0.75), (184.0, 53.0, 0.85)]}
    for i, point in enumerate(points):
        fid, clip, kept = values[point.pipeline][i // 2]
        folder = tmp_path / point.id
        (folder / "08_reporting" / point.namespace).mkdir(parents=True)
        (folder / "point.json").write_text(json.dumps({"run_seconds": 1.0}))
        (folder / "08_reporting" / point.namespace / "metrics.json").write_text(json.dumps(
            {"kind": "text_to_image", "models": {
                "source": {"fid": 183.0, "clip_score": 44.0},
                "finetuned": {"fid": fid, "kid_x1e3": 1.0, "clip_score": clip, "absent_face_rate": 0.9,
                              "retention_of_absent_concepts": {"a man with glasses": kept, "mean": kept}}}}))
    text = write_study_report("t2i", points, tmp_path).read_text()
    # over replicates: naive's CLIP score 57.5 ± 0.71 [57, 58]; SDFT's kept share 0.80 ± 0.07 [0.75, 0.85]
    assert "| naive_aahq_text | 2 | 165.00 ± 1.41 [164.00, 166.00] | 1.00 ± 0.00 [1.00, 1.00] | " \
           "57.50 ± 0.71 [57.00, 58.00] | 0.75 ± 0.07 [0.70, 0.80] |" in text
    assert "| sdft_aahq_text | 2 | 184.50 ± 0.71 [184.00, 185.00] |" in text and "separated" in text
    assert "| CLIP score | absent concepts kept (mean) | face rate (absent prompts) |" in text
    assert "absent values kept (mean)" not in text.split("| point |")[1]  # the pixel runs' columns are not shown
    front = json.loads((tmp_path / "study.json").read_text())["pareto_front"]
    # (FID, kept): naive (164, .80) and SDFT (184, .85) are on the front; naive (166, .70) and SDFT (185, .75) not
    assert set(front) == {points[0].id, points[3].id}
