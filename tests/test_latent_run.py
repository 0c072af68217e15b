"""A user's latent, class-conditional model, declared only in configuration (issue 31).

A tiny ``LDMPipeline`` folder (a VQ autoencoder and a UNet with a class
embedding over its latents), built with diffusers, declared with the YAML of
conf/README.md ("Which models work"), fine-tuned and sampled through the real
``kedro run`` in a scratch copy of the project."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests._pipeline_helpers import _scratch_project
from tests.test_own_data import _readme_block, _write_pngs, kedro


def _ldm_folder(path: Path) -> None:
    import torch
    from diffusers import DDIMScheduler, LDMPipeline, UNet2DModel, VQModel

    torch.manual_seed(0)
    vqvae = VQModel(block_out_channels=(8, 8, 16), down_block_types=("DownEncoderBlock2D",) * 3,
                    up_block_types=("UpDecoderBlock2D",) * 3, norm_num_groups=4, latent_channels=3,
                    num_vq_embeddings=32, vq_embed_dim=3, layers_per_block=1)
    unet = UNet2DModel(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8, norm_num_groups=4,
                       num_class_embeds=5)
    LDMPipeline(vqvae=vqvae, unet=unet, scheduler=DDIMScheduler()).save_pretrained(str(path))


@pytest.fixture(scope="module")
def latent_project(tmp_path_factory) -> Path:
    proj = _scratch_project(tmp_path_factory.mktemp("latent"))
    _write_pngs(proj / "data" / "01_raw" / "mydata", 12, 80, seed=1)
    _write_pngs(proj / "data" / "01_raw" / "my_source_images", 16, 64, seed=2)
    _ldm_folder(proj / "data" / "06_models" / "my_ldm")
    params = yaml.safe_load(_readme_block("latent-yaml"))
    smoke = yaml.safe_load(_readme_block("own-data-yaml"))  # its smoke-sized settings
    params.update({k: v for k, v in smoke.items() if k not in ("sources", "datasets")})
    (proj / "conf" / "mydata").mkdir()
    (proj / "conf" / "mydata" / "parameters.yml").write_text(yaml.safe_dump(params))
    return proj


def _error(done) -> str:
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    return done.stderr[done.stderr.index("Error: "):]


@pytest.mark.slow
def test_a_users_ldm_folder_fine_tunes_and_samples_through_kedro_run(latent_project):
    import torch
    from diffusers import DiffusionPipeline, LDMPipeline

    done = kedro(latent_project, "run", "--pipeline=naive_mydata", "--env=mydata")
    assert done.returncode == 0, done.stderr[-3000:]
    out = latent_project / "data" / "mydata"
    report = (out / "08_reporting" / "naive_mydata" / "report.md").read_text()
    assert "latent: VQModel (vqvae/ of data/06_models/my_ldm), 3x16x16, scaled by 0.18215." in report
    assert "Class label: unconditional (the null label)." in report
    # sources.my_ldm.sampling (50 steps) over the environment's sampling block (4 steps)
    assert "Sampler: ddim, 50 steps, eta 0.0" in report
    model_dir = out / "06_models" / "naive_mydata" / "model"
    assert (f'load it with `from diffusers import DiffusionPipeline; DiffusionPipeline.from_pretrained("{model_dir.relative_to(latent_project)}")`'
            in report)
    # the samples are decoded images at the autoencoder's resolution (16 latent px x 4)
    from safetensors import safe_open

    with safe_open(str(out / "07_model_output" / "naive_mydata" / "samples.safetensors"), "pt") as fh:
        images = fh.get_tensor("images")
    assert images.shape[1:] == (64, 64, 3) and images.dtype == torch.uint8 and images.float().std() > 1
    # the fine-tuned model is a pipeline folder diffusers loads, its label beside it
    pipe = DiffusionPipeline.from_pretrained(str(model_dir))
    assert isinstance(pipe, LDMPipeline) and pipe.unet.config.num_class_embeds == 5
    assert json.loads((model_dir / "class_label.json").read_text()) == {"class_label": 4, "null_label": 4}
    source = LDMPipeline.from_pretrained(str(latent_project / "data" / "06_models" / "my_ldm"))
    assert torch.equal(pipe.vqvae.encoder.conv_in.weight, source.vqvae.encoder.conv_in.weight)  # frozen
    assert not torch.equal(pipe.unet.conv_in.weight, source.unet.conv_in.weight)  # trained
    assert list((out / "06_models" / "checkpoints" / "latents").glob("*.safetensors"))  # encoded once, cached


@pytest.mark.slow
def test_anl_modules_attach_to_the_latent_unet(latent_project):
    done = kedro(latent_project, "run", "--pipeline=anl_mydata", "--env=mydata")
    assert done.returncode == 0, done.stderr[-3000:]
    model_dir = latent_project / "data" / "mydata" / "06_models" / "anl_mydata" / "model"
    assert {p.name for p in model_dir.iterdir()} >= {"adapter.json", "adapter.safetensors", "unet", "vqvae"}
    history = json.loads((latent_project / "data" / "mydata" / "08_reporting" / "anl_mydata"
                          / "training_history.json").read_text())
    assert history["parameters"]["added_parameters"] > 0
    assert history["saved_model"]["load"].startswith("from diffusion_transfer.core.models import load_unet")
    # ANL's own sampling experiments on that model: mask rates x seen / unseen conditions
    done = kedro(latent_project, "run", "--pipeline=anl_conditions_mydata", "--env=mydata")
    assert done.returncode == 0, done.stderr[-3000:]
    out = latent_project / "data" / "mydata" / "08_reporting" / "anl_mydata"
    sweep = json.loads((out / "condition_sweep.json").read_text())
    assert [(r["conditions"], r["mask_rate"]) for r in sweep["rows"]] == [("seen", 0.0), ("seen", 0.5)]
    assert all(r["n"] == 8 and r["fid"] >= 0 for r in sweep["rows"])
    # every image of mydata (a full dataset) is a training image: no unseen condition, said so
    assert sweep["skipped"] == ["unseen conditions: the dataset has no images outside its training set"]
    assert "| seen | 0.5 | 8 |" in (out / "condition_sweep.md").read_text()


def test_a_class_conditional_source_without_a_label_stops_before_compute(latent_project):
    params = yaml.safe_load((latent_project / "conf" / "mydata" / "parameters.yml").read_text())
    del params["sources"]["my_ldm"]["class_label"]
    (latent_project / "conf" / "nolabel").mkdir(exist_ok=True)
    (latent_project / "conf" / "nolabel" / "parameters.yml").write_text(yaml.safe_dump(params))
    message = _error(kedro(latent_project, "run", "--pipeline=naive_mydata", "--env=nolabel"))
    assert "sources.my_ldm.class_label is not set but the source model is class-conditional (5 class embeddings)" \
        in message


def test_a_label_the_model_does_not_have_stops_before_compute(latent_project):
    message = _error(kedro(latent_project, "run", "--pipeline=curate_mydata", "--env=mydata",
                           "--params=datasets.mydata.class_label=7"))
    assert "datasets.mydata.class_label is 7: the source model has 5 class embeddings (0..4" in message


@pytest.mark.slow
def test_the_edit_stage_edits_a_latent_model_in_its_latent_space(latent_project):
    """Asyrp on a latent model: inversion and editing on the inputs' latents, the CLIP loss and the
    metrics on decoded images (the model naive_mydata wrote in the first test, or written here)."""
    from safetensors import safe_open

    model_dir = latent_project / "data" / "mydata" / "06_models" / "naive_mydata" / "model"
    if not model_dir.exists():
        assert kedro(latent_project, "run", "--pipeline=naive_mydata", "--env=mydata").returncode == 0
    done = kedro(latent_project, "run", "--pipeline=edit_naive_mydata", "--env=mydata")
    assert done.returncode == 0, done.stderr[-3000:]
    with safe_open(str(latent_project / "data" / "mydata" / "07_model_output" / "naive_mydata" / "edits.safetensors"),
                   "pt") as fh:
        names = list(fh.keys())
        reconstructed = fh.get_tensor("reconstructed")
    assert reconstructed.shape[1:] == (64, 64, 3)  # decoded images, not 16 x 16 latents
    metrics = json.loads((latent_project / "data" / "mydata" / "08_reporting" / "naive_mydata"
                          / "edit_metrics.json").read_text())
    assert metrics["rows"] and set(metrics["rows"]) <= set(names)  # one row per prompt, each edited
