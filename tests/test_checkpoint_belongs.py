"""A checkpoint belongs to its run (issue 32), through the real ``kedro``
command line: a naive run's checkpoint placed as the newest in an SDFT run's
checkpoint folder, and one recording another source model, are not resumed;
the SDFT run falls back to its own checkpoint and says why.

In a scratch copy of the project under ``--env=smoke`` (4 steps, a checkpoint
every 2), ``naive_aahq`` and ``sdft_aahq`` are trained up to their training
history; SDFT's last checkpoint is replaced by naive's (same UNet, so its
tensors fit: only the recorded method tells them apart) and a copy of SDFT's
step 2 whose record names another source model is placed newest. SDFT run
again must resume from its own step 2."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests._pipeline_helpers import SMOKE_DATA, _scratch_project

KEDRO = Path(sys.executable).parent / "kedro"
# Wide log lines: rich wraps a message at the terminal width otherwise.
ENV = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1",
       "MLFLOW_DISABLE_TELEMETRY": "true", "DT_TRACKING": "off", "COLUMNS": "1000"}


def kedro_run(proj: Path, pipelines: list[str]) -> str:
    """``kedro run --env=smoke`` of ``pipelines`` up to their training histories; its output, checked to succeed."""
    done = subprocess.run([str(KEDRO), "run", "--env=smoke", f"--pipelines={','.join(pipelines)}",
                           f"--to-outputs={','.join(f'{p}.training_history' for p in pipelines)}"],
                          cwd=proj, env=ENV, capture_output=True, text=True, timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    return re.sub(r"\s+", " ", out)  # any line rich still wraps, joined


def history(proj: Path, run: str) -> dict:
    return json.loads((proj / SMOKE_DATA / "08_reporting" / run / "training_history.json").read_text())


@pytest.mark.slow
def test_a_checkpoint_of_another_method_or_source_model_is_never_resumed(tmp_path):
    proj = _scratch_project(tmp_path)
    kedro_run(proj, ["naive_aahq", "sdft_aahq"])
    naive_dir, sdft_dir = (proj / history(proj, run)["checkpoint_dir"] for run in ("naive_aahq", "sdft_aahq"))
    assert naive_dir != sdft_dir and (sdft_dir / "step_0000002.pt").is_file()

    # naive's step 4 where SDFT's was; SDFT's step 2 recording another source model, newest of all
    shutil.copy(naive_dir / "step_0000004.pt", sdft_dir / "step_0000004.pt")
    other_source = torch.load(sdft_dir / "step_0000002.pt", weights_only=True)
    other_source["run_identity"]["source"] = "0" * 16
    other_source["step"] = 6
    torch.save(other_source, sdft_dir / "step_0000006.pt")

    out = kedro_run(proj, ["sdft_aahq"])
    assert history(proj, "sdft_aahq")["resumed_from_step"] == 2, out[-4000:]  # its own, not 4 (naive) or 6
    assert history(proj, "sdft_aahq")["history"][-1]["step"] == 4
    assert "step_0000004.pt: it belongs to another run (written by method 'naive', this run is 'sdft'" in out
    assert "step_0000006.pt: it belongs to another run (written from another source model)" in out
    assert "resuming from step 2 of" in out and "fell back past 2 newer checkpoint(s)" in out
