"""core/methods: losses against hand computations, forward counts, registry."""

import numpy as np
import pytest
import torch
from torch import nn

from diffusion_transfer.core.methods import (
    SDFT_PAPER_DEFAULTS,
    DenoisingLoss,
    SDFTLoss,
    build_method,
)
from diffusion_transfer.core.schedule import make_schedule

B, H = 3, 6
SCHED = make_schedule("linear", 1000, 1e-4, 0.02)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py


class Out:
    def __init__(self, sample):
        self.sample = sample


class TinyEps(nn.Module):
    """Per-sample network eps(x, t) with a time dependence; counts forwards."""

    def __init__(self, seed, out_channels=3):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, out_channels, 3, padding=1)
        self.temb = nn.Linear(1, out_channels)
        self.calls = []

    def forward(self, x, t):
        self.calls.append(x.shape[0])
        te = self.temb((t.float() / 1000.0).view(-1, 1))
        return Out(self.conv(x) + te.view(x.shape[0], -1, 1, 1))


def np_weight(t, gamma, ddpm=True, k=1.0):
    betas = np.linspace(1e-4, 0.02, 1000)
    abar = np.cumprod(1 - betas)
    t = t.numpy()
    snr = abar[t] / (1 - abar[t])
    w = 1.0 / (k + snr) ** gamma
    if ddpm:
        w = w * (1 - betas[t]) * (1 - abar[t]) / betas[t]
    return torch.tensor(w, dtype=torch.float32)


def mse(a, b):
    return ((a - b) ** 2).flatten(1).mean(1)


def images():
    g = torch.Generator().manual_seed(123)
    return torch.rand(B, 3, H, H, generator=g) * 2 - 1


def test_denoising_loss_hand_computation():
    net = TinyEps(0)
    x0 = images()
    terms = DenoisingLoss(SCHED)(net, x0, generator=torch.Generator().manual_seed(5))

    g = torch.Generator().manual_seed(5)
    t = torch.randint(0, 1000, (B,), generator=g)
    eps = torch.randn(B, 3, H, H, generator=g)
    abar = torch.tensor(np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))[t.numpy()], dtype=torch.float32).view(-1, 1, 1, 1)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    expected = mse(net(x_t, t).sample, eps).mean()
    torch.testing.assert_close(terms["loss"], expected)
    assert terms["loss"].requires_grad and not terms["diffusion"].requires_grad
    assert set(terms) == {"loss", "diffusion"}


def _sdft_expected(student, teacher, x0, seed, *, shared, ddpm, gd, ga, ld, la):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, 1000, (B,), generator=g)
    eps = torch.randn(B, 3, H, H, generator=g)
    if shared:
        x_aux, t_aux = eps, t
    else:
        x_aux = torch.randn(B, 3, H, H, generator=g)
        t_aux = torch.randint(0, 1000, (B,), generator=g)
    abar = torch.tensor(np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))[t.numpy()], dtype=torch.float32).view(-1, 1, 1, 1)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    with torch.no_grad():
        s_t, s_a = student(x_t, t).sample, student(x_aux, t_aux).sample
        e_t, e_a = teacher(x_t, t).sample, teacher(x_aux, t_aux).sample
    diff = mse(s_t, eps).mean()
    distill = (np_weight(t, gd, ddpm) * mse(s_t, e_t)).mean()
    aux = (np_weight(t_aux, ga, ddpm) * mse(s_a, e_a)).mean()
    return diff, distill, aux, diff + ld * distill + la * aux


@pytest.mark.parametrize(
    "params, shared, ddpm",
    [
        ({}, False, True),  # paper (MetFaces defaults)
        ({"variant": "authors_code", "teacher_dtype": None}, True, False),
        ({"include_ddpm_weight": False, "aux_input": "shared", "lambda_aux": 0.3, "gamma_aux": 1.0}, True, False),
    ],
)
def test_sdft_loss_hand_computation(params, shared, ddpm):
    student, teacher = TinyEps(0), TinyEps(1)
    x0 = images()
    loss = SDFTLoss.from_params(SCHED, params)
    terms = loss(student, x0, teacher=teacher, generator=torch.Generator().manual_seed(7))
    diff, distill, aux, total = _sdft_expected(
        student, teacher, x0, 7, shared=shared, ddpm=ddpm,
        gd=loss.gamma_distill, ga=loss.gamma_aux, ld=loss.lambda_distill, la=loss.lambda_aux,
    )
    torch.testing.assert_close(terms["diffusion"], diff)
    torch.testing.assert_close(terms["distill"], distill)
    torch.testing.assert_close(terms["aux"], aux)
    torch.testing.assert_close(terms["loss"], total)
    assert terms["loss"].requires_grad
    assert all(not terms[k].requires_grad for k in ("diffusion", "distill", "aux"))


def test_sdft_one_student_and_one_teacher_forward_of_2b():
    student, teacher = TinyEps(0), TinyEps(1)
    # skip_distill_below=0: no negligible-weight skipping (tests/core/test_sdft_skip.py)
    SDFTLoss(SCHED, skip_distill_below=0)(student, images(), teacher=teacher, generator=torch.Generator().manual_seed(0))
    assert student.calls == [2 * B]
    assert teacher.calls == [2 * B]


def test_sdft_teacher_gets_no_gradient_and_stays_unchanged():
    student, teacher = TinyEps(0), TinyEps(1)
    teacher.train()  # even a teacher left trainable must not receive gradients
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    opt = torch.optim.AdamW(list(student.parameters()) + list(teacher.parameters()), lr=0.1)
    terms = SDFTLoss(SCHED, lambda_distill=1.0, lambda_aux=1.0)(
        student, images(), teacher=teacher, generator=torch.Generator().manual_seed(0)
    )
    terms["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    opt.step()
    for k, v in teacher.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert not teacher.training


def test_sdft_learned_variance_and_bf16_teacher():
    student, teacher = TinyEps(0, out_channels=6), TinyEps(1, out_channels=6)
    x0 = images()
    ref = SDFTLoss(SCHED)(student, x0, teacher=teacher, generator=torch.Generator().manual_seed(3))
    low = SDFTLoss(SCHED, teacher_dtype="bfloat16")(student, x0, teacher=teacher, generator=torch.Generator().manual_seed(3))
    assert all(torch.isfinite(v) for v in ref.values())
    # The base model's hybrid objective, as naive: lambda T L_t with lambda = 1e-3, T = 1000.
    assert set(ref) == {"loss", "diffusion", "distill", "aux", "vlb"}
    torch.testing.assert_close(ref["loss"].detach(), ref["diffusion"] + 0.1 * ref["distill"] + 0.1 * ref["aux"]
                               + 1.0 * ref["vlb"])
    assert "vlb" not in SDFTLoss(SCHED)(TinyEps(0), x0, teacher=TinyEps(1), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(low["diffusion"], ref["diffusion"])
    torch.testing.assert_close(low["distill"], ref["distill"], rtol=0.1, atol=1e-2)


def test_sdft_weightings_and_aahq_gamma_50_finite():
    from diffusion_transfer.core.methods import expand_preset

    loss = SDFTLoss.from_params(SCHED, expand_preset("sdft", {"preset": "aahq"}))
    assert (loss.lambda_distill, loss.lambda_aux, loss.gamma_distill, loss.gamma_aux) == (0.1, 0.3, 50.0, 50.0)
    t = torch.arange(0, 1000, 37)
    assert torch.isfinite(loss.weight_aux(t)).all()
    torch.testing.assert_close(loss.weight_distill(t), np_weight(t, 50.0, True), rtol=1e-4, atol=1e-30)
    const = SDFTLoss(SCHED, weighting="constant", include_ddpm_weight=False)
    torch.testing.assert_close(const.weight_distill(t), torch.ones(len(t)))
    msnr = SDFTLoss(SCHED, weighting="min_snr", include_ddpm_weight=False)
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))[t.numpy()]
    torch.testing.assert_close(msnr.weight_aux(t), torch.tensor(np.minimum(abar / (1 - abar), 5.0), dtype=torch.float32))
    assert SDFT_PAPER_DEFAULTS["metfaces"] == {"lambda_distill": 0.1, "lambda_aux": 0.1, "gamma_distill": 3.0, "gamma_aux": 3.0}
    d = SDFTLoss(SCHED)
    assert (d.lambda_distill, d.lambda_aux, d.gamma_distill, d.gamma_aux) == (0.1, 0.1, 3.0, 3.0)
    assert d.include_ddpm_weight and d.aux_input == "independent" and d.teacher_dtype is None


def test_registry():
    naive = build_method("naive", {}, SCHED)
    assert naive.init == "source" and not naive.needs_teacher and isinstance(naive.loss_fn, DenoisingLoss)
    scratch = build_method("scratch", None, SCHED)
    assert scratch.init == "random" and not scratch.needs_teacher
    sdft = build_method("sdft", {"preset": "metfaces", "variant": "authors_code"}, SCHED)
    assert sdft.needs_teacher and sdft.init == "source"
    assert sdft.loss_fn.aux_input == "shared" and not sdft.loss_fn.include_ddpm_weight
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        build_method("nope", {}, SCHED)
    with pytest.raises(ValueError, match="lambda_distil"):
        build_method("sdft", {"lambda_distil": 0.1}, SCHED)
    with pytest.raises(ValueError, match="lambda_aux"):
        build_method("sdft", {"lambda_aux": -1}, SCHED)
    with pytest.raises(ValueError, match="aux_input"):
        build_method("sdft", {"aux_input": "both"}, SCHED)
    with pytest.raises(ValueError, match="preset"):
        build_method("sdft", {"preset": "ffhq"}, SCHED)
    with pytest.raises(ValueError, match="teacher_dtype"):
        build_method("sdft", {"teacher_dtype": "int8"}, SCHED)
    with pytest.raises(ValueError, match="weighting"):
        build_method("naive", {"weighting": "p3"}, SCHED)
    with pytest.raises(ValueError, match="naive"):
        build_method("naive", {"lambda_aux": 0.1}, SCHED)
    with pytest.raises(ValueError, match="teacher"):
        sdft.loss_fn(TinyEps(0), images())
