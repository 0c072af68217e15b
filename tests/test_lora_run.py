"""``train.adapter`` (issue 34) through the project: validated in the one
schema (an unknown key, a bad rank or type, scratch with an adapter, target
layers the model lacks: each one ``Error:`` before compute naming the key
and the fix), and a smoke ``kedro run`` of SDFT with LoRA whose history
shows the adapter and whose folder holds it, loadable with peft."""

from __future__ import annotations

import json

import pytest
import torch

from tests._pipeline_helpers import ROOT, SMOKE_DATA, _scratch_project
from tests.test_failures import error_paragraph
from tests.test_own_data import kedro
from tests.test_strict_parameters import _base_params


def _resolve_error(params: dict) -> str:
    from diffusion_transfer.project.resolved import resolve_parameters
    from diffusion_transfer.project.schema import InvalidParametersError

    with pytest.raises(InvalidParametersError) as err:
        resolve_parameters(params)
    return str(err.value)


@pytest.mark.parametrize("path, key, expected", [
    (("train", "adapter"), "rnak", "'train.adapter.rnak': unknown key; did you mean 'rank'?"),
    (("methods", "sdft", "train", "adapter"), "alpah", "'methods.sdft.train.adapter.alpah': unknown key; did you "
                                                       "mean 'alpha'?"),
    (("datasets", "aahq", "method_overrides", "naive", "train", "adapter"), "target_module",
     "'datasets.aahq.method_overrides.naive.train.adapter.target_module': unknown key; did you mean "
     "'target_modules'?"),
])
def test_a_misspelt_adapter_key_is_named_with_the_closest_one(path, key, expected):
    from diffusion_transfer.project.known_keys import unknown_key_problems

    params = _base_params()
    node = params
    for part in path:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node.update({"type": "lora", key: 1})
    assert unknown_key_problems(params) == [expected]
    assert expected in _resolve_error(params)


def test_the_adapter_s_defaults_are_diffusers_examples_and_land_in_the_record():
    from diffusion_transfer.project.resolved import resolve_parameters

    params = _base_params()
    assert params["train"]["adapter"] is None  # conf/base: full fine-tuning
    before = resolve_parameters(params).runs["sdft_aahq"].record()
    assert "adapter" not in before["train"]  # so checkpoint keys of runs without one are as they were
    params["train"]["adapter"] = {"type": "lora"}
    runs = resolve_parameters(params).runs  # scratch keeps none: conf/base sets methods.scratch.train.adapter null
    assert runs["scratch_aahq"].adapter is None and runs["sdft_aahq"].record()["train"]["adapter"] == {
        "type": "lora", "rank": 4, "alpha": 4.0, "dropout": 0.0, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}
    assert runs["naive_aahq"].adapter.lora_alpha == 4.0 and runs["naive_aahq"].train.model_dump() == \
        resolve_parameters(_base_params()).runs["naive_aahq"].train.model_dump()  # the loop's settings unchanged


@pytest.mark.parametrize("adapter, expected", [
    ({"type": "lora", "rank": 0}, ".adapter.rank: Value error, rank must be at least 1"),
    ({"type": "lorra"}, ".adapter.type: Value error, unknown adapter type 'lorra'; known: ['lora']"),
    ({"type": "lora", "dropout": 1.0}, ".adapter.dropout: Input should be less than 1"),
    ({"type": "lora", "target_modules": []}, ".adapter.target_modules: List should have at least 1 item"),
])
def test_a_bad_adapter_value_names_its_key(adapter, expected):
    params = _base_params()
    params["train"]["adapter"] = adapter
    message = _resolve_error(params)
    assert message.startswith("Invalid parameters in 'train (with datasets.") and expected in message


def test_scratch_with_an_adapter_is_refused_with_the_key_that_removes_it():
    params = _base_params()
    params["datasets"]["aahq"]["train"] = {"adapter": {"type": "lora"}}  # beats methods.scratch.train's null
    message = _resolve_error(params)
    assert message.startswith("Invalid parameters in 'train.adapter' (run scratch_aahq, with methods.scratch.train "
                              "and datasets.aahq.train): scratch trains every weight from a random init")
    assert "'datasets.aahq.method_overrides.scratch.train.adapter: null'" in message


def test_finetune_with_lora_resumes_and_leaves_the_source_model_as_it_came(tmp_path):
    from diffusion_transfer.core.models import build_unet
    from diffusion_transfer.core.models.lora import lora_layers
    from diffusion_transfer.pipelines.finetune.nodes import finetune
    from diffusion_transfer.project.resolved import run_inputs

    tiny = dict(sample_size=8, block_out_channels=(8, 16), layers_per_block=1,
                down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                attention_head_dim=8, norm_num_groups=4)
    torch.manual_seed(0)
    source = build_unet(tiny)
    before = {k: v.clone() for k, v in source.state_dict().items()}
    curated = {"images": torch.randint(0, 256, (4, 8, 8, 3), dtype=torch.uint8), "meta": {}}
    train = {"steps": 2, "batch_size": 2, "checkpoint_every": 1}
    lora = (*run_inputs({"name": "sdft"}, {"name": "toy"}, {**train, "adapter": {"type": "lora", "rank": 2}}), {},
            str(tmp_path))
    first, history = finetune(source, curated, *lora)  # SDFT + LoRA on the source model itself
    assert not lora_layers(source) and source.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in source.state_dict().items())
    assert all(p.requires_grad for p in source.parameters())  # its flags too: a later full run trains it
    assert not lora_layers(first) and first.state_dict().keys() == before.keys()  # merged: a plain UNet
    again, resumed = finetune(source, curated, *lora)
    assert resumed["resumed_from_step"] == 2 and resumed["checkpoint_dir"] == history["checkpoint_dir"]
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    _, plain = finetune(source, curated, *run_inputs({"name": "sdft"}, {"name": "toy"}, train), {}, str(tmp_path))
    assert plain["checkpoint_dir"] != history["checkpoint_dir"] and "adapter" not in plain["run"]["train"]
    assert "lora" not in plain["saved_model"] and "lora_parameters" not in plain["parameters"]


# --- through the command line ------------------------------------------------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return _scratch_project(tmp_path_factory.mktemp("lora"))


def test_an_adapter_typo_stops_kedro_run_in_one_error_paragraph(project):
    error = error_paragraph(kedro(project, "run", "--pipeline=sdft_aahq", "--env=smoke",
                                  "--params=train.adapter.type=lora,train.adapter.rnak=2"))
    assert "--params: 'train.adapter.rnak': unknown key; did you mean 'rank'?" in error
    assert not (project / SMOKE_DATA / "06_models").exists()  # before any compute


def test_target_layers_the_source_model_lacks_are_named_by_the_pre_run_check(project):
    error = error_paragraph(kedro(project, "run", "--pipeline=sdft_aahq", "--env=smoke",
                                  "--params=train.adapter.type=lora,train.adapter.target_modules=[to_qq]"))
    assert (f"train.adapter.target_modules (run sdft_aahq) on the source model 'source_model' "
            f"({project / 'data/06_models/world/source'}): 'to_qq' matches no module of the model. Set it to layers "
            "LoRA can adapt in this model: conv, conv1") in error
    assert "to_k, to_out.0, to_q, to_v" in error
    assert not (project / SMOKE_DATA / "06_models").exists()


def test_sdft_with_lora_smoke_run_saves_the_merged_model_and_its_adapter(project):
    from diffusers import UNet2DModel
    from peft import PeftModel

    from diffusion_transfer.core.models import load_unet

    done = kedro(project, "run", "--pipeline=sdft_aahq", "--env=smoke", "--to-outputs=sdft_aahq.training_history",
                 "--params=train.adapter.type=lora,train.adapter.rank=2,train.steps=2,train.sample_every=0")
    assert done.returncode == 0, done.stderr[-4000:]
    history = json.loads((project / SMOKE_DATA / "08_reporting" / "sdft_aahq" / "training_history.json").read_text())
    adapter = {"type": "lora", "rank": 2, "alpha": 2.0, "dropout": 0.0, "target_modules": ["to_q", "to_k", "to_v",
                                                                                          "to_out.0"]}
    assert history["run"]["train"]["adapter"] == adapter and history["parameters"]["adapter"] == adapter
    counts = history["parameters"]
    # By hand: the FaceWorld source has 4 attention blocks (down 1, mid 1, up 2), all 64 wide; rank 2 on
    # to_q, to_k, to_v and to_out.0 of each is A (2 x 64) and B (64 x 2) per layer.
    assert counts["lora_parameters"] == counts["trainable_parameters"] == 4 * 4 * (2 * 64 + 64 * 2)
    assert counts["base_parameters"] == 1113955  # the source model's size, without the LoRA layers
    folder = project / history["saved_model"]["folder"]
    lora = project / history["saved_model"]["lora"]["folder"]
    assert sorted(p.name for p in lora.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    merged = load_unet(folder).eval()
    source = UNet2DModel.from_pretrained(ROOT / "data/06_models/world/source")
    with_adapter = PeftModel.from_pretrained(source, str(lora)).eval()
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 3, 32, 32, generator=g), torch.tensor([10, 900])
    with torch.no_grad():
        torch.testing.assert_close(with_adapter(x, t).sample, merged(x, t).sample, rtol=1e-5, atol=1e-5)
