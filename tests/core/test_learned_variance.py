"""Learned variance as guided-diffusion has it (openai/guided-diffusion
``gaussian_diffusion.py``), derived by hand on tiny inputs:

- training: ``_vb_terms_bpd(..., clip_denoised=False)`` inside
  ``training_losses``, so the hybrid loss's x_0 prediction is not clipped;
- sampling: ``p_mean_variance`` with ``LEARNED_RANGE``: log var = frac log beta
  + (1 - frac) log beta-tilde, frac = (v + 1) / 2, and ``p_sample`` adds
  exp(0.5 log var) z (no noise at the last step)."""

from __future__ import annotations

import math

import torch
from torch import nn

from diffusion_transfer.core.methods.vlb import variance_vlb
from diffusion_transfer.core.sampling import model_eps_fn, sample_ddpm
from diffusion_transfer.core.schedule import make_schedule

S = make_schedule("linear", 1000)
B64, ABAR64 = S.betas, S.alphas_cumprod


def _normal_kl(m1, lv1, m2, lv2):
    return 0.5 * (-1.0 + lv2 - lv1 + torch.exp(lv1 - lv2) + (m1 - m2) ** 2 * torch.exp(-lv2))


def _cdf(x):
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _hand_vb(x0, x_t, t, eps, v, clip):
    """guided-diffusion's _vb_terms_bpd for one timestep per sample, written out."""
    b = B64[t].view(-1, 1, 1, 1)
    ab = ABAR64[t].view(-1, 1, 1, 1)
    abp = torch.where(t == 0, torch.ones_like(t, dtype=torch.float64), ABAR64[(t - 1).clamp(min=0)]).view(-1, 1, 1, 1)
    post_var = b * (1 - abp) / (1 - ab)
    post_var1 = B64[1] * (1 - ABAR64[0]) / (1 - ABAR64[1])  # log-variance clipped at t = 0 with t = 1's
    post_logvar = torch.where(t.view(-1, 1, 1, 1) == 0, post_var1.log(), post_var.clamp(min=1e-300).log())
    c0, ct = b * abp.sqrt() / (1 - ab), (1 - abp) * (1 - b).sqrt() / (1 - ab)
    x0, x_t, eps, v = x0.double(), x_t.double(), eps.double(), v.double()
    pred_x0 = (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()
    if clip:
        pred_x0 = pred_x0.clamp(-1, 1)
    frac = (v + 1) / 2
    model_logvar = frac * b.log() + (1 - frac) * post_logvar
    kl = _normal_kl(c0 * x0 + ct * x_t, post_logvar, c0 * pred_x0 + ct * x_t, model_logvar)
    kl = kl.flatten(1).mean(1) / math.log(2.0)
    mean = c0 * pred_x0 + ct * x_t
    inv = torch.exp(-0.5 * model_logvar)
    delta = _cdf(inv * (x0 - mean + 1 / 255)) - _cdf(inv * (x0 - mean - 1 / 255))  # x0 away from +-1 here
    nll = -torch.log(delta.clamp(min=1e-12)).flatten(1).mean(1) / math.log(2.0)
    return torch.where(t == 0, nll, kl)


def test_hybrid_loss_variance_term_is_guided_diffusions_unclipped_vb():
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 3, 4, 4, generator=g) * 1.6 - 0.8
    t = torch.tensor([0, 60, 400])
    noise = torch.randn(x0.shape, generator=g)
    x_t = S.q_sample(x0, t, noise)
    # a poor eps prediction whose x_0 estimate leaves [-1, 1] at every t
    eps = noise + 1.5 * torch.randn(x0.shape, generator=g)
    v = torch.rand(x0.shape, generator=g) * 2 - 1
    got = variance_vlb(S, x0, x_t, t, eps, v).double()
    want = _hand_vb(x0, x_t, t, eps, v, clip=False)
    clipped = _hand_vb(x0, x_t, t, eps, v, clip=True)
    torch.testing.assert_close(got, want, rtol=2e-4, atol=1e-5)
    assert ((want - clipped).abs() / want.abs() > 1e-2).any()  # clipping would have changed it


class _SixChannel(nn.Module):
    """eps = 0.3 tanh(x), v = 0.9 tanh(2x): a learned-variance output (2C channels)."""

    def __init__(self, channels: int = 6):
        super().__init__()
        self.channels = channels

    def forward(self, x, t):
        out = [0.3 * torch.tanh(x)]
        if self.channels == 6:
            out.append(0.9 * torch.tanh(2 * x))
        return torch.cat(out, dim=1)


def _first_step(eps_fn, x, **kwargs):
    seen = {}

    def grab(state):
        seen.setdefault("state", state)
        return state["x_prev"]

    sample_ddpm(eps_fn, x.clone(), S, steps=3, t_start=600, generator=torch.Generator().manual_seed(5),
                post_step=grab, **kwargs)
    return seen["state"]


def _hand_step(x, learned: bool):
    # ddim_timesteps(1000, 3, 600) = [600, 300, 0]: the first respaced step goes 600 -> 300
    a_t, a_p = float(ABAR64[600]), float(ABAR64[300])
    beta = 1 - a_t / a_p
    eps, v = 0.3 * torch.tanh(x), 0.9 * torch.tanh(2 * x)
    x0 = ((x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)).clamp(-1, 1)
    mean = beta * math.sqrt(a_p) / (1 - a_t) * x0 + (1 - a_p) * math.sqrt(1 - beta) / (1 - a_t) * x
    post = beta * (1 - a_p) / (1 - a_t)
    frac = (v + 1) / 2
    logvar = frac * math.log(beta) + (1 - frac) * math.log(post) if learned else torch.full_like(x, math.log(post))
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    return mean + torch.exp(0.5 * logvar) * z


def test_ancestral_step_uses_the_learned_range_variance():
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    state = _first_step(model_eps_fn(_SixChannel(6), S), x)
    torch.testing.assert_close(state["x_prev"], _hand_step(x, learned=True), rtol=1e-5, atol=1e-6)
    assert state["sigma"].shape == x.shape  # per-pixel standard deviation
    assert not torch.allclose(state["x_prev"], _hand_step(x, learned=False), atol=1e-4)


def test_fixed_variance_without_variance_channels_or_when_turned_off():
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    fixed = _hand_step(x, learned=False)
    off = _first_step(model_eps_fn(_SixChannel(6), S), x, learned_variance=False)
    torch.testing.assert_close(off["x_prev"], fixed, rtol=1e-5, atol=1e-6)
    three = _first_step(model_eps_fn(_SixChannel(3), S), x)  # eps only: beta-tilde
    torch.testing.assert_close(three["x_prev"], fixed, rtol=1e-5, atol=1e-6)
    plain = _first_step(lambda xx, t: 0.3 * torch.tanh(xx), x)  # a bare eps_fn offers no variance
    torch.testing.assert_close(plain["x_prev"], fixed, rtol=1e-5, atol=1e-6)
    assert isinstance(three["sigma"], float)


def test_last_step_adds_no_noise_with_a_learned_variance():
    x = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    eps_fn = model_eps_fn(_SixChannel(6), S)
    a = sample_ddpm(eps_fn, x.clone(), S, steps=1, t_start=5, generator=torch.Generator().manual_seed(0))
    b = sample_ddpm(eps_fn, x.clone(), S, steps=1, t_start=5, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(a, b)  # one step straight to x_0: the mean only
