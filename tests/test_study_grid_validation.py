"""A study validates every point of its grid before the first one runs
(issue 32): a wrong value in a later point is found before any point
computes, and one error names each failing point and the parameter."""

from __future__ import annotations

import os
import subprocess
import sys

from tests._pipeline_helpers import ROOT, _scratch_project

#: A study of the smoke environment whose first point is valid and whose other two are not.
BAD_STUDY = """
  steps_bad:
    outputs: [metrics]
    pipeline: sdft_aahq
    grid:
      train.steps: [4, abc, xyz]
"""


def test_every_point_is_checked_and_a_valid_grid_passes():
    from diffusion_transfer.studies.runner import check_points
    from diffusion_transfer.studies.spec import study_points

    points = study_points("fine", {"pipeline": "sdft_aahq", "grid": {"train.steps": [4, 5]}}, None)
    check_points("fine", points, ROOT, "smoke", ROOT / "data" / "smoke" / "studies" / "fine")  # no error


def test_a_wrong_value_in_a_later_point_stops_the_study_before_the_first_point(tmp_path):
    proj = _scratch_project(tmp_path)
    params = proj / "conf" / "smoke" / "parameters.yml"
    assert params.read_text().rstrip().splitlines()[-1].startswith("      ")  # 'studies' is the last block
    params.write_text(params.read_text().rstrip() + "\n" + BAD_STUDY)
    done = subprocess.run([sys.executable, "-m", "diffusion_transfer.studies", "run", "steps_bad", "--env", "smoke",
                           "--project", str(proj)], cwd=proj, env={**os.environ, "DT_TRACKING": "off"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, (done.stdout + done.stderr)[-4000:]
    assert "Traceback" not in done.stderr, done.stderr[-4000:]
    error = done.stderr[done.stderr.index("Error: "):]
    assert error.startswith("Error: Invalid parameters in 'studies.steps_bad': 2 of its 3 points to run do not "
                            "validate (nothing was run)")
    for value in ("abc", "xyz"):  # each failing point, by id, with the parameter and its value
        assert f"studies.steps_bad: point steps-{value}_" in error
        assert ".steps: Input should be a valid integer" in error and f"(got '{value}')" in error
    assert "point steps-4_" not in error
    # the first (valid) point never started: no point folder, nothing computed
    study = proj / "data" / "smoke" / "studies" / "steps_bad"
    assert not study.exists() or not any(study.iterdir())
    assert not (proj / "data" / "smoke" / "01_raw").exists()
