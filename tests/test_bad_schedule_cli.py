"""A model folder whose scheduler config is numerically impossible stops
``kedro run`` before compute, with one ``Error:`` paragraph naming the file
and the key (issue 32): before, ``beta_end`` above 1 failed in translate with
a ZeroDivisionError and ``num_train_timesteps: 1`` in the classifier."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from tests.test_failures import MODEL, TARGET, error_paragraph, nothing_computed
from tests.test_own_data import kedro, own_data_project

BAD_SCHEDULES = {"beta_above_one": {"beta_schedule": "linear", "beta_end": 1.5},
                 "one_step": {"num_train_timesteps": 1}}


def test_impossible_schedules_stop_the_run_before_compute(tmp_path):
    own = own_data_project(tmp_path)
    sources, datasets = {}, {}
    for name, change in BAD_SCHEDULES.items():
        folder = own / "data" / "06_models" / name
        shutil.copytree(own / MODEL, folder)
        config_file = folder / "scheduler" / "scheduler_config.json"
        config_file.write_text(json.dumps({**json.loads(config_file.read_text()), **change}))
        sources[f"s_{name}"] = {"model": f"data/06_models/{name}", "images": "data/01_raw/my_source_images"}
        datasets[f"d_{name}"] = {"source": f"s_{name}", "images": str(TARGET), "curation": {}}
    (own / "conf" / "badschedule").mkdir()
    (own / "conf" / "badschedule" / "parameters.yml").write_text(json.dumps({"sources": sources,
                                                                           "datasets": datasets}))
    start = time.monotonic()
    done = kedro(own, "run", f"--pipelines={','.join(f'curate_d_{n}' for n in BAD_SCHEDULES)}", "--env=badschedule")
    took = time.monotonic() - start
    error = error_paragraph(done)  # exit 1, no traceback, one Error: paragraph
    assert "2 problem(s) with the run's models; nothing was computed" in error
    scheduler = Path("data/06_models/{}/scheduler/scheduler_config.json")
    assert f"beta_end in {str(scheduler).format('beta_above_one')} is 1.5" in error
    assert f"num_train_timesteps in {str(scheduler).format('one_step')} is 1" in error
    assert nothing_computed(own, "badschedule")
    assert took < 120, took  # the kedro start-up and the pre-run check only
