"""A checkpoint belongs to its run (issue 32): with a run identity every
checkpoint records it, and resuming skips one that records another method,
another source model, other settings or no identity at all, saying which and
why, then falls back to the newest one of this run or starts fresh."""

import logging

import pytest
import torch

from diffusion_transfer.core.methods import DenoisingLoss
from diffusion_transfer.core.schedule import make_schedule
from diffusion_transfer.core.training import checkpoint_paths, train
from diffusion_transfer.core.training.checkpoint import identity_differences, identity_record, load_usable
from tests.core.test_checkpoint_fallback import cfg, data, unet

SDFT = {"method": "sdft", "source": "aaaa", "settings": {"train": {"lr": 0.001}, "schedule": "linear"}}

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py


def run(ckpt, identity, **kw):
    return train(unet(), DenoisingLoss(make_schedule()), data(), cfg(**kw), checkpoint_dir=ckpt, progress=False,
                 run_identity=identity)


def _foreign_checkpoint_at(path, step, identity):
    """A checkpoint of the same model written by another run (``identity``; None: before identities), as ``step``."""
    src = path.parent.parent / f"other-{path.stem}"
    run(src, identity, steps=2)
    payload = torch.load(checkpoint_paths(src)[-1], weights_only=True)
    payload["step"] = step
    if identity is None:
        payload.pop("run_identity", None)
    torch.save(payload, path)


def test_every_checkpoint_records_the_run_identity(tmp_path):
    run(tmp_path / "run", SDFT)
    for path in checkpoint_paths(tmp_path / "run"):
        assert torch.load(path, weights_only=True)["run_identity"] == SDFT


def test_another_methods_checkpoint_is_skipped_and_the_older_own_one_resumed(tmp_path, caplog):
    ckpt = tmp_path / "run"
    run(ckpt, SDFT)  # step 2 and step 4 of this run
    (ckpt / "step_0000004.pt").unlink()
    _foreign_checkpoint_at(ckpt / "step_0000006.pt", 6, {**SDFT, "method": "naive"})  # the newest: naive's

    with caplog.at_level(logging.INFO, logger="diffusion_transfer.core.training"):
        again = run(ckpt, SDFT)
    assert again.resumed_from_step == 2  # not 6: another method's weights are never resumed
    text = caplog.text
    assert "skipping checkpoint" in text and "step_0000006.pt" in text and "belongs to another run" in text
    assert "written by method 'naive', this run is 'sdft'" in text
    assert "resuming from step 2 of" in text and "step_0000002.pt" in text and "fell back past 1 newer" in text


def test_no_checkpoint_of_this_run_starts_fresh_and_says_why(tmp_path, caplog):
    ckpt = tmp_path / "run"
    ckpt.mkdir()
    _foreign_checkpoint_at(ckpt / "step_0000002.pt", 2, {**SDFT, "source": "bbbb"})
    _foreign_checkpoint_at(ckpt / "step_0000004.pt", 4, None)  # written before checkpoints recorded their run

    with caplog.at_level(logging.WARNING):
        fresh = run(ckpt, SDFT)
    assert fresh.resumed_from_step is None and fresh.history[0]["step"] == 1
    text = caplog.text
    assert "written from another source model" in text
    assert "records no run identity" in text
    assert "no checkpoint of this run" in text and "starting fresh" in text


def test_without_an_identity_any_matching_checkpoint_resumes_as_before(tmp_path):
    ckpt = tmp_path / "run"
    ckpt.mkdir()
    _foreign_checkpoint_at(ckpt / "step_0000002.pt", 2, {**SDFT, "method": "naive"})
    assert run(ckpt, None).resumed_from_step == 2
    assert load_usable(ckpt, unet(), config=cfg(), run_identity=SDFT) is None


def test_the_differences_name_method_source_and_settings():
    other = {"method": "naive", "source": "bbbb", "settings": {"train": {"lr": 0.002}, "schedule": "linear"}}
    assert identity_differences(other, SDFT) == [
        "written by method 'naive', this run is 'sdft'", "written from another source model",
        "settings differ: train.lr was 0.002, now 0.001"]
    assert identity_differences(SDFT, SDFT) == []
    assert identity_differences({**SDFT, "checkpoint_key": "ab"}, {**SDFT, "checkpoint_key": "cd"}) == [
        "checkpoint_key was 'ab', now 'cd'"]
    assert identity_record({"settings": {"betas": (0.9, 0.99)}}) == {"settings": {"betas": [0.9, 0.99]}}
    with pytest.raises(TypeError, match="JSON"):
        identity_record({"model": torch.zeros(1)})
