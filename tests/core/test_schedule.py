"""core/schedule.py against closed forms computed independently (numpy/math)."""

import math

import numpy as np
import pytest
import torch

from diffusion_transfer.core.schedule import (
    constant_weight,
    ddpm_weight,
    make_schedule,
    min_snr_weight,
    min_snr_x0_weight,
    p2_weight,
)

T = 1000


def np_linear():
    betas = np.linspace(1e-4, 0.02, T, dtype=np.float64)
    abar = np.cumprod(1.0 - betas)
    return betas, abar


def test_linear_betas_and_alphas_cumprod():
    s = make_schedule("linear", T, 1e-4, 0.02)
    betas, abar = np_linear()
    assert s.num_timesteps == T
    np.testing.assert_allclose(s.betas.numpy(), betas, rtol=1e-12)
    np.testing.assert_allclose(s.alphas_cumprod.numpy(), abar, rtol=1e-10)
    np.testing.assert_allclose(s.alphas_cumprod_prev.numpy()[1:], abar[:-1], rtol=1e-10)
    assert s.alphas_cumprod_prev[0] == 1.0


def test_cosine_betas():
    s = make_schedule("cosine", 50)

    def f(u):
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    expected = [min(1 - f((i + 1) / 50) / f(i / 50), 0.999) for i in range(50)]
    np.testing.assert_allclose(s.betas.numpy(), expected, rtol=1e-12)
    # abar_t equals f(t+1)/f(0) until the clip kicks in
    abar = s.alphas_cumprod.numpy()
    np.testing.assert_allclose(abar[:40], [f((i + 1) / 50) / f(0) for i in range(40)], rtol=1e-9)


def test_bad_schedule_kind_and_steps():
    with pytest.raises(ValueError, match="kind"):
        make_schedule("quadratic")
    with pytest.raises(ValueError, match="num_timesteps"):
        make_schedule("linear", 0)


def test_snr_q_sample_predict_x0():
    s = make_schedule()
    _, abar = np_linear()
    t = torch.tensor([0, 10, 500, 999])
    snr = s.snr(t).numpy()
    np.testing.assert_allclose(snr, abar[[0, 10, 500, 999]] / (1 - abar[[0, 10, 500, 999]]), rtol=1e-5)
    assert np.all(np.diff(s.snr(torch.arange(T)).numpy()) < 0)  # strictly decreasing

    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 5, 5, generator=g) * 2 - 1
    eps = torch.randn(4, 3, 5, 5, generator=g)
    xt = s.q_sample(x0, t, eps)
    a = torch.tensor(abar[[0, 10, 500, 999]], dtype=torch.float32).view(-1, 1, 1, 1)
    torch.testing.assert_close(xt, a.sqrt() * x0 + (1 - a).sqrt() * eps)
    torch.testing.assert_close(s.predict_x0(xt, t, eps), x0, atol=2e-3, rtol=1e-3)


def test_weights_closed_forms():
    s = make_schedule()
    betas, abar = np_linear()
    idx = np.array([0, 1, 250, 500, 999])
    t = torch.tensor(idx)
    snr = abar[idx] / (1 - abar[idx])
    w_t = (1 - betas[idx]) * (1 - abar[idx]) / betas[idx]
    np.testing.assert_allclose(ddpm_weight(s, t).numpy(), w_t, rtol=1e-5)
    np.testing.assert_allclose(constant_weight(s, t).numpy(), np.ones(5))
    for k, gamma in [(1.0, 1.0), (1.0, 3.0), (1.0, 0.5)]:
        np.testing.assert_allclose(p2_weight(s, t, k=k, gamma=gamma).numpy(), 1.0 / (k + snr) ** gamma, rtol=1e-5)
    np.testing.assert_allclose(min_snr_weight(s, t, gamma=5.0).numpy(), np.minimum(snr, 5.0), rtol=1e-5)
    for fn in (ddpm_weight, constant_weight, p2_weight, min_snr_weight, min_snr_x0_weight):
        assert fn(s, t).dtype == torch.float32


@pytest.mark.parametrize("prediction_type, divisor", [("epsilon", 0.0), ("v_prediction", 1.0), ("sample", None)])
def test_min_snr_x0_weight_closed_form(prediction_type, divisor):
    # min(SNR, 5) on the x0 error: eps's squared error is SNR times x0's, v's is SNR + 1 times.
    s = make_schedule(prediction_type=prediction_type)
    _, abar = np_linear()
    idx = np.array([0, 1, 100, 250, 500, 999])
    snr = abar[idx] / (1 - abar[idx])
    expected = np.minimum(snr, 5.0) if divisor is None else np.minimum(snr, 5.0) / (snr + divisor)
    np.testing.assert_allclose(min_snr_x0_weight(s, torch.tensor(idx), gamma=5.0).numpy(), expected, rtol=1e-5)
    if prediction_type == "epsilon":  # 1 where SNR <= 5 (high noise), 5 / SNR below: the reverse of min_snr
        low_noise = snr > 5.0
        assert low_noise[0] and not low_noise[-1]
        np.testing.assert_allclose(min_snr_x0_weight(s, torch.tensor(idx)).numpy()[~low_noise], 1.0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_min_snr_x0_weight_is_diffusers_snr_gamma(prediction_type):
    # The loss weights of diffusers' examples/text_to_image/train_text_to_image.py with --snr_gamma 5.
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr

    scheduler = DDPMScheduler(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, prediction_type=prediction_type)
    timesteps = torch.tensor([3, 40, 250, 600, 999])
    snr = compute_snr(scheduler, timesteps)
    weights = torch.stack([snr, 5.0 * torch.ones_like(timesteps)], dim=1).min(dim=1)[0]
    if prediction_type == "epsilon":
        weights = weights / snr
    elif prediction_type == "v_prediction":
        weights = weights / (snr + 1)
    ours = min_snr_x0_weight(make_schedule(prediction_type=prediction_type), timesteps, gamma=5.0)
    # diffusers forms SNR in float32 from float32 abar: 1 - abar loses digits near t = 0.
    torch.testing.assert_close(ours, weights.float(), rtol=1e-3, atol=0)


def test_p2_gamma_50_is_finite():
    s = make_schedule()
    w = p2_weight(s, torch.arange(T), k=1.0, gamma=50.0)
    assert torch.isfinite(w).all()
    assert (w >= 0).all() and (w <= 1).all()
    assert w[0] == 0.0 or w[0] < 1e-30  # underflows gracefully at small t
    _, abar = np_linear()
    snr_last = abar[-1] / (1 - abar[-1])
    assert w[-1].item() == pytest.approx((1 + snr_last) ** -50, rel=1e-4)
