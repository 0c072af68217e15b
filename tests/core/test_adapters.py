"""attn / a3ft / anl / anl_uncond: exactness at initialisation, what trains and
what stays frozen, adapter weight sharing, save/load, conditioning paths and
the masked-sampling rectangle; the improved-DDPM hybrid loss."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from diffusion_transfer.core.methods import DenoisingLoss, build_method
from diffusion_transfer.core.methods.a3ft import (
    A3FTAdapter,
    ChannelCrossAttention,
    TimeFusion,
    TimeScaling,
    attention_blocks,
    prepare_a3ft,
    prepare_attn,
)
from diffusion_transfer.core.methods.anl import (
    ANLModule,
    image_conditions,
    mask_rectangle,
    masked_images,
    prepare_anl,
    residual_blocks,
    text_conditions,
)
from diffusion_transfer.core.methods.vlb import reverse_log_variance, variance_vlb
from diffusion_transfer.core.models import AdaptedUNet, build_unet, load_unet, parameter_counts, save_unet
from diffusion_transfer.core.sampling import model_eps_fn, sample_ddim
from diffusion_transfer.core.schedule import make_schedule
from diffusion_transfer.core.training import train

ROOT = Path(__file__).resolve().parents[2]
SCHED = make_schedule()
# Attention at two widths (8 and 16) so that sharing per width is visible.
TINY = dict(
    sample_size=8, block_out_channels=(8, 16), layers_per_block=1,
    down_block_types=("AttnDownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "AttnUpBlock2D"),
    attention_head_dim=4, norm_num_groups=4,
)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py


def tiny_unet(out_channels: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    return build_unet({**TINY, "out_channels": out_channels}).eval()


def inputs(b: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, 8, 8, generator=g), torch.randint(0, 1000, (b,), generator=g)


def perturb(module: torch.nn.Module, scale: float = 0.3, seed: int = 5) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


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


@pytest.mark.parametrize("method", ["attn", "a3ft", "anl", "anl_uncond"])
def test_frozen_parameters_stay_and_trainable_ones_move(method):
    unet = tiny_unet()
    conditions = None
    if method == "attn":
        model = prepare_attn(unet)
    elif method == "a3ft":
        model = prepare_a3ft(unet)
    elif method == "anl":
        model, conditions = prepare_anl(unet, 5), torch.randn(6, 5)
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


# --- ANL conditioning ----------------------------------------------------------------


def test_conditional_anl_refuses_a_missing_or_misshapen_condition():
    model = prepare_anl(tiny_unet(), 5)
    x, t = inputs()
    with pytest.raises(ValueError, match="conditional"):
        model(x, t)
    with pytest.raises(ValueError, match=r"shape \(B, 5\)"):
        model(x, t, condition=torch.randn(3, 4))
    with pytest.raises(ValueError, match="takes no condition"):
        prepare_anl(tiny_unet(), None)(x, t, condition=torch.randn(3, 5))


@pytest.mark.parametrize("rate", [0.25, 0.5, 0.7])
def test_mask_rectangle_geometry(rate):
    h, w = 32, 24
    for seed in range(20):
        m = mask_rectangle(h, w, rate, torch.Generator().manual_seed(seed))
        assert m.shape == (h, w) and set(m.unique().tolist()) <= {0.0, 1.0}
        rows = torch.nonzero((m == 0).any(dim=1)).flatten()
        cols = torch.nonzero((m == 0).any(dim=0)).flatten()
        mh, mw = round(rate * h), round(rate * w)
        # one solid rectangle of round(delta*H) x round(delta*W), inside the image
        assert len(rows) == mh and len(cols) == mw
        assert int(rows[-1] - rows[0]) == mh - 1 and int(cols[-1] - cols[0]) == mw - 1
        assert int((m == 0).sum()) == mh * mw
    corners = {tuple(torch.nonzero(mask_rectangle(h, w, rate, torch.Generator().manual_seed(s)) == 0)[0].tolist())
               for s in range(20)}
    assert len(corners) > 1  # the position is random
    assert torch.equal(mask_rectangle(h, w, 0.0), torch.ones(h, w))
    with pytest.raises(ValueError, match="delta"):
        mask_rectangle(h, w, 1.0)


def test_masked_images_blacken_only_the_rectangle():
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    masked = masked_images(images, 0.5, torch.Generator().manual_seed(0))
    changed = (masked != images).any(dim=1)
    for i in range(4):
        assert bool((masked[i][:, changed[i]] == -1).all())
        assert int((masked[i] == -1).all(dim=0).sum()) >= 64  # the 8x8 rectangle is black


def test_text_and_image_conditions_drive_a_conditional_anl_model():
    from diffusion_transfer.core.world.clip_io import load_world_clip

    clip = load_world_clip(ROOT / "data" / "06_models" / "world" / "clip")
    text = text_conditions(clip, ["A realistic painting of a smiling woman with glasses", "A photo of a man"])
    assert text.shape == (2, clip.embed_dim)
    assert torch.allclose(text.norm(dim=-1), torch.ones(2), atol=1e-5)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    img = image_conditions(clip, masked_images(images, 0.5, torch.Generator().manual_seed(0)))
    assert img.shape == (2, clip.embed_dim)
    with pytest.raises(ValueError, match="non-empty"):
        text_conditions(clip, [""])

    model = prepare_anl(tiny_unet(), clip.embed_dim)
    perturb(model.adapter)
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    outs = []
    for cond in (text, img):
        with model.conditioned(cond):
            outs.append(sample_ddim(model_eps_fn(model, SCHED), noise, SCHED, steps=4))
    assert all(torch.isfinite(o).all() for o in outs)
    assert not torch.allclose(outs[0], outs[1])  # the condition reaches the samples


def test_training_loop_hands_each_image_its_condition():
    seen = []

    def loss_fn(model, batch, teacher=None, generator=None, condition=None):
        seen.append((batch.clone(), condition.clone()))
        return {"loss": model.weight.sum() * 0 + batch.mean()}

    images = torch.linspace(-1, 1, 5).view(5, 1, 1, 1).expand(5, 3, 2, 2).contiguous()
    conditions = torch.arange(5.0).view(5, 1) * 10
    model = torch.nn.Linear(1, 1)
    train(model, loss_fn, images, dict(steps=3, batch_size=2, ema_decay=0, hflip=False), conditions=conditions,
          progress=False)
    for batch, cond in seen:
        idx = ((batch[:, 0, 0, 0] + 1) / 0.5).round().long()
        assert torch.equal(cond[:, 0], conditions[idx, 0])
    with pytest.raises(ValueError, match="one row per image"):
        train(model, loss_fn, images, dict(steps=1, batch_size=2), conditions=conditions[:3], progress=False)


# --- methods registry ----------------------------------------------------------------


def test_registry_builds_the_new_methods_and_rejects_bad_adapter_parameters():
    for name in ("attn", "a3ft", "anl", "anl_uncond"):
        spec = build_method(name, {}, SCHED)
        assert spec.init == "source" and not spec.needs_teacher
        assert spec.conditional == (name == "anl")
    student = build_method("anl", {}, SCHED).build_student(tiny_unet(), 5)
    assert isinstance(student, AdaptedUNet) and student.adapter.needs_condition
    with pytest.raises(ValueError, match="condition_dim"):
        build_method("anl", {}, SCHED).build_student(tiny_unet())
    with pytest.raises(ValueError, match="scaling_hidden"):
        build_method("a3ft", {"scaling_hidden": 0}, SCHED)
    with pytest.raises(ValueError, match="hidden_mult"):
        build_method("anl", {"hidden_mult": -1.0}, SCHED)


# --- hybrid loss (learned variance) -----------------------------------------------------


def test_reverse_variance_interpolates_between_posterior_and_beta():
    t = torch.tensor([10, 500, 999])
    like = torch.zeros(3, 1, 1, 1)
    betas = SCHED.betas[t].float()
    abar, abar_prev = SCHED.alphas_cumprod[t].float(), SCHED.alphas_cumprod_prev[t].float()
    post = betas * (1 - abar_prev) / (1 - abar)
    assert torch.allclose(reverse_log_variance(SCHED, like + 1.0, t).flatten(), betas.log(), rtol=1e-5)
    assert torch.allclose(reverse_log_variance(SCHED, like - 1.0, t).flatten(), post.log(), rtol=1e-5)
    mid = reverse_log_variance(SCHED, like, t).flatten()
    assert torch.allclose(mid, 0.5 * (betas.log() + post.log()), rtol=1e-5)


def test_vlb_is_the_gaussian_kl_in_bits_and_trains_only_the_variance():
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 3, 4, 4, generator=g) * 2 - 1
    t = torch.tensor([300, 700])
    noise = torch.randn(x0.shape, generator=g)
    x_t = SCHED.q_sample(x0, t, noise)
    eps = (noise + 0.1 * torch.randn(x0.shape, generator=g)).requires_grad_(True)
    v = torch.zeros_like(x0, requires_grad=True)
    got = variance_vlb(SCHED, x0, x_t, t, eps, v)

    # hand computation with torch.distributions
    s = SCHED
    b, ab, abp = (s.betas[t].float().view(-1, 1, 1, 1), s.alphas_cumprod[t].float().view(-1, 1, 1, 1),
                  s.alphas_cumprod_prev[t].float().view(-1, 1, 1, 1))
    c0, ct = b * abp.sqrt() / (1 - ab), (1 - abp) * (1 - b).sqrt() / (1 - ab)
    post_var = b * (1 - abp) / (1 - ab)
    pred_x0 = (x_t - (1 - ab).sqrt() * eps.detach()) / ab.sqrt()  # unclipped: guided-diffusion's clip_denoised=False
    q = torch.distributions.Normal(c0 * x0 + ct * x_t, post_var.sqrt())
    p = torch.distributions.Normal(c0 * pred_x0 + ct * x_t, (0.5 * (b.log() + post_var.log())).exp().sqrt())
    want = torch.distributions.kl_divergence(q, p).flatten(1).mean(1) / math.log(2)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-6)

    got.sum().backward()
    assert eps.grad is None or eps.grad.abs().sum() == 0  # eps is detached inside
    assert v.grad is not None and v.grad.abs().sum() > 0


def test_vlb_at_t0_is_the_discretised_decoder_nll():
    x0 = torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1)
    t = torch.tensor([0])
    x_t = SCHED.q_sample(x0, t, torch.zeros_like(x0))
    nll = variance_vlb(SCHED, x0, x_t, t, torch.zeros_like(x0), torch.zeros_like(x0))
    assert nll.shape == (1,) and float(nll) > 0 and math.isfinite(float(nll))


def test_denoising_loss_uses_the_hybrid_loss_for_learned_variance():
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    loss = DenoisingLoss(SCHED)
    terms6 = loss(tiny_unet(6).train(), images, generator=torch.Generator().manual_seed(0))
    assert set(terms6) == {"loss", "diffusion", "vlb"}
    # lambda = 1e-3 on L_vlb = sum of the T terms: one sampled term weighs lambda * T
    # (improved DDPM's vb * T / 1000, i.e. 1.0 at T = 1000).
    assert SCHED.num_timesteps == 1000
    assert torch.allclose(terms6["loss"].detach(), terms6["diffusion"] + 1.0 * terms6["vlb"])
    terms3 = loss(tiny_unet(3).train(), images, generator=torch.Generator().manual_seed(0))
    assert set(terms3) == {"loss", "diffusion"}


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
