"""conf/paper: it loads and validates with the papers' settings and training
lengths, and without its real weights and datasets a run stops before any
compute, listing every missing input."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests._pipeline_helpers import ALL_METHODS, PAPER_DATA, TEXT_TO_IMAGE_ONLY, _run, _scratch_project


def test_paper_environment_loads_validates_and_fails_clearly_without_weights(tmp_path):
    """conf/paper only has to load and validate here: its parameters pass, and
    its real weights and datasets, absent offline, fail fast naming the path."""
    import os

    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project
    from kedro.io import DatasetError

    from diffusion_transfer.project.resolved import resolve_parameters

    proj = _scratch_project(tmp_path)
    old = Path.cwd()
    os.chdir(proj)
    try:
        bootstrap_project(proj)
        with KedroSession.create(project_path=proj, env="paper") as session:
            context = session.load_context()
            params = context.params
            sampling = resolve_parameters(params).sampling
            assert (sampling["ldm_cin256"].steps, sampling["ffhq"].steps, sampling["imagenet64"].steps) == (200, 40, 40)
            curation = params["datasets"]["aahq"]["curation"]
            assert curation["threshold"] == 0.27 and curation.get("resolution") is None  # the model's 256 px
            assert params["sampling"]["steps"] == 40 and params["train"]["steps"] == 80000
            assert params["evaluation"]["max_reference_images"] is None  # the papers' full reference set
            assert params["methods"]["a3ft"]["train"]["lr"] == 0.0002  # A3FT appendix C.2
            assert params["methods"]["anl"]["condition"]["mask_rate"] == 0.5  # ANL section 4
            assert set(params["methods"]) == set(ALL_METHODS + TEXT_TO_IMAGE_ONLY)
            from diffusion_transfer.project.schema import ClassifierParams

            clf = ClassifierParams(**params["classifier"])
            assert clf.for_dataset("aahq").train["steps"] == 4500  # SDFT appendix D
            assert clf.for_dataset("metfaces").train["steps"] == 1500
            assert clf.for_dataset("sketches").train["steps"] == 20000
            assert clf.for_dataset("aahq").train["batch_size"] == 64  # merged key by key
            assert params["datasets"]["sketches"]["n_samples"] == 1000  # TAN: 1,000 samples
            assert params["datasets"]["sketches"]["intra_lpips"] and params["datasets"]["aahq"]["translation"]
            assert params["translation"]["n_inputs"] == 10000 and params["translation"]["egsde"]["factor"] == 32
            from diffusion_transfer.project.schema_editing import editing_for

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


def test_paper_training_lengths_per_method_and_dataset():
    """conf/paper: SDFT's 80k iterations, A3FT's 2,000 MetFaces epochs, and on the
    10-shot targets TAN's ~300 iterations against the baselines' ~5,000."""
    from diffusion_transfer.project.resolved import resolve_run
    from diffusion_transfer.settings import CONFIG_LOADER_ARGS, CONFIG_LOADER_CLASS

    args = {**CONFIG_LOADER_ARGS, "default_run_env": "paper"}
    params = CONFIG_LOADER_CLASS(conf_source=str(Path(__file__).parents[1] / "conf"), **args)["parameters"]

    def run(method, dataset):
        return resolve_run(params["methods"][method], params["datasets"][dataset], params["train"]).record()

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
    with pytest.raises(ValueError, match="method_overrides.tan.train.: it must be a mapping"):
        resolve_run(params["methods"]["tan"], {"name": "x", "method_overrides": {"tan": {"train": 3}}}, params["train"])


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
    from diffusion_transfer.project.preflight import MissingInputsError

    proj = _scratch_project(tmp_path)
    with pytest.raises(MissingInputsError) as err:
        _run(proj, "paper", "naive_haunted_houses")
    message = str(err.value)
    assert "- church_source_model:" in message and "- evaluation.inception_path:" in message
    assert "identity_weights" not in message


def _paper_params() -> dict:
    from diffusion_transfer.settings import CONFIG_LOADER_ARGS, CONFIG_LOADER_CLASS

    args = {**CONFIG_LOADER_ARGS, "default_run_env": "paper"}
    return CONFIG_LOADER_CLASS(conf_source=str(Path(__file__).parents[1] / "conf"), **args)["parameters"]


def test_paper_has_the_anl_and_a3ft_experiments_with_their_settings():
    """ANL's LDM-ImageNet-256 targets and A3FT's ImageNet-64 / FFHQ-256 ones:
    sources, splits, FID references, sample counts, IS and training lengths."""
    from diffusion_transfer.project.registry import register_pipelines
    from diffusion_transfer.project.resolved import resolve_parameters

    params = _paper_params()
    resolved = resolve_parameters(params)
    d = resolved.datasets
    assert {"ldm_cin256", "imagenet64"} <= set(params["sources"])
    anl = ("celeba", "celeba_1k", "celeba_25", "flowers", "flowers_1k", "flowers_25", "cars", "cars_1k", "cars_25")
    for name in anl:
        assert d[name].source == "ldm_cin256" and d[name].inception_score is True
        assert d[name].fid_reference == ("curated" if name in ("flowers", "cars") else "full")  # ANL 4.2
        assert resolved.runs[f"anl_{name}"].train.steps == 60000 and resolved.runs[f"naive_{name}"].train.steps == 60000
    assert [d[n].curation.n_shot for n in ("celeba", "celeba_1k", "celeba_25")] == [10000, 1000, 25]
    assert d["flowers"].kind == "full" and d["flowers_1k"].images == "flowers_raw"
    assert resolved.runs["anl_cars"].train.lr == pytest.approx(2e-6 * 8 * 4)  # ANL 4.1
    a3ft = {"celeba64_1k": ("imagenet64", 10000, 3906), "pokemon64": ("imagenet64", 5000, 3254),
            "metfaces_all": ("ffhq", 1400, 20875)}
    for name, (source, n_samples, steps) in a3ft.items():
        assert (d[name].source, d[name].n_samples, d[name].fid_reference) == (source, n_samples, "curated")
        for method in ("naive", "attn", "a3ft"):
            train = resolved.runs[f"{method}_{name}"].train
            assert (train.steps, train.lr, train.batch_size, train.adam_eps, train.ema_decay) == \
                (steps, 2e-4, 128, 1e-8, 0.0)  # A3FT C.2, Table 1
        assert not d[name].inception_score
    assert d["metfaces_all"].curation.remove_prompts == [] and d["metfaces"].curation.remove_prompts  # no glasses removal
    assert resolved.runs["tan_celeba_1k"].train.steps == 300  # TAN keeps its own length
    assert resolved.blocks["evaluation"].inception_score_weights.endswith("weights-inception-2015-12-05-6726825d.pth")
    assert not resolved.blocks["evaluation"].scores_inception(d["aahq"])  # SDFT's runs are unchanged
    pipelines = register_pipelines(params)
    assert {"anl_celeba_1k", "anl_uncond_flowers_25", "a3ft_pokemon64", "naive_metfaces_all", "compare_cars"} <= set(pipelines)


def _missing(tmp_path, pipeline: str) -> tuple[str, Path]:
    from diffusion_transfer.project.preflight import MissingInputsError

    proj = _scratch_project(tmp_path)
    with pytest.raises(MissingInputsError) as err:
        _run(proj, "paper", pipeline)
    return str(err.value), proj


def test_an_anl_paper_run_stops_before_any_compute_listing_its_missing_inputs(tmp_path):
    message, proj = _missing(tmp_path, "anl_celeba_1k")
    assert message.startswith("7 input(s) of this run are missing; nothing was computed.")  # IS weights included
    for name, hint in (("celeba_raw", "data/01_raw/celeba"),
                       ("ldm_cin256_source_model", f"{PAPER_DATA}/06_models/ldm_cin256"),
                       ("evaluation.inception_score_weights", "weights-inception-2015-12-05-6726825d.pth"),
                       ("condition_clip", "clip_vit_b32_openai.pt"), ("evaluation_clip", "clip_vit_b32_openai.pt"),
                       ("evaluation.inception_path", "inception-2015-12-05.pt"),
                       ("evaluation.lpips_backbone_weights", "alexnet-owt-7be5be79.pth")):
        line = next((line for line in message.splitlines() if line.startswith(f"  - {name}:")), "")
        assert hint in line, (name, message)
    assert "dt-convert-ldm data/00_weights/cin256-v2.ckpt" in message
    assert "imagenet_val" not in message  # no source images: the model's own samples stand in
    assert "identity_weights" not in message  # ANL's targets are not scored for identity (faces: false)
    assert not (proj / PAPER_DATA).exists()  # nothing was written


def test_the_pre_run_check_lists_the_inception_score_weights(tmp_path):
    message, _ = _missing(tmp_path, "anl_flowers_25")
    assert "- evaluation.inception_score_weights:" in message


def test_an_a3ft_paper_run_stops_before_any_compute_listing_its_missing_inputs(tmp_path):
    message, proj = _missing(tmp_path, "a3ft_pokemon64")
    for name, hint in (("pokemon_raw", "data/01_raw/pokemon"),
                       ("imagenet64_source_model", f"{PAPER_DATA}/06_models/improved_imagenet64_diffusers"),
                       ("evaluation.inception_path", "inception-2015-12-05.pt")):
        line = next((line for line in message.splitlines() if line.startswith(f"  - {name}:")), "")
        assert hint in line, (name, message)
    assert "--preset improved_imagenet64" in message and "imagenet64_uncond_100M_1500K.pt" in message
    assert "condition_clip" not in message  # A3FT is not conditioned on CLIP
    assert "imagenet" not in message.replace("imagenet64", "")  # no source images needed: its samples stand in
    assert not (proj / PAPER_DATA).exists()
