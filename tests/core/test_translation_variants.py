"""ILVR and EGSDE, ``variant: paper | authors_code`` and each option, against
loops written out by hand from the released code's formulas on a T = 4
schedule (every timestep, no respacing, as the released loops run):

- ILVR (jychoi118/ilvr_adm, ``p_sample_loop_progressive``): after ``p_sample``
  at step i, ``if i > range_t``: x <- x - up(down(x)) + up(down(q_sample(ref, i, randn)));
- EGSDE (ML-GSAI/EGSDE, ``egsde_sample``): mean = (y - beta_i / sqrt(1 - abar_i) eps)
  / sqrt(alpha_i), minus lambda_s w grad E_s and lambda_i w grad E_i with
  w = beta_i / sqrt(alpha_i), plus exp(0.5 log beta-tilde_i) z (``fixedsmall``)
  when i > 0."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffusion_transfer.core.sampling import model_eps_fn
from diffusion_transfer.core.schedule import make_schedule
from diffusion_transfer.core.translation import egsde, ilvr, resolve_options
from diffusion_transfer.core.translation.resizer import filter_matrix

S = make_schedule("linear", 4, beta_start=0.1, beta_end=0.3)
BETA, ABAR = S.betas.tolist(), S.alphas_cumprod.tolist()


class SixChannel(nn.Module):
    """eps = 0.3 tanh(x) + 0.2, v = 0.9 tanh(2x): x_0 estimates leave [-1, 1]."""

    def forward(self, x, t):
        return torch.cat([0.3 * torch.tanh(x) + 0.2, 0.9 * torch.tanh(2 * x)], dim=1)


def phi(x, kind):
    if kind == "block":
        return F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="nearest")
    m = torch.tensor(filter_matrix(x.shape[-1], 2, kind), dtype=x.dtype)
    return m @ x @ m.T


def posterior(x, i, clip):
    """(mean, beta-tilde, beta) of step i -> i - 1 from eps = 0.3 tanh(x) + 0.2."""
    a_t, a_p = ABAR[i], (ABAR[i - 1] if i > 0 else 1.0)
    beta = BETA[i]
    eps = 0.3 * torch.tanh(x) + 0.2
    if clip:
        x0 = ((x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)).clamp(-1, 1)
        mean = beta * math.sqrt(a_p) / (1 - a_t) * x0 + (1 - a_p) * math.sqrt(1 - beta) / (1 - a_t) * x
    else:  # EGSDE's released mean
        mean = (x - beta / math.sqrt(1 - a_t) * eps) / math.sqrt(1 - beta)
    return mean, beta * (1 - a_p) / (1 - a_t), beta


def learned_std(x, i):
    _, post, beta = posterior(x, i, True)
    frac = (0.9 * torch.tanh(2 * x) + 1) / 2
    return torch.exp(0.5 * (frac * math.log(beta) + (1 - frac) * math.log(post)))


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    return torch.rand(2, 3, 4, 4, generator=g) * 1.8 - 0.9, torch.randn(2, 3, 4, 4, generator=g)


# --- ILVR -----------------------------------------------------------------------------------


def hand_ilvr(y0, noise, seed, *, kind, step, fresh, last):
    gen = torch.Generator().manual_seed(seed)
    x = math.sqrt(ABAR[3]) * y0 + math.sqrt(1 - ABAR[3]) * noise  # t0 = 1: the reference noised to T
    for i in (3, 2, 1, 0):
        mean, _, _ = posterior(x, i, clip=True)
        x_new = mean + learned_std(x, i) * torch.randn(x.shape, generator=gen) if i > 0 else mean
        if i > 0 or last:
            k = i if step == "t" else i - 1
            z = torch.randn(x.shape, generator=gen) if fresh else noise
            y = y0 if k < 0 else math.sqrt(ABAR[k]) * y0 + math.sqrt(1 - ABAR[k]) * z
            x_new = x_new - phi(x_new, kind) + phi(y, kind)
        x = x_new
    return x


def run_ilvr(y0, noise, seed, **kw):
    return ilvr(model_eps_fn(SixChannel(), S), y0, S, factor=2, t0=1.0, noise=noise, sampler="ddpm", steps=4,
                generator=torch.Generator().manual_seed(seed), **kw)


def test_ilvr_authors_code_is_ilvr_adms_loop(data):
    y0, noise = data
    want = hand_ilvr(y0, noise, 3, kind="cubic", step="t", fresh=True, last=False)
    torch.testing.assert_close(run_ilvr(y0, noise, 3, variant="authors_code"), want, rtol=1e-5, atol=1e-5)


def test_ilvr_paper_is_algorithm_1(data):
    y0, noise = data
    want = hand_ilvr(y0, noise, 3, kind="block", step="t_prev", fresh=False, last=True)
    got = run_ilvr(y0, noise, 3)  # the default
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # the last step is refined: x_0 has exactly the reference's block means
    torch.testing.assert_close(phi(got, "block"), phi(y0, "block"), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("option, hand", [
    ({"filter": "cubic"}, dict(kind="cubic", step="t_prev", fresh=False, last=True)),
    ({"filter": "linear"}, dict(kind="linear", step="t_prev", fresh=False, last=True)),
    ({"reference_step": "t"}, dict(kind="block", step="t", fresh=False, last=True)),
    ({"reference_noise": "fresh"}, dict(kind="block", step="t_prev", fresh=True, last=True)),
    ({"refine_last": False}, dict(kind="block", step="t_prev", fresh=False, last=False)),
])
def test_each_ilvr_option_alone(data, option, hand):
    y0, noise = data
    torch.testing.assert_close(run_ilvr(y0, noise, 4, **option), hand_ilvr(y0, noise, 4, **hand),
                               rtol=1e-5, atol=1e-5)


# --- EGSDE ----------------------------------------------------------------------------------

W_FEAT = torch.randn(4, 3, 1, 1, generator=torch.Generator().manual_seed(7))


def features(y, t):
    return F.conv2d(y, W_FEAT) * (1 + t.view(-1, 1, 1, 1).float())


def cosine(a, b):  # EGSDE's cosine_similarity: over channels, mean over positions
    a, b = a.flatten(2), b.flatten(2)
    return (F.normalize(a, dim=1, eps=1e-10) * F.normalize(b, dim=1, eps=1e-10)).sum(1).mean(1)


def hand_egsde(x0, noise, seed, *, kind, clip, learned, ls=3.0, li=2.0):
    gen = torch.Generator().manual_seed(seed)
    y = math.sqrt(ABAR[1]) * x0 + math.sqrt(1 - ABAR[1]) * noise  # args.t = 2 of T = 4: y ~ q_{M|0}
    for i in (1, 0):
        x_src = math.sqrt(ABAR[i]) * x0 + math.sqrt(1 - ABAR[i]) * noise  # the start noise e, reused
        mean, post, beta = posterior(y, i, clip)
        w = beta / math.sqrt(1 - beta)
        t = torch.full((y.shape[0],), i)
        yy = y.detach().requires_grad_(True)
        g_s = torch.autograd.grad(cosine(features(yy, t), features(x_src, t)).sum(), yy)[0]
        m = torch.tensor(filter_matrix(4, 2, kind), dtype=y.dtype) if kind != "block" else None
        if m is not None:  # grad ||M y M^T - M x M^T||^2 = 2 M^T (M (y - x) M^T) M, by hand
            g_i = 2 * m.T @ (m @ (y - x_src) @ m.T) @ m
        else:
            g_i = 2 * phi(y - x_src, "block")  # block mean is a symmetric projection
        y_new = mean - ls * w * g_s - li * w * g_i
        if i > 0:
            std = learned_std(y, i) if learned else math.sqrt(post)
            y_new = y_new + std * torch.randn(y.shape, generator=gen)
        y = y_new
    return y


def run_egsde(x0, noise, seed, **kw):
    return egsde(model_eps_fn(SixChannel(), S), x0, S, features=features, realism_weight=3.0,
                 faithfulness_weight=2.0, factor=2, t0=0.5, noise=noise, steps=2,
                 generator=torch.Generator().manual_seed(seed), **kw)


def test_egsde_authors_code_is_egsdes_released_step(data):
    x0, noise = data
    want = hand_egsde(x0, noise, 5, kind="linear", clip=False, learned=False)
    torch.testing.assert_close(run_egsde(x0, noise, 5, variant="authors_code"), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("option, hand", [
    ({}, dict(kind="block", clip=True, learned=True)),                  # paper, the default
    ({"clip_x0": False}, dict(kind="block", clip=False, learned=True)),  # EGSDE without x0 clipping
    ({"learned_variance": False}, dict(kind="block", clip=True, learned=False)),
    ({"filter": "linear"}, dict(kind="linear", clip=True, learned=True)),
    ({"filter": "cubic"}, dict(kind="cubic", clip=True, learned=True)),
])
def test_egsde_paper_and_each_option_alone(data, option, hand):
    x0, noise = data
    torch.testing.assert_close(run_egsde(x0, noise, 6, **option), hand_egsde(x0, noise, 6, **hand),
                               rtol=1e-4, atol=1e-5)


def test_variants_resolve_with_explicit_options_winning_and_name_bad_values():
    assert resolve_options("ilvr", "authors_code", filter="block")["filter"] == "block"
    assert resolve_options("egsde", "authors_code") == {"filter": "linear", "clip_x0": False,
                                                        "learned_variance": False}
    with pytest.raises(ValueError, match="reference_step"):
        resolve_options("ilvr", "paper", reference_step="t+1")
    with pytest.raises(ValueError, match="variant"):
        resolve_options("egsde", "released")
    with pytest.raises(ValueError, match="clip_x0"):
        resolve_options("egsde", "paper", clip_x0="no")
