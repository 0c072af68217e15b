"""core/training/loop.py with shards: two CPU processes (gloo, started by
train() itself) equal one process with two accumulation micro-steps; resume;
errors."""

import pydantic
import pytest
import torch

from diffusion_transfer.core.methods import DenoisingLoss
from diffusion_transfer.core.models import build_unet
from diffusion_transfer.core.schedule import make_schedule
from diffusion_transfer.core.training import NonFiniteLossError, TrainConfig, checkpoint_paths, train
from tests.core.test_training import data  # the same 8x8 gradient images
from tests.core.test_unet import TINY as TINY_UNET

TINY = {**TINY_UNET, "dropout": 0.1}  # dropout: the global torch RNG follows the shard too
SCHED = make_schedule()

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py


def unet(seed=0):
    torch.manual_seed(seed)
    return build_unet(TINY)


def cfg(**kw):
    base = dict(steps=3, batch_size=3, lr=1e-3, checkpoint_every=2, log_every=1, seed=3, ema_decay=0.9)
    base.update(kw)
    return TrainConfig(**base)


def assert_same_run(a, b, atol=1e-6):
    for name in ("model", "ema_model"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            torch.testing.assert_close(sa[k], sb[k], rtol=1e-5, atol=atol, msg=f"{name}.{k}")
    assert [r["step"] for r in a.history] == [r["step"] for r in b.history]
    for r, s in zip(a.history, b.history):
        for key in ("loss", "diffusion", "grad_norm"):
            assert r[key] == pytest.approx(s[key], rel=1e-5, abs=1e-7), (r["step"], key)


class Stop(Exception):
    pass


def stop_after_step_2(record):  # module level: on_log runs in the rank-0 worker
    if record["step"] == 2:
        raise Stop


class NaNAtStep2(DenoisingLoss):
    """A picklable loss whose second step is non-finite (on every shard)."""

    def __call__(self, model, images, teacher=None, generator=None):
        self.calls = getattr(self, "calls", 0) + 1
        terms = super().__call__(model, images, generator=generator)
        if self.calls == 2:
            terms["loss"] = terms["loss"] * float("nan")
        return terms


def test_two_processes_equal_one_process_accumulating_and_resume(tmp_path):
    # one process, two micro-steps: shards 0 and 1
    accum = train(unet(), DenoisingLoss(SCHED), data(), cfg(gradient_accumulation_steps=2),
                  checkpoint_dir=tmp_path / "accum", progress=False)
    # one shard is not the same run (the comparisons below would be vacuous otherwise)
    single = train(unet(), DenoisingLoss(SCHED), data(), cfg(), progress=False)
    assert not torch.allclose(single.model.conv_out.weight, accum.model.conv_out.weight, atol=1e-5)

    # two processes started by train(), one micro-step each: shards 0 and 1. Interrupted after
    # the step-2 checkpoint (by on_log in the rank-0 worker: the exception reaches the caller),
    # then resumed: the same run as the uninterrupted one-process run (and so as an
    # uninterrupted two-process run, which would cost another start of two processes)
    ckpt = tmp_path / "ddp"
    with pytest.raises(Stop) as info:
        train(unet(), DenoisingLoss(SCHED), data(), cfg(num_processes=2), checkpoint_dir=ckpt, progress=False,
              on_log=stop_after_step_2)
    assert "training process 0 of 2" in "".join(getattr(info.value, "__notes__", []))
    assert [p.name for p in checkpoint_paths(ckpt)] == ["step_0000002.pt"]
    step2 = checkpoint_paths(ckpt)[0].read_bytes()
    payload = torch.load(checkpoint_paths(ckpt)[0], weights_only=True)
    assert [s["k"] for s in payload["rng"]["shards"]] == [0, 1]
    assert payload["rng"]["layout"] == {"num_processes": 2, "gradient_accumulation_steps": 1}

    model = unet(seed=9)
    ddp = train(model, DenoisingLoss(SCHED), data(), cfg(num_processes=2), checkpoint_dir=ckpt, progress=False)
    assert ddp.model is model  # the caller's model, with the weights of the final checkpoint
    assert ddp.checkpoint == ckpt / "step_0000003.pt" and ddp.resumed_from_step == 2
    assert not ddp.model.training and ddp.ema_model is not None
    assert not any(p.name.startswith(".launch-") for p in ckpt.iterdir())  # scratch folder removed
    assert_same_run(ddp, accum)

    # the same two shards split the other way: the two-process checkpoint resumes in one process
    ckpt2 = tmp_path / "switch"
    ckpt2.mkdir()
    (ckpt2 / "step_0000002.pt").write_bytes(step2)
    switched = train(unet(seed=9), DenoisingLoss(SCHED), data(), cfg(gradient_accumulation_steps=2),
                     checkpoint_dir=ckpt2, progress=False)
    assert switched.resumed_from_step == 2
    assert_same_run(switched, accum, atol=1e-7)


def test_resume_with_accumulation_matches_uninterrupted_run(tmp_path):
    c = cfg(steps=4, gradient_accumulation_steps=2)
    full = train(unet(), DenoisingLoss(SCHED), data(), c, progress=False)
    ckpt = tmp_path / "interrupted"
    with pytest.raises(Stop):
        train(unet(), DenoisingLoss(SCHED), data(), c, checkpoint_dir=ckpt, progress=False, on_log=stop_after_step_2)
    resumed = train(unet(seed=9), DenoisingLoss(SCHED), data(), c, checkpoint_dir=ckpt, progress=False)
    assert resumed.resumed_from_step == 2
    assert_same_run(resumed, full, atol=1e-7)


def test_more_shards_on_resume_are_reseeded_with_a_warning(tmp_path, caplog):
    train(unet(), DenoisingLoss(SCHED), data(), cfg(steps=2, gradient_accumulation_steps=2), checkpoint_dir=tmp_path,
          progress=False)
    with caplog.at_level("WARNING"):
        res = train(unet(), DenoisingLoss(SCHED), data(), cfg(steps=3, gradient_accumulation_steps=3),
                    checkpoint_dir=tmp_path, progress=False)
    assert res.resumed_from_step == 2 and [r["step"] for r in res.history] == [1, 2, 3]
    assert "shard(s) [2]" in caplog.text


def test_non_finite_loss_in_workers_raises_in_caller(tmp_path):
    with pytest.raises(NonFiniteLossError) as info:
        train(unet(), NaNAtStep2(SCHED), data(), cfg(num_processes=2, checkpoint_every=1), checkpoint_dir=tmp_path,
              progress=False)
    assert info.value.step == 2 and info.value.checkpoint == tmp_path / "step_0000001.pt"
    assert [p.name for p in checkpoint_paths(tmp_path)] == ["step_0000001.pt"]


def test_clear_errors():
    with pytest.raises(pydantic.ValidationError, match="gradient_accumulation_steps"):
        TrainConfig(steps=1, gradient_accumulation_steps=0)
    with pytest.raises(pydantic.ValidationError, match="num_processes"):
        TrainConfig(steps=1, num_processes=0)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        train(unet(), DenoisingLoss(SCHED), data(), cfg(num_processes=2), progress=False)


def test_unpicklable_loss_named_before_starting_workers(tmp_path):
    inner = DenoisingLoss(SCHED)
    with pytest.raises(TypeError, match="loss_fn to be picklable"):
        train(unet(), lambda m, x, teacher=None, generator=None: inner(m, x, generator=generator), data(),
              cfg(num_processes=2), checkpoint_dir=tmp_path, progress=False)
