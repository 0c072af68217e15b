"""core/training/loop.py: learning, determinism, resume, NaN guard, atomic checkpoints."""

import pydantic
import pytest
import torch

from diffusion_transfer.core.methods import DenoisingLoss, SDFTLoss
from diffusion_transfer.core.models import build_unet
from diffusion_transfer.core.schedule import make_schedule
from diffusion_transfer.core.training import NonFiniteLossError, TrainConfig, checkpoint_paths, train

TINY = dict(
    sample_size=8,
    block_out_channels=(8, 16),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D"),
    norm_num_groups=4,
)
SCHED = make_schedule()


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py


def unet(seed=0):
    torch.manual_seed(seed)
    return build_unet(TINY)


def data(n=12):
    g = torch.Generator().manual_seed(0)
    base = torch.linspace(-0.8, 0.8, 8).view(1, 1, 1, 8).expand(n, 3, 8, 8)
    return (base + 0.1 * torch.randn(n, 3, 8, 8, generator=g)).clamp(-1, 1).contiguous()


def cfg(**kw):
    base = dict(steps=12, batch_size=4, lr=1e-3, checkpoint_every=4, log_every=1, seed=3, ema_decay=0.9)
    base.update(kw)
    return TrainConfig(**base)


def strip(history):
    return [{k: v for k, v in r.items() if k != "sec_per_step"} for r in history]


def test_loss_decreases():
    res = train(unet(), DenoisingLoss(SCHED), data(), cfg(steps=80, log_every=20, lr=3e-3), progress=False)
    losses = [r["loss"] for r in res.history]
    assert [r["step"] for r in res.history] == [20, 40, 60, 80]
    assert losses[-1] < 0.7 * losses[0], losses
    assert res.ema_model is not None and res.final_model is res.ema_model
    assert res.resumed_from_step is None


def test_same_seed_same_result_and_ema_disabled():
    a = train(unet(), DenoisingLoss(SCHED), data(), cfg(steps=5, ema_decay=0.0), progress=False)
    b = train(unet(), DenoisingLoss(SCHED), data(), cfg(steps=5, ema_decay=0.0), progress=False)
    assert a.ema_model is None and a.final_model is a.model
    for (k, v), w in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        torch.testing.assert_close(v, w, rtol=0, atol=0, msg=k)
    assert strip(a.history) == strip(b.history)


class Stop(Exception):
    pass


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path):
    full = train(unet(), DenoisingLoss(SCHED), data(), cfg(), checkpoint_dir=tmp_path / "full", progress=False)

    def interrupt(record):
        if record["step"] == 10:
            raise Stop

    ckpt = tmp_path / "interrupted"
    with pytest.raises(Stop):
        train(unet(), DenoisingLoss(SCHED), data(), cfg(), checkpoint_dir=ckpt, progress=False, on_log=interrupt)
    assert [p.name for p in checkpoint_paths(ckpt)] == ["step_0000004.pt", "step_0000008.pt"]

    resumed = train(unet(seed=99), DenoisingLoss(SCHED), data(), cfg(), checkpoint_dir=ckpt, progress=False)
    assert resumed.resumed_from_step == 8
    for (k, v), w in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(v, w, rtol=1e-6, atol=1e-7, msg=k)
    for (k, v), w in zip(full.ema_model.state_dict().items(), resumed.ema_model.state_dict().values()):
        torch.testing.assert_close(v, w, rtol=1e-6, atol=1e-7, msg=k)
    assert [r["step"] for r in resumed.history] == list(range(1, 13))
    for r, s in zip(strip(full.history), strip(resumed.history)):
        assert r.keys() == s.keys()
        for key in r:
            assert r[key] == pytest.approx(s[key], rel=1e-5), key
    # the end checkpoint makes a rerun a no-op
    again = train(unet(seed=5), DenoisingLoss(SCHED), data(), cfg(), checkpoint_dir=ckpt, progress=False)
    assert again.resumed_from_step == 12
    torch.testing.assert_close(again.model.conv_out.weight, full.model.conv_out.weight)


def test_nan_loss_raises_and_keeps_last_good_checkpoint(tmp_path):
    inner = DenoisingLoss(SCHED)
    calls = {"n": 0}

    def flaky(model, images, teacher=None, generator=None):
        calls["n"] += 1
        terms = inner(model, images, generator=generator)
        if calls["n"] == 3:
            terms = {"loss": terms["loss"] * float("nan"), "diffusion": terms["diffusion"]}
        return terms

    model = unet()
    with pytest.raises(NonFiniteLossError) as info:
        train(model, flaky, data(), cfg(checkpoint_every=2), checkpoint_dir=tmp_path, progress=False)
    msg = str(info.value)
    assert "step 3" in msg and "loss" in msg and "step_0000002.pt" in msg and "kept" in msg
    assert info.value.step == 3
    assert [p.name for p in checkpoint_paths(tmp_path)] == ["step_0000002.pt"]
    payload = torch.load(checkpoint_paths(tmp_path)[0], weights_only=True)
    assert payload["step"] == 2
    assert all(torch.isfinite(v).all() for v in payload["model"].values())
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the bad update was not applied


def test_checkpoints_are_atomic_and_pruned(tmp_path, monkeypatch):
    train(unet(), DenoisingLoss(SCHED), data(), cfg(steps=8, checkpoint_every=2), checkpoint_dir=tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_0000006.pt", "step_0000008.pt"]

    # a crash while writing leaves no partial checkpoint and the previous one intact
    real_save = torch.save

    def crashing_save(obj, f, *a, **kw):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(OSError, match="disk full"):
        train(unet(), DenoisingLoss(SCHED), data(), cfg(steps=10, checkpoint_every=2), checkpoint_dir=tmp_path, progress=False)
    monkeypatch.setattr(torch, "save", real_save)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_0000006.pt", "step_0000008.pt"]

    # a corrupt latest checkpoint is skipped in favour of the previous one
    (tmp_path / "step_0000008.pt").write_bytes(b"garbage")
    res = train(unet(), DenoisingLoss(SCHED), data(), cfg(steps=10, checkpoint_every=2), checkpoint_dir=tmp_path, progress=False)
    assert res.resumed_from_step == 6


def test_sdft_training_freezes_teacher():
    teacher = unet(seed=1)
    teacher.train()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    res = train(unet(seed=1), SDFTLoss(SCHED), data(), cfg(steps=3), teacher=teacher, progress=False)
    assert not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    for k, v in teacher.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert {"loss", "diffusion", "distill", "aux"} <= set(res.history[-1])


def test_trainable_parameters_subset_only_changes_those():
    model = unet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = train(model, DenoisingLoss(SCHED), data(), cfg(steps=3), trainable_parameters=model.conv_out.parameters(), progress=False)
    after = res.model.state_dict()
    for k, v in before.items():
        changed = not torch.equal(v, after[k])
        assert changed == k.startswith("conv_out"), k


def test_invalid_inputs_rejected_before_compute():
    with pytest.raises(pydantic.ValidationError, match="not_a_field"):
        TrainConfig(steps=1, not_a_field=2)
    with pytest.raises(pydantic.ValidationError, match="steps"):
        TrainConfig(steps=0)
    with pytest.raises(pydantic.ValidationError, match="mixed_precision"):
        TrainConfig(steps=1, mixed_precision="fp8")
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        train(unet(), DenoisingLoss(SCHED), data() * 255, cfg(steps=1), progress=False)
    with pytest.raises(ValueError, match="shape"):
        train(unet(), DenoisingLoss(SCHED), torch.zeros(4, 8, 8), cfg(steps=1), progress=False)
    with pytest.raises(ValueError, match="empty"):
        train(unet(), DenoisingLoss(SCHED), torch.zeros(0, 3, 8, 8), cfg(steps=1), progress=False)
