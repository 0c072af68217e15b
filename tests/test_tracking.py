"""Experiment tracking (issue 17): the switch, what a run logs (re-derived
from the run's own JSON outputs), where it goes, samples during training.

Every store here is a SQLite file under tmp_path; mlflow's telemetry is off
(conftest) and nothing reaches the network.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests._pipeline_helpers import _scratch_project

ROOT = Path(__file__).resolve().parents[1]
TINY_UNET = dict(sample_size=8, block_out_channels=(8, 16), layers_per_block=1,
                 down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                 attention_head_dim=8, norm_num_groups=4)


scratch_project = _scratch_project  # a copy of the project sharing the committed world models


# --- the switch ---------------------------------------------------------------------------


def test_dt_tracking_wins_over_the_parameter_and_runtime_params_over_conf(monkeypatch):
    from diffusion_transfer.tracking import tracking_enabled

    conf_on, conf_off = {"tracking": {"enabled": True}}, {"tracking": {"enabled": False}}
    monkeypatch.delenv("DT_TRACKING", raising=False)
    assert tracking_enabled(conf_on) and not tracking_enabled(conf_off)
    assert tracking_enabled({})  # on by default
    assert not tracking_enabled(conf_on, {"tracking": {"enabled": False}})  # --params tracking.enabled=false
    monkeypatch.setenv("DT_TRACKING", "off")
    assert not tracking_enabled(conf_on)
    monkeypatch.setenv("DT_TRACKING", "ON")
    assert tracking_enabled(conf_off)


def test_bad_switch_values_name_the_setting(monkeypatch):
    from diffusion_transfer.project.schema import InvalidParametersError
    from diffusion_transfer.tracking import tracking_enabled

    monkeypatch.setenv("DT_TRACKING", "maybe")
    with pytest.raises(InvalidParametersError, match="DT_TRACKING='maybe'"):
        tracking_enabled({})
    monkeypatch.delenv("DT_TRACKING")
    with pytest.raises(InvalidParametersError, match="'tracking.enabled'"):
        tracking_enabled({"tracking": {"enabled": "yes please"}})


def test_logging_the_model_can_be_turned_off_and_nothing_else_changes(tmp_path):
    from diffusion_transfer.project.schema import InvalidParametersError
    from diffusion_transfer.tracking.hook import TrackingHook, model_logging_enabled

    assert model_logging_enabled({}) and model_logging_enabled({"tracking": {"enabled": True}})
    assert not model_logging_enabled({"tracking": {"log_model": False}})
    assert model_logging_enabled({"tracking": {"log_model": False}}, {"tracking": {"log_model": True}})
    with pytest.raises(InvalidParametersError, match="'tracking.log_model'"):
        model_logging_enabled({"tracking": {"log_model": "no"}})

    class Logger:  # records what the hook hands on
        calls: list = []

        def log_model(self, *args):
            self.calls.append(("model", args[0]))

        def log_file(self, namespace, path):
            self.calls.append(("file", namespace))

    class Resolver:
        config = {"sdft_aahq.finetuned_model": {"path": str(tmp_path)},
                  "sdft_aahq.report": {"filepath": str(tmp_path / "report.md")}}

    hook = TrackingHook()
    hook._logger, hook._catalog = Logger(), type("Catalog", (), {"config_resolver": Resolver()})()
    hook._model_config = lambda namespace: {}
    hook.after_dataset_saved("sdft_aahq.finetuned_model", object())
    assert Logger.calls == [("model", "sdft_aahq")]
    hook._log_model = False
    hook.after_dataset_saved("sdft_aahq.finetuned_model", object())
    hook.after_dataset_saved("sdft_aahq.report", "text")
    assert Logger.calls == [("model", "sdft_aahq"), ("file", "sdft_aahq")]


# --- what is logged -------------------------------------------------------------------------


def test_records_follow_the_history_and_metrics_files():
    from diffusion_transfer.tracking import records

    history = [{"step": 10, "loss": 0.5, "distill": 0.25, "lr": 1e-4},
               {"step": 20, "loss": 0.4, "distill": float("nan"), "lr": 1e-4}]
    losses = records.loss_metrics(history)
    # every finite term of every record, with its step; the non-finite one is left out
    assert sorted(losses) == sorted([("train.loss", 0.5, 10), ("train.distill", 0.25, 10), ("train.lr", 1e-4, 10),
                                     ("train.loss", 0.4, 20), ("train.lr", 1e-4, 20)])
    metrics = {"models": {"source": {"fid": 9.0, "coverage": {"overall_rate": 0.5}},
                          "finetuned": {"fid": 3.0, "kid_x1e3": 1.5, "retention_of_absent": {"eyewear": 0.25,
                                                                                             "mean": 0.25},
                                        "intra_lpips_detail": {"clusters": [1, 2]}, "note": "text"}}}
    assert records.evaluation_metrics(metrics) == {"fid": 3.0, "kid_x1e3": 1.5, "retention_of_absent.eyewear": 0.25,
                                                   "retention_of_absent.mean": 0.25, "source.fid": 9.0,
                                                   "source.coverage.overall_rate": 0.5}
    table = {"rows": {"sdedit": {"fid": 2.0, "psnr": 20.0}, "ilvr": {"fid": None}}}
    assert records.translation_metrics(table) == {"translation.sdedit.fid": 2.0, "translation.sdedit.psnr": 20.0}
    run = {"run": "sdft_aahq", "hyperparameters": {"gamma_aux": 50.0, "weighting": "p2"},
           "train": {"betas": [0.9, 0.999], "grad_clip": None}, "samples": None}
    assert records.run_params(run) == {"run.run": "sdft_aahq", "run.hyperparameters.gamma_aux": "50.0",
                                       "run.hyperparameters.weighting": "p2", "run.train.betas": "[0.9, 0.999]",
                                       "run.train.grad_clip": "null", "run.samples": "null"}


def test_training_sample_images_put_the_source_above_each_step():
    from diffusion_transfer.tracking import records

    rng = np.random.default_rng(0)
    rows = {k: rng.integers(0, 256, (3, 4, 5, 3), dtype=np.uint8) for k in ("source", "step_0000020", "step_0000010")}
    images = records.training_sample_images(rows)
    assert [s for s, _ in images] == [10, 20]
    step, image = images[0]
    assert image.shape == (8, 15, 3)
    # column j of the top half is source image j; of the bottom half, the step-10 image j
    for j in range(3):
        np.testing.assert_array_equal(image[:4, 5 * j : 5 * (j + 1)], rows["source"][j])
        np.testing.assert_array_equal(image[4:, 5 * j : 5 * (j + 1)], rows["step_0000010"][j])


def test_run_logger_writes_to_the_run_or_one_child_per_namespace(tmp_path):
    from mlflow.tracking import MlflowClient

    from diffusion_transfer.tracking.logger import RunLogger

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("t", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(experiment, run_name="sdft_aahq").info.run_id
    single = RunLogger(client, parent, {"sdft_aahq"}, {})
    assert single.run_for("sdft_aahq") == parent and not single.children
    single.log_metrics("sdft_aahq", [("train.loss", 0.5, 1), ("train.loss", 0.25, 2)])
    assert [(m.step, m.value) for m in client.get_metric_history(parent, "train.loss")] == [(1, 0.5), (2, 0.25)]
    single.log_params("sdft_aahq", {"run.method": "sdft", "long": "x" * 7000})
    assert client.get_run(parent).data.params["long"] == "x" * 6000  # mlflow's limit: truncated, not failed

    compare = client.create_run(experiment, run_name="compare_aahq").info.run_id
    several = RunLogger(client, compare, {"sdft_aahq", "naive_aahq"}, {"study": "s"})
    several.log_metrics("naive_aahq", [("fid", 3.0, 0)])
    child = several.children["naive_aahq"]
    run = client.get_run(child)
    assert run.data.tags["mlflow.parentRunId"] == compare and run.data.tags["study"] == "s"
    assert run.info.run_name == "naive_aahq" and run.data.metrics == {"fid": 3.0}
    report = tmp_path / "report.md"
    report.write_text("# Report\n")
    several.log_file("naive_aahq", report)
    several.log_images("naive_aahq", "training_samples", [(2, np.zeros((8, 8, 3), np.uint8))])
    assert {"report.md", "images"} <= {a.path for a in client.list_artifacts(child)}
    several.close("FINISHED")
    assert client.get_run(child).info.status == "FINISHED"
    several.log_metrics("naive_aahq", [("bad", float("nan"), "not a step")])  # a failed write warns, never raises


# --- samples during training ------------------------------------------------------------------


def _finetune(tmp_path: Path, sample_every: int | None, steps: int = 4):
    import torch

    from diffusion_transfer.core.models.unet import build_unet
    from diffusion_transfer.pipelines.finetune.nodes import finetune
    from diffusion_transfer.project.resolved import run_inputs

    torch.manual_seed(0)
    source = build_unet(TINY_UNET)
    images = torch.randint(0, 256, (4, 8, 8, 3), dtype=torch.uint8)
    train = {"steps": steps, "batch_size": 2, "checkpoint_every": 100, "log_every": 1, "sample_every": sample_every,
             "sample_n": 3, "sample_steps": 2}
    return finetune(source, {"images": images, "meta": {}}, *run_inputs({"name": "sdft"}, {"name": "toy"}, train), {},
                    str(tmp_path))


def _ddim_uint8(model, n: int) -> np.ndarray:
    from diffusion_transfer.core.data.images import to_uint8
    from diffusion_transfer.core.sampling import make_noise_bank, model_eps_fn, sample_ddim
    from diffusion_transfer.pipelines.schedule import model_schedule
    from diffusion_transfer.pipelines.training_samples import NOISE_SEED_OFFSET

    sched = model_schedule(model, {})
    noise = make_noise_bank(n, (3, 8, 8), seed=0 + NOISE_SEED_OFFSET)  # train.seed 0
    return to_uint8(sample_ddim(model_eps_fn(model.eval(), sched), noise, sched, steps=2))


def test_samples_during_training_change_no_weight_and_survive_a_resume(tmp_path):
    import torch

    from diffusion_transfer.core.models.unet import build_unet
    from diffusion_transfer.pipelines.training_samples import load_rows, training_samples_strip

    plain, plain_history = _finetune(tmp_path / "plain", None)
    sampled, history = _finetune(tmp_path / "sampled", 2)
    for (name, a), b in zip(plain.state_dict().items(), sampled.state_dict().values()):
        assert torch.equal(a, b), name
    # the checkpoints of both runs share their key: sample settings are not training settings
    assert Path(plain_history["checkpoint_dir"]).name == Path(history["checkpoint_dir"]).name
    assert "training_samples" not in plain_history
    meta = history["training_samples"]
    assert meta["steps"] == [2, 4] and meta["n"] == 3 and meta["final"] == "final (EMA)"
    rows = load_rows(meta["file"])
    assert set(rows) == {"source", "step_0000002", "step_0000004", "final"}
    assert all(r.shape == (3, 8, 8, 3) and r.dtype == np.uint8 for r in rows.values())
    # re-derived: the source model and the returned (EMA) model, DDIM 2 steps from the seeded noise
    np.testing.assert_array_equal(rows["final"], _ddim_uint8(sampled, 3))
    torch.manual_seed(0)
    np.testing.assert_array_equal(rows["source"], _ddim_uint8(build_unet(TINY_UNET), 3))
    strip = training_samples_strip(history)
    assert strip.size[1] == 4 * (8 * 2 + 2)  # four labelled rows of 8 px images at scale 2
    # a resumed (here: already finished) run trains no step and keeps the rows sampled before
    _, again = _finetune(tmp_path / "sampled", 2)
    assert again["resumed_from_step"] == 4 and again["training_samples"]["steps"] == [2, 4]
    assert training_samples_strip({}).size[1] == 24  # samples off: a one-line note


def test_strip_keeps_the_first_and_last_step_when_there_are_many():
    from diffusion_transfer.pipelines.training_samples import MAX_STRIP_ROWS, spread

    steps = list(range(1, 41))
    kept = spread(steps, MAX_STRIP_ROWS)
    assert len(kept) == MAX_STRIP_ROWS and kept[0] == 1 and kept[-1] == 40 and kept == sorted(kept)
    assert spread(steps[:5], MAX_STRIP_ROWS) == steps[:5]


# --- Kedro runs -------------------------------------------------------------------------------------


def test_tracking_off_imports_no_mlflow_and_writes_no_store(tmp_path):
    """A session with tracking off never imports mlflow (no start-up cost) nor creates a store."""
    proj = scratch_project(tmp_path)
    code = ("import sys; from pathlib import Path\n"
            "from kedro.framework.startup import bootstrap_project\n"
            "from kedro.framework.session import KedroSession\n"
            f"p = Path({str(proj)!r}); bootstrap_project(p)\n"
            "KedroSession.create(project_path=p, env='smoke').load_context()\n"
            "print('MLFLOW', 'mlflow' in sys.modules, 'kedro_mlflow' in sys.modules)\n")
    env = {**os.environ, "DT_TRACKING": "off"}
    done = subprocess.run([sys.executable, "-c", code], cwd=proj, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "MLFLOW False False" in done.stdout
    assert not (proj / "mlflow.db").exists() and not (proj / "mlruns").exists()


@pytest.fixture(scope="module")
def tracked_smoke_run(tmp_path_factory):
    """``kedro run --pipeline=sdft_aahq --env=smoke`` with tracking on, into a SQLite store under tmp."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    proj = scratch_project(tmp_path_factory.mktemp("tracked"))
    store = f"sqlite:///{proj / 'store.db'}"
    saved = {k: os.environ.get(k) for k in ("DT_TRACKING", "MLFLOW_TRACKING_URI")}
    os.environ.update(DT_TRACKING="on", MLFLOW_TRACKING_URI=store)
    old = Path.cwd()
    os.chdir(proj)
    try:
        bootstrap_project(proj)
        with KedroSession.create(project_path=proj, env="smoke") as session:
            session.run(pipeline_names=["sdft_aahq"])
    finally:
        os.chdir(old)
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    return proj, store


@pytest.mark.slow
def test_a_tracked_run_logs_params_losses_metrics_and_artifacts(tracked_smoke_run):
    from mlflow.tracking import MlflowClient

    proj, store = tracked_smoke_run
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("diffusion_transfer")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "sdft_aahq" and run.info.status == "FINISHED"
    import torch  # the versions that produced the run are its tags

    assert run.data.tags["env.torch"] == torch.__version__ and run.data.tags["env.commit"]
    assert {"env.diffusers", "env.kedro", "env.numpy", "env.device"} <= set(run.data.tags)
    out = proj / "data" / "smoke" / "08_reporting" / "sdft_aahq"
    history = json.loads((out / "training_history.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    params = run.data.params
    # kedro-mlflow's node parameters (flattened) and the resolved run (AAHQ's Table 5 preset applied)
    assert params["methods.sdft.weighting"] == "p2" and params["train.steps"] == "4"
    assert params["run.hyperparameters.gamma_aux"] == str(history["run"]["hyperparameters"]["gamma_aux"]) == "50.0"
    # the loss terms, one value per history record, at its step
    logged = client.get_metric_history(run.info.run_id, "train.loss")
    assert [(m.step, m.value) for m in logged] == [(r["step"], pytest.approx(r["loss"])) for r in history["history"]]
    finetuned = metrics["models"]["finetuned"]
    assert run.data.metrics["fid"] == pytest.approx(finetuned["fid"])
    assert run.data.metrics["retention_of_absent.mean"] == pytest.approx(finetuned["retention_of_absent"]["mean"])
    assert run.data.metrics["source.fid"] == pytest.approx(metrics["models"]["source"]["fid"])
    table = json.loads((out / "translation_metrics.json").read_text())
    assert run.data.metrics["translation.sdedit.lpips"] == pytest.approx(table["rows"]["sdedit"]["lpips"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.md", "samples_src_vs_trg.png", "loss_curve.png", "translations.png", "training_samples.png",
            "metrics.json", "images"} <= artifacts
    # the report logged is the file written, and it shows the strip of samples during training
    local = client.download_artifacts(run.info.run_id, "report.md", str(proj))
    assert Path(local).read_text() == (out / "report.md").read_text()
    assert "![samples during training](training_samples.png)" in (out / "report.md").read_text()


@pytest.mark.slow
def test_the_finetuned_model_is_an_mlflow_model_that_registers_and_samples_as_the_run_did(tracked_smoke_run,
                                                                                          monkeypatch):
    import mlflow
    from mlflow.entities import LoggedModelStatus
    from mlflow.tracking import MlflowClient

    from diffusion_transfer.datasets import TensorDictDataset

    proj, store = tracked_smoke_run
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("diffusion_transfer").experiment_id
    (found,) = client.search_runs([experiment])
    run = client.get_run(found.info.run_id)
    (output,) = run.outputs.model_outputs  # the run's logged model
    logged = client.get_logged_model(output.model_id)
    assert logged.name == "finetuned_model" and logged.source_run_id == run.info.run_id
    assert logged.experiment_id == experiment and logged.status == LoggedModelStatus.READY
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)  # mlflow's module-level calls use the run's store
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(store)
    try:
        version = mlflow.register_model(f"runs:/{run.info.run_id}/finetuned_model", "sdft_aahq_smoke")
        assert int(version.version) == 1 and version.source == f"models:/{output.model_id}"
        model = mlflow.pyfunc.load_model("models:/sdft_aahq_smoke/1")
        two_steps = mlflow.pyfunc.load_model(f"models:/{output.model_id}", model_config={"sampling": {"steps": 2}})
    finally:
        mlflow.set_tracking_uri(previous)
    data = proj / "data" / "smoke"
    seed = TensorDictDataset(str(data / "05_model_input" / "noise_bank.safetensors")).load()["meta"]["seed"]
    assert model.metadata.get_model_info().model_id == output.model_id
    assert model.model_config["sampling"]["seed"] == seed and model.model_config["sampling"]["steps"] == 4

    images = model.predict({"n_samples": 3, "seed": 5, "steps": 2})
    assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8  # the model's size, RGB
    np.testing.assert_array_equal(images, model.predict({"n_samples": 3, "seed": 5, "steps": 2}))  # bit-identical
    assert not np.array_equal(images, model.predict({"n_samples": 3, "seed": 6, "steps": 2}))
    np.testing.assert_array_equal(images, two_steps.predict({"n_samples": 3, "seed": 5}))  # a load's override
    # the run's own samples (the sample_finetuned node, from the noise bank's seed and the run's settings)
    target = TensorDictDataset(str(data / "07_model_output" / "sdft_aahq" / "samples.safetensors")).load()
    np.testing.assert_array_equal(model.predict({"n_samples": len(target["images"]), "seed": seed}),
                                  target["images"].numpy())
