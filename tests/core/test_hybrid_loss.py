"""The improved-DDPM hybrid loss for learned variance: the interpolated
reverse variance, L_vlb as the Gaussian KL in bits (the discretised decoder
NLL at t = 0), and DenoisingLoss adding it for six-channel models."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion_transfer.core.methods import DenoisingLoss
from diffusion_transfer.core.methods.vlb import reverse_log_variance, variance_vlb
from tests.core._adapter_helpers import SCHED, tiny_unet

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py


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
