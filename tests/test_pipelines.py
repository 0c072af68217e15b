"""Kedro wiring: the registry, parameter validation and an end-to-end smoke
run of ``sdft_aahq`` through a KedroSession in a scratch copy of the project."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ALL_METHODS = ["scratch", "naive", "sdft", "attn", "a3ft", "anl", "anl_uncond", "tan"]
# Each environment writes under its own data root (conf/<env>/globals.yml).
SMOKE_DATA = Path("data", "smoke")
PAPER_DATA = Path("data", "paper")


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
            # only ANL embeds its training images with CLIP and samples from prompts
            conditional = {f"{method}_{dataset}.embed_conditions", f"{method}_{dataset}.sample_prompts"}
            assert (conditional <= names) == (method == "anl")
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


def _metrics(fid: float, kept: float) -> dict:
    model = {"fid": fid, "kid_x1e3": 1.0, "face_rate": 0.9, "coverage": {"overall_rate": 0.2}}
    return {"n_samples": 8, "fid_reference": "raw (8 images)", "weights": {"fid_kid": "w"},
            "training_set_attributes": {"absent_values": {"eyewear": ["glasses"]}},
            "models": {"source": {**model, "fid": 9.0},
                       "finetuned": {**model, "lpips_src_trg": 0.1, "retention": {"mean": 0.5},
                                     "retention_of_absent": {"eyewear": kept, "mean": kept}}}}


def test_compare_runs_tabulates_every_method_and_the_source_once():
    from diffusion_transfer.pipelines.compare.nodes import compare_runs

    table, report = compare_runs("aahq", naive=_metrics(3.0, 0.25), sdft=_metrics(4.0, 0.75),
                                 history_sdft={"parameters": {"trainable_share": 0.25}})
    assert list(table["rows"]) == ["source (pretrained)", "naive", "sdft"]
    assert table["rows"]["source (pretrained)"]["fid"] == 9.0
    assert table["rows"]["sdft"]["kept_absent_mean"] == 0.75
    assert "| naive | 3.00 |" in report and "| sdft | 4.00 |" in report
    assert table["rows"]["sdft"]["trainable_percent"] == 25.0 and table["rows"]["naive"]["trainable_percent"] is None
    assert "eyewear: glasses" in report
    with pytest.raises(ValueError, match="at least one"):
        compare_runs("aahq")


def test_compare_runs_lays_out_translation_like_table_1():
    from diffusion_transfer.pipelines.compare.nodes import compare_runs

    def tm(psnr):
        row = {"psnr": psnr, "ssim": 0.5, "lpips": 0.2, "fid": 10.0, "kid_x1e3": 5.0, "retention": 0.7}
        return {"n_inputs": 8, "fid_reference": "raw target set (8 of 8 images)", "weights": {"psnr_ssim": "RGB"},
                "rows": {"sdedit": row, "egsde": {**row, "psnr": psnr + 1}}}

    table, report = compare_runs("metfaces", naive=_metrics(3.0, 0.25), sdft=_metrics(4.0, 0.75),
                                 translation_naive=tm(14.0), translation_sdft=tm(16.0))
    assert [(r["translation"], r["method"]) for r in table["translation_rows"]] == [
        ("sdedit", "naive"), ("sdedit", "sdft"), ("egsde", "naive"), ("egsde", "sdft")]
    assert "| SDEdit | sdft | 16.00 | 0.500 |" in report and "| EGSDE | naive | 15.00 |" in report
    assert "translation psnr_ssim" in report and list(table["rows"]) == ["source (pretrained)", "naive", "sdft"]


def test_compare_runs_lays_out_editing_like_table_2():
    from diffusion_transfer.pipelines.compare.nodes import compare_runs

    def em(s_dir):
        rows = {"smiling": {"label": "smiling", "s_dir": s_dir}, "old": {"label": "old", "s_dir": s_dir + 0.2}}
        return {"n_inputs": 4, "rows": rows, "settings": {"inversion_steps": 40, "steps": 40},
                "weights": {"s_dir": "clip"}}

    table, report = compare_runs("aahq", naive=_metrics(3.0, 0.25), sdft=_metrics(4.0, 0.75),
                                 edit_sdft=em(0.3), edit_source=em(0.1), edit_naive=em(0.2))
    assert list(table["edit_rows"]) == ["source (pretrained)", "sdft", "naive"]
    assert "Text-guided editing (SDFT Table 2 protocol" in report and "editing s_dir" in report
    lines = report.splitlines()
    means = [line for line in lines if line.startswith("| source (pretrained) | 0.")]
    assert means[0] == f"| source (pretrained) | {(0.1 + 0.3) / 2:.3f} |"  # mean over prompts first
    assert "| sdft | 0.300 | 0.500 |" in report  # then per prompt
    assert list(table["rows"]) == ["source (pretrained)", "naive", "sdft"]  # edit keys are not methods


def _base_params() -> dict:
    params: dict = {}
    for f in sorted((ROOT / "conf" / "base").glob("parameters*.yml")):
        params.update(yaml.safe_load(f.read_text()))
    return json.loads(json.dumps(params))  # YAML anchors share dicts; Kedro's loader gives each its own


def test_base_parameters_validate():
    from diffusion_transfer.hooks import validate_parameters

    validate_parameters(_base_params())


@pytest.mark.parametrize(
    "path, value, expected",
    [
        (("train", "batch_size"), 0, "train (with datasets.aahq.train).batch_size"),
        (("train", "lr"), float("inf"), "train (with datasets.aahq.train).lr"),
        (("sampling", "sampler"), "euler", "sampling.sampler"),
        (("methods", "sdft", "lambda_distill"), -1.0, "lambda_distill"),
        (("methods", "sdft", "weighting"), "cubic", "weighting"),
        (("datasets", "aahq", "curation", "top_n"), None, "datasets.aahq.curation"),
        (("datasets", "aahq", "source"), "lsun", "datasets.aahq.source"),
        (("datasets", "aahq", "kind"), "many_shot", "datasets.aahq.kind"),
        (("methods", "sdft", "preset"), "cats", "preset must be one of"),
        (("schedule", "prediction_type"), "flow", "schedule.prediction_type"),
        (("methods", "a3ft", "train", "lr"), -1.0, "train (with methods.a3ft.train and datasets.aahq.train).lr"),
        (("methods", "anl", "condition", "mask_rate"), 1.5, "methods.anl.condition.mask_rate"),
        (("methods", "a3ft", "scaling_hidden"), 0, "scaling_hidden"),
        (("datasets", "sketches", "method_overrides"), {"tan": {"train": {"steps": 0}}},
         "train (with methods.tan.train and datasets.sketches.train and "
         "datasets.sketches.method_overrides.tan.train).steps"),
        (("editing", "t_boost"), 0.9, "editing"),
        (("datasets", "aahq", "editing"), {"n_test": 0}, "editing (with datasets.aahq.editing).n_test"),
    ],
)
def test_invalid_parameters_are_rejected_naming_the_parameter(path, value, expected):
    from diffusion_transfer.hooks import validate_parameters
    from diffusion_transfer.pipelines.params import InvalidParametersError

    params = _base_params()
    node = params
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(InvalidParametersError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        validate_parameters(params)


def _scratch_project(tmp_path: Path) -> Path:
    proj = tmp_path / "project"
    proj.mkdir()
    shutil.copy(ROOT / "pyproject.toml", proj / "pyproject.toml")
    shutil.copytree(ROOT / "conf", proj / "conf", ignore=shutil.ignore_patterns("local"))
    (proj / "conf" / "local").mkdir()
    shutil.copytree(ROOT / "src", proj / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (proj / "data" / "06_models").mkdir(parents=True)
    (proj / "data" / "06_models" / "world").symlink_to(ROOT / "data" / "06_models" / "world")
    return proj


def _run(proj: Path, env: str, pipeline: str, runtime_params: dict | None = None) -> None:
    """``kedro run --pipeline=<pipeline> --env=<env> [--params ...]`` in the project ``proj``."""
    import os

    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    old = Path.cwd()
    os.chdir(proj)
    try:
        bootstrap_project(proj)
        with KedroSession.create(project_path=proj, env=env, runtime_params=runtime_params) as session:
            session.run(pipeline_names=[pipeline])
    finally:
        os.chdir(old)


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


def _digest(folder: Path) -> dict[str, str]:
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.slow
def test_world_pipeline_in_smoke_builds_elsewhere_and_keeps_committed_models(tmp_path):
    """The world pipeline trains all three models; in smoke it writes under
    data/smoke/ and leaves the committed models untouched."""
    world = ROOT / "data" / "06_models" / "world"
    before = {name: _digest(world / name) for name in ("source", "clip", "classifier")}
    proj = _scratch_project(tmp_path)
    _run(proj, "smoke", "world")
    built = proj / SMOKE_DATA / "06_models" / "world"
    assert (built / "source" / "config.json").exists()
    assert (built / "clip" / "weights.safetensors").exists()
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
    """compare_metfaces in smoke: glasses removal, all seven methods, one table;
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


def test_paper_environment_loads_validates_and_fails_clearly_without_weights(tmp_path):
    """conf/paper only has to load and validate here: its parameters pass, and
    its real weights and datasets, absent offline, fail fast naming the path."""
    import os

    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project
    from kedro.io import DatasetError

    from diffusion_transfer.hooks import validate_parameters

    proj = _scratch_project(tmp_path)
    old = Path.cwd()
    os.chdir(proj)
    try:
        bootstrap_project(proj)
        with KedroSession.create(project_path=proj, env="paper") as session:
            context = session.load_context()
            params = context.params
            validate_parameters(params)
            curation = params["datasets"]["aahq"]["curation"]
            assert curation["threshold"] == 0.27 and curation.get("resolution") is None  # the model's 256 px
            assert params["sampling"]["steps"] == 40 and params["train"]["steps"] == 80000
            assert params["evaluation"]["max_reference_images"] is None  # the papers' full reference set
            assert params["methods"]["a3ft"]["train"]["lr"] == 0.0002  # A3FT appendix C.2
            assert params["methods"]["anl"]["condition"]["mask_rate"] == 0.5  # ANL section 4
            assert set(params["methods"]) == set(ALL_METHODS)
            from diffusion_transfer.pipelines.params import ClassifierParams

            clf = ClassifierParams(**params["classifier"])
            assert clf.for_dataset("aahq").train["steps"] == 4500  # SDFT appendix D
            assert clf.for_dataset("metfaces").train["steps"] == 1500
            assert clf.for_dataset("sketches").train["steps"] == 20000
            assert clf.for_dataset("aahq").train["batch_size"] == 64  # merged key by key
            assert params["datasets"]["sketches"]["n_samples"] == 1000  # TAN: 1,000 samples
            assert params["datasets"]["sketches"]["intra_lpips"] and params["datasets"]["aahq"]["translation"]
            assert params["translation"]["n_inputs"] == 10000 and params["translation"]["egsde"]["factor"] == 32
            from diffusion_transfer.pipelines.edit.params import editing_for

            aahq, metfaces = (editing_for(params["editing"], params["datasets"][d]) for d in ("aahq", "metfaces"))
            assert (aahq.n_test, metfaces.n_test, aahq.n_train, aahq.inversion_steps) == (400, 500, 100, 100)
            assert [aahq.asyrp_config(k, 500).epochs for k in aahq.prompts] == [5, 3, 3, 5, 3]  # SDFT app. E
            assert aahq.lr == 0.5  # Asyrp_official's, not base's FaceWorld strength
            assert aahq.prompts["angry"].target == ["angry face"] and aahq.label("angry") == "angry"  # Asyrp text
            with pytest.raises(DatasetError, match="ffhq_p2_diffusers"):
                context.catalog.load("source_model")
            with pytest.raises(DatasetError, match="AAHQ"):
                context.catalog.load("aahq_raw")
            with pytest.raises(DatasetError, match="google/ddpm-church-256"):
                context.catalog.load("church_source_model")
    finally:
        os.chdir(old)


def test_per_dataset_classifier_overrides_are_validated():
    from diffusion_transfer.hooks import validate_parameters
    from diffusion_transfer.pipelines.params import InvalidParametersError

    params = _base_params()
    params["classifier"]["datasets"] = {"aahq": {"train": {"steps": 0}}}
    with pytest.raises(InvalidParametersError, match="classifier.datasets.aahq"):
        validate_parameters(params)


def test_paper_run_stops_before_any_compute_listing_every_missing_input(tmp_path):
    """The real command line: the list and exit status 1, no traceback."""
    import os
    import subprocess
    import sys

    proj = _scratch_project(tmp_path)
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1"}
    kedro = Path(sys.executable).parent / "kedro"
    done = subprocess.run([str(kedro), "run", "--pipeline=sdft_aahq", "--env=paper"], cwd=proj, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "Traceback" not in done.stdout + done.stderr
    message = done.stderr[done.stderr.index("Error: "):]
    assert message.startswith("Error: 8 input(s) of this run are missing; nothing was computed.")
    for name in ("aahq_raw", "source_model", "source_images", "curation_clip", "evaluation_clip",
                 "evaluation.inception_path", "evaluation.lpips_backbone_weights", "evaluation.identity_weights"):
        assert f"- {name}:" in message
    assert "dt-convert-adm" in message and "onion-liu/aahq-dataset" in message
    assert "model_ir_se50.pth" in message
    assert not (proj / PAPER_DATA / "03_primary").exists()  # nothing was computed


def test_the_identity_network_is_required_only_where_faces_are_evaluated(tmp_path):
    """LSUN Church targets never load ArcFace, so its absence must not stop them."""
    from diffusion_transfer.preflight import MissingInputsError

    proj = _scratch_project(tmp_path)
    with pytest.raises(MissingInputsError) as err:
        _run(proj, "paper", "naive_haunted_houses")
    message = str(err.value)
    assert "- church_source_model:" in message and "- evaluation.inception_path:" in message
    assert "identity_weights" not in message


def test_finetune_checkpoints_are_keyed_by_source_weights_and_data(tmp_path):
    """A new source model or a new curated set must not resume an old run."""
    import torch

    from diffusion_transfer.core.models.unet import build_unet
    from diffusion_transfer.pipelines.finetune.nodes import finetune

    tiny = dict(sample_size=8, block_out_channels=(8, 16), layers_per_block=1,
                down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                attention_head_dim=8, norm_num_groups=4)
    torch.manual_seed(0)
    source_a, source_b = build_unet(tiny), build_unet(tiny)
    images = torch.randint(0, 256, (4, 8, 8, 3), dtype=torch.uint8)
    args = ({"name": "naive"}, {"name": "toy"}, {"steps": 2, "batch_size": 2, "checkpoint_every": 1}, {},
            str(tmp_path))

    def run(source, imgs):
        _, history = finetune(source, {"images": imgs, "meta": {}}, *args)
        return history

    first = run(source_a, images)
    again = run(source_a, images)
    assert again["checkpoint_dir"] == first["checkpoint_dir"] and again["resumed_from_step"] == 2
    assert run(source_b, images)["checkpoint_dir"] != first["checkpoint_dir"]
    assert run(source_a, images.flip(1))["checkpoint_dir"] != first["checkpoint_dir"]


def _image_folder(tmp_path: Path, n: int, bad: int = 0, name: str = "fewshot", seed: int = 0):
    from PIL import Image

    from diffusion_transfer.datasets.folders import ImageFolder

    root = tmp_path / name
    root.mkdir()
    rng = __import__("numpy").random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype="uint8")).save(root / f"img_{i:03d}.png")
    for i in range(bad):
        (root / f"broken_{i}.png").write_bytes(b"not an image")
    return ImageFolder(root, sorted(root.iterdir()))


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


def test_a_missing_church_model_names_where_it_comes_from(tmp_path):
    from kedro.io import DatasetError

    from diffusion_transfer.datasets import UNetDataset

    ds = UNetDataset(str(tmp_path / "ddpm_church_256"), download_hint="google/ddpm-church-256 goes here.")
    with pytest.raises(DatasetError, match="No UNet at .*ddpm_church_256. google/ddpm-church-256 goes here"):
        ds.load()


def test_few_shot_curation_is_a_deterministic_split_with_the_rest_as_reference(tmp_path):
    from diffusion_transfer.core.data.selection import EmptyCurationError
    from types import SimpleNamespace

    from diffusion_transfer.pipelines.curate.nodes import curate_few_shot as curate_with_model

    folder = _image_folder(tmp_path, 25, bad=2)
    model = SimpleNamespace(config=SimpleNamespace(sample_size=32))  # images at the model's resolution
    params = {"n_shot": 10, "split_seed": 0, "exclude": ["img_003.png"]}

    def curate_few_shot(folder, params, name):
        return curate_with_model(folder, model, {"name": name, "kind": "few_shot", "curation": params})

    curated, reference, summary, sheet = curate_few_shot(folder, params, "toy")
    again = curate_few_shot(folder, params, "toy")[0]
    assert curated["images"].shape == (10, 32, 32, 3) and curated["meta"]["names"] == again["meta"]["names"]
    names, ref_names = set(curated["meta"]["names"]), set(reference["meta"]["names"])
    assert not names & ref_names and len(names | ref_names) == 24  # 25 valid - 1 excluded
    assert "img_003.png" not in names | ref_names
    assert summary["counts"]["skipped_invalid"] == 2 and summary["counts"]["kept"] == 10
    assert summary["counts"]["reference"] == 14 and sheet.size[0] > 0
    other = curate_few_shot(folder, {**params, "split_seed": 1}, "toy")[0]
    assert other["meta"]["names"] != curated["meta"]["names"]
    with pytest.raises(EmptyCurationError, match="n_shot"):
        curate_few_shot(folder, {**params, "n_shot": 23}, "toy")


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


def test_sampling_and_translation_use_reduced_precision_only_on_a_gpu(monkeypatch):
    import torch

    from diffusion_transfer.pipelines.utils import inference_setup

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert inference_setup("bf16") == (torch.device("cpu"), None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert inference_setup("bf16") == (torch.device("cuda"), torch.bfloat16)
    assert inference_setup("fp16")[1] == torch.float16 and inference_setup("no")[1] is None


def test_finetune_node_spawns_ddp_workers_matching_one_process_with_accumulation(tmp_path):
    """``kedro run`` stays the entry point: the finetune node launches two
    gloo processes itself; the result equals one process accumulating two shards."""
    import torch

    from diffusion_transfer.core.models.unet import build_unet
    from diffusion_transfer.pipelines.finetune.nodes import finetune

    tiny = dict(sample_size=8, block_out_channels=(8, 16), layers_per_block=1,
                down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                attention_head_dim=8, norm_num_groups=4)
    torch.manual_seed(0)
    source = build_unet(tiny)
    images = torch.randint(0, 256, (6, 8, 8, 3), dtype=torch.uint8)
    base = {"steps": 2, "batch_size": 2, "checkpoint_every": 1}
    ddp, ddp_hist = finetune(source, {"images": images, "meta": {}}, {"name": "naive"}, {"name": "toy"},
                             {**base, "num_processes": 2}, {}, str(tmp_path / "ddp"))
    acc, acc_hist = finetune(source, {"images": images, "meta": {}}, {"name": "naive"}, {"name": "toy"},
                             {**base, "gradient_accumulation_steps": 2}, {}, str(tmp_path / "acc"))
    for (name, a), b in zip(ddp.state_dict().items(), acc.state_dict().values()):
        # The two reduction orders round differently, and Adam scales near-zero gradients (a key
        # bias's is exactly 0 in theory) to lr-sized steps: measured up to 3e-6 at lr 1e-4. The
        # EMA, now warmed up, is the trained weights; a constant 0.999 EMA hid this behind 1e-3.
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=name)
    assert ddp_hist["run"]["train"]["num_processes"] == 2
    assert [r["loss"] for r in ddp_hist["history"]] == pytest.approx([r["loss"] for r in acc_hist["history"]])


def test_a_dataset_samples_a_prefix_of_the_shared_noise_bank():
    import torch

    from diffusion_transfer.core.models.unet import build_unet
    from diffusion_transfer.pipelines.sample.nodes import sample, sample_target
    from diffusion_transfer.pipelines.params import InvalidParametersError

    tiny = dict(sample_size=8, block_out_channels=(8, 16), layers_per_block=1,
                down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                attention_head_dim=8, norm_num_groups=4)
    torch.manual_seed(0)
    model = build_unet(tiny)
    bank = {"noise": torch.randn(5, 3, 8, 8)}
    sampling = {"n_samples": 5, "steps": 2, "batch_size": 5}
    full = sample(model, bank, sampling, {})
    part = sample_target(model, bank, {**sampling, "batch_size": 3}, {}, {"name": "toy", "n_samples": 3})
    assert torch.equal(part["images"], full["images"][:3])  # sample i keeps noise i
    assert sample_target(model, bank, sampling, {}, {"name": "toy"})["images"].shape[0] == 5
    with pytest.raises(InvalidParametersError, match="datasets.toy.n_samples"):
        sample_target(model, bank, sampling, {}, {"name": "toy", "n_samples": 6})


def test_paper_training_lengths_per_method_and_dataset():
    """conf/paper: SDFT's 80k iterations, A3FT's 2,000 MetFaces epochs, and on the
    10-shot targets TAN's ~300 iterations against the baselines' ~5,000."""
    from diffusion_transfer.pipelines.finetune.nodes import resolve_run
    from diffusion_transfer.settings import CONFIG_LOADER_ARGS, CONFIG_LOADER_CLASS

    args = {**CONFIG_LOADER_ARGS, "default_run_env": "paper"}
    params = CONFIG_LOADER_CLASS(conf_source=str(Path(__file__).parents[1] / "conf"), **args)["parameters"]

    def run(method, dataset):
        return resolve_run(params["methods"][method], params["datasets"][dataset], params["train"])

    assert run("sdft", "aahq")["train"]["steps"] == 80000
    assert run("sdft", "aahq")["hyperparameters"]["gamma_aux"] == 50.0
    assert run("a3ft", "metfaces")["train"]["steps"] == 20875  # 2,000 epochs of 1,336 images at batch 128
    assert run("a3ft", "aahq")["train"]["steps"] == 22453      # of the 1,437 curated AAHQ images
    for dataset in ("sunglasses", "haunted_houses"):
        assert run("tan", dataset)["train"]["steps"] == 300
        assert run("tan", dataset)["train"]["batch_size"] == 40
        assert "train" not in run("tan", dataset)["hyperparameters"]
        assert run("naive", dataset)["train"]["steps"] == 5000
        assert run("sdft", dataset)["train"]["steps"] == 5000
    with pytest.raises(ValueError, match="method_overrides.tan.train must be a mapping"):
        resolve_run(params["methods"]["tan"], {"name": "x", "method_overrides": {"tan": {"train": 3}}}, params["train"])


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
