"""An unwritable tracking store is found before the run (issue 32): one
warning at once and the run goes on untracked, without importing mlflow
(before, mlflow retried for about 100 s); with ``DT_TRACKING=required`` it
is an ``Error:``. The store is put under a regular file, which no user, root
included, can create folders in."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests._pipeline_helpers import _scratch_project
from tests.test_own_data import KEDRO


def test_local_stores_are_probed_and_servers_left_to_mlflow(tmp_path):
    from diffusion_transfer.tracking.store import unwritable_store

    (tmp_path / "a_file").write_text("")
    assert unwritable_store(f"sqlite:///{tmp_path}/new/folder/mlflow.db", tmp_path) is None  # mlflow creates it
    assert unwritable_store("mlruns", tmp_path) is None
    assert unwritable_store(f"file://{tmp_path}/mlruns", tmp_path) is None
    folder, why = unwritable_store(f"sqlite:///{tmp_path}/a_file/mlflow.db", tmp_path)
    assert folder == tmp_path / "a_file" and why == "Not a directory"
    assert unwritable_store("a_file/mlruns", tmp_path)[0] == tmp_path / "a_file" / "mlruns"
    assert unwritable_store("http://127.0.0.1:1/", tmp_path) is None
    assert unwritable_store("postgresql://user@host/db", tmp_path) is None


def test_a_read_only_folder_is_found_by_the_probe(tmp_path, monkeypatch):
    from diffusion_transfer.tracking import store

    def refuse(folder):
        raise PermissionError(13, "Permission denied", str(folder))

    monkeypatch.setattr(store, "probe_write", refuse)
    folder, why = store.unwritable_store(f"sqlite:///{tmp_path}/mlflow.db", tmp_path)
    assert folder == tmp_path and "Permission denied" in why


_SESSION = ("import sys, time; from pathlib import Path\n"
            "from kedro.framework.startup import bootstrap_project\n"
            "from kedro.framework.session import KedroSession\n"
            "p = Path(sys.argv[1]); bootstrap_project(p); start = time.monotonic()\n"
            "KedroSession.create(project_path=p, env='smoke').load_context()\n"
            "print('SETUP', round(time.monotonic() - start, 1), 'mlflow' in sys.modules)\n")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    proj = _scratch_project(tmp_path_factory.mktemp("store"))
    (proj / "not_a_folder").write_text("")
    return proj


def _env(proj: Path, switch: str) -> dict[str, str]:
    return {**os.environ, "DT_TRACKING": switch, "MLFLOW_TRACKING_URI": f"sqlite:///{proj}/not_a_folder/mlflow.db",
            "COLUMNS": "1000"}  # rich's log lines unwrapped


def test_an_unwritable_store_warns_once_at_once_and_mlflow_is_not_imported(project):
    done = subprocess.run([sys.executable, "-c", _SESSION, str(project)], cwd=project, env=_env(project, "on"),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout + done.stderr
    assert out.count("mlflow tracking is off for this run") == 1, out[-3000:]
    assert "not_a_folder (Not a directory)" in out and "turn tracking off (DT_TRACKING=off)" in out
    seconds, imported = done.stdout.split("SETUP")[1].split()
    assert imported == "False" and float(seconds) < 20  # no store was opened, so nothing retried


def test_required_tracking_stops_the_run_with_an_error(project):
    start = time.monotonic()
    done = subprocess.run([str(KEDRO), "run", "--pipeline=sdft_aahq", "--env=smoke"], cwd=project,
                          env=_env(project, "required"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    error = " ".join(done.stderr[done.stderr.index("Error: "):].split())
    assert done.stderr.count("Error: ") == 1
    assert "DT_TRACKING=required but mlflow tracking cannot start: its store" in error
    assert "not_a_folder" in error and not (project / "data" / "smoke" / "07_model_output").exists()
    assert time.monotonic() - start < 120
