"""A checkpoint that cannot be used (corrupt, or tensors of another shape)
is skipped: training resumes from the newest usable one and the log says
why, naming the tensor and the training setting that changed."""

import logging

import pytest
import torch

from diffusion_transfer.core.methods import DenoisingLoss
from diffusion_transfer.core.models import build_unet
from diffusion_transfer.core.schedule import make_schedule
from diffusion_transfer.core.training import TrainConfig, checkpoint_paths, train
from diffusion_transfer.core.training.checkpoint import changed_settings, load_usable, state_mismatches

TINY = dict(sample_size=8, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
            down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py


def unet(**overrides):
    torch.manual_seed(0)
    return build_unet({**TINY, **overrides})


def data():
    g = torch.Generator().manual_seed(0)
    return (0.3 * torch.randn(8, 3, 8, 8, generator=g)).clamp(-1, 1)


def cfg(**kw):
    return TrainConfig(**{"steps": 4, "batch_size": 4, "lr": 1e-3, "checkpoint_every": 2, "log_every": 1, "seed": 3,
                          "ema_decay": 0.9, "keep_checkpoints": 5, **kw})


def _wider_checkpoint_at(path, step):
    """A checkpoint written by a run of a wider model (block_out_channels 16, 32), renamed to ``step``."""
    src = path.parent / "wider"
    train(unet(block_out_channels=(16, 32)), DenoisingLoss(make_schedule()), data(), cfg(steps=2, lr=5e-4),
          checkpoint_dir=src, progress=False)
    payload = torch.load(checkpoint_paths(src)[-1], weights_only=True)
    payload["step"] = step
    torch.save(payload, path)


def test_state_mismatches_name_the_tensor_and_both_shapes():
    saved = {"a": torch.zeros(2, 3), "b": torch.zeros(4), "old": torch.zeros(1)}
    expected = {"a": torch.zeros(2, 3), "b": torch.zeros(5), "new": torch.zeros(1)}
    problems = state_mismatches(saved, expected, "model")
    assert problems == ["its model lacks 1 tensor(s) of this one, e.g. new",
                        "its model has 1 tensor(s) this one lacks, e.g. old",
                        "1 model tensor shape(s) differ: b (4,) vs (5,) now"]
    assert state_mismatches(expected, expected, "model") == []
    assert changed_settings({"lr": 0.1, "steps": 4}, {"lr": 0.2, "steps": 4}) == "lr was 0.1, now 0.2"


def test_a_mismatched_and_a_corrupt_checkpoint_fall_back_to_the_newest_usable(tmp_path, caplog):
    ckpt = tmp_path / "run"
    first = train(unet(), DenoisingLoss(make_schedule()), data(), cfg(), checkpoint_dir=ckpt, progress=False)
    assert [p.name for p in checkpoint_paths(ckpt)] == ["step_0000002.pt", "step_0000004.pt"]
    _wider_checkpoint_at(ckpt / "step_0000006.pt", 6)
    (ckpt / "step_0000008.pt").write_bytes(b"not a checkpoint")  # corrupt, newest

    found = load_usable(ckpt, unet(), config=cfg())
    assert found is not None and found[1].name == "step_0000004.pt"

    with caplog.at_level(logging.WARNING):
        again = train(unet(), DenoisingLoss(make_schedule()), data(), cfg(steps=6), checkpoint_dir=ckpt, progress=False)
    assert again.resumed_from_step == 4  # not 8 (corrupt), not 6 (another model), not 0
    text = caplog.text
    assert "skipping unreadable checkpoint" in text and "step_0000008.pt" in text
    assert "skipping checkpoint" in text and "step_0000006.pt" in text and "does not match this model" in text
    assert "conv_in.weight (16, 3, 3, 3) vs (8, 3, 3, 3) now" in text
    assert "lr was 0.0005, now 0.001" in text  # the training setting that changed is named
    assert first.history[-1]["step"] == 4 and again.history[-1]["step"] == 6


def test_no_usable_checkpoint_starts_afresh(tmp_path, caplog):
    ckpt = tmp_path / "run"
    ckpt.mkdir()
    _wider_checkpoint_at(ckpt / "step_0000002.pt", 2)
    with caplog.at_level(logging.WARNING):
        res = train(unet(), DenoisingLoss(make_schedule()), data(), cfg(steps=2), checkpoint_dir=ckpt, progress=False)
    assert res.resumed_from_step is None and res.history[-1]["step"] == 2
    assert "does not match this model" in caplog.text
