"""Kedro wiring: the registry, and end-to-end smoke runs through a KedroSession
in a scratch copy of the project (``sdft_aahq`` once, for every test that reads
its outputs; the world, compare, church and few-shot pipelines; kedro-viz)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests._pipeline_helpers import ALL_METHODS, ROOT, SMOKE_DATA, _image_folder, _run, _scratch_project


def test_registry_lists_every_method_and_dataset():
    from diffusion_transfer.pipeline_registry import register_pipelines

    pipes = register_pipelines()
    for name in ["world", "curate_aahq", "curate_metfaces", "compare_aahq", "compare_metfaces", "__default__"]:
        assert name in pipes
    for method in ALL_METHODS:
        for dataset in ["aahq", "metfaces"]:
            p = pipes[f"{method}_{dataset}"]
            names = {n.name for n in p.nodes}
            assert f"{method}_{dataset}.finetune" in names
            assert f"{method}_{dataset}.report" in names
            assert f"curate_{dataset}" in names
            # only the conditional methods (ANL and its CLIP-conditioned Tuning-All) embed with CLIP
            conditional = {f"{method}_{dataset}.embed_conditions", f"{method}_{dataset}.sample_prompts"}
            assert (conditional <= names) == (method in ("anl", "naive_clip"))
    assert pipes["__default__"].nodes == pipes["sdft_aahq"].nodes
    for dataset in ["aahq", "metfaces"]:
        names = {n.name for n in pipes[f"compare_{dataset}"].nodes}
        assert {f"{m}_{dataset}.finetune" for m in ALL_METHODS} <= names
        assert f"compare_{dataset}" in names


@pytest.mark.parametrize("dataset, prefix", [("sketches", ""), ("babies", ""), ("haunted_houses", "church_"),
                                             ("landscape_drawings", "church_")])
def test_each_target_is_wired_to_its_own_source_domain(dataset, prefix):
    """FFHQ targets use the default source; LSUN Church targets use the
    church_ model, images, noise bank and samples, and never the FFHQ ones."""
    from diffusion_transfer.pipeline_registry import register_pipelines

    pipes = register_pipelines()
    other = "church_" if prefix == "" else ""
    for method in ALL_METHODS + ["classifier", "compare"]:
        name = f"{method}_{dataset}"
        inputs = pipes[name].inputs()
        datasets = pipes[name].datasets()
        used = {"source_images"} if method == "classifier" else {"source_model"}
        if method == "tan":
            used |= {"source_images"}
        assert {prefix + u for u in used} <= inputs, name
        assert not {other + u for u in ("source_model", "source_images")} & inputs, name
        if method != "classifier":
            assert {prefix + "noise_bank", prefix + "source_samples"} <= datasets, name
            assert not {other + "noise_bank", other + "source_samples"} & datasets, name


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """``kedro run --pipeline=sdft_aahq --env=smoke`` in a scratch copy of the project."""
    proj = _scratch_project(tmp_path_factory.mktemp("smoke"))
    _run(proj, "smoke", "sdft_aahq")
    return proj


@pytest.mark.slow
def test_sdft_aahq_smoke_run_end_to_end(smoke_run):
    proj = smoke_run
    out = proj / SMOKE_DATA / "08_reporting" / "sdft_aahq"
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("source", "finetuned"):
        assert metrics["models"][key]["fid"] >= 0
        assert 0 <= metrics["models"][key]["face_rate"] <= 1
    assert metrics["models"]["finetuned"]["lpips_src_trg"] >= 0
    assert set(metrics["models"]["finetuned"]["retention"]) >= {"expression", "eyewear"}
    lpips_label = metrics["weights"]["lpips"].lower()
    assert "substitute" in lpips_label or "untrained" in lpips_label
    assert "substitute for inception" in metrics["weights"]["fid_kid"].lower()
    report = (out / "report.md").read_text()
    assert "| sdft (fine-tuned) |" in report and "| source (pretrained) |" in report
    assert (out / "samples_src_vs_trg.png").stat().st_size > 0
    assert (out / "loss_curve.png").stat().st_size > 0
    summary = json.loads((proj / SMOKE_DATA / "08_reporting" / "curate_aahq" / "summary.json").read_text())
    assert summary["counts"]["kept"] == 24  # smoke: top_n 24
    assert (proj / SMOKE_DATA / "08_reporting" / "curate_aahq" / "contact_sheet.png").exists()
    history = json.loads((out / "training_history.json").read_text())
    assert history["run"]["hyperparameters"]["gamma_aux"] == 50.0  # Table 5, AAHQ override applied
    assert history["history"][-1]["step"] == 4
    import torch  # what trained it: commit (a scratch copy has no git), versions, device

    env = history["environment"]
    assert env["torch"] == torch.__version__ and env["commit"] == "unknown (not a git checkout)" and env["device"]
    assert len(env["lock"]) == 12 or env["lock"] == "none"  # requirements.lock's digest, if the copy has one
    assert (f"Trained at commit unknown (not a git checkout), lock {env['lock']} (torch {torch.__version__}, "
            "diffusers ") in report
    # the metrics carry their own record (a reused model's metrics can be computed at another commit)
    assert metrics["environment"] == env and "Metrics computed at commit unknown (not a git checkout)" in report
    # Attribute values absent from the curated set (AAHQ: men only) are reported with their retention.
    assert "woman" in metrics["training_set_attributes"]["absent_values"]["gender"]
    assert "## Attribute values absent from the training set" in report
    # The translate stage: every method, faithfulness and realism, attribute retention, a grid.
    tm = json.loads((out / "translation_metrics.json").read_text())
    assert list(tm["rows"]) == ["sdedit", "ilvr", "egsde", "ddib"] and tm["n_inputs"] == 8
    for row in tm["rows"].values():
        assert row["psnr"] > 0 and -1 <= row["ssim"] <= 1 and row["lpips"] >= 0 and row["fid"] >= 0
        assert 0 <= row["retention"] <= 1
    assert tm["settings"]["sdedit"]["t0"] == 0.625 and tm["settings"]["egsde"]["t0"] == 0.625  # AAHQ's 0.625T
    assert "RGB" in tm["weights"]["psnr_ssim"]
    assert tm["environment"]["torch"] == torch.__version__ and tm["environment"]["lock"] == env["lock"]
    assert "## Domain translation" in report and "| SDEdit |" in report and "| DDIB |" in report
    from PIL import Image

    grid = Image.open(out / "translations.png")
    assert grid.size[1] >= 5 * 64  # the inputs and four methods, 32 px images at scale 2


@pytest.mark.slow
def test_walkthrough_notebook_executes_headless(smoke_run):
    import os

    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "notebooks" / "walkthrough.ipynb", as_version=4)
    os.environ["DT_ENV"], os.environ["DT_PROJECT"] = "smoke", str(smoke_run)
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(smoke_run)}}).execute()
    finally:
        del os.environ["DT_ENV"], os.environ["DT_PROJECT"]
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "Weights each metric ran on" in text


@pytest.mark.slow
def test_edit_stage_runs_on_the_smoke_run_s_fine_tuned_model(smoke_run):
    """``edit_sdft_aahq`` (Asyrp, issue 15) on the model ``sdft_aahq`` wrote: a grid per prompt and metrics."""
    _run(smoke_run, "smoke", "edit_sdft_aahq")
    out = smoke_run / SMOKE_DATA / "08_reporting" / "sdft_aahq"
    metrics = json.loads((out / "edit_metrics.json").read_text())
    assert set(metrics["rows"]) == {"smiling", "sad", "angry", "young", "old"}
    for row in metrics["rows"].values():
        assert -1.0 <= row["s_dir"] <= 1.0
    assert len(list((out / "edits").glob("*.png"))) == 5


def _digest(folder: Path) -> dict[str, str]:
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.slow
def test_world_pipeline_in_smoke_builds_elsewhere_and_keeps_committed_models(tmp_path):
    """The world pipeline trains all four models; in smoke it writes under
    data/smoke/ and leaves the committed models untouched."""
    world = ROOT / "data" / "06_models" / "world"
    before = {name: _digest(world / name) for name in ("source", "clip", "evaluation_clip", "classifier")}
    proj = _scratch_project(tmp_path)
    _run(proj, "smoke", "world")
    built = proj / SMOKE_DATA / "06_models" / "world"
    assert (built / "source" / "config.json").exists()
    assert (built / "clip" / "weights.safetensors").exists()
    for name in ("clip", "evaluation_clip"):  # each with its held-out metrics, age among them
        meta = json.loads((built / name / "world_clip.json").read_text())
        assert set(meta["metrics"]["zero_shot_held_out"]) == {"eyewear", "expression", "gender", "age", "style"}
        assert 0.0 <= meta["metrics"]["zero_shot_held_out"]["age"]["all"] <= 1.0
    evaluation = json.loads((built / "evaluation_clip" / "world_clip.json").read_text())
    assert ["age", 0.3] in evaluation["train"]["config"]["pair_flips"]
    assert (built / "classifier" / "classifier.safetensors").exists()
    assert {name: _digest(world / name) for name in before} == before


@pytest.mark.slow
def test_kedro_viz_build_shows_the_data_layers(tmp_path):
    import os
    import subprocess
    import sys

    proj = _scratch_project(tmp_path)
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1"}
    kedro = Path(sys.executable).parent / "kedro"
    done = subprocess.run([str(kedro), "viz", "build"], cwd=proj, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "circular dependency" not in (done.stdout + done.stderr).lower()
    main = json.loads((proj / "build" / "api" / "main").read_text())
    # the two kinds of inputs come first (their order between them is kedro-viz's choice)
    assert set(main["layers"][:2]) == {"pretrained", "raw"} and main["layers"][-1] == "reporting"
    assert {"raw", "primary", "model_input", "models", "model_output"} <= set(main["layers"])


@pytest.mark.slow
def test_compare_metfaces_smoke_runs_every_method(tmp_path):
    """compare_metfaces in smoke: glasses removal, every method, one table;
    adapted models saved as base + modules, ANL's conditions and prompt grid."""
    proj = _scratch_project(tmp_path)
    _run(proj, "smoke", "compare_metfaces")
    reporting = proj / SMOKE_DATA / "08_reporting"
    summary = json.loads((reporting / "curate_metfaces" / "summary.json").read_text())
    assert summary["counts"]["dropped_by_zero_shot"] >= 1  # the glasses the portrait domain carries
    curated = summary["counts"]["kept"]
    assert 0 < curated < summary["counts"]["valid"]
    table = json.loads((reporting / "compare_metfaces" / "comparison.json").read_text())
    assert list(table["rows"]) == ["source (pretrained)"] + ALL_METHODS
    assert "glasses" in table["absent_values"]["eyewear"]
    for method in ALL_METHODS:
        assert (reporting / f"{method}_metfaces" / "report.md").exists()
    assert "| sdft |" in (reporting / "compare_metfaces" / "comparison.md").read_text()
    pairs = {(r["translation"], r["method"]) for r in table["translation_rows"]}
    assert pairs == {(t, m) for t in ("sdedit", "ilvr", "egsde", "ddib") for m in ALL_METHODS}
    assert list(table["edit_rows"]) == ["source (pretrained)"] + ALL_METHODS  # Asyrp on every model (Table 2)
    assert set(table["edit_rows"]["sdft"]) == {"smiling", "sad", "angry", "young", "old"}
    assert "## Text-guided editing" in (reporting / "compare_metfaces" / "comparison.md").read_text()
    anl_translations = json.loads((reporting / "anl_metfaces" / "translation_metrics.json").read_text())
    assert anl_translations["settings"]["sdedit"]["t0"] == 0.5  # MetFaces' 0.5T
    models = proj / SMOKE_DATA / "06_models"
    for method in ("a3ft", "anl", "anl_uncond"):
        assert json.loads((models / f"{method}_metfaces" / "model" / "adapter.json").read_text())["kind"] == method
        assert (models / f"{method}_metfaces" / "model" / "unet" / "config.json").exists()
    assert (models / "attn_metfaces" / "model" / "config.json").exists()  # attn: a plain UNet
    a3ft = json.loads((reporting / "a3ft_metfaces" / "training_history.json").read_text())["parameters"]
    assert 0 < a3ft["added_parameters"] < a3ft["trainable_parameters"] < a3ft["base_parameters"]
    assert "Trainable parameters:" in (reporting / "a3ft_metfaces" / "report.md").read_text()
    anl = json.loads((reporting / "anl_metfaces" / "training_history.json").read_text())
    assert anl["parameters"]["trainable_parameters"] == anl["parameters"]["added_parameters"]  # UNet frozen
    assert (reporting / "anl_metfaces" / "samples_text_prompts.png").stat().st_size > 0
    cond = proj / SMOKE_DATA / "05_model_input" / "anl_metfaces" / "sampling_conditions.safetensors"
    assert cond.exists()
    assert (proj / SMOKE_DATA / "04_feature" / "anl_conditions" / "metfaces.npy").exists()  # cached embeddings


@pytest.mark.slow
def test_a_church_target_runs_on_the_church_source_model(tmp_path):
    """naive_landscape_drawings with stand-ins at the church_ paths: it trains
    from, samples and compares against the church model, with its own noise
    bank, and skips the FaceWorld face attributes."""
    import torch

    from diffusion_transfer.core.models.unet import build_unet, load_unet, save_unet
    from diffusion_transfer.datasets import TensorDictDataset

    def load_tensors(path):
        return TensorDictDataset(str(path)).load()

    proj = _scratch_project(tmp_path)
    tiny = dict(sample_size=32, block_out_channels=(8, 16), layers_per_block=1,
                down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                attention_head_dim=8, norm_num_groups=4)
    torch.manual_seed(0)
    save_unet(build_unet(tiny), proj / "data" / "06_models" / "ddpm_church_256")
    folder = _image_folder(tmp_path, 24).root
    churches = _image_folder(tmp_path, 40, name="lsun_church", seed=1).root
    with (proj / "conf" / "smoke" / "catalog.yml").open("a") as f:
        for name, path in (("landscape_drawings_raw", folder), ("church_source_images", churches)):
            f.write(f"\n{name}:\n  type: diffusion_transfer.datasets.ImageFolderDataset\n  path: {path}\n")
    _run(proj, "smoke", "naive_landscape_drawings")
    data = proj / SMOKE_DATA
    assert (data / "05_model_input" / "church" / "noise_bank.safetensors").exists()
    assert (data / "07_model_output" / "church_source" / "samples.safetensors").exists()
    assert not (data / "05_model_input" / "noise_bank.safetensors").exists()  # the FFHQ source is untouched
    inputs = json.loads((data / "08_reporting" / "classifier_landscape_drawings" / "report.json").read_text())
    assert inputs["train"]["source"] > 0  # church images against the drawings
    translations = load_tensors(data / "07_model_output" / "naive_landscape_drawings" / "translations.safetensors")
    assert translations["meta"]["inputs"] == str(churches)  # translation inputs are church images
    model = load_unet(data / "06_models" / "naive_landscape_drawings" / "model")
    assert tuple(model.config.block_out_channels) == (8, 16)  # fine-tuned from the church model
    metrics = json.loads((data / "08_reporting" / "naive_landscape_drawings" / "metrics.json").read_text())
    assert metrics["dataset"] == "landscape_drawings" and metrics["fid_reference"] == "raw set (14 of 14 images)"
    assert metrics["models"]["finetuned"]["intra_lpips"] >= 0
    assert "face_rate" not in metrics["models"]["finetuned"] and "attributes" not in metrics["weights"]


@pytest.mark.slow
def test_tan_on_a_few_shot_target_smoke_run(tmp_path):
    """classifier_sunglasses -> tan_sunglasses in smoke, then sdft on the same
    target: the classifier's accuracy by timestep, TAN's adaptors, intra-LPIPS."""
    proj = _scratch_project(tmp_path)
    _run(proj, "smoke", "tan_sunglasses")
    reporting = proj / SMOKE_DATA / "08_reporting"
    clf = json.loads((reporting / "classifier_sunglasses" / "report.json").read_text())
    rows = clf["accuracy_by_timestep"]["all"]
    assert rows[0]["t_from"] == 0 and rows[-1]["t_to"] == 999 and all(0 <= r["accuracy"] <= 1 for r in rows)
    assert clf["train"]["target"] == 10  # the 10 shots, repeated to balance the source images
    assert (reporting / "classifier_sunglasses" / "accuracy_by_timestep.png").stat().st_size > 0
    assert (proj / SMOKE_DATA / "06_models" / "classifiers" / "sunglasses" / "classifier.json").exists()
    history = json.loads((reporting / "tan_sunglasses" / "training_history.json").read_text())
    assert 0 < history["parameters"]["trainable_share"] < 0.05  # shift adaptors only
    assert {"loss", "diffusion", "guidance"} <= set(history["history"][-1])
    metrics = json.loads((reporting / "tan_sunglasses" / "metrics.json").read_text())
    assert metrics["models"]["finetuned"]["intra_lpips"] >= 0
    assert "intra_lpips" in metrics["weights"]
    assert "| tan (fine-tuned) |" in (reporting / "tan_sunglasses" / "report.md").read_text()
    model = json.loads((proj / SMOKE_DATA / "06_models" / "tan_sunglasses" / "model" / "adapter.json").read_text())
    assert model["kind"] == "tan"
    _run(proj, "smoke", "sdft_sunglasses")
    sdft = json.loads((reporting / "sdft_sunglasses" / "metrics.json").read_text())
    assert sdft["models"]["finetuned"]["intra_lpips"] >= 0
    assert sdft["fid_reference"] == "raw set (20 of 20 images)"  # smoke: 30 rendered - 10 shots


def test_a_second_run_from_scratch_gives_bit_identical_weights_and_metrics(smoke_run, tmp_path):
    """One commit, one machine, one lock: a fresh copy of the project run again
    (up to the metrics) trains bit-identical weights, samples bit-identical
    images and computes the same metrics, so a difference between two runs is
    the code's or the environment's (docs/METRICS.md, "Reruns")."""
    again = _scratch_project(tmp_path)
    _run(again, "smoke", "sdft_aahq", to_outputs=["sdft_aahq.metrics"])
    first, second = (p / SMOKE_DATA for p in (smoke_run, again))
    for name in ("06_models/sdft_aahq/model/diffusion_pytorch_model.safetensors",
                 "07_model_output/sdft_aahq/samples.safetensors"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    metrics = [json.loads((p / "08_reporting" / "sdft_aahq" / "metrics.json").read_text()) for p in (first, second)]
    assert metrics[0] == metrics[1]
    losses = [[r["loss"] for r in json.loads((p / "08_reporting" / "sdft_aahq" / "training_history.json").read_text())
               ["history"]] for p in (first, second)]
    assert losses[0] == losses[1]
