"""EMA decay warm-up (core/training/ema.py) and lr warm-up (core/training/lr_schedule.py):
the decay sequences of diffusers' EMAModel, the EMA of a real train() run by hand,
resume, the starting weights' share of the EMA, and the report line."""

import logging
import math
from pathlib import Path

import pytest
import torch
import yaml
from diffusers.optimization import get_constant_schedule_with_warmup
from diffusers.training_utils import EMAModel

from diffusion_transfer.core.training import TrainConfig, checkpoint_paths, train
from diffusion_transfer.core.training.ema import ema_decay_at, ema_start_share, ema_update_
from diffusion_transfer.core.training.lr_schedule import lr_at

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py

ROOT = Path(__file__).resolve().parents[2]
LARGE = [100, 599, 600, 1000, 5000, 60000, 89990, 89991, 89992, 100000, 10**6]


def ema_model(decay, warmup, inv_gamma=1.0, power=2 / 3):
    return EMAModel([torch.nn.Parameter(torch.zeros(2))], decay=decay, use_ema_warmup=warmup == "power",
                    inv_gamma=inv_gamma, power=power)


# --- decay sequences ---------------------------------------------------------------------


@pytest.mark.parametrize("warmup,inv_gamma,power", [("diffusers", 1.0, 2 / 3), ("power", 1.0, 2 / 3),
                                                    ("power", 3.0, 0.75)])
@pytest.mark.parametrize("decay", [0.9, 0.995, 0.9999])
def test_decay_sequence_equals_diffusers_ema_model(decay, warmup, inv_gamma, power):
    ref = ema_model(decay, warmup, inv_gamma, power)
    for step in [*range(0, 51), *LARGE]:
        assert ema_decay_at(step, decay, warmup, inv_gamma, power) == ref.get_decay(step), step
    assert ema_decay_at(1, decay, warmup) == 0.0  # the first update copies the weights
    assert ema_decay_at(2, decay, "diffusers") == pytest.approx(min(decay, 2 / 11))


@pytest.mark.parametrize("warmup", ["diffusers", "power"])
def test_ema_update_equals_ema_model_step(warmup):
    """The EMA of a sequence of weights: ours and EMAModel.step (which counts
    optimization_step from 1 and applies get_decay to it) agree."""
    g = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5, generator=g))
    ref = EMAModel([w], decay=0.9, use_ema_warmup=warmup == "power", foreach=False)
    ours = [w.detach().clone()]
    for step in range(1, 41):
        with torch.no_grad():
            w.add_(torch.randn(5, generator=g))
        ref.step([w])
        ema_update_(ours, [w.detach()], ema_decay_at(step, 0.9, warmup))
        torch.testing.assert_close(ours[0], ref.shadow_params[0], rtol=1e-6, atol=1e-6, msg=str(step))
        assert ref.cur_decay_value == ema_decay_at(step, 0.9, warmup)


def test_none_is_the_constant_decay_of_before():
    assert [ema_decay_at(s, 0.999, "none") for s in (0, 1, 2, 50, 10**6)] == [0.999] * 5


@pytest.mark.parametrize("warmup", ["diffusers", "power", "none"])
@pytest.mark.parametrize("decay,steps", [(0.9, 200), (0.995, 600), (0.9999, 5000)])
def test_start_share_is_the_product_of_the_decays(warmup, decay, steps):
    decays = [ema_decay_at(s, decay, warmup) for s in range(1, steps + 1)]
    assert ema_start_share(steps, decay, warmup) == pytest.approx(math.prod(decays), rel=1e-9, abs=1e-300)
    assert ema_start_share(steps, decay, warmup, first=2) == pytest.approx(math.prod(decays[1:]), rel=1e-9,
                                                                           abs=1e-300)


def test_no_run_evaluates_a_model_dominated_by_its_starting_weights():
    """conf/paper's 10-shot runs: 5,000 steps at ema_decay 0.9999."""
    paper = yaml.safe_load((ROOT / "conf/paper/parameters.yml").read_text())
    base = yaml.safe_load((ROOT / "conf/base/parameters_finetune.yml").read_text())
    decay, steps = paper["train"]["ema_decay"], paper["datasets"]["sunglasses"]["train"]["steps"]
    assert (decay, steps) == (0.9999, 5000)
    assert base["train"]["ema_warmup"] == TrainConfig(steps=1).ema_warmup == "diffusers"

    # the problem: a constant decay leaves 0.9999 ** 5000 = 61% of the starting weights
    assert ema_start_share(steps, decay, "none") == pytest.approx(0.6065, abs=1e-4)
    for warmup in ("diffusers", "power"):
        assert ema_start_share(steps, decay, warmup) < 0.01
        # even the weights after the first update keep a negligible share
        assert ema_start_share(steps, decay, warmup, first=2) < 0.01
    # diffusers: prod_{s=2}^{T} s / (s + 9) = 10! T! / (T + 9)!
    expected = math.exp(math.lgamma(11) + math.lgamma(steps + 1) - math.lgamma(steps + 10))
    assert ema_start_share(steps, decay, "diffusers", first=2) == pytest.approx(expected, rel=1e-9)


# --- a real train() run, by hand ---------------------------------------------------------------


class Vec(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))


def pull_to_target(model, batch, teacher=None, generator=None):  # module level: picklable
    loss = ((model.w - torch.tensor([3.0, 1.0, -1.0])) ** 2).sum() + 0.0 * batch.mean()
    return {"loss": loss}


IMAGES = torch.zeros(4, 3, 2, 2)


def tiny_cfg(**kw):
    base = dict(steps=6, batch_size=2, lr=0.7, grad_clip=None, hflip=False, log_every=1, seed=0, ema_decay=0.9,
                checkpoint_every=2)
    return TrainConfig(**{**base, **kw})


def run_tiny(config, checkpoint_dir=None, on_log=None):
    model = Vec()
    seen = [model.w.detach().clone()]  # the starting weights, then the weights after each step

    def capture(record):
        seen.append(model.w.detach().clone())
        if on_log is not None:
            on_log(record)

    res = train(model, pull_to_target, IMAGES, config, checkpoint_dir=checkpoint_dir, progress=False,
                on_log=capture)
    return res, seen


@pytest.mark.parametrize("warmup", ["diffusers", "power", "none"])
def test_ema_of_a_train_run_is_the_hand_computed_weighted_sum(warmup):
    config = tiny_cfg(ema_warmup=warmup)
    res, w = run_tiny(config)
    assert len(w) == config.steps + 1
    assert not torch.allclose(w[0], w[-1], atol=1.0)  # huge lr: the weights move far from the start
    d = [None] + [ema_decay_at(k, config.ema_decay, warmup) for k in range(1, config.steps + 1)]
    # the recurrence
    e = w[0].clone()
    for k in range(1, config.steps + 1):
        e = d[k] * e + (1 - d[k]) * w[k]
    torch.testing.assert_close(res.ema_model.w, e, rtol=1e-6, atol=1e-6)
    # the weighted sum: share of w_k = (1 - d_k) prod_{r > k} d_r, of w_0 = prod_r d_r
    coef = [math.prod(d[1:])] + [(1 - d[k]) * math.prod(d[k + 1:]) for k in range(1, config.steps + 1)]
    assert sum(coef) == pytest.approx(1.0)
    torch.testing.assert_close(res.ema_model.w, sum(c * x for c, x in zip(coef, w)), rtol=1e-6, atol=1e-6)
    share = res.schedule["ema"]["start_share"]
    assert share == pytest.approx(coef[0])
    if warmup == "none":
        assert share == pytest.approx(0.9 ** 6)
    else:
        assert share == 0.0  # the first update copies the weights (EMAModel)
        assert res.schedule["ema"]["first_update_share"] == pytest.approx(coef[1])
    assert res.schedule["ema"]["decay_at_last_step"] == d[-1]
    assert res.schedule["ema"]["warmup"] == warmup and res.schedule["ema"]["step"] == config.steps


def test_ema_off_has_no_ema_schedule():
    res, _ = run_tiny(tiny_cfg(ema_decay=0.0, steps=2))
    assert res.ema_model is None and res.schedule["ema"] is None


# --- lr warm-up ---------------------------------------------------------------------------------


def test_lr_warmup_rises_linearly_as_diffusers_constant_with_warmup():
    config = tiny_cfg(steps=8, lr_warmup_steps=5)
    res, w = run_tiny(config)
    lrs = [r["lr"] for r in res.history]
    assert [r["step"] for r in res.history] == list(range(1, 9))
    # diffusers: the lr of each optimiser step, the scheduler stepped after it
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    sched = get_constant_schedule_with_warmup(opt, num_warmup_steps=5)
    ref = []
    for _ in range(8):
        ref.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx(ref, rel=1e-12, abs=1e-15)
    assert lrs[:6] == pytest.approx([config.lr * k / 5 for k in range(6)])  # linear from 0
    assert len({round(b - a, 12) for a, b in zip(lrs[:6], lrs[1:6])}) == 1
    assert lrs[5:] == [config.lr] * 3
    torch.testing.assert_close(w[1], w[0], rtol=0, atol=0)  # step 1 runs at lr 0
    assert res.schedule["lr"] == {"lr": config.lr, "warmup_steps": 5, "lr_at_last_step": config.lr}
    assert [lr_at(k, 1.0, 0) for k in (1, 2, 100)] == [1.0] * 3


class Stop(Exception):
    pass


def stop_at_3(record):
    if record["step"] == 3:
        raise Stop


@pytest.mark.parametrize("warmup", ["diffusers", "power"])
def test_resume_continues_the_decay_and_lr_sequences(tmp_path, warmup):
    config = tiny_cfg(ema_warmup=warmup, lr_warmup_steps=4, ema_decay=0.8)
    full, _ = run_tiny(config, tmp_path / "full")
    with pytest.raises(Stop):
        run_tiny(config, tmp_path / "cut", on_log=stop_at_3)
    assert [p.name for p in checkpoint_paths(tmp_path / "cut")][-1] == "step_0000002.pt"
    resumed, _ = run_tiny(config, tmp_path / "cut")
    assert resumed.resumed_from_step == 2
    torch.testing.assert_close(resumed.model.w, full.model.w, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(resumed.ema_model.w, full.ema_model.w, rtol=1e-6, atol=1e-6)
    assert [r["lr"] for r in resumed.history] == pytest.approx([r["lr"] for r in full.history])
    assert resumed.schedule == full.schedule


def test_resume_warns_when_the_ema_or_lr_warmup_changed(tmp_path, caplog):
    ckpt = tmp_path / "ckpt"
    run_tiny(tiny_cfg(steps=2), ckpt)
    # a checkpoint written before the settings existed: its EMA had no warm-up
    path = checkpoint_paths(ckpt)[-1]
    payload = torch.load(path, weights_only=True)
    for key in ("ema_warmup", "ema_inv_gamma", "ema_power", "lr_warmup_steps"):
        del payload["config"][key]
    torch.save(payload, path)
    with caplog.at_level(logging.WARNING, logger="diffusion_transfer.core.training.loop"):
        run_tiny(tiny_cfg(steps=4, lr_warmup_steps=3), ckpt)
    text = caplog.text
    assert "ema_warmup was 'none', now 'diffusers'" in text and "lr_warmup_steps was 0, now 3" in text
    assert "ema_power" not in text and "ema_inv_gamma" not in text


def test_settings_are_validated():
    import pydantic

    for bad in (dict(ema_warmup="cosine"), dict(ema_inv_gamma=0.0), dict(ema_power=-1.0), dict(lr_warmup_steps=-1)):
        with pytest.raises(pydantic.ValidationError, match=next(iter(bad))):
            TrainConfig(steps=1, **bad)


# --- the report line ----------------------------------------------------------------------------


def test_report_line():
    from diffusion_transfer.pipelines.report.nodes import _schedule_lines
    from diffusion_transfer.core.training.ema import schedule_summary

    cfg = TrainConfig(steps=600, ema_decay=0.995)
    (line,) = _schedule_lines({"schedule": schedule_summary(cfg, 600)})
    assert line.startswith("EMA: decay 0.995 with diffusers warm-up (min(decay, (1+s)/(10+s))")
    assert "at step 600 the decay is 0.9852" in line  # 600 / 609
    assert "starting weights' share of the EMA: 0 (step 1's weights: 3.3e-19)" in line
    assert line.endswith("LR warm-up: none.")
    (line,) = _schedule_lines({"schedule": schedule_summary(TrainConfig(steps=5000, ema_decay=0.9999,
                                                                        ema_warmup="none", lr_warmup_steps=500), 5000)})
    assert "no warm-up (constant); at step 5000 the decay is 0.9999; starting weights' share of the EMA: 0.607" in line
    assert "LR warm-up: linear from 0 over 500 steps, then 0.0001." in line
    assert _schedule_lines({}) == []
    (line,) = _schedule_lines({"schedule": schedule_summary(TrainConfig(steps=5, ema_decay=0.0), 5)})
    assert line.startswith("EMA: off")
