"""LoRA through peft (issue 34): the saved adapter loads back with the
libraries' own loaders and gives the trained model's outputs, the merged
model gives them too, and SDFT's teacher is the student with its adapters
disabled, exactly the source model, without a second UNet."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from diffusers import UNet2DConditionModel, UNet2DModel

from diffusion_transfer.core.methods import build_method
from diffusion_transfer.core.methods.a3ft import prepare_a3ft
from diffusion_transfer.core.models import build_unet, load_unet, save_unet
from diffusion_transfer.core.models.lora import (FrozenBaseView, LoraSpec, add_lora, lora_layers, lora_parameters,
                                                 merged_copy, remove_lora, target_problems)
from diffusion_transfer.core.models.lora_io import LORA_FOLDER
from diffusion_transfer.core.training import TrainConfig, train
from tests.core._adapter_helpers import SCHED, TINY, inputs, perturb

FLOAT32 = dict(rtol=1e-5, atol=1e-5)  # a merged W + s B A against W x + s B (A x): float32 rounding


def _images(n: int = 4) -> torch.Tensor:
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1


def _config(**over) -> TrainConfig:
    return TrainConfig(**{"steps": 3, "batch_size": 2, "lr": 1e-2, "log_every": 1, "ema_decay": 0.5,
                          "ema_warmup": "none", **over})


def _out(model, x, t) -> torch.Tensor:
    with torch.no_grad():
        return model(x, t).sample


def test_a_pixel_model_s_adapter_loads_back_with_peft_and_matches_the_trained_and_merged_models(tmp_path):
    from peft import PeftModel

    torch.manual_seed(0)
    source = build_unet(TINY)
    save_unet(source, tmp_path / "source")
    spec = LoraSpec(rank=2, alpha=3.0)
    student = add_lora(copy.deepcopy(source), spec, seed=0)
    result = train(student, build_method("naive", {}, SCHED).loss_fn, _images(), _config(), progress=False)
    trained = result.ema_model  # the weights saved: the EMA of the LoRA, on the source's base
    assert all(not torch.equal(p, torch.zeros_like(p)) for n, p in trained.named_parameters() if "lora_B" in n)
    merged = merged_copy(trained)
    save_unet(merged, tmp_path / "model")
    lora = tmp_path / "model" / LORA_FOLDER
    config = json.loads((lora / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], sorted(config["target_modules"])) == (
        2, 3.0, sorted(["to_q", "to_k", "to_v", "to_out.0"]))

    x, t = inputs()
    expected = _out(trained.eval(), x, t)
    peft_loaded = PeftModel.from_pretrained(UNet2DModel.from_pretrained(tmp_path / "source"), str(lora)).eval()
    torch.testing.assert_close(_out(peft_loaded, x, t), expected, **FLOAT32)
    torch.testing.assert_close(_out(load_unet(tmp_path / "model").eval(), x, t), expected, **FLOAT32)
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    saved = load_file(str(lora / "adapter_model.safetensors"))
    injected = inject_adapter_in_model(LoraConfig.from_pretrained(str(lora)),
                                       UNet2DModel.from_pretrained(tmp_path / "source"))
    assert not set_peft_model_state_dict(injected, saved).unexpected_keys
    torch.testing.assert_close(_out(injected.eval(), x, t), expected, **FLOAT32)
    # The merged weight by hand: W + (alpha / r) B A from the saved adapter's own tensors.
    key = "base_model.model.down_blocks.0.attentions.0.to_q"
    by_hand = source.down_blocks[0].attentions[0].to_q.weight + 1.5 * saved[f"{key}.lora_B.weight"] @ saved[
        f"{key}.lora_A.weight"]
    torch.testing.assert_close(load_unet(tmp_path / "model").down_blocks[0].attentions[0].to_q.weight, by_hand)
    # the copies share what they did not change: the trained model keeps its LoRA layers
    assert len(lora_layers(trained)) == 28 and not lora_layers(merged)


def _tiny_conditional() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                                layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=8,
                                attention_head_dim=4, norm_num_groups=4)


def test_a_conditional_unet_s_adapter_is_diffusers_format_and_loads_with_load_lora_adapter(tmp_path):
    source = _tiny_conditional()
    source.save_pretrained(tmp_path / "source")
    model = add_lora(copy.deepcopy(source), LoraSpec(rank=2, alpha=6.0), seed=1)  # diffusers' add_adapter
    assert getattr(model, "_hf_peft_config_loaded", False)
    perturb(torch.nn.ParameterList(lora_parameters(model)), scale=0.2)  # stands for training
    merged = merged_copy(model)
    save_unet(merged, tmp_path / "model")
    files = sorted(p.name for p in (tmp_path / "model" / LORA_FOLDER).iterdir())
    assert files == ["pytorch_lora_weights.safetensors"]

    g = torch.Generator().manual_seed(4)
    x, t, context = torch.randn(2, 3, 8, 8, generator=g), torch.tensor([5, 600]), torch.randn(2, 1, 8, generator=g)

    def out(m):
        with torch.no_grad():
            return m.eval()(x, t, context).sample

    expected = out(model)
    loaded = UNet2DConditionModel.from_pretrained(tmp_path / "source")
    loaded.load_lora_adapter(str(tmp_path / "model" / LORA_FOLDER), prefix="unet", use_safetensors=True)
    torch.testing.assert_close(out(loaded), expected, **FLOAT32)  # alpha 6 / rank 2 came from the file's metadata
    torch.testing.assert_close(out(UNet2DConditionModel.from_pretrained(tmp_path / "model")), expected, **FLOAT32)
    assert not torch.allclose(out(source), expected, **FLOAT32)  # the LoRA does change the outputs


class _CheckedTeacher:
    """The SDFT loss, checking before each step that the teacher view equals the frozen source."""

    def __init__(self, loss_fn, reference):
        self.loss_fn, self.reference, self.checked = loss_fn, reference, 0

    def __call__(self, student, images, teacher=None, generator=None):
        x, t = inputs(seed=10 + self.checked)
        assert torch.equal(_out(teacher, x, t), _out(self.reference, x, t))
        self.checked += 1
        return self.loss_fn(student, images, teacher=teacher, generator=generator)


@pytest.mark.parametrize("precision", ["no", "bf16"])  # bf16: the student under accelerate's autocast, not the view
def test_sdft_with_lora_has_the_exact_source_as_teacher_and_holds_one_unet(precision):
    torch.manual_seed(0)
    source = build_unet(TINY)
    # The teacher before LoRA: the source in eval mode with requires_grad False (what train() makes of a
    # teacher; with trainable weights torch takes another matmul path and differs in the last bit).
    reference = copy.deepcopy(source).eval().requires_grad_(False)
    initial = {k: v.clone() for k, v in source.state_dict().items()}
    student = add_lora(source, LoraSpec(rank=2), seed=0)  # the source itself is the base: no copy
    lora_start = [p.detach().clone() for p in lora_parameters(student)]
    teacher = FrozenBaseView(student)
    loss = _CheckedTeacher(build_method("sdft", {}, SCHED).loss_fn, reference)
    result = train(student, loss, _images(), _config(steps=4, mixed_precision=precision), teacher=teacher,
                   progress=False)
    assert loss.checked == 4  # before every step, the steps after the first with trained LoRA weights
    x, t = inputs(seed=99)
    assert torch.equal(_out(teacher, x, t), _out(reference, x, t))
    assert student.training is False and all(p.requires_grad for p in lora_parameters(student))  # left as train() left it
    # Only the LoRA weights moved; every base weight is the source's, bit for bit.
    assert all(not torch.equal(a, b) for a, b in zip(lora_start, lora_parameters(student)))
    base = {k.replace("base_layer.", ""): v for k, v in student.state_dict().items() if "lora_" not in k}
    assert base.keys() == initial.keys() and all(torch.equal(base[k], initial[k]) for k in initial)
    # One UNet: the view holds no tensor, and the EMA shares every base tensor (it averages the LoRA only).
    assert not list(teacher.parameters()) and not list(teacher.buffers())
    trainable = {id(p) for p in lora_parameters(student)}
    for (name, pe), pm in zip(result.ema_model.named_parameters(), student.parameters()):
        assert (pe is pm) == (id(pm) not in trainable), name
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes()
                for m in (student, teacher, result.ema_model) for p in m.parameters()}
    lora_bytes = sum(p.numel() * 4 for p in lora_parameters(student))
    assert sum(storages.values()) == sum(v.numel() * 4 for v in initial.values()) + 2 * lora_bytes
    remove_lora(student)  # the source object as it came
    assert list(student.state_dict()) == list(initial)


def test_hooks_of_a_method_move_with_the_layer_lora_wraps_so_merging_keeps_the_outputs():
    """A3FT's pre-hook sits on to_out[0], which LoRA wraps: the LoRA branch
    must see the adapted input too, or the merged layer would compute
    something else than the trained pair."""
    torch.manual_seed(0)
    model = prepare_a3ft(build_unet(TINY))
    perturb(model.adapter, scale=0.3)
    add_lora(model, LoraSpec(rank=2), seed=0)
    perturb(torch.nn.ParameterList(lora_parameters(model)), scale=0.3, seed=6)
    assert all(not p.requires_grad for n, p in model.unet.named_parameters() if "lora_" not in n)
    assert all(p.requires_grad for p in model.adapter.parameters())  # the method's modules train in full
    x, t = inputs()
    merged = merged_copy(model)
    torch.testing.assert_close(_out(merged, x, t), _out(model, x, t), **FLOAT32)
    out_layer = merged.unet.down_blocks[0].attentions[0].to_out[0]
    assert type(out_layer) is torch.nn.Linear and len(out_layer._forward_pre_hooks) == 1


@pytest.mark.parametrize("targets, expected", [
    (("to_qq",), "'to_qq' matches no module of the model"),
    (("attentions",), "'attentions' matches down_blocks.0.attentions (ModuleList), which LoRA cannot adapt "
                      "(peft adapts Linear, Conv and Embedding layers)"),
])
def test_targets_that_do_not_work_are_named(targets, expected):
    unet = build_unet(TINY)
    assert target_problems(unet, ("to_q", "conv1")) == []
    assert target_problems(unet, targets) == [expected]
    with pytest.raises(ValueError, match="train.adapter.target_modules: .*Layers LoRA can adapt in this model: "
                                         r"conv, conv1, conv2, .*, to_k, to_out\.0, to_q, to_v$"):
        add_lora(unet, LoraSpec(target_modules=targets), seed=0, where="train.adapter.target_modules")
