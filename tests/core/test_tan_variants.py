"""TAN's ``variant: paper | authors_code`` and its five options, against
adversarial steps and losses written out by hand on a linear eps model
eps_theta(x, t) = a x + c t / 1000, whose input gradient is known:

- paper, Eq. 8: eps <- Norm(eps + omega grad_eps sum_b ||eps_b - eps_theta(x_t(eps_b), t_b)||^2),
  grad = 2 (eps - eps_theta) (1 - a sqrt(1 - abar_t)), one t throughout; target (Eq. 6)
  eps - gamma sigmahat_t^2 grad log p;
- DPMs-ANT ``train.py``: loss ``.sum(dim=[1, 2, 3]).mean(dim=0)`` (grad / B), x_t
  rebuilt detached after the first step (grad = 2 (eps - eps_theta) / B), a new
  t from ``generate_xt`` after every step; target ``e - c * (1 - a_t) * grad``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diffusion_transfer.core.methods import build_method
from diffusion_transfer.core.methods.tan import TAN_VARIANTS, TANLoss, select_adversarial_noise, sigma_hat
from diffusion_transfer.core.models.domain_classifier import DomainClassifier
from diffusion_transfer.core.schedule import make_schedule

S = make_schedule()
ABAR = S.alphas_cumprod
A, C = 0.5, 0.3


class LinearEps(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(A))

    def forward(self, x, t):
        return self.a * x + C * t.view(-1, 1, 1, 1).float() / 1000


class LinearClassifier(nn.Module):
    """logits [0, w.x]: grad_x log p(1 | x) = (1 - sigmoid(w.x)) w."""

    log_prob = DomainClassifier.log_prob
    grad_log_prob = DomainClassifier.grad_log_prob

    def __init__(self, shape):
        super().__init__()
        self.w = nn.Parameter(torch.randn(shape, generator=torch.Generator().manual_seed(4)) * 0.1)

    def forward(self, x, t):
        z = (x * self.w).flatten(1).sum(1)
        return torch.stack([torch.zeros_like(z), z], dim=1)


def norm(e):
    f = e.flatten(1)
    return ((f - f.mean(1, keepdim=True)) / f.std(1, keepdim=True)).view_as(e)


def hand_ascent(x0, t, eps, steps, omega, gen, *, mean, first_only, redraw):
    b = x0.shape[0]
    for j in range(steps):
        s = (1 - ABAR[t]).sqrt().float().view(-1, 1, 1, 1)
        x_t = ABAR[t].sqrt().float().view(-1, 1, 1, 1) * x0 + s * eps
        direct = eps - (A * x_t + C * t.view(-1, 1, 1, 1).float() / 1000)
        through = 1.0 if (first_only and j > 0) else (1 - A * s)  # d(eps - a x_t(eps)) / d eps
        grad = 2 * direct * through / (b if mean else 1)
        eps = norm(eps + omega * grad)
        if redraw:
            t = torch.randint(0, 1000, (b,), generator=gen)
    return eps, t


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return (torch.rand(3, 3, 4, 4, generator=g) * 2 - 1, torch.tensor([120, 500, 870]),
            norm(torch.randn(3, 3, 4, 4, generator=g)))


@pytest.mark.parametrize("options, hand", [
    ({}, dict(mean=False, first_only=False, redraw=False)),  # paper, Eq. 8
    ({"reduction": "mean", "model_grad": "first_step", "timesteps": "redraw"},
     dict(mean=True, first_only=True, redraw=True)),         # DPMs-ANT
    ({"reduction": "mean"}, dict(mean=True, first_only=False, redraw=False)),
    ({"model_grad": "first_step"}, dict(mean=False, first_only=True, redraw=False)),
    ({"timesteps": "redraw"}, dict(mean=False, first_only=False, redraw=True)),
])
def test_adversarial_steps_by_hand(batch, options, hand):
    x0, t, eps0 = batch
    got, t_got = select_adversarial_noise(LinearEps(), x0, t, eps0, S, steps=3, omega=0.2,
                                          generator=torch.Generator().manual_seed(1), **options)
    want, t_want = hand_ascent(x0, t, eps0, 3, 0.2, torch.Generator().manual_seed(1), **hand)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert torch.equal(t_got, t_want)


def test_one_adversarial_step_of_the_released_code_steps_omega_over_b(batch):
    x0, t, eps0 = batch
    one, _ = select_adversarial_noise(LinearEps(), x0, t, eps0, S, steps=1, omega=0.6, reduction="mean")
    same, _ = select_adversarial_noise(LinearEps(), x0, t, eps0, S, steps=1, omega=0.2, reduction="sum")
    torch.testing.assert_close(one, same, rtol=1e-5, atol=1e-6)  # B = 3


def test_authors_code_loss_by_hand():
    shape = (3, 4, 4)
    clf = LinearClassifier(shape)
    loss = build_method("tan", {"variant": "authors_code", "adversarial_steps": 2}, S).loss_fn.with_classifier(clf)
    assert loss.params["omega"] == 0.02 and loss.gamma == 5.0 and loss.shift == "one_minus_abar"
    model = LinearEps()
    images = torch.rand(2, *shape, generator=torch.Generator().manual_seed(2)) * 2 - 1
    got = loss(model, images, generator=torch.Generator().manual_seed(3))["loss"]

    gen = torch.Generator().manual_seed(3)
    t = torch.randint(0, 1000, (2,), generator=gen)
    eps = torch.randn(images.shape, generator=gen)
    eps, t = hand_ascent(images, t, eps, 2, 0.02, gen, mean=True, first_only=True, redraw=True)
    x_t = S.q_sample(images, t, eps)
    z = (x_t * clf.w.detach()).flatten(1).sum(1)
    grad = (1 - torch.sigmoid(z)).view(-1, 1, 1, 1) * clf.w.detach()
    target = eps - 5.0 * (1 - ABAR[t]).float().view(-1, 1, 1, 1) * grad  # e - c (1 - a_t) grad, c = 5
    pred = A * x_t + C * t.view(-1, 1, 1, 1).float() / 1000
    torch.testing.assert_close(got.detach(), (pred - target).pow(2).flatten(1).mean(1).mean(), rtol=1e-5, atol=1e-7)


def test_shift_options_by_hand():
    shape = (3, 4, 4)
    clf = LinearClassifier(shape)
    g = torch.Generator().manual_seed(5)
    x_t, eps, t = torch.randn(2, *shape, generator=g), torch.randn(2, *shape, generator=g), torch.tensor([3, 700])
    grad = (1 - torch.sigmoid((x_t * clf.w.detach()).flatten(1).sum(1))).view(-1, 1, 1, 1) * clf.w.detach()
    paper = TANLoss(S, gamma=5.0).with_classifier(clf).target(x_t, t, eps)
    code = TANLoss(S, gamma=10.0, shift="one_minus_abar").with_classifier(clf).target(x_t, t, eps)
    torch.testing.assert_close(paper, eps - 5.0 * sigma_hat(S, t).view(-1, 1, 1, 1) ** 2 * grad)
    torch.testing.assert_close(code, eps - 10.0 * (1 - ABAR[t]).float().view(-1, 1, 1, 1) * grad)


def test_variants_and_their_validation():
    assert set(TAN_VARIANTS) == {"paper", "authors_code"}
    paper = build_method("tan", {}, S).loss_fn
    assert (paper.shift, paper.adversarial_reduction, paper.adversarial_model_grad, paper.adversarial_timesteps) == \
        ("sigma_hat", "sum", "every_step", "fixed")
    mixed = build_method("tan", {"variant": "authors_code", "shift": "sigma_hat", "omega": 0.2}, S).loss_fn
    assert mixed.shift == "sigma_hat" and mixed.omega == 0.2 and mixed.adversarial_timesteps == "redraw"
    for bad, name in (({"variant": "released"}, "variant"), ({"shift": "beta"}, "shift"),
                      ({"adversarial_reduction": "max"}, "adversarial_reduction")):
        with pytest.raises(ValueError, match=name):
            build_method("tan", bad, S)
