"""TAN (similarity-guided target, adversarial noise, shift adaptors), the noisy
domain classifier and intra-LPIPS."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from diffusion_transfer.core.methods import build_method
from diffusion_transfer.core.methods.tan import (
    ShiftAdaptors,
    TANLoss,
    adversarial_noise,
    prepare_tan,
    sigma_hat,
    standardise,
)
from diffusion_transfer.core.metrics.intra_lpips import intra_lpips, nearest_assignment
from diffusion_transfer.core.models import AdaptedUNet, build_unet, load_unet, predict_eps, save_unet
from diffusion_transfer.core.models.domain_classifier import (
    DomainClassifier,
    load_domain_classifier,
    save_domain_classifier,
)
from diffusion_transfer.core.schedule import make_schedule
from diffusion_transfer.core.training import train
from diffusion_transfer.core.training.domain_classifier import accuracy_by_timestep, domain_classifier_loss

pytestmark = pytest.mark.usefixtures("one_thread")
SCHED = make_schedule()
TINY = dict(sample_size=8, block_out_channels=(8, 16), layers_per_block=1,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=8, norm_num_groups=4)


def tiny_unet(seed=0):
    torch.manual_seed(seed)
    return build_unet(TINY).eval()


class LinearDomainClassifier(nn.Module):
    """logits = [0, w.x + c*t]: log p(target | x) has the closed-form gradient
    (1 - sigmoid(z)) w. Uses DomainClassifier's generic log_prob / grad_log_prob."""

    log_prob = DomainClassifier.log_prob
    grad_log_prob = DomainClassifier.grad_log_prob

    def __init__(self, shape, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(shape, generator=g) * 0.1)
        self.c = 0.001

    def z(self, x, t):
        return (x * self.w).flatten(1).sum(1) + self.c * t.float()

    def forward(self, x, t):
        z = self.z(x, t)
        return torch.stack([torch.zeros_like(z), z], dim=1)


# --- similarity-guided target ---------------------------------------------------


def test_sigma_hat_matches_the_closed_form():
    betas = np.linspace(1e-4, 0.02, 1000)
    abar = np.cumprod(1 - betas)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    t = torch.tensor([0, 1, 250, 999])
    want = (1 - abar_prev[t]) * np.sqrt((1 - betas[t]) / (1 - abar[t]))
    assert np.allclose(sigma_hat(SCHED, t).numpy(), want, rtol=1e-6)
    assert float(sigma_hat(SCHED, torch.tensor([0]))) == 0.0  # no guidance on clean images


def test_similarity_guided_target_equals_a_hand_computation():
    shape = (3, 8, 8)
    clf = LinearDomainClassifier(shape)
    loss = TANLoss(SCHED, gamma=5.0, adversarial=False).with_classifier(clf)
    g = torch.Generator().manual_seed(0)
    x_t, eps = torch.randn(4, *shape, generator=g), torch.randn(4, *shape, generator=g)
    t = torch.tensor([10, 200, 600, 990])
    got = loss.target(x_t, t, eps)

    z = clf.z(x_t, t).detach()
    grad = (1 - torch.sigmoid(z)).view(-1, 1, 1, 1) * clf.w.detach()  # d/dx log sigmoid(z)
    s = sigma_hat(SCHED, t).view(-1, 1, 1, 1)
    want = eps - s**2 * 5.0 * grad
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert clf.w.grad is None  # the guidance never trains the classifier

    # the whole loss without adversarial noise: mean-pixel MSE to that target
    model = tiny_unet()
    images = torch.rand(4, *shape, generator=g) * 2 - 1
    gen = torch.Generator().manual_seed(3)
    terms = loss(model, images, generator=gen)
    gen = torch.Generator().manual_seed(3)
    tt = torch.randint(0, 1000, (4,), generator=gen)
    e = torch.randn(images.shape, generator=gen)
    x = SCHED.q_sample(images, tt, e)
    zz = clf.z(x, tt).detach()
    target = e - (sigma_hat(SCHED, tt) ** 2 * 5.0).view(-1, 1, 1, 1) * (1 - torch.sigmoid(zz)).view(-1, 1, 1, 1) * clf.w.detach()
    with torch.no_grad():
        pred = predict_eps(model, x, tt, schedule=SCHED)
    torch.testing.assert_close(terms["loss"].detach(), (pred - target).pow(2).flatten(1).mean(1).mean(),
                               rtol=1e-5, atol=1e-7)


def test_tan_without_classifier_fails_clearly_and_gamma_zero_needs_none():
    with pytest.raises(ValueError, match="classifier"):
        TANLoss(SCHED).target(torch.zeros(1, 3, 8, 8), torch.tensor([5]), torch.zeros(1, 3, 8, 8))
    eps = torch.randn(1, 3, 8, 8)
    assert torch.equal(TANLoss(SCHED, gamma=0.0).target(torch.zeros(1, 3, 8, 8), torch.tensor([5]), eps), eps)


# --- adversarial noise ----------------------------------------------------------------


def test_adversarial_noise_is_standardised_raises_the_loss_and_leaves_the_model_alone():
    model = tiny_unet()
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(6, 3, 8, 8, generator=g) * 2 - 1
    t = torch.randint(50, 950, (6,), generator=g)
    # a standardised draw, so that the comparison below is within Norm's constraint set
    eps0 = standardise(torch.randn(x0.shape, generator=g))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    eps = adversarial_noise(model, x0, t, eps0, SCHED, steps=10, omega=0.02)

    flat = eps.flatten(1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(flat.std(1), torch.ones(6), atol=1e-5, rtol=0)

    def err(e):
        with torch.no_grad():
            return (e - predict_eps(model, SCHED.q_sample(x0, t, e), t, schedule=SCHED)).pow(2).flatten(1).sum(1)

    assert bool((err(eps) >= err(eps0)).all())  # the "worse-case" noise is at least as hard
    assert not torch.allclose(eps, eps0)
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    torch.testing.assert_close(standardise(eps), eps, atol=1e-5, rtol=0)  # already standardised


# --- shift adaptors ---------------------------------------------------------------------


def test_shift_adaptors_start_at_the_source_and_only_they_train():
    source = tiny_unet()
    model = prepare_tan(copy.deepcopy(source))
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 700])
    with torch.no_grad():
        assert torch.equal(model(x, t).sample, copy.deepcopy(source).requires_grad_(False)(x, t).sample)
    share = sum(p.numel() for p in model.adapter.parameters()) / sum(p.numel() for p in source.parameters())
    assert 0 < share < 0.1

    clf = LinearDomainClassifier((3, 8, 8))
    loss = build_method("tan", {"adversarial_steps": 2}, SCHED).with_classifier(clf).loss_fn
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    images = torch.rand(6, 3, 8, 8) * 2 - 1
    trained = train(model, loss, images, dict(steps=3, batch_size=3, lr=1e-2, ema_decay=0.0, seed=0),
                    progress=False).model
    for name, p in trained.named_parameters():
        moved = not torch.equal(before[name], p.detach())
        assert moved == name.startswith("adapter."), name
    assert clf.w.grad is None


def test_tan_model_saves_and_loads_as_base_plus_adaptors(tmp_path):
    model = prepare_tan(tiny_unet(), rank=4)
    with torch.no_grad():
        for p in model.adapter.parameters():
            p.add_(0.1)
    loaded = load_unet(save_unet(model, tmp_path / "m"))
    assert isinstance(loaded, AdaptedUNet) and loaded.kind == "tan" and loaded.adapter.config == {"rank": 4}
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 700])
    model.requires_grad_(False), loaded.requires_grad_(False)
    with torch.no_grad():
        assert torch.equal(model(x, t).sample, loaded(x, t).sample)


def test_registry_builds_tan_with_its_ablations_and_rejects_bad_values():
    spec = build_method("tan", {}, SCHED)
    assert spec.needs_classifier and spec.loss_fn.params == {
        "gamma": 5.0, "adversarial": True, "adversarial_steps": 10, "omega": 0.02, "target_class": 1,
        # the paper variant (Eq. 6 and 8), the default
        "shift": "sigma_hat", "adversarial_reduction": "sum", "adversarial_model_grad": "every_step",
        "adversarial_timesteps": "fixed"}
    assert isinstance(spec.build_student(tiny_unet()).adapter, ShiftAdaptors)
    assert build_method("tan", {"adversarial": False}, SCHED).loss_fn.adversarial is False
    assert build_method("tan", {"adversarial": False, "gamma": 0.0}, SCHED).loss_fn.gamma == 0.0
    for bad, name in (({"omega": -1.0}, "omega"), ({"adversarial_steps": -2}, "adversarial_steps"),
                      ({"rank": 0}, "rank")):
        with pytest.raises(ValueError, match=name):
            build_method("tan", bad, SCHED)


# --- domain classifier ---------------------------------------------------------------------


def test_domain_classifier_learns_a_separable_toy_problem_and_round_trips(tmp_path):
    g = torch.Generator().manual_seed(0)
    n = 64
    # domain 0: dark images with a bright left half; domain 1: the mirror image
    base = torch.rand(n, 3, 8, 8, generator=g) * 0.2 - 0.9
    src, trg = base.clone(), base.clone()
    src[..., :4] += 1.6
    trg[..., 4:] += 1.6
    images = torch.cat([src, trg]).clamp(-1, 1)
    labels = torch.cat([torch.zeros(n), torch.ones(n)])
    torch.manual_seed(0)
    clf = DomainClassifier(sample_size=8, block_out_channels=(8, 16), attention_blocks=(False, True),
                           norm_num_groups=4, pool_heads=2)
    result = train(clf, domain_classifier_loss(SCHED), images, dict(steps=150, batch_size=32, lr=3e-3,
                   ema_decay=0.0, hflip=False, seed=0), conditions=labels, progress=False)
    rows = accuracy_by_timestep(result.model, images, labels, SCHED, buckets=4, repeats=1)
    assert rows[0]["t_from"] == 0 and rows[-1]["t_to"] == 999
    assert rows[0]["accuracy"] >= 0.95  # nearly clean images: separable
    assert rows[0]["accuracy"] >= rows[-1]["accuracy"] - 0.05  # noise only makes it harder

    grad = result.model.grad_log_prob(images[:4], torch.tensor([10] * 4), 1)
    assert grad.shape == (4, 3, 8, 8) and torch.isfinite(grad).all() and grad.abs().sum() > 0
    feats = result.model.features(images[:2], torch.tensor([10, 10]))
    assert [f.shape[1] for f in feats] == [8, 16]

    loaded = load_domain_classifier(save_domain_classifier(result.model, tmp_path / "clf"))
    x, t = images[:5], torch.tensor([1, 100, 300, 600, 900])
    with torch.no_grad():
        assert torch.equal(loaded(x, t), result.model.eval()(x, t))
    with pytest.raises(FileNotFoundError, match="classifier_<dataset>"):
        load_domain_classifier(tmp_path / "missing")


# --- intra-LPIPS -----------------------------------------------------------------------------


def _mean_abs(a, b):
    return (a - b).abs().flatten(1).mean(1)


def test_intra_lpips_on_a_constructed_case():
    def const(v):
        return torch.full((1, 3, 4, 4), float(v))

    train_images = torch.cat([const(-0.5), const(0.5), const(0.95)])
    # cluster 0: -0.5, -0.4, -0.3 (pairs 0.1, 0.2, 0.1); cluster 1: 0.5, 0.2 (pair 0.3); cluster 2: one member
    samples = torch.cat([const(-0.5), const(0.5), const(-0.4), const(0.2), const(-0.3), const(0.95)])
    assert nearest_assignment(samples, train_images, _mean_abs).tolist() == [0, 1, 0, 1, 0, 2]
    out = intra_lpips(samples, train_images, _mean_abs)
    assert out["intra_lpips"] == pytest.approx(((0.1 + 0.2 + 0.1) / 3 + 0.3) / 2, abs=1e-6)
    assert [c["size"] for c in out["clusters"]] == [3, 2]
    assert out["empty_or_single"] == [{"train_index": 2, "size": 1}]
    # at most max_per_cluster members (the first ones) enter a cluster's pairs
    capped = intra_lpips(samples, train_images, _mean_abs, max_per_cluster=2)
    assert capped["intra_lpips"] == pytest.approx((0.1 + 0.3) / 2, abs=1e-6)
    with pytest.raises(ValueError, match="two members"):
        intra_lpips(torch.cat([const(-0.5), const(0.5)]), train_images[:2], _mean_abs)


def test_intra_lpips_runs_on_the_lpips_metric():
    from diffusion_transfer.core.metrics.lpips_metric import LPIPSMetric

    metric = LPIPSMetric(net="alex")
    g = torch.Generator().manual_seed(0)
    train_images = torch.rand(3, 3, 32, 32, generator=g) * 2 - 1
    samples = (train_images.repeat(4, 1, 1, 1) + 0.1 * torch.randn(12, 3, 32, 32, generator=g)).clamp(-1, 1)
    out = intra_lpips(samples, train_images, metric)
    assert [c["train_index"] for c in out["clusters"]] == [0, 1, 2]  # each sample finds its own source
    assert out["intra_lpips"] > 0
