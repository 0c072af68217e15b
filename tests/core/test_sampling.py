"""Samplers: determinism, exactness with an oracle, respacing, inversion,
noise bank and callbacks."""

from __future__ import annotations

import pytest
import torch

from diffusion_transfer.core.sampling import (
    ddim_invert,
    ddim_timesteps,
    iter_batches,
    make_noise_bank,
    model_eps_fn,
    sample_ddim,
    sample_ddpm,
)
from diffusion_transfer.core.schedule import make_schedule

SCHEDULE = make_schedule("linear", 1000)
ABAR = SCHEDULE.alphas_cumprod


def oracle_for(x0: torch.Tensor):
    """The perfect eps prediction for data made of the single image x0."""

    def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert t.dtype == torch.int64 and t.shape == (x.shape[0],)
        a = SCHEDULE.at(ABAR, t, x)
        return (x - a.sqrt() * x0) / (1 - a).sqrt()

    return eps_fn


def gaussian_eps(std: float):
    """The exact eps prediction for data distributed N(0, std^2 I): a smooth,
    non-trivial probability-flow ODE."""

    def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = SCHEDULE.at(ABAR, t, x)
        return (1 - a).sqrt() * x / (a * std**2 + 1 - a)

    return eps_fn


def toy_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x) * 0.5 + 1e-4 * t.view(-1, 1, 1, 1).float()


@pytest.fixture
def x0() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.rand((2, 3, 8, 8), generator=g) * 1.8 - 0.9


# --- timesteps ---------------------------------------------------------------------


def test_ddim_timesteps_full_and_partial():
    ts = ddim_timesteps(1000, 40)
    assert len(ts) == 40 and ts[0] == 999 and ts[-1] == 0
    assert all(a > b for a, b in zip(ts, ts[1:]))
    gaps = [a - b for a, b in zip(ts, ts[1:])]
    assert max(gaps) - min(gaps) <= 1  # evenly spaced up to rounding
    assert ddim_timesteps(1000, 10) == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]

    part = ddim_timesteps(1000, 11, t_start=500)
    assert part == [500, 450, 400, 350, 300, 250, 200, 150, 100, 50, 0]
    assert ddim_timesteps(1000, 1000) == list(range(999, -1, -1))
    assert ddim_timesteps(1000, 1, t_start=10) == [10]


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(num_timesteps=1000, steps=0), "steps"),
        (dict(num_timesteps=1000, steps=1001), "steps"),
        (dict(num_timesteps=1000, steps=10, t_start=1000), "t_start"),
        (dict(num_timesteps=1000, steps=10, t_start=5), "steps"),
        (dict(num_timesteps=1000, steps=10, t_start=-1), "t_start"),
    ],
)
def test_ddim_timesteps_rejects_bad_input(kwargs, word):
    with pytest.raises(ValueError, match=word):
        ddim_timesteps(**kwargs)


# --- DDIM ------------------------------------------------------------------------


def test_ddim_eta0_is_deterministic():
    x_T = make_noise_bank(3, (3, 8, 8), seed=1)
    a = sample_ddim(toy_eps, x_T, SCHEDULE, steps=20)
    b = sample_ddim(toy_eps, x_T.clone(), SCHEDULE, steps=20, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, b)
    assert a.shape == x_T.shape and torch.isfinite(a).all()


def test_ddim_eta_positive_uses_generator():
    x_T = make_noise_bank(2, (3, 8, 8), seed=1)
    run = lambda s: sample_ddim(toy_eps, x_T, SCHEDULE, steps=10, eta=1.0, generator=torch.Generator().manual_seed(s))
    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))
    with pytest.raises(ValueError, match="eta"):
        sample_ddim(toy_eps, x_T, SCHEDULE, steps=10, eta=-0.1)


@pytest.mark.parametrize("steps", [1, 10, 40])
def test_ddim_with_oracle_recovers_x0(x0, steps):
    x_T = SCHEDULE.q_sample(x0, torch.full((2,), 999), make_noise_bank(2, (3, 8, 8)))
    out = sample_ddim(oracle_for(x0), x_T, SCHEDULE, steps=steps)
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)


def test_ddim_partial_reverse_with_oracle(x0):
    t_start = 500
    x_t = SCHEDULE.q_sample(x0, torch.full((2,), t_start), make_noise_bank(2, (3, 8, 8)))
    steps_seen = []
    out = sample_ddim(oracle_for(x0), x_t, SCHEDULE, steps=11, t_start=t_start, callback=lambda d: steps_seen.append(d["t"]))
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)
    assert steps_seen[0] == t_start and steps_seen[-1] == 0


def test_ddim_invert_then_sample_reconstructs(x0):
    # Oracle: exact, whatever the step count.
    x_T = ddim_invert(oracle_for(x0), x0, SCHEDULE, steps=20)
    out = sample_ddim(oracle_for(x0), x_T, SCHEDULE, steps=20, clip_x0=False)
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)

    # Gaussian data: a real ODE, reconstruction error shrinks with the step count.
    eps_fn = gaussian_eps(0.5)
    g = torch.Generator().manual_seed(0)
    data = torch.randn((4, 3, 8, 8), generator=g) * 0.5
    errs = {}
    for steps in (50, 200):
        latent = ddim_invert(eps_fn, data, SCHEDULE, steps=steps)
        rec = sample_ddim(eps_fn, latent, SCHEDULE, steps=steps, clip_x0=False)
        errs[steps] = (rec - data).abs().max().item()
    assert errs[200] < 0.05
    assert errs[200] < 0.6 * errs[50]
    assert 0.8 < latent.std().item() < 1.2  # the latent looks like N(0, I)


def test_ddim_invert_partial_and_callback(x0):
    calls = []
    x_t = ddim_invert(oracle_for(x0), x0, SCHEDULE, steps=6, t_end=250, callback=calls.append)
    assert [c["t"] for c in calls] == list(reversed(ddim_timesteps(1000, 6, 250)))
    out = sample_ddim(oracle_for(x0), x_t, SCHEDULE, steps=6, t_start=250)
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)


# --- DDPM ------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [None, 25])
def test_ddpm_with_oracle_recovers_x0(x0, steps):
    x_T = SCHEDULE.q_sample(x0, torch.full((2,), 999), make_noise_bank(2, (3, 8, 8)))
    calls = []
    out = sample_ddpm(oracle_for(x0), x_T, SCHEDULE, steps=steps, generator=torch.Generator().manual_seed(0), callback=calls.append)
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)
    assert len(calls) == (1000 if steps is None else steps)


def test_ddpm_partial_start(x0):
    x_t = SCHEDULE.q_sample(x0, torch.full((2,), 300), make_noise_bank(2, (3, 8, 8)))
    calls = []
    out = sample_ddpm(oracle_for(x0), x_t, SCHEDULE, t_start=300, callback=calls.append)
    assert len(calls) == 301 and calls[0]["t"] == 300
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)


def test_ddpm_respaced_equals_ddim_eta1():
    # Improved-DDPM respacing with beta-tilde is the DDIM update with eta = 1.
    eps_fn = gaussian_eps(0.5)
    x_T = make_noise_bank(2, (3, 8, 8), seed=4)
    a = sample_ddpm(eps_fn, x_T, SCHEDULE, steps=30, generator=torch.Generator().manual_seed(1), clip_x0=False)
    b = sample_ddim(eps_fn, x_T, SCHEDULE, steps=30, eta=1.0, generator=torch.Generator().manual_seed(1), clip_x0=False)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    c = sample_ddpm(eps_fn, x_T, SCHEDULE, steps=30, generator=torch.Generator().manual_seed(2), clip_x0=False)
    assert not torch.equal(a, c)


def test_ddpm_samples_gaussian_data_with_right_scale():
    # With the exact eps of N(0, 0.5^2 I) data and all 1000 steps, ancestral
    # sampling reproduces the data scale (beta-tilde slightly under-disperses
    # with few respaced steps, as expected of the lower-bound variance).
    eps_fn = gaussian_eps(0.5)
    x_T = make_noise_bank(64, (3, 8, 8), seed=2)
    out = sample_ddpm(eps_fn, x_T, SCHEDULE, generator=torch.Generator().manual_seed(0), clip_x0=False)
    assert abs(out.std().item() - 0.5) < 0.03


# --- callback, hooks, model wrapper ------------------------------------------------


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_callback_called_once_per_step_with_keys(sampler):
    x_T = make_noise_bank(2, (3, 8, 8))
    calls = []
    if sampler == "ddim":
        sample_ddim(toy_eps, x_T, SCHEDULE, steps=7, callback=calls.append)
    else:
        sample_ddpm(toy_eps, x_T, SCHEDULE, steps=7, generator=torch.Generator().manual_seed(0), callback=calls.append)
    assert len(calls) == 7
    assert [c["i"] for c in calls] == list(range(7))
    assert [c["t"] for c in calls] == ddim_timesteps(1000, 7)
    for c in calls:
        assert set(c) == {"i", "t", "x", "x0_pred"}
        assert c["x"].shape == x_T.shape and c["x0_pred"].shape == x_T.shape
    assert torch.equal(calls[0]["x"], x_T)


def test_progress_and_post_step_hooks():
    x_T = make_noise_bank(1, (3, 4, 4))
    wrapped = []

    def progress(it):
        wrapped.append(True)
        return it

    seen = []

    def post_step(info):
        seen.append(info["t_prev"])
        return torch.zeros_like(info["x_prev"])

    out = sample_ddim(toy_eps, x_T, SCHEDULE, steps=4, progress=progress, post_step=post_step)
    assert wrapped == [True]
    assert seen == ddim_timesteps(1000, 4)[1:] + [-1]
    assert torch.equal(out, torch.zeros_like(x_T))


def test_bad_eps_fn_output_gives_clear_error():
    x_T = make_noise_bank(1, (3, 4, 4))
    with pytest.raises(ValueError, match="eps_fn must return"):
        sample_ddim(lambda x, t: torch.cat([x, x], 1), x_T, SCHEDULE, steps=2)
    with pytest.raises(ValueError, match="float tensor"):
        sample_ddim(toy_eps, torch.zeros(3, 4, 4), SCHEDULE, steps=2)


def test_model_eps_fn_slices_learned_variance_and_disables_grad():
    class Out:
        def __init__(self, sample):
            self.sample = sample

    class LearnedVar(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))
            self.seen_t = None

        def forward(self, x, t):
            self.seen_t = t
            return Out(torch.cat([x * self.w, -torch.ones_like(x)], dim=1))

    model = LearnedVar()
    eps_fn = model_eps_fn(model, SCHEDULE)
    x = torch.randn(2, 3, 4, 4)
    eps = eps_fn(x, torch.tensor([5, 5]))
    assert eps.shape == x.shape and torch.equal(eps, x)
    assert not eps.requires_grad
    assert model.seen_t.tolist() == [5, 5]


def test_model_eps_fn_with_diffusers_unet():
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8, in_channels=3, out_channels=6, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
    ).eval()
    eps_fn = model_eps_fn(unet, SCHEDULE)
    x_T = make_noise_bank(2, (3, 8, 8))
    a = sample_ddim(eps_fn, x_T, SCHEDULE, steps=3)
    b = sample_ddim(eps_fn, x_T, SCHEDULE, steps=3)
    assert a.shape == x_T.shape and torch.equal(a, b)
    assert a.abs().max() <= 1.0 + 1e-6  # last step returns the clipped x0 prediction
    bf = sample_ddim(model_eps_fn(unet, SCHEDULE, autocast_dtype=torch.bfloat16), x_T, SCHEDULE, steps=3)
    assert bf.dtype == torch.float32 and torch.isfinite(bf).all()


# --- noise bank ------------------------------------------------------------------


def test_noise_bank_deterministic_and_prefix_stable():
    a = make_noise_bank(6, (3, 8, 8), seed=7)
    b = make_noise_bank(6, (3, 8, 8), seed=7)
    assert a.shape == (6, 3, 8, 8) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert torch.equal(make_noise_bank(3, (3, 8, 8), seed=7), a[:3])
    assert not torch.equal(make_noise_bank(6, (3, 8, 8), seed=8), a)
    assert not torch.equal(a[0], a[1])
    # Global RNG state is neither used nor disturbed.
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    make_noise_bank(2, (3, 4, 4))
    assert torch.equal(torch.rand(1), before)
    big = make_noise_bank(200, (3, 16, 16))
    assert abs(big.mean().item()) < 0.02 and abs(big.std().item() - 1) < 0.02
    assert make_noise_bank(2).shape == (2, 3, 32, 32)


def test_noise_bank_rejects_bad_input_and_batches():
    with pytest.raises(ValueError, match="n must"):
        make_noise_bank(-1)
    with pytest.raises(ValueError, match="seed"):
        make_noise_bank(2, seed=-3)
    with pytest.raises(ValueError, match="shape"):
        make_noise_bank(2, shape=(3, 0, 4))
    bank = make_noise_bank(10, (3, 2, 2))
    batches = list(iter_batches(bank, 4))
    assert [b.shape[0] for b in batches] == [4, 4, 2]
    assert torch.equal(torch.cat(batches), bank)
    with pytest.raises(ValueError, match="batch_size"):
        list(iter_batches(bank, 0))
