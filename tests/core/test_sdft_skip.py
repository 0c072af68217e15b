"""SDFT's negligible-weight skip (``skip_distill_below``): the teacher forward
and the auxiliary student forward are not run for samples whose weight is below
the threshold x the maximum weight, and the loss and its gradient equal the
full computation within the stated bound (tiny UNet, AAHQ's gamma = 50 P2
settings from the registry's preset)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml

from diffusion_transfer.core.methods import build_method
from diffusion_transfer.core.methods.sdft import SKIP_DISTILL_BELOW, SDFTLoss
from diffusion_transfer.core.models import build_unet, predict_eps
from diffusion_transfer.core.schedule import make_schedule

pytestmark = pytest.mark.usefixtures("one_thread")

SCHED = make_schedule()
B, SIZE = 24, 8
TINY = dict(sample_size=SIZE, block_out_channels=(8, 16), layers_per_block=1,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=8, norm_num_groups=4)
ROOT = Path(__file__).resolve().parents[2]


class Counting(torch.nn.Module):
    """A UNet that records the batch size of every forward."""

    def __init__(self, unet):
        super().__init__()
        self.unet, self.calls = unet, []

    def forward(self, x, t):
        self.calls.append(x.shape[0])
        return self.unet(x, t)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    teacher = build_unet(TINY).eval()
    student = copy.deepcopy(teacher)
    with torch.no_grad():  # a student that has moved away from the teacher
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return student, teacher


def images(seed=0):
    return torch.rand(B, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def aahq(skip):
    return build_method("sdft", {"preset": "aahq", "skip_distill_below": skip}, SCHED).loss_fn


def loss_and_grads(loss_fn, student, teacher, seed):
    student.zero_grad(set_to_none=True)
    s, t = Counting(student), Counting(teacher)
    terms = loss_fn(s, images(seed), teacher=t, generator=torch.Generator().manual_seed(seed))
    terms["loss"].backward()
    grads = torch.cat([p.grad.flatten() for p in student.parameters()])
    return terms, grads, s.calls, t.calls


def skipped_terms(loss_fn, student, teacher, seed):
    """The distillation and auxiliary terms the skip leaves out, re-derived:
    the same draws (t, eps, x_T, t'), the weights and the two models' eps."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, SCHED.num_timesteps, (B,), generator=g)
    eps = torch.randn(B, 3, SIZE, SIZE, generator=g)
    x_aux = torch.randn(B, 3, SIZE, SIZE, generator=g)
    t_aux = torch.randint(0, SCHED.num_timesteps, (B,), generator=g)
    x_t = SCHED.q_sample(images(seed), t, eps)
    all_t = torch.arange(SCHED.num_timesteps)
    out = {}
    for name, x, tt, w_fn, lam in (("distill", x_t, t, loss_fn.weight_distill, loss_fn.lambda_distill),
                                   ("aux", x_aux, t_aux, loss_fn.weight_aux, loss_fn.lambda_aux)):
        w = w_fn(tt)
        w_max = w_fn(all_t).max()
        skip = w < loss_fn.skip_distill_below * w_max
        with torch.no_grad():
            mse = (predict_eps(student, x[skip], tt[skip], schedule=SCHED)
                   - predict_eps(teacher, x[skip], tt[skip], schedule=SCHED)).pow(2).flatten(1).mean(1)
        out[name] = dict(n=int(skip.sum()), term=float(lam * (w[skip] * mse).sum() / B),
                         bound=float(lam * loss_fn.skip_distill_below * w_max * mse.max() * skip.sum() / B)
                         if skip.any() else 0.0)
    return out


def test_default_threshold_and_validation():
    assert SDFTLoss(SCHED).skip_distill_below == SKIP_DISTILL_BELOW == 1e-6
    assert SDFTLoss(SCHED, skip_distill_below=0).params["skip_distill_below"] == 0.0
    for bad in (-1e-6, 1.0, True, "1e-6"):
        with pytest.raises(ValueError, match="skip_distill_below"):
            SDFTLoss(SCHED, skip_distill_below=bad)
    # conf/base: methods.sdft sets it, and build_method accepts the block as written there.
    conf = yaml.safe_load((ROOT / "conf/base/parameters_finetune.yml").read_text())["methods"]["sdft"]
    assert conf["skip_distill_below"] == 1e-6
    block = {k: v for k, v in conf.items() if k not in ("name", "train")}
    assert build_method("sdft", block, SCHED).loss_fn.skip_distill_below == 1e-6


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_skip_equals_full_computation_within_the_bound(models, seed):
    student, teacher = models
    full, g_full, s_full, t_full = loss_and_grads(aahq(0), student, teacher, seed)
    skip_fn = aahq(1e-6)
    fast, g_fast, s_fast, t_fast = loss_and_grads(skip_fn, student, teacher, seed)
    left_out = skipped_terms(skip_fn, student, teacher, seed)
    n_d, n_a = left_out["distill"]["n"], left_out["aux"]["n"]
    # AAHQ's gamma = 50 leaves out about a third of the timesteps (37% of 0..999).
    assert n_d + n_a > 0
    # Forwards: the full loss runs both models over 2B; the skip drops the
    # teacher rows of both halves and the student's auxiliary rows.
    assert (s_full, t_full) == ([2 * B], [2 * B])
    assert s_fast == [2 * B - n_a] and t_fast == [2 * B - n_d - n_a]
    # The loss differs from the full one by exactly the skipped terms (up to
    # float32 rounding), and those are below the documented bound.
    gap = float(full["loss"].detach() - fast["loss"].detach())
    expected_gap = left_out["distill"]["term"] + left_out["aux"]["term"]
    assert gap == pytest.approx(expected_gap, abs=2e-6 * float(full["loss"].detach()))
    assert expected_gap <= left_out["distill"]["bound"] + left_out["aux"]["bound"]
    # The stated tolerance: equal within 1e-5 relative, loss and gradient.
    assert float(fast["loss"].detach()) == pytest.approx(float(full["loss"].detach()), rel=1e-5)
    torch.testing.assert_close(fast["diffusion"], full["diffusion"], rtol=1e-6, atol=0)
    torch.testing.assert_close(g_fast, g_full, rtol=1e-5, atol=1e-5 * float(g_full.abs().max()))


def test_zero_disables_and_everything_skipped(models):
    student, teacher = models
    # threshold 0: the full computation, forward for forward.
    _, _, s_calls, t_calls = loss_and_grads(aahq(0.0), student, teacher, 3)
    assert (s_calls, t_calls) == ([2 * B], [2 * B])
    # A threshold next to 1 skips (almost surely) every distillation and
    # auxiliary term: no teacher forward, the student over B, loss = L_diff.
    terms, _, s_calls, t_calls = loss_and_grads(aahq(0.999999), student, teacher, 3)
    assert (s_calls, t_calls) == ([B], [])
    assert float(terms["distill"]) == float(terms["aux"]) == 0.0
    assert float(terms["loss"].detach()) == float(terms["diffusion"])
