"""``attn`` on a text-to-image UNet (issue 34): the Custom Diffusion baseline
(Kumari et al. 2023) trains the cross-attention layers only, their key and
value projections by default, all of them with ``cross_attention: all``;
full or with a LoRA kept in those layers; saved as a pipeline folder that
diffusers loads. On a pixel UNet ``attn`` stays A3FT's attention-block
baseline (tests/core/test_adapters.py)."""

from __future__ import annotations

import copy

import pytest
import torch

from diffusion_transfer.core.methods import build_method
from diffusion_transfer.core.methods.a3ft import attention_blocks
from diffusion_transfer.core.models import load_unet, save_unet
from diffusion_transfer.core.models.lora import LoraSpec, add_lora, lora_layers, lora_parameters, merged_copy
from diffusion_transfer.core.models.lora_io import LORA_FOLDER
from diffusion_transfer.core.models.text_to_image import text_conditioning_of
from diffusion_transfer.core.schedule import make_schedule
from diffusion_transfer.core.training import TrainConfig, train
from tests.core._adapter_helpers import tiny_unet
from tests.core._sd_helpers import tiny_sd_folder

PROMPTS = ["a photo of a cat", "a red painting of a dog"]
SCHEDULE = make_schedule("scaled_linear", 1000, beta_start=0.00085, beta_end=0.012)
# The tiny UNet's transformer blocks (tests/core/_sd_helpers.py): CrossAttnDownBlock2D at 64 channels with
# one layer, the mid block, CrossAttnUpBlock2D with two; each cross-attention maps the text's 32 to 64.
CROSS = [f"{block}.transformer_blocks.0.attn2" for block in
         ("down_blocks.1.attentions.0", "mid_block.attentions.0", "up_blocks.0.attentions.0",
          "up_blocks.0.attentions.1")]
KV = {f"{a}.{p}.weight": 32 * 64 for a in CROSS for p in ("to_k", "to_v")}  # Linear(32, 64, bias=False)
ALL = {**KV, **{f"{a}.to_q.weight": 64 * 64 for a in CROSS}, **{f"{a}.to_out.0.weight": 64 * 64 for a in CROSS},
       **{f"{a}.to_out.0.bias": 64 for a in CROSS}}


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    scratch = tmp_path_factory.mktemp("sd")
    return tiny_sd_folder(scratch / "sd", scratch)


def _train(student, source, steps=1):
    latents = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    captions = text_conditioning_of(source).encode(PROMPTS * 2)
    config = TrainConfig(steps=steps, batch_size=2, lr=1e-2, log_every=1, ema_decay=0.0, ema_warmup="none")
    return train(student, build_method("attn", {}, SCHEDULE).loss_fn, latents, config, conditions=captions,
                 progress=False, latents=True).model


@pytest.mark.parametrize(("which", "expected", "count"), [("kv", KV, 4 * 2 * 2048),
                                                          ("all", ALL, 4 * (2 * 2048 + 2 * 4096 + 64))])
def test_attn_trains_exactly_the_cross_attention_layers_and_a_step_moves_only_them(sd_folder, tmp_path, which,
                                                                                   expected, count):
    from diffusers import StableDiffusionPipeline

    source = load_unet(sd_folder)
    params = {} if which == "kv" else {"cross_attention": which}
    student = build_method("attn", params, SCHEDULE).build_student(copy.deepcopy(source))
    trainable = {n: p.numel() for n, p in student.named_parameters() if p.requires_grad}
    assert trainable == expected and sum(trainable.values()) == count
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    trained = _train(student, source)
    moved = {n for n, p in trained.named_parameters() if not torch.equal(before[n], p.detach())}
    assert moved == set(expected)
    # saved as a Stable Diffusion pipeline folder that diffusers loads, with the trained weights
    folder = save_unet(trained, tmp_path / "model")
    pipe = StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
    state = pipe.unet.state_dict()
    assert all(torch.equal(state[n], p.detach()) for n, p in trained.named_parameters())


def test_attn_with_lora_puts_it_in_the_trained_cross_attention_layers_only(sd_folder, tmp_path):
    from diffusers import StableDiffusionPipeline

    source = load_unet(sd_folder)
    student = build_method("attn", {}, SCHEDULE).build_student(copy.deepcopy(source))
    add_lora(student, LoraSpec(rank=2), seed=0)  # default targets: to_q, to_k, to_v, to_out.0
    assert sorted(name for name, _ in lora_layers(student)) == sorted(k[: -len(".weight")] for k in KV)
    assert {id(p) for p in student.parameters() if p.requires_grad} == {id(p) for p in lora_parameters(student)}
    trained = merged_copy(_train(student, source, steps=2))
    folder = save_unet(trained, tmp_path / "model")
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    pipes = [StableDiffusionPipeline.from_pretrained(str(f), local_files_only=True) for f in (folder, sd_folder)]
    pipes[1].load_lora_weights(str(folder / LORA_FOLDER))
    images = [p(PROMPTS[:1], latents=x.clone(), num_inference_steps=3, guidance_scale=3.0, output_type="pt").images
              for p in pipes]
    torch.testing.assert_close(images[0], images[1], atol=1e-4, rtol=1e-4)


def test_a_lora_target_outside_the_cross_attention_stops_the_run_naming_the_layers(sd_folder):
    student = build_method("attn", {}, SCHEDULE).build_student(load_unet(sd_folder))
    with pytest.raises(ValueError, match=r"train.adapter.target_modules: attn trains only the cross-attention key "
                                         r"and value projections .*\['conv1'\].*can adapt there: to_k, to_v$"):
        add_lora(student, LoraSpec(rank=2, target_modules=("conv1",)), seed=0, where="train.adapter.target_modules")


def test_cross_attention_is_checked_by_name_and_ignored_on_a_pixel_model():
    with pytest.raises(ValueError, match=r"cross_attention must be one of \['kv', 'all'\], got 'q'"):
        build_method("attn", {"cross_attention": "q"}, SCHEDULE)
    for which in ("kv", "all"):  # A3FT's baseline: every attention block, whatever the option says
        unet = tiny_unet()
        model = build_method("attn", {"cross_attention": which}, SCHEDULE).build_student(unet)
        blocks = {id(p) for _, b in attention_blocks(unet) for p in b.parameters()}
        assert {id(p) for p in model.parameters() if p.requires_grad} == blocks
