"""prediction_type (epsilon / v_prediction / sample) and diffusers beta schedules:
the schedule against diffusers, scheduler_config parsing, the conversions, and
every loss and sampler re-derived by hand for each parameterisation."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from torch import nn

from diffusion_transfer.core.methods import DenoisingLoss, SDFTLoss
from diffusion_transfer.core.methods.tan import TANLoss, adversarial_noise, sigma_hat, standardise
from diffusion_transfer.core.models.domain_classifier import DomainClassifier
from diffusion_transfer.core.parameterization import schedule_from_scheduler_config
from diffusion_transfer.core.sampling import ddim_timesteps, model_eps_fn, sample_ddim, sample_ddpm
from diffusion_transfer.core.schedule import NoiseSchedule, UnsupportedScheduleError, make_schedule

pytestmark = pytest.mark.usefixtures("one_thread")
TYPES = ("epsilon", "v_prediction", "sample")
B, H = 3, 6


class Out:
    def __init__(self, sample):
        self.sample = sample


class TinyNet(nn.Module):
    """out(x, t) with a time dependence, returned as ``.sample``."""

    def __init__(self, seed, out_channels=3):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, out_channels, 3, padding=1)
        self.temb = nn.Linear(1, out_channels)

    def forward(self, x, t):
        te = self.temb((t.float() / 1000.0).view(-1, 1))
        return Out(self.conv(x) + te.view(x.shape[0], -1, 1, 1))


def coefs(sched, t):
    """sqrt(abar_t), sqrt(1 - abar_t): computed in float64, then float32."""
    abar = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    return abar.sqrt().float(), (1 - abar).sqrt().float()


def noised(sched, x0, eps, t):
    """x_t as q_sample forms it (abar cast to float32 first)."""
    abar = sched.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    return abar.sqrt() * x0 + (1 - abar).sqrt() * eps


def hand_eps(kind, out, x, a, s):
    return {"epsilon": out, "v_prediction": a * out + s * x, "sample": (x - a * out) / s}[kind]


def hand_target(kind, x0, eps, a, s):
    return {"epsilon": eps, "v_prediction": a * eps - s * x0, "sample": x0}[kind]


def mse(a, b):
    return ((a - b) ** 2).flatten(1).mean(1)


def images(n=B, size=H):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(123)) * 2 - 1


# --- schedules ------------------------------------------------------------------


@pytest.mark.parametrize("kind, b0, b1", [("linear", 1e-4, 0.02), ("scaled_linear", 0.00085, 0.012),
                                          ("squaredcos_cap_v2", 1e-4, 0.02), ("cosine", 1e-4, 0.02)])
def test_make_schedule_betas_equal_diffusers(kind, b0, b1):
    ours = make_schedule(kind, 1000, b0, b1)
    name = "squaredcos_cap_v2" if kind == "cosine" else kind
    ref = DDPMScheduler(num_train_timesteps=1000, beta_start=b0, beta_end=b1, beta_schedule=name)
    assert ours.betas.dtype == torch.float64 and ours.beta_schedule == name and ours.prediction_type == "epsilon"
    np.testing.assert_allclose(ours.betas.numpy(), ref.betas.double().numpy(), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(ours.alphas_cumprod.numpy(), ref.alphas_cumprod.double().numpy(), rtol=1e-5, atol=1e-9)


def test_noise_schedule_defaults_and_describe():
    s = NoiseSchedule(betas=torch.linspace(1e-4, 0.02, 10, dtype=torch.float64))
    assert (s.prediction_type, s.beta_schedule) == ("epsilon", "linear")
    assert make_schedule("linear", 1000, prediction_type="v_prediction").describe() == {
        "beta_schedule": "linear", "num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02,
        "prediction_type": "v_prediction"}
    assert make_schedule("scaled_linear", 50, 0.00085, 0.012).describe()["beta_start"] == 0.00085
    d = make_schedule("cosine", 100).describe()
    assert d["beta_schedule"] == "squaredcos_cap_v2" and d["beta_start"] is None
    with pytest.raises(UnsupportedScheduleError, match="prediction_type"):
        make_schedule(prediction_type="flow")


@pytest.mark.parametrize("kind", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_schedule_from_scheduler_config_matches_diffusers(kind):
    ref = DDIMScheduler(num_train_timesteps=500, beta_start=0.00085, beta_end=0.012, beta_schedule=kind,
                        prediction_type="v_prediction", timestep_spacing="trailing", steps_offset=1)
    s = schedule_from_scheduler_config(dict(ref.config))
    assert (s.num_timesteps, s.prediction_type, s.beta_schedule) == (500, "v_prediction", kind)
    np.testing.assert_allclose(s.betas.numpy(), ref.betas.double().numpy(), rtol=1e-6, atol=1e-9)


def test_schedule_from_scheduler_config_defaults_ignored_keys_and_overrides():
    cfg = {"_class_name": "DDPMScheduler", "_diffusers_version": "0.30.0", "beta_schedule": "linear",
           "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "prediction_type": "epsilon",
           "trained_betas": None, "rescale_betas_zero_snr": False, "thresholding": False, "variance_type": "fixed_small",
           "timestep_spacing": "leading", "steps_offset": 1, "set_alpha_to_one": False, "clip_sample": True,
           "clip_sample_range": 1.0}
    s = schedule_from_scheduler_config(cfg)
    torch.testing.assert_close(s.betas, make_schedule().betas, rtol=0, atol=0)
    assert s.prediction_type == "epsilon"
    o = schedule_from_scheduler_config(cfg, {"prediction_type": "v_prediction", "beta_schedule": "squaredcos_cap_v2",
                                             "num_train_timesteps": None, "beta_end": None})
    assert (o.prediction_type, o.beta_schedule, o.num_timesteps) == ("v_prediction", "squaredcos_cap_v2", 1000)
    o = schedule_from_scheduler_config(cfg, {"num_train_timesteps": 10, "beta_end": 0.5})
    assert o.num_timesteps == 10 and float(o.betas[-1]) == 0.5
    assert schedule_from_scheduler_config({}).describe() == make_schedule().describe()  # diffusers' defaults
    for v in ("fixed_small_log", "learned", "learned_range", None):
        schedule_from_scheduler_config({"variance_type": v})
    # an override can also make a config unsupported
    with pytest.raises(UnsupportedScheduleError, match="thresholding"):
        schedule_from_scheduler_config(cfg, {"thresholding": True})


@pytest.mark.parametrize("key, value", [
    ("beta_schedule", "sigmoid"), ("trained_betas", [0.1, 0.2]), ("rescale_betas_zero_snr", True),
    ("prediction_type", "flow_prediction"), ("thresholding", True), ("variance_type", "fixed_large"),
])
def test_schedule_from_scheduler_config_rejects_what_it_cannot_honour(key, value):
    with pytest.raises(UnsupportedScheduleError) as info:
        schedule_from_scheduler_config({"beta_schedule": "linear", key: value})
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert key in msg and repr(value) in msg and "supported" in msg


# --- conversions ------------------------------------------------------------------


@pytest.mark.parametrize("kind", TYPES)
def test_conversions_by_hand_and_against_diffusers(kind):
    sched = make_schedule("squaredcos_cap_v2", 1000, prediction_type=kind)
    g = torch.Generator().manual_seed(0)
    x0, eps = images(4), torch.randn(4, 3, H, H, generator=g)
    t = torch.tensor([0, 10, 500, 990])
    a, s = coefs(sched, t)
    x_t = sched.q_sample(x0, t, eps)
    target = sched.training_target(x0, eps, t)
    torch.testing.assert_close(target, hand_target(kind, x0, eps, a, s))
    if kind == "v_prediction":
        ref = DDPMScheduler(beta_schedule="squaredcos_cap_v2")
        torch.testing.assert_close(target, ref.get_velocity(x0, eps, t), rtol=1e-5, atol=1e-5)
    # a perfect model's output maps back to the noise and the image
    tol = dict(rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(sched.eps_from_output(target, x_t, t)[1:], eps[1:], **tol)
    torch.testing.assert_close(sched.x0_from_output(target, x_t, t)[:3], x0[:3], **tol)
    out = torch.randn(4, 3, H, H, generator=g)
    e = sched.eps_from_output(out, x_t, t)
    torch.testing.assert_close(e, hand_eps(kind, out, x_t, a, s))
    torch.testing.assert_close(sched.output_from_eps(e, x_t, t), out, rtol=1e-4, atol=1e-4)
    x0_hat = {"epsilon": (x_t - s * out) / a, "v_prediction": a * x_t - s * out, "sample": out}[kind]
    torch.testing.assert_close(sched.x0_from_output(out, x_t, t), x0_hat)
    # learned variance: the second half is dropped
    torch.testing.assert_close(sched.eps_from_output(torch.cat([out, out * 0], dim=1), x_t, t), e)
    if kind == "epsilon":
        assert sched.eps_from_output(out, x_t, t) is out and sched.training_target(x0, eps, t) is eps


@pytest.mark.parametrize("kind", TYPES)
def test_model_eps_fn_converts_the_output(kind):
    sched = make_schedule("linear", 1000, prediction_type=kind)
    net = TinyNet(0)
    x = torch.randn(2, 3, H, H, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([3, 700])
    a, s = coefs(sched, t)
    with torch.no_grad():
        out = net(x, t).sample
    torch.testing.assert_close(model_eps_fn(net, sched)(x, t), hand_eps(kind, out, x, a, s))
    with pytest.raises(TypeError, match="schedule"):
        model_eps_fn(net, torch.bfloat16)


# --- losses ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", TYPES)
def test_denoising_loss_by_hand(kind):
    sched = make_schedule("squaredcos_cap_v2", 1000, prediction_type=kind)
    net, x0 = TinyNet(0), images()
    for weighting in ("constant", "p2"):
        loss = DenoisingLoss(sched, weighting=weighting)
        terms = loss(net, x0, generator=torch.Generator().manual_seed(5))
        g = torch.Generator().manual_seed(5)
        t = torch.randint(0, 1000, (B,), generator=g)
        eps = torch.randn(B, 3, H, H, generator=g)
        a, s = coefs(sched, t)
        x_t = noised(sched, x0, eps, t)
        want = (loss.weight(t) * mse(net(x_t, t).sample, hand_target(kind, x0, eps, a, s))).mean()
        torch.testing.assert_close(terms["loss"], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", TYPES)
def test_min_snr_x0_is_min_snr_on_the_x0_error(kind):
    # Hang et al.'s Min-SNR-5: min(SNR, 5) ||x0 - x0_hat||^2, whatever the model predicts.
    sched = make_schedule("linear", 1000, prediction_type=kind)
    net, x0 = TinyNet(0), images()
    terms = DenoisingLoss(sched, weighting="min_snr_x0")(net, x0, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    t = torch.randint(0, 1000, (B,), generator=g)
    eps = torch.randn(B, 3, H, H, generator=g)
    a, s = coefs(sched, t)
    x_t = noised(sched, x0, eps, t)
    out = net(x_t, t).sample
    x0_hat = {"epsilon": (x_t - s * out) / a, "v_prediction": a * x_t - s * out, "sample": out}[kind]
    abar = sched.alphas_cumprod[t]
    snr = (abar / (1 - abar)).float()
    want = (torch.clamp(snr, max=5.0) * mse(x0_hat, x0)).mean()
    torch.testing.assert_close(terms["loss"], want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", TYPES)
def test_sdft_loss_terms_by_hand(kind):
    sched = make_schedule("linear", 1000, prediction_type=kind)
    student, teacher, x0 = TinyNet(0), TinyNet(1), images()
    loss = SDFTLoss(sched)  # paper variant: independent x_T and t'
    terms = loss(student, x0, teacher=teacher, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    t = torch.randint(0, 1000, (B,), generator=g)
    eps = torch.randn(B, 3, H, H, generator=g)
    x_aux = torch.randn(B, 3, H, H, generator=g)
    t_aux = torch.randint(0, 1000, (B,), generator=g)
    a, s = coefs(sched, t)
    aa, sa = coefs(sched, t_aux)
    x_t = noised(sched, x0, eps, t)
    with torch.no_grad():
        s_t, s_a = student(x_t, t).sample, student(x_aux, t_aux).sample
        e_t, e_a = teacher(x_t, t).sample, teacher(x_aux, t_aux).sample
    diff = mse(s_t, hand_target(kind, x0, eps, a, s)).mean()
    # distillation on eps, whatever the parameterisation
    distill = (loss.weight_distill(t) * mse(hand_eps(kind, s_t, x_t, a, s), hand_eps(kind, e_t, x_t, a, s))).mean()
    aux = (loss.weight_aux(t_aux) * mse(hand_eps(kind, s_a, x_aux, aa, sa), hand_eps(kind, e_a, x_aux, aa, sa))).mean()
    tol = dict(rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(terms["diffusion"], diff, **tol)
    torch.testing.assert_close(terms["distill"], distill, **tol)
    torch.testing.assert_close(terms["aux"], aux, **tol)
    torch.testing.assert_close(terms["loss"].detach(), diff + 0.1 * distill + 0.1 * aux, **tol)


class LinearClassifier(nn.Module):
    """logits [0, w.x]: grad log p(target | x) = (1 - sigmoid(w.x)) w."""

    log_prob = DomainClassifier.log_prob
    grad_log_prob = DomainClassifier.grad_log_prob

    def __init__(self, shape):
        super().__init__()
        self.w = nn.Parameter(torch.randn(shape, generator=torch.Generator().manual_seed(9)) * 0.1)

    def forward(self, x, t):
        z = (x * self.w).flatten(1).sum(1)
        return torch.stack([torch.zeros_like(z), z], dim=1)


@pytest.mark.parametrize("kind", TYPES)
def test_tan_target_by_hand(kind):
    sched = make_schedule("linear", 1000, prediction_type=kind)
    clf, net, x0 = LinearClassifier((3, H, H)), TinyNet(0), images()
    terms = TANLoss(sched, gamma=5.0, adversarial=False).with_classifier(clf)(
        net, x0, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    t = torch.randint(0, 1000, (B,), generator=g)
    eps = torch.randn(B, 3, H, H, generator=g)
    a, s = coefs(sched, t)
    x_t = noised(sched, x0, eps, t)
    z = (x_t * clf.w.detach()).flatten(1).sum(1)
    grad = (1 - torch.sigmoid(z)).view(-1, 1, 1, 1) * clf.w.detach()
    eps_star = eps - (sigma_hat(sched, t) ** 2 * 5.0).view(-1, 1, 1, 1) * grad  # Eq. 6/9, on eps
    x0_star = (x_t - s * eps_star) / a
    target = {"epsilon": eps_star, "v_prediction": a * eps_star - s * x0_star, "sample": x0_star}[kind]
    with torch.no_grad():
        pred = net(x_t, t).sample
    tol = dict(rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(terms["loss"].detach(), mse(pred, target).mean(), **tol)
    torch.testing.assert_close(terms["diffusion"], mse(pred, hand_target(kind, x0, eps, a, s)).mean(), **tol)
    # the model's implied eps at x_t* equals the guided eps target
    torch.testing.assert_close(hand_eps(kind, target, x_t, a, s), eps_star, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", TYPES)
def test_tan_adversarial_step_uses_the_eps_of_the_output(kind):
    sched = make_schedule("linear", 1000, prediction_type=kind)
    net, x0 = TinyNet(0), images()
    t = torch.tensor([100, 400, 800])
    eps0 = standardise(torch.randn(x0.shape, generator=torch.Generator().manual_seed(2)))
    got = adversarial_noise(net, x0, t, eps0, sched, steps=1, omega=0.05)
    a, s = coefs(sched, t)
    e = eps0.clone().requires_grad_(True)
    x_t = noised(sched, x0, e, t)
    err = (e - hand_eps(kind, net(x_t, t).sample, x_t, a, s)).pow(2).sum()
    (grad,) = torch.autograd.grad(err, e)
    torch.testing.assert_close(got, standardise(eps0 + 0.05 * grad), rtol=1e-4, atol=1e-5)


# --- samplers against diffusers ------------------------------------------------------


def float64_abar(scheduler):
    """diffusers' abar from its own betas, in float64: its float32 1 - abar loses ~3
    digits near t = 0 (abar ~ 1), an error of diffusers, not of the sampler under test."""
    return torch.cumprod(1.0 - scheduler.betas.double(), dim=0)


def tiny_diffusers_unet():
    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                       layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4).eval()


@pytest.mark.parametrize("kind, clip", [("v_prediction", False), ("v_prediction", True), ("sample", False),
                                        ("epsilon", False)])
def test_ddim_equals_diffusers_ddim_scheduler(kind, clip):
    unet = tiny_diffusers_unet()
    sched = make_schedule("squaredcos_cap_v2", 1000, prediction_type=kind)
    # A grid both agree on: 900, 800, ..., 0 is diffusers' "leading" spacing for 10 steps,
    # whose prev_timestep t - 100 is our next grid point; after t = 0, abar = 1 (set_alpha_to_one).
    grid = ddim_timesteps(1000, 10, t_start=900)
    ref = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type=kind,
                        clip_sample=clip, set_alpha_to_one=True, timestep_spacing="leading", steps_offset=0)
    ref.set_timesteps(10)
    assert ref.timesteps.tolist() == grid
    ref.alphas_cumprod = float64_abar(ref)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    ours = sample_ddim(model_eps_fn(unet, sched), x, sched, steps=10, t_start=900, clip_x0=clip)
    y = x
    with torch.no_grad():
        for t in ref.timesteps:
            y = ref.step(unet(y, t).sample, t, y, eta=0.0, use_clipped_model_output=clip).prev_sample.float()
    torch.testing.assert_close(ours, y, rtol=1e-5, atol=1e-5)


def test_ddpm_equals_diffusers_ddpm_scheduler_for_v_prediction():
    unet = tiny_diffusers_unet()
    sched = make_schedule("squaredcos_cap_v2", 1000, prediction_type="v_prediction")
    grid = ddim_timesteps(1000, 8, t_start=700)
    ref = DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", clip_sample=False,
                        variance_type="fixed_small")
    ref.set_timesteps(timesteps=grid)
    ref.alphas_cumprod = float64_abar(ref)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    ours = sample_ddpm(model_eps_fn(unet, sched), x, sched, steps=8, t_start=700, clip_x0=False,
                       generator=torch.Generator().manual_seed(11))
    g, y = torch.Generator().manual_seed(11), x
    with torch.no_grad():
        for t in ref.timesteps:
            y = ref.step(unet(y, t).sample, t, y, generator=g).prev_sample.float()
    torch.testing.assert_close(ours, y, rtol=1e-5, atol=1e-5)
