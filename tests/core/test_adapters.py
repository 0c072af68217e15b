"""attn / a3ft / anl / anl_uncond: exactness at initialisation, what trains and
what stays frozen, adapter weight sharing, save/load, the methods registry and
resuming an interrupted adapted run."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from diffusion_transfer.core.methods import DenoisingLoss, build_method
from diffusion_transfer.core.methods.a3ft import (
    ChannelCrossAttention,
    TimeFusion,
    TimeScaling,
    attention_blocks,
    prepare_a3ft,
    prepare_attn,
)
from diffusion_transfer.core.methods.anl import prepare_anl, residual_blocks
from diffusion_transfer.core.models import AdaptedUNet, load_unet, parameter_counts, save_unet
from diffusion_transfer.core.sampling import model_eps_fn, sample_ddim
from diffusion_transfer.core.training import train
from tests.core._adapter_helpers import SCHED, inputs, perturb, tiny_unet

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py


def out(model, x, t, **kw):
    with torch.no_grad():
        return model(x, t, **kw).sample


# --- exactness at initialisation ------------------------------------------------


@pytest.mark.parametrize("out_channels", [3, 6])
def test_a3ft_adapted_model_computes_the_source_model_at_init(out_channels):
    source = tiny_unet(out_channels)
    adapted = prepare_a3ft(copy.deepcopy(source)).eval()
    x, t = inputs()
    assert torch.equal(out(adapted, x, t), out(source, x, t))
    # ...and the adapters are really in the computation: open them and it changes.
    with torch.no_grad():
        for block in adapted.adapter.blocks:
            block.scaling.mlp[2].bias.fill_(0.5)
    assert not torch.allclose(out(adapted, x, t), out(source, x, t))


@pytest.mark.parametrize("condition_dim, tokens", [(5, 1), (5, 3), (None, 1)])
def test_anl_adapted_model_computes_the_source_model_at_init(condition_dim, tokens):
    source = tiny_unet()
    adapted = prepare_anl(copy.deepcopy(source), condition_dim)
    if tokens > 1:
        from diffusion_transfer.core.methods.anl import ANLAdapter

        adapted = AdaptedUNet(copy.deepcopy(source).requires_grad_(False),
                              ANLAdapter(source, condition_dim, condition_tokens=tokens))
    x, t = inputs()
    kw = {}
    if condition_dim is not None:
        shape = (3, condition_dim) if tokens == 1 else (3, tokens, condition_dim)
        kw["condition"] = torch.randn(shape)
    # The reference is the source with its parameters frozen too: PyTorch's CPU
    # kernels take another (equally valid) path for frozen weights, ~5e-7 apart.
    reference = copy.deepcopy(source).requires_grad_(False)
    assert torch.equal(out(adapted, x, t, **kw), out(reference, x, t))
    assert torch.allclose(out(adapted, x, t, **kw), out(source, x, t), atol=1e-5)
    perturb(adapted.adapter)
    assert not torch.allclose(out(adapted, x, t, **kw), out(source, x, t), atol=1e-3)


def test_anl_attaches_one_module_after_every_residual_block():
    unet = tiny_unet()
    adapted = prepare_anl(unet, 5)
    assert len(adapted.adapter.modules_) == len(residual_blocks(unet)) == 2 + 2 + 4  # down, mid, up
    widths = [m.nonlinear[2].out_features for m in adapted.adapter.modules_]
    assert widths == [b.out_channels for _, b in residual_blocks(unet)]


# --- A3FT weight sharing --------------------------------------------------------


def test_a3ft_fusion_and_cross_attention_are_one_module_per_width_scaling_one_per_block():
    unet = tiny_unet()
    blocks = attention_blocks(unet)
    widths = [b.to_out[0].in_features for _, b in blocks]
    adapted = prepare_a3ft(unet)
    adapter = adapted.adapter
    assert sorted(set(widths)) == [8, 16] and len(blocks) > 2

    fusions = [m for m in adapter.modules() if isinstance(m, TimeFusion)]
    attns = [m for m in adapter.modules() if isinstance(m, ChannelCrossAttention)]
    scalings = [m for m in adapter.modules() if isinstance(m, TimeScaling)]
    assert len(fusions) == 2 and len(attns) == 2
    assert len(scalings) == len(blocks) == len({id(s) for s in scalings})
    # Blocks of one width use the very same fusion object: a gradient through one
    # block lands in the shared parameters.
    x, t = inputs()
    adapted.train()
    with torch.no_grad():
        for block in adapter.blocks:
            block.scaling.mlp[2].bias.fill_(0.5)
    adapted(x, t).sample.square().mean().backward()
    for w in ("8", "16"):
        assert adapter.fusion[w].out.weight.grad is not None
        assert adapter.fusion[w].out.weight.grad.abs().sum() > 0
    # the state dict holds each shared module once
    keys = [k for k in adapter.state_dict() if k.endswith("out.weight") and k.startswith("fusion")]
    assert sorted(keys) == ["fusion.16.out.weight", "fusion.8.out.weight"]


def test_a3ft_alpha_is_in_unit_interval_and_gets_a_gradient_at_zero():
    scaling = TimeScaling(time_dim=6, width=4, hidden=3)
    t_emb = torch.randn(5, 6)
    alpha = scaling(t_emb)
    assert torch.equal(alpha, torch.zeros(5, 4))
    alpha.sum().backward()
    assert scaling.mlp[2].bias.grad.abs().sum() > 0  # a plain clamp would give zero here
    with torch.no_grad():
        scaling.mlp[2].bias.copy_(torch.tensor([-3.0, 0.2, 0.9, 7.0]))
    a = scaling(t_emb).detach()
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.allclose(a[:, 0], torch.zeros(5)) and torch.allclose(a[:, 3], torch.ones(5))


# --- what trains ----------------------------------------------------------------


def _train_few(model, conditions=None, steps=3):
    images = torch.rand(6, 3, 8, 8) * 2 - 1
    loss = DenoisingLoss(SCHED)
    cfg = dict(steps=steps, batch_size=3, lr=1e-2, ema_decay=0.0, grad_clip=None, seed=0)
    return train(model, loss, images, cfg, conditions=conditions, progress=False).model


def _changed(before: dict, after: dict) -> dict[str, bool]:
    return {k: not torch.equal(before[k], after[k]) for k in before}


@pytest.mark.parametrize("method", ["attn", "a3ft", "anl", "anl_uncond", "naive_clip"])
def test_frozen_parameters_stay_and_trainable_ones_move(method):
    unet = tiny_unet()
    conditions = None
    if method == "attn":
        model = prepare_attn(unet)
    elif method == "a3ft":
        model = prepare_a3ft(unet)
    elif method == "anl":
        model, conditions = prepare_anl(unet, 5), torch.randn(6, 5)
    elif method == "naive_clip":
        model, conditions = build_method("naive_clip", {}, SCHED).build_student(unet, 5), torch.randn(6, 5)
    else:
        model = prepare_anl(unet, None)
    names_trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trained = _train_few(model, conditions)
    changed = _changed(before, {n: p.detach() for n, p in trained.named_parameters()})

    attn_prefixes = tuple(name + "." for name, _ in attention_blocks(unet))
    for name, moved in changed.items():
        unet_name = name[len("unet."):] if name.startswith("unet.") else name
        is_unet = not name.startswith("adapter.")
        if method in ("attn", "a3ft") and is_unet:
            should_train = unet_name.startswith(attn_prefixes)
        elif method == "naive_clip":  # ANL Fig. 4's Tuning-All: the UNet and the modules
            should_train = True
        else:
            should_train = not is_unet  # anl: only the added modules
        assert (name in names_trainable) == should_train, name
        assert moved == should_train, f"{name}: moved={moved}, should train={should_train}"


def test_parameter_counts_report_trainable_and_added_shares():
    unet = tiny_unet()
    n_base = sum(p.numel() for p in unet.parameters())
    n_attn = sum(p.numel() for _, b in attention_blocks(unet) for p in b.parameters())
    adapted = prepare_a3ft(unet)
    n_added = sum(p.numel() for p in adapted.adapter.parameters())
    c = parameter_counts(adapted)
    assert c["base_parameters"] == n_base
    assert c["trainable_parameters"] == n_attn + n_added
    assert c["added_parameters"] == n_added
    assert math.isclose(c["trainable_share"], (n_attn + n_added) / n_base)


# --- save / load ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["a3ft", "anl", "anl_uncond"])
def test_adapted_model_saves_as_base_plus_modules_and_samples_identically(tmp_path, kind):
    unet = tiny_unet()
    model = {"a3ft": lambda: prepare_a3ft(unet), "anl": lambda: prepare_anl(unet, 5),
             "anl_uncond": lambda: prepare_anl(unet, None)}[kind]()
    perturb(model)  # trained-looking weights, UNet included
    folder = save_unet(model, tmp_path / "model")
    assert (folder / "adapter.json").is_file() and (folder / "adapter.safetensors").is_file()
    assert (folder / "unet" / "config.json").is_file()
    loaded = load_unet(folder)
    assert isinstance(loaded, AdaptedUNet) and loaded.kind == kind

    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    cond = torch.randn(2, 5) if kind == "anl" else None

    def draw(m):
        # Frozen for inference, both: PyTorch's CPU Linear takes another kernel
        # when weights require grad (~2e-7 apart), which would blur "identical".
        m.eval().requires_grad_(False)
        ctx = m.conditioned(cond) if cond is not None else torch.no_grad()
        with ctx:
            return sample_ddim(model_eps_fn(m, SCHED), noise, SCHED, steps=5)

    assert torch.equal(draw(model), draw(loaded))


def test_a_corrupt_adapter_folder_fails_clearly(tmp_path):
    from diffusion_transfer.core.models import ModelLoadError

    folder = save_unet(prepare_a3ft(tiny_unet()), tmp_path / "model")
    (folder / "adapter.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="adapter.safetensors"):
        load_unet(folder)


def test_deepcopy_of_an_adapted_model_is_independent():
    model = prepare_a3ft(tiny_unet())
    twin = copy.deepcopy(model)
    x, t = inputs()
    with torch.no_grad():
        for block in twin.adapter.blocks:
            block.scaling.mlp[2].bias.fill_(0.5)
    assert torch.equal(out(model, x, t), out(tiny_unet(), x, t))  # the original's hooks use its own modules
    assert not torch.allclose(out(twin, x, t), out(model, x, t))


# --- methods registry ----------------------------------------------------------------


def test_registry_builds_the_new_methods_and_rejects_bad_adapter_parameters():
    for name in ("attn", "a3ft", "anl", "anl_uncond", "naive_clip"):
        spec = build_method(name, {}, SCHED)
        assert spec.init == "source" and not spec.needs_teacher
        assert spec.conditional == (name in ("anl", "naive_clip"))
    student = build_method("anl", {}, SCHED).build_student(tiny_unet(), 5)
    assert isinstance(student, AdaptedUNet) and student.adapter.needs_condition
    with pytest.raises(ValueError, match="condition_dim"):
        build_method("anl", {}, SCHED).build_student(tiny_unet())
    with pytest.raises(ValueError, match="scaling_hidden"):
        build_method("a3ft", {"scaling_hidden": 0}, SCHED)
    with pytest.raises(ValueError, match="hidden_mult"):
        build_method("anl", {"hidden_mult": -1.0}, SCHED)


# --- resuming ---------------------------------------------------------------------


class _Stop(Exception):
    pass


@pytest.mark.parametrize("method", ["a3ft", "anl"])
def test_an_interrupted_adapted_run_resumes_to_the_uninterrupted_result(tmp_path, method):
    images = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    conditions = torch.randn(6, 5, generator=torch.Generator().manual_seed(1)) if method == "anl" else None
    cfg = dict(steps=6, batch_size=3, lr=1e-2, ema_decay=0.9, checkpoint_every=2, log_every=1, seed=0)

    def fresh():
        torch.manual_seed(0)
        return prepare_a3ft(tiny_unet()) if method == "a3ft" else prepare_anl(tiny_unet(), 5)

    def run(ckpt, on_log=None):
        return train(fresh(), DenoisingLoss(SCHED), images, cfg, conditions=conditions, checkpoint_dir=ckpt,
                     progress=False, on_log=on_log)

    full = run(tmp_path / "full")

    def interrupt(record):
        if record["step"] == 5:
            raise _Stop

    with pytest.raises(_Stop):
        run(tmp_path / "cut", interrupt)
    resumed = run(tmp_path / "cut")
    assert resumed.resumed_from_step == 4
    for (k, v), w in zip(full.ema_model.state_dict().items(), resumed.ema_model.state_dict().values()):
        torch.testing.assert_close(v, w, rtol=1e-6, atol=1e-7, msg=k)
    assert any(k.startswith("adapter.") for k in full.ema_model.state_dict())
