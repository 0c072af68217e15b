"""Translation methods: SDEdit, ILVR, EGSDE and DDIB against exact cases."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffusion_transfer.core.metrics.image_metrics import psnr
from diffusion_transfer.core.sampling import model_eps_fn
from diffusion_transfer.core.schedule import make_schedule
from diffusion_transfer.core.translation import (
    EGSDEGuidance,
    ILVRRefinement,
    ddib,
    egsde,
    feature_cosine,
    ilvr,
    low_pass,
    perturb,
    sdedit,
    start_timestep,
)

SCHEDULE = make_schedule("linear", 1000)
ABAR = SCHEDULE.alphas_cumprod
ROOT = Path(__file__).resolve().parents[2]


def oracle_for(x0: torch.Tensor):
    """The exact eps of data made of the images x0: every reverse process ends at x0."""

    def eps_fn(x, t):
        a = SCHEDULE.at(ABAR, t, x)
        return (x - a.sqrt() * x0) / (1 - a).sqrt()

    return eps_fn


def toy_eps(x, t):
    return torch.tanh(x) * 0.3 + 1e-4 * t.view(-1, 1, 1, 1).float()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand((3, 3, 16, 16), generator=torch.Generator().manual_seed(0)) * 1.8 - 0.9


def test_start_timestep_is_the_editing_range_as_a_fraction_of_t():
    assert start_timestep(SCHEDULE, 0.5) == 499 and start_timestep(SCHEDULE, 0.625) == 624
    assert start_timestep(SCHEDULE, 1.0) == 999 and start_timestep(SCHEDULE, 0.0) == -1
    with pytest.raises(ValueError, match="fraction of T"):
        start_timestep(SCHEDULE, 1.5)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_sdedit_with_t0_zero_returns_the_input(images, sampler):
    out = sdedit(toy_eps, images, SCHEDULE, t0=0.0, sampler=sampler, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, images)


def test_sdedit_perturbs_to_t0_then_denoises(images):
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(1))
    seen = []

    def spy(x, t):
        seen.append(int(t[0]))
        return oracle_for(images)(x, t)

    out = sdedit(spy, images, SCHEDULE, t0=0.5, noise=noise, sampler="ddim", steps=10)
    assert seen[0] == 499 and seen[-1] == 0 and len(seen) == 10
    torch.testing.assert_close(out, images, atol=1e-4, rtol=0)  # the oracle brings it back exactly
    x_t = perturb(images, SCHEDULE, 499, noise)
    torch.testing.assert_close(x_t, ABAR[499].sqrt().float() * images + (1 - ABAR[499]).sqrt().float() * noise)
    # A different model moves it; a larger t0 moves it further.
    near = sdedit(toy_eps, images, SCHEDULE, t0=0.2, noise=noise, steps=10)
    far = sdedit(toy_eps, images, SCHEDULE, t0=0.8, noise=noise, steps=10)
    assert (far - images).abs().mean() > (near - images).abs().mean() > 0.01
    with pytest.raises(ValueError, match="sampler"):
        sdedit(toy_eps, images, SCHEDULE, t0=0.5, sampler="euler")


# --- ILVR --------------------------------------------------------------------------


def test_low_pass_is_a_block_mean_projection(images):
    lp = low_pass(images, 4)
    torch.testing.assert_close(low_pass(lp, 4), lp)
    torch.testing.assert_close(lp[..., :4, :4], images[..., :4, :4].mean(dim=(-1, -2), keepdim=True).expand(-1, -1, 4, 4))
    assert torch.equal(low_pass(images, 1), images)
    with pytest.raises(ValueError, match="must divide"):
        low_pass(images, 3)


def test_ilvr_replacement_leaves_exactly_the_reference_low_frequencies(images):
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(images.shape, generator=g)
    refine = ILVRRefinement(images, SCHEDULE, factor=4, noise=noise)
    x_prev = torch.randn(images.shape, generator=g)
    out = refine({"x_prev": x_prev, "t_prev": 300})
    y_prev = SCHEDULE.q_sample(images, torch.full((3,), 300), noise)
    torch.testing.assert_close(low_pass(out, 4), low_pass(y_prev, 4), atol=1e-6, rtol=0)
    # ... and keeps x_{t-1}'s high frequencies
    torch.testing.assert_close(out - low_pass(out, 4), x_prev - low_pass(x_prev, 4), atol=1e-6, rtol=0)


def test_ilvr_output_has_the_reference_low_frequencies_and_until_stops_it(images):
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(3))
    out = ilvr(toy_eps, images, SCHEDULE, factor=8, t0=1.0, noise=noise, steps=12,
               generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(low_pass(out, 8), low_pass(images, 8), atol=1e-5, rtol=0)
    assert (out - images).abs().mean() > 0.01  # the high frequencies come from the model
    never = ilvr(toy_eps, images, SCHEDULE, factor=8, t0=1.0, until=1.0, noise=noise, steps=12,
                 generator=torch.Generator().manual_seed(4))
    plain = sdedit(toy_eps, images, SCHEDULE, t0=1.0, noise=noise, sampler="ddpm", steps=12,
                   generator=torch.Generator().manual_seed(4))
    assert torch.equal(never, plain)


# --- EGSDE -------------------------------------------------------------------------


class ToyFeatures(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x, t):
        return torch.tanh(self.conv(x))


def test_egsde_with_zero_weights_is_plain_ancestral_sdedit(images):
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(5))
    guided = egsde(toy_eps, images, SCHEDULE, features=ToyFeatures(), realism_weight=0.0, faithfulness_weight=0.0,
                   factor=4, t0=0.5, noise=noise, steps=15, generator=torch.Generator().manual_seed(6))
    plain = sdedit(toy_eps, images, SCHEDULE, t0=0.5, noise=noise, sampler="ddpm", steps=15,
                   generator=torch.Generator().manual_seed(6))
    assert torch.equal(guided, plain)


def test_egsde_step_subtracts_the_weighted_energy_gradient(images):
    """Faithfulness only: the gradient of ||phi(y) - phi(x_src)||^2 is
    2 (phi(y) - phi(x_src)), scaled by lambda_i beta'/sqrt(alpha')."""
    g = torch.Generator().manual_seed(7)
    noise, y, x_prev = (torch.randn(images.shape, generator=g) for _ in range(3))
    guide = EGSDEGuidance(images, SCHEDULE, noise, realism_weight=0.0, faithfulness_weight=2.0, factor=4)
    out = guide({"x": y, "x_prev": x_prev, "t": 500, "t_prev": 450})
    beta = 1 - ABAR[500] / ABAR[450]
    x_src = SCHEDULE.q_sample(images, torch.full((3,), 500), noise)
    expected = x_prev - float(beta / (1 - beta).sqrt()) * 2.0 * 2 * (low_pass(y, 4) - low_pass(x_src, 4))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_egsde_realism_energy_pushes_features_away_from_the_source(images):
    feats = ToyFeatures()
    g = torch.Generator().manual_seed(8)
    noise = torch.randn(images.shape, generator=g)
    y = SCHEDULE.q_sample(images, torch.full((3,), 400), noise) + 0.3 * torch.randn(images.shape, generator=g)
    guide = EGSDEGuidance(images, SCHEDULE, noise, features=feats, realism_weight=500.0, faithfulness_weight=0.0,
                          factor=4)
    out = guide({"x": y, "x_prev": y, "t": 400, "t_prev": 380})
    tt = torch.full((3,), 400)
    src = feats(guide.source_at(400), tt)
    with torch.no_grad():
        before, after = feature_cosine(feats(y, tt), src), feature_cosine(feats(out, tt), src)
    assert (after < before).all()
    with pytest.raises(ValueError, match="features"):
        EGSDEGuidance(images, SCHEDULE, noise, features=None, realism_weight=1.0)


def test_egsde_faithfulness_keeps_the_input_low_frequencies_closer(images):
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(9))
    kw = dict(factor=4, t0=0.6, noise=noise, steps=60)
    free = egsde(toy_eps, images, SCHEDULE, realism_weight=0.0, faithfulness_weight=0.0,
                 generator=torch.Generator().manual_seed(1), **kw)
    held = egsde(toy_eps, images, SCHEDULE, realism_weight=0.0, faithfulness_weight=2.0,
                 generator=torch.Generator().manual_seed(1), **kw)

    def lp_err(x):
        return (low_pass(x, 4) - low_pass(images, 4)).square().mean()

    assert lp_err(held) < 0.5 * lp_err(free)


# --- DDIB --------------------------------------------------------------------------


def test_ddib_with_the_same_model_reconstructs_on_the_trained_faceworld_source():
    from diffusion_transfer.core.models.unet import load_unet
    from diffusion_transfer.core.world.domains import render_batch

    model = load_unet(ROOT / "data" / "06_models" / "world" / "source").eval()
    eps_fn = model_eps_fn(model, SCHEDULE)
    photos, _ = render_batch("faceworld_ffhq", 4, size=32, seed=11)
    x0 = torch.from_numpy(photos).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    out = ddib(eps_fn, eps_fn, x0, SCHEDULE, steps=40)
    assert psnr(out, x0).min() > 25.0
    # Another model's generation from the same latent is a different image.
    other = ddib(eps_fn, toy_eps, x0, SCHEDULE, steps=40)
    assert psnr(other, x0).max() < 20.0
