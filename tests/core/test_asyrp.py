"""Asyrp (core/editing): the h-space hook, f_t's zero start, the asymmetric
reverse process against a hand computation, the directional loss against a
hand computation, one training step, adapted and v-prediction models."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.nn import functional as F

from diffusion_transfer.core.editing import (
    AsyrpConfig,
    HSpace,
    ImplicitFunction,
    asyrp_loss,
    clip_objective,
    directional_loss,
    edit,
    find_unet,
    generate,
    invert,
    model_eps,
    text_direction,
    timestep_at,
    train_asyrp,
)
from diffusion_transfer.core.methods.a3ft import prepare_a3ft
from diffusion_transfer.core.methods.anl import prepare_anl
from diffusion_transfer.core.models import build_unet
from diffusion_transfer.core.sampling import model_eps_fn, sample_ddim
from diffusion_transfer.core.sampling.ddim import ddim_invert
from diffusion_transfer.core.schedule import make_schedule

SCHED = make_schedule()
TINY = dict(
    sample_size=8, block_out_channels=(8, 16), layers_per_block=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=8, norm_num_groups=4,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py


def tiny_unet(seed: int = 0, out_channels: int = 3):
    torch.manual_seed(seed)
    return build_unet({**TINY, "out_channels": out_channels}).eval()


def images(b: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, 3, 8, 8, generator=g) * 2 - 1) * 0.8


def opened(f_t: ImplicitFunction, seed: int = 3, scale: float = 0.5) -> ImplicitFunction:
    """A copy of f_t with a non-zero last conv."""
    f = copy.deepcopy(f_t)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        f.conv2.weight.copy_(scale * torch.randn(f.conv2.weight.shape, generator=g))
    return f


class ToyClip:
    """CLIP-like: E_I(x) = normalise(per-channel mean of x + 1), E_T a lookup."""

    TEXT = {"red": [1.0, 0.0, 0.0], "green": [0.0, 1.0, 0.0], "blue": [0.0, 0.0, 1.0]}

    def encode_images(self, x):
        return F.normalize(x.mean(dim=(2, 3)) + 1.0, dim=-1)

    def encode_text(self, texts):
        return F.normalize(torch.tensor([self.TEXT[t] for t in texts]), dim=-1)


# --- the hook ----------------------------------------------------------------------


def manual_mid(unet, x, t):
    """The UNet2DModel forward written out up to the middle block."""
    emb = unet.time_embedding(unet.time_proj(t).to(x.dtype))
    h = unet.conv_in(x)
    for block in unet.down_blocks:
        h, _ = block(hidden_states=h, temb=emb)
    return unet.mid_block(h, emb), emb


def test_hook_captures_the_middle_block_and_adds_delta():
    unet = tiny_unet()
    x, t = images(), torch.tensor([10, 700])
    with torch.no_grad():
        h_ref, emb_ref = manual_mid(unet, x, t)
        with HSpace(unet) as space:
            plain = unet(x, t).sample
            assert torch.equal(space.h, h_ref) and torch.equal(space.temb, emb_ref)
            assert space.channels == 16 and space.h.shape == (2, 16, 4, 4)  # 8x8, one downsample
            seen = {}

            def record(module, args, kwargs):
                seen["in"] = kwargs.get("hidden_states", args[0] if args else None)

            handle = unet.up_blocks[0].register_forward_pre_hook(record, with_kwargs=True)
            delta = torch.full_like(h_ref, 0.25)
            with space.editing(lambda h, temb: delta, scale=2.0):
                edited = unet(x, t).sample
            handle.remove()
            assert torch.equal(space.h, h_ref)  # h is recorded before the edit
            assert torch.allclose(seen["in"], h_ref + 0.5)  # the up path decodes h + scale * delta
            assert not torch.allclose(edited, plain)
            assert torch.equal(unet(x, t).sample, plain)  # outside the context: no edit
    # removed: the UNet is untouched
    assert not unet.mid_block._forward_hooks


def test_find_unet_through_adapted_models_and_errors():
    unet = tiny_unet()
    adapted = prepare_a3ft(copy.deepcopy(unet))
    assert find_unet(adapted) is adapted.unet
    with pytest.raises(ValueError, match="mid_block"):
        find_unet(torch.nn.Linear(2, 2))


# --- f_t, the reverse process, inversion --------------------------------------------


def test_f_t_starts_at_zero_and_is_sized_for_the_model():
    unet = tiny_unet()
    f_t = ImplicitFunction.for_model(unet)
    h, temb = torch.randn(2, 16, 4, 4), torch.randn(2, unet.time_embedding.linear_2.out_features)
    assert torch.equal(f_t(h, temb), torch.zeros_like(h))
    assert not torch.equal(opened(f_t)(h, temb), torch.zeros_like(h))


@pytest.mark.parametrize("t_boost", [0, 300])
def test_zero_f_t_edit_is_exactly_the_ddim_reconstruction(t_boost):
    unet = tiny_unet()
    x0 = images()
    f_t = ImplicitFunction.for_model(unet)
    kw = dict(inversion_steps=6, steps=5, t_edit=500, t_boost=t_boost, seed=4)
    out = edit(unet, f_t, x0, SCHED, **kw)
    assert torch.equal(out["edited"], out["reconstructed"])
    if t_boost == 0:  # the plain pipeline, built from the samplers alone
        eps = model_eps_fn(unet, SCHED)
        x_T = ddim_invert(eps, x0, SCHED, steps=6)
        ref = sample_ddim(eps, x_T, SCHED, steps=5, clip_x0=False).clamp(-1, 1)
        assert torch.equal(out["reconstructed"], ref)
    # an opened f_t changes the result
    assert not torch.allclose(edit(unet, opened(f_t), x0, SCHED, **kw)["edited"], out["reconstructed"])


def test_asymmetric_step_by_hand():
    """Two steps, t = 999 -> 0 -> -1, t_edit = 999: the first is asymmetric."""
    unet = tiny_unet()
    f_t = opened(ImplicitFunction.for_model(unet))
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(9))
    got = generate(unet, f_t, x, SCHED, steps=2, t_edit=999)
    a, a0 = float(SCHED.alphas_cumprod[999]), float(SCHED.alphas_cumprod[0])
    t999, t0 = torch.full((2,), 999), torch.full((2,), 0)
    with torch.no_grad(), HSpace(unet) as space:
        eps_o = unet(x, t999).sample
        with space.editing(f_t):
            eps_e = unet(x, t999).sample
        x0_e = (x - math.sqrt(1 - a) * eps_e) / math.sqrt(a)
        x_prev = math.sqrt(a0) * x0_e + math.sqrt(1 - a0) * eps_o  # x0 from edited h, direction from original
        want = (x_prev - math.sqrt(1 - a0) * unet(x_prev, t0).sample) / math.sqrt(a0)
    assert not torch.allclose(eps_e, eps_o)
    assert torch.allclose(got, want, atol=1e-5)
    # below t_edit nothing is edited: t_edit = 1 edits t = 999 only (as above), t_edit = 0 both steps
    assert torch.equal(generate(unet, f_t, x, SCHED, steps=2, t_edit=1), got)
    assert not torch.equal(generate(unet, f_t, x, SCHED, steps=2, t_edit=0), got)


def test_interval_parameters_are_checked():
    unet = tiny_unet()
    x = torch.zeros(1, 3, 8, 8)
    with pytest.raises(ValueError, match="t_boost"):
        generate(unet, None, x, SCHED, steps=2, t_edit=100, t_boost=200)
    with pytest.raises(ValueError, match="t_edit"):
        generate(unet, None, x, SCHED, steps=2, t_edit=1000)
    assert timestep_at(SCHED, 0.5) == 500 and timestep_at(SCHED, 1.0) == 999
    with pytest.raises(ValueError, match="t_edit_fraction"):
        timestep_at(SCHED, 1.5, "t_edit_fraction")


# --- losses -------------------------------------------------------------------------


def test_directional_loss_by_hand():
    clip = ToyClip()
    direction = text_direction(clip, ["red"], ["green"])
    assert torch.allclose(direction, torch.tensor([-1.0, 1.0, 0.0]) / math.sqrt(2))
    # channel means (+1): source (1, 0, 0) -> E_I = e_r; edit (0.5, 0.5, 0) -> (1, 1, 0)/sqrt2
    src = torch.zeros(1, 3, 4, 4)
    src[:, 0], src[:, 1], src[:, 2] = 0.0, -1.0, -1.0
    edt = torch.zeros(1, 3, 4, 4)
    edt[:, 0], edt[:, 1], edt[:, 2] = -0.5, -0.5, -1.0
    # Delta I = (1/sqrt2 - 1, 1/sqrt2, 0) = 0.765367 (-0.382683, 0.923880, 0); cos with Delta T = cos(22.5 deg)
    l_dir = directional_loss(clip, src, edt, direction)
    assert l_dir.item() == pytest.approx(1 - math.cos(math.pi / 8), abs=1e-6)  # 0.076120
    assert clip_objective(l_dir).item() == pytest.approx(-math.log((2 - 0.0761205) / 2), abs=1e-6)
    # asyrp_loss adds l1_weight * text_cos * L1 (x0 predictions 0.1 apart everywhere)
    out = asyrp_loss(clip, src, edt, edt + 0.1, direction, text_cos=0.5, clip_weight=1.0, l1_weight=3.0)
    assert out["loss"].item() == pytest.approx(-math.log((2 - 0.0761205) / 2) + 3.0 * 0.5 * 0.1, abs=1e-5)
    with pytest.raises(ValueError, match="pair"):
        text_direction(clip, ["red", "blue"], ["green", "green", "blue"])


# --- training -----------------------------------------------------------------------


def first_step_loss(model, f_t, x0, clip, direction, text_cos, t=999, steps=4, schedule=SCHED):
    """The training loss at the first edited timestep (x_T is fixed by inversion)."""
    x_T = invert(model, x0, schedule, steps)
    a = float(schedule.alphas_cumprod[t])
    tt = torch.full((x0.shape[0],), t)
    with torch.no_grad(), HSpace(model) as space:
        plain = model_eps(model, x_T, tt, schedule)
        with space.editing(f_t):
            edited = model_eps(model, x_T, tt, schedule)
        x0e = (x_T - math.sqrt(1 - a) * edited) / math.sqrt(a)
        x0p = (x_T - math.sqrt(1 - a) * plain) / math.sqrt(a)
        return asyrp_loss(clip, x0, x0e, x0p, direction, text_cos)["loss"].item()


@pytest.mark.parametrize("kind", ["plain", "a3ft", "v_prediction"])
def test_one_training_step_changes_f_t_and_lowers_the_loss(kind):
    unet, schedule = tiny_unet(), SCHED
    if kind == "a3ft":
        unet = prepare_a3ft(copy.deepcopy(unet)).eval()
    elif kind == "v_prediction":
        schedule = make_schedule(prediction_type="v_prediction")
    clip, x0 = ToyClip(), images(1)
    flags = [p.requires_grad for p in unet.parameters()]
    # t_edit = 999 on a 4-step grid: exactly one edited timestep, so one SGD step
    cfg = AsyrpConfig(epochs=1, train_steps=4, inversion_steps=4, t_edit=999, lr=0.05)
    res = train_asyrp(unet, schedule, x0, clip, "red", "green", cfg, progress=False)
    assert res.meta["timesteps"] == [999] and len(res.history) == 1
    assert res.f_t.conv2.weight.abs().sum() > 0  # moved off zero
    assert [p.requires_grad for p in unet.parameters()] == flags  # the model's flags restored
    direction, text_cos = text_direction(clip, "red", "green"), res.meta["text_cosine"]
    zero = ImplicitFunction.for_model(unet)
    before = first_step_loss(unet, zero, x0, clip, direction, text_cos, schedule=schedule)
    after = first_step_loss(unet, res.f_t, x0, clip, direction, text_cos, schedule=schedule)
    assert before == pytest.approx(res.history[0]["loss"], abs=1e-5)
    assert after < before
    # the trained f_t really edits: the edit no longer equals the reconstruction
    out = edit(unet, res.f_t, x0, schedule, inversion_steps=4, steps=4, t_edit=500)
    assert not torch.allclose(out["edited"], out["reconstructed"])


def test_conditional_adapted_model_edits_with_conditions():
    unet = prepare_anl(tiny_unet(), 5).eval()
    x0 = images(2)
    cond = torch.randn(2, 5, generator=torch.Generator().manual_seed(2))
    f_t = ImplicitFunction.for_model(unet)
    out = edit(unet, f_t, x0, SCHED, inversion_steps=4, steps=4, t_edit=500, conditions=cond, batch_size=1)
    assert torch.equal(out["edited"], out["reconstructed"])
    res = train_asyrp(unet, SCHED, x0, ToyClip(), "red", "green",
                      AsyrpConfig(epochs=1, train_steps=4, inversion_steps=4, t_edit=500), conditions=cond,
                      progress=False)
    assert len(res.history) == 2 and all(math.isfinite(h["loss"]) for h in res.history)
