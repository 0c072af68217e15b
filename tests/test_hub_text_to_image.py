"""A text-to-image source declared by Hub id (issue 34): offline, its snapshot in
the local Hugging Face cache is recognised and loaded like a Stable Diffusion
folder; absent or incomplete, the run stops before any compute with one message
naming the YAML key, the id, what is missing and the fix. The cache is a
tmp folder in the Hub's layout (``models--owner--name/snapshots/<hash>``,
``refs/main``) holding the tiny pipeline of tests/core/_sd_helpers.py; nothing
here reaches the network."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests._pipeline_helpers import _scratch_project
from tests.core._sd_helpers import tiny_sd_folder
from tests.test_own_data import _write_pngs

REPO = "someone/tiny-sd"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
KEY = "sources.my_sd.model"


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory) -> Path:
    return tiny_sd_folder(tmp_path_factory.mktemp("sd") / "pipe", tmp_path_factory.mktemp("tok"))


def _cache(root: Path, folder: Path | None) -> Path:
    """A Hub cache at ``root`` holding ``folder`` as REPO's snapshot (none: an empty cache)."""
    root.mkdir(parents=True, exist_ok=True)
    if folder is not None:
        repo = root / f"models--{REPO.replace('/', '--')}"
        shutil.copytree(folder, repo / "snapshots" / COMMIT)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(COMMIT)
    return root


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    def make(folder: Path | None) -> Path:
        root = _cache(tmp_path / "hf" / "hub", folder)
        monkeypatch.setenv("HF_HUB_CACHE", str(root))
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        return root / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT
    return make


def _dataset():
    from diffusion_transfer.datasets import UNetDataset

    return UNetDataset(REPO, yaml_key=KEY)


def test_a_cached_hub_id_is_recognised_and_loads_like_a_folder(sd_folder, offline_cache):
    from diffusion_transfer.core.models.latent import latent_codec_of
    from diffusion_transfer.core.models.text_to_image import text_conditioning_of
    from diffusion_transfer.core.models.unet import load_unet
    from diffusion_transfer.project.declared import declarations

    offline_cache(sd_folder)
    decl = declarations({"sources": {"my_sd": {"model": REPO, "images": None}}})
    assert decl.sources["my_sd"].text_to_image  # the text-to-image template is chosen from the cache
    dataset = _dataset()
    assert dataset.missing() is None
    unet, scheduler = dataset.configs()  # the pre-run check reads the snapshot like a folder
    assert unet["_class_name"] == "UNet2DConditionModel" and scheduler["_class_name"] == "DDIMScheduler"
    assert dataset.autoencoder_config()["_class_name"] == "AutoencoderKL"
    model = dataset.load()
    assert text_conditioning_of(model) is not None and latent_codec_of(model) is not None
    assert type(load_unet(REPO)).__name__ == "UNet2DConditionModel"


def test_model_index_alone_says_stable_diffusion(sd_folder, offline_cache):
    """A snapshot whose model_index.json names StableDiffusionPipeline is text-to-image even
    before its text parts are downloaded; what it lacks is listed, part by part."""
    from diffusion_transfer.project.declared import declarations

    snapshot = offline_cache(sd_folder)
    shutil.rmtree(snapshot / "text_encoder")
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):  # as this transformers version saved it
        (snapshot / "tokenizer" / name).unlink(missing_ok=True)
    (snapshot / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    assert json.loads((snapshot / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
    assert declarations({"sources": {"my_sd": {"model": REPO, "images": None}}}).sources["my_sd"].text_to_image
    message = _dataset().missing()
    assert message.startswith(f"{KEY} is the Hub id {REPO!r}, which cannot be loaded offline"), message
    assert "text_encoder/ (config.json, model.safetensors or pytorch_model.bin)" in message
    assert "tokenizer/ (tokenizer.json, or vocab.json and merges.txt)" in message
    assert "unet/ (diffusion_pytorch_model.safetensors or diffusion_pytorch_model.bin)" in message
    assert "vae/" not in message and "scheduler/" not in message  # those are whole
    assert f"huggingface-cli download {REPO}" in message and "local folder" in message


def test_a_hub_id_absent_from_the_cache_names_what_it_needs(offline_cache):
    from diffusion_transfer.core.models.unet import ModelLoadError, load_unet
    from diffusion_transfer.project.declared import declarations

    offline_cache(None)
    sources = {"sources": {"my_sd": {"model": REPO, "images": None}}}
    assert declarations(sources).sources["my_sd"].text_to_image  # every method's pipeline, to stop with the list
    message = _dataset().missing()
    assert message.startswith(f"{KEY} is the Hub id {REPO!r}, which cannot be loaded offline"), message
    assert "not in the local Hugging Face cache" in message and "models--someone--tiny-sd" in message
    for part in ("unet/", "vae/", "text_encoder/", "tokenizer/", "scheduler/scheduler_config.json"):
        assert part in message
    with pytest.raises(ModelLoadError, match="huggingface-cli download someone/tiny-sd"):
        load_unet(REPO)


@pytest.mark.parametrize("index", [{"_class_name": "StableDiffusionPipeline"}, None])
def test_online_an_uncached_id_is_told_by_its_model_index_alone(tmp_path, monkeypatch, index):
    """Online, an id the cache lacks is asked for model_index.json only (here a stand-in for
    the Hub writes it in the cache's layout; nothing reaches the network): a Stable Diffusion
    pipeline gets the text-to-image runs, a bare UNet repo (no such file) the UNet runs, and
    the file, once cached, answers the next look without asking again; a bare repo's answer
    is remembered for the process, a Hub that did not answer is asked again."""
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    from diffusion_transfer.project.declared import declarations

    cache = _cache(tmp_path / "hub", None)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    asked = []

    def hub(repo_id, filename, cache_dir=None, **kwargs):
        asked.append((repo_id, filename, cache_dir))
        if index is None:
            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        snapshot = Path(cache_dir) / f"models--{repo_id.replace('/', '--')}" / "snapshots" / COMMIT
        snapshot.mkdir(parents=True)
        (snapshot.parents[1] / "refs").mkdir()
        (snapshot.parents[1] / "refs" / "main").write_text(COMMIT)
        (snapshot / filename).write_text(json.dumps(index))
        return str(snapshot / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub)
    sources = {"sources": {"my_sd": {"model": REPO, "images": None}}}
    assert declarations(sources).sources["my_sd"].text_to_image is (index is not None)
    assert asked == [(REPO, "model_index.json", str(cache))]
    assert declarations(sources).sources["my_sd"].text_to_image is (index is not None)
    assert len(asked) == 1  # cached on disk once found; a bare UNet repo remembered for the process
    if index is None:  # a Hub that did not answer is asked again next time
        from diffusion_transfer.core.models import hub as hub_module

        hub_module._BARE_REPOS.clear()
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: asked.append(a) or 1 / 0)
        assert declarations(sources).sources["my_sd"].text_to_image is False
        assert declarations(sources).sources["my_sd"].text_to_image is False
        assert len(asked) == 3


CAPTIONS = ["a photo of a cat", "a red painting of a dog"]


def _project(tmp_path: Path) -> Path:
    proj = _scratch_project(tmp_path)
    images = proj / "data" / "01_raw" / "mydata"
    _write_pngs(images, 2, 24, seed=1)
    (images / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f"img_{i:03d}.png", "text": c}) + "\n"
                                                   for i, c in enumerate(CAPTIONS)))
    params = {"sources": {"my_sd": {"model": REPO, "images": None}},
              "datasets": {"mydata": {"source": "my_sd", "images": "data/01_raw/mydata", "curation": {}}},
              "train": {"steps": 1, "batch_size": 2, "checkpoint_every": 1, "log_every": 1,
                        "adapter": {"type": "lora", "rank": 2}},
              "sampling": {"n_samples": 2, "steps": 2, "batch_size": 2, "guidance_scale": 3.0}}
    (proj / "conf" / "mydata").mkdir()
    (proj / "conf" / "mydata" / "parameters.yml").write_text(yaml.safe_dump(params))
    return proj


def _kedro(proj: Path, cache: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache),
           "DT_TRACKING": "off", "OMP_NUM_THREADS": "1"}
    kedro = Path(sys.executable).parent / "kedro"
    return subprocess.run([str(kedro), *args], cwd=proj, env=env, capture_output=True, text=True, timeout=1800)


def test_kedro_run_on_an_uncached_hub_id_stops_before_any_compute(tmp_path):
    """The real command line, offline, an empty cache: one Error paragraph, no traceback."""
    proj = _project(tmp_path)
    done = _kedro(proj, _cache(tmp_path / "empty_hub", None), "run", "--pipeline=sdft_mydata", "--env=mydata")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    message = done.stderr[done.stderr.index("Error: "):]
    assert message.count("Error: ") == 1 and "nothing was computed" in message
    assert f"{KEY} is the Hub id {REPO!r}" in message and f"huggingface-cli download {REPO}" in message
    assert "text_encoder/" in message and "tokenizer/" in message
    assert not (proj / "data" / "mydata").exists()  # nothing was computed


@pytest.mark.slow
def test_kedro_run_fine_tunes_a_cached_hub_id_offline(tmp_path, sd_folder):
    """Declared by id, served by the cache: SDFT + LoRA runs as on the folder (tests/test_text_to_image_run.py)."""
    proj = _project(tmp_path)
    done = _kedro(proj, _cache(tmp_path / "hub", sd_folder), "run", "--pipeline=sdft_mydata", "--env=mydata")
    assert done.returncode == 0, done.stderr[-3000:]
    model_dir = proj / "data" / "mydata" / "06_models" / "sdft_mydata" / "model"
    assert (model_dir / "text_encoder").is_dir() and (model_dir / "lora").is_dir()
