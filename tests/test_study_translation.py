"""A study whose points ran the translate stage: each translator's measures
over the seed replicates, the best mean and the separated pipelines, by hand."""

from __future__ import annotations

import json
from pathlib import Path

from diffusion_transfer.studies.spec import Point
from diffusion_transfer.studies.translation_report import translation_table


def _point(root: Path, pipeline: str, replicate: str, rows: dict | None) -> Point:
    point = Point("t", pipeline, {}, {"replicate": replicate, "pipeline": pipeline})
    if rows is not None:
        folder = root / point.id / "08_reporting" / point.namespace
        folder.mkdir(parents=True)
        (root / point.id / "point.json").write_text("{}")
        (folder / "translation_metrics.json").write_text(json.dumps({"rows": rows}))
    return point


def _rows(psnr: float, fid: float) -> dict:
    return {"sdedit": {"psnr": psnr, "fid": fid}, "ilvr": {"psnr": psnr + 10, "fid": fid - 20}}


def _line(lines: list[str], translator: str, pipeline: str) -> list[str]:
    return [line for line in lines if line.startswith(f"| {translator} | {pipeline} |")][0].split(" | ")


def test_each_translator_gets_its_spread_best_mean_and_verdicts(tmp_path):
    points = [_point(tmp_path, "naive_aahq", "0", _rows(14.0, 170.0)),
              _point(tmp_path, "naive_aahq", "1", _rows(15.0, 172.0)),
              _point(tmp_path, "sdft_aahq", "0", _rows(16.0, 171.0)),
              _point(tmp_path, "sdft_aahq", "1", _rows(17.0, 175.0)),
              _point(tmp_path, "sdft_aahq", "2", None)]  # not run yet: left out
    lines = translation_table(points, tmp_path)
    naive, sdft = _line(lines, "sdedit", "naive_aahq"), _line(lines, "sdedit", "sdft_aahq")
    # PSNR: sdft's 16, 17 beat naive's 14, 15 in every replicate; higher is better
    assert sdft[2] == "**16.50 ± 0.71 [16.00, 17.00]** (n=2)" and naive[2] == "14.50 ± 0.71 [14.00, 15.00] (n=2)"
    # FID: naive's mean 171 is the best; sdft's range 171..175 overlaps 170..172: no verdict on FID
    assert naive[3] == "**171.00 ± 1.41 [170.00, 172.00]** (n=2)"
    assert naive[-1] == "PSNR |" and sdft[-1] == " |"
    assert _line(lines, "ilvr", "sdft_aahq")[2].startswith("**26.50 ± 0.71")
    assert "SSIM" not in lines[4]  # measures no run wrote have no column


def test_no_translate_stage_no_section_and_datasets_are_compared_apart(tmp_path):
    assert translation_table([_point(tmp_path, "naive_aahq", "0", None)], tmp_path) == []
    points = [_point(tmp_path, "naive_aahq", "0", _rows(14.0, 170.0)),
              _point(tmp_path, "naive_aahq", "1", _rows(15.0, 171.0)),
              _point(tmp_path, "naive_metfaces", "0", _rows(20.0, 100.0)),
              _point(tmp_path, "naive_metfaces", "1", _rows(21.0, 101.0))]
    lines = translation_table(points, tmp_path)
    # each dataset's only pipeline: nothing to be best among, nothing separated, though metfaces' values are better
    assert _line(lines, "sdedit", "naive_aahq")[2] == "14.50 ± 0.71 [14.00, 15.00] (n=2)"
    assert _line(lines, "sdedit", "naive_aahq")[-1] == " |"
