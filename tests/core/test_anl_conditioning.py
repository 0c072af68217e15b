"""ANL's conditioning: a conditional model refuses a missing or misshapen
condition, the masked-sampling rectangle, text and image conditions from the
world CLIP reaching the samples, and the training loop handing each image its
condition."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffusion_transfer.core.methods.anl import (
    image_conditions,
    mask_rectangle,
    masked_images,
    prepare_anl,
    text_conditions,
)
from diffusion_transfer.core.sampling import model_eps_fn, sample_ddim
from diffusion_transfer.core.training import train
from tests.core._adapter_helpers import SCHED, inputs, perturb, tiny_unet

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py


def test_conditional_anl_refuses_a_missing_or_misshapen_condition():
    model = prepare_anl(tiny_unet(), 5)
    x, t = inputs()
    with pytest.raises(ValueError, match="conditional"):
        model(x, t)
    with pytest.raises(ValueError, match=r"shape \(B, 5\)"):
        model(x, t, condition=torch.randn(3, 4))
    with pytest.raises(ValueError, match="takes no condition"):
        prepare_anl(tiny_unet(), None)(x, t, condition=torch.randn(3, 5))


@pytest.mark.parametrize("rate", [0.25, 0.5, 0.7])
def test_mask_rectangle_geometry(rate):
    h, w = 32, 24
    for seed in range(20):
        m = mask_rectangle(h, w, rate, torch.Generator().manual_seed(seed))
        assert m.shape == (h, w) and set(m.unique().tolist()) <= {0.0, 1.0}
        rows = torch.nonzero((m == 0).any(dim=1)).flatten()
        cols = torch.nonzero((m == 0).any(dim=0)).flatten()
        mh, mw = round(rate * h), round(rate * w)
        # one solid rectangle of round(delta*H) x round(delta*W), inside the image
        assert len(rows) == mh and len(cols) == mw
        assert int(rows[-1] - rows[0]) == mh - 1 and int(cols[-1] - cols[0]) == mw - 1
        assert int((m == 0).sum()) == mh * mw
    corners = {tuple(torch.nonzero(mask_rectangle(h, w, rate, torch.Generator().manual_seed(s)) == 0)[0].tolist())
               for s in range(20)}
    assert len(corners) > 1  # the position is random
    assert torch.equal(mask_rectangle(h, w, 0.0), torch.ones(h, w))
    with pytest.raises(ValueError, match="delta"):
        mask_rectangle(h, w, 1.0)


def test_masked_images_blacken_only_the_rectangle():
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    masked = masked_images(images, 0.5, torch.Generator().manual_seed(0))
    changed = (masked != images).any(dim=1)
    for i in range(4):
        assert bool((masked[i][:, changed[i]] == -1).all())
        assert int((masked[i] == -1).all(dim=0).sum()) >= 64  # the 8x8 rectangle is black


def test_text_and_image_conditions_drive_a_conditional_anl_model():
    from diffusion_transfer.core.world.clip_io import load_world_clip

    clip = load_world_clip(ROOT / "data" / "06_models" / "world" / "clip")
    text = text_conditions(clip, ["A realistic painting of a smiling woman with glasses", "A photo of a man"])
    assert text.shape == (2, clip.embed_dim)
    assert torch.allclose(text.norm(dim=-1), torch.ones(2), atol=1e-5)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    img = image_conditions(clip, masked_images(images, 0.5, torch.Generator().manual_seed(0)))
    assert img.shape == (2, clip.embed_dim)
    with pytest.raises(ValueError, match="non-empty"):
        text_conditions(clip, [""])

    model = prepare_anl(tiny_unet(), clip.embed_dim)
    perturb(model.adapter)
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    outs = []
    for cond in (text, img):
        with model.conditioned(cond):
            outs.append(sample_ddim(model_eps_fn(model, SCHED), noise, SCHED, steps=4))
    assert all(torch.isfinite(o).all() for o in outs)
    assert not torch.allclose(outs[0], outs[1])  # the condition reaches the samples


def test_training_loop_hands_each_image_its_condition():
    seen = []

    def loss_fn(model, batch, teacher=None, generator=None, condition=None):
        seen.append((batch.clone(), condition.clone()))
        return {"loss": model.weight.sum() * 0 + batch.mean()}

    images = torch.linspace(-1, 1, 5).view(5, 1, 1, 1).expand(5, 3, 2, 2).contiguous()
    conditions = torch.arange(5.0).view(5, 1) * 10
    model = torch.nn.Linear(1, 1)
    train(model, loss_fn, images, dict(steps=3, batch_size=2, ema_decay=0, hflip=False), conditions=conditions,
          progress=False)
    for batch, cond in seen:
        idx = ((batch[:, 0, 0, 0] + 1) / 0.5).round().long()
        assert torch.equal(cond[:, 0], conditions[idx, 0])
    with pytest.raises(ValueError, match="one row per image"):
        train(model, loss_fn, images, dict(steps=1, batch_size=2), conditions=conditions[:3], progress=False)
