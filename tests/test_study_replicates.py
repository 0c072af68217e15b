"""A study with a ``replicate`` axis: groups, spreads and verdicts by hand."""

from __future__ import annotations

import math

from diffusion_transfer.studies.replicates import replicate_groups, replicate_table, separated, spread


def _row(pipeline: str, replicate: str, fid: float | None, face_rate: float = 1.0) -> dict:
    labels = {"replicate": replicate, "pipeline": pipeline}
    if fid is None:
        return {"labels": labels, "done": False}
    return {"labels": labels, "done": True, "metrics": {"fid": fid, "face_rate": face_rate}}


ROWS = [_row("naive_x", "0-1234", 10.0), _row("anl_x", "0-1234", 20.0), _row("scratch_x", "0-1234", 30.0),
        _row("naive_x", "1-1235", 12.0), _row("anl_x", "1-1235", 9.0), _row("scratch_x", "1-1235", 34.0, 0.5),
        _row("naive_x", "2-1236", None)]


def test_groups_collect_each_measure_over_the_replicates_done():
    groups = replicate_groups(ROWS)
    assert [g["labels"] for g in groups] == [{"pipeline": "naive_x"}, {"pipeline": "anl_x"},
                                             {"pipeline": "scratch_x"}]
    assert groups[0]["replicates"] == ["0-1234", "1-1235"]  # the third is not run yet
    assert groups[0]["values"]["fid"] == [10.0, 12.0]
    assert groups[2]["values"]["face_rate"] == [1.0, 0.5]


def test_spread_is_the_sample_standard_deviation():
    s = spread([10.0, 12.0, 17.0])
    assert s["mean"] == 13.0 and s["min"] == 10.0 and s["max"] == 17.0 and s["n"] == 3
    assert math.isclose(s["std"], math.sqrt(((10 - 13) ** 2 + (12 - 13) ** 2 + (17 - 13) ** 2) / 2))
    assert spread([4.0])["std"] is None


def test_only_ranges_that_do_not_overlap_make_a_verdict():
    naive, anl, scratch = (spread(v) for v in ([10.0, 12.0], [20.0, 9.0], [30.0, 34.0]))
    assert separated(naive, scratch, lower_is_better=True)       # 12 < 30
    assert not separated(naive, anl, lower_is_better=True)       # 9..20 overlaps 10..12
    assert not separated(spread([1.0]), scratch, lower_is_better=True)  # one replicate is never a verdict
    assert separated(spread([0.9, 1.0]), spread([0.5, 0.6]), lower_is_better=False)


def test_the_table_marks_each_group_against_the_best_mean_fid():
    lines = replicate_table(ROWS)
    rows = {line.split(" | ")[0].strip("| "): line for line in lines if line.startswith("| ") and "_x" in line}
    assert "11.00 ± 1.41 [10.00, 12.00]" in rows["naive_x"] and rows["naive_x"].endswith("| best |")
    assert rows["anl_x"].endswith("| within noise |")
    assert rows["scratch_x"].endswith("| separated |")
    assert "0.75 ± 0.35 [0.50, 1.00]" in rows["scratch_x"]  # face rate
    other_dataset = [_row("naive_y", "0-1234", 1.0), _row("naive_y", "1-1235", 2.0), _row("anl_y", "0-1234", 5.0),
                     _row("anl_y", "1-1235", 6.0)]
    both = {line.split(" | ")[0].strip("| "): line for line in replicate_table(ROWS + other_dataset)}
    assert both["naive_x"].endswith("| best |")  # compared within its dataset (its own FID reference) only
    assert both["naive_y"].endswith("| best |") and both["anl_y"].endswith("| separated |")
    one = replicate_table(ROWS + [_row("tan_x", "0-1234", 40.0)])
    assert [line for line in one if line.startswith("| tan_x")][0].endswith("| one replicate: no verdict |")
    assert replicate_table([{"labels": {"pipeline": "p"}, "done": False}]) == []  # no replicate axis: no section


def test_replicates_and_sampling_seeds_make_the_replicate_axis():
    import pytest

    from diffusion_transfer.project.schema import InvalidParametersError
    from diffusion_transfer.studies.spec import slug, study_points

    block = {"grid": {"pipeline": ["naive_x", "sdft_x"]}, "replicates": 2, "sampling_seeds": 2}
    points = study_points("s", block)
    assert len(points) == 8 and points[0].labels["pipeline"] == "naive_x"
    assert [p.overrides for p in points[:4:1] if p.pipeline == "naive_x"] == [
        {"train.seed": 0, "sampling.seed": 1234}, {"train.seed": 0, "sampling.seed": 1235}]
    assert [slug(p.labels["replicate"]) for p in points if p.pipeline == "sdft_x"] == [
        "0-1234", "0-1235", "1-1234", "1-1235"]
    groups = replicate_groups([{"labels": p.labels, "done": True, "metrics": {"fid": float(i)}}
                               for i, p in enumerate(points)])
    assert [len(g["values"]["fid"]) for g in groups] == [4, 4]  # one group per pipeline, over the seeds
    with pytest.raises(InvalidParametersError, match="'replicates' / 'sampling_seeds' both make"):
        study_points("s", {**block, "grid": {**block["grid"], "replicate": [{"train.seed": 0}]}})


def test_a_few_shot_study_shows_intra_lpips_to_three_decimals_only_where_measured():
    from diffusion_transfer.studies.report import study_table

    def few_shot(pipeline: str, replicate: str, fid: float, diversity: float) -> dict:
        row = _row(pipeline, replicate, fid)
        row.update(point=f"{replicate}_{pipeline}", metrics={**row["metrics"], "intra_lpips": diversity})
        return row

    rows = [few_shot("naive_s", "0-1234", 50.0, 0.2114), few_shot("naive_s", "1-1234", 52.0, 0.2246),
            few_shot("sdft_s", "0-1234", 55.0, 0.2541), few_shot("sdft_s", "1-1234", 54.0, 0.2619)]
    lines = {line.split(" | ")[0].strip("| "): line for line in replicate_table(rows)}
    assert "intra-LPIPS" in lines["pipeline"]
    assert "0.218 ± 0.009 [0.211, 0.225]" in lines["naive_s"]  # mean 0.2180, sd 0.00933
    assert "0.258 ± 0.006 [0.254, 0.262]" in lines["sdft_s"]
    table = study_table(rows, front=set())
    assert table[0].endswith("| intra-LPIPS | Pareto | run (s) |")
    assert "| 0.254 |" in table[4]
    plain = [_row("naive_x", "0-1234", 10.0) | {"point": "p"}]
    assert "intra-LPIPS" not in study_table(plain, front=set())[0]  # no few-shot run: no column
    assert "intra-LPIPS" not in replicate_table(ROWS)[4]
