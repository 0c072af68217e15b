"""Asyrp's shared work across prompts: ``edit_many`` inverts and reconstructs
each batch once for every f_t, and ``train_asyrp(inverted=...)`` reuses one
inversion; both give exactly what the per-prompt computation gives."""

from __future__ import annotations

import pytest
import torch

from diffusion_transfer.core.editing import (
    AsyrpConfig,
    ImplicitFunction,
    edit_many,
    generate,
    invert,
    invert_images,
    train_asyrp,
)
from tests.core.test_asyrp import SCHED, ToyClip, images, opened, tiny_unet

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py


class CountingUNet(torch.nn.Module):
    """The UNet with a count of its forward calls (the hook sees its mid block)."""

    def __init__(self, unet):
        super().__init__()
        self.unet, self.config, self.calls = unet, unet.config, 0

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.unet, name)

    def forward(self, x, t, **kw):
        self.calls += 1
        return self.unet(x, t, **kw)


def test_edit_many_equals_the_per_prompt_edit_built_by_hand():
    unet, x0 = tiny_unet(), images(3)
    f_ts = {name: opened(ImplicitFunction.for_model(unet), seed=seed) for name, seed in (("a", 3), ("b", 5))}
    kw = dict(t_edit=500, t_boost=300, scale=1.0)
    out = edit_many(unet, f_ts, x0, SCHED, inversion_steps=5, steps=4, batch_size=2, seed=7, **kw)
    # by hand, per prompt and per batch: invert, then generate with the batch's reseeded generator
    for name, f_t in f_ts.items():
        ref, rec = [], []
        for i in (0, 2):
            x_T = invert(unet, x0[i:i + 2], SCHED, 5)
            ref.append(generate(unet, f_t, x_T, SCHED, 4, generator=torch.Generator().manual_seed(7 + i), **kw))
            rec.append(generate(unet, None, x_T, SCHED, 4, generator=torch.Generator().manual_seed(7 + i), **kw))
        assert torch.equal(out["edited"][name], torch.cat(ref).clamp(-1, 1))
        assert torch.equal(out["reconstructed"], torch.cat(rec).clamp(-1, 1))
    assert not torch.equal(out["edited"]["a"], out["edited"]["b"])


def test_edit_many_inverts_and_reconstructs_once_per_batch():
    counted = CountingUNet(tiny_unet())
    f_ts = {k: opened(ImplicitFunction.for_model(counted.unet), seed=s) for k, s in (("a", 3), ("b", 4), ("c", 5))}
    # 5 inversion calls; a generate of 4 steps is 4 calls plus 2 edited calls at t >= 500 (t = 999, 749)
    edit_many(counted, f_ts, images(2), SCHED, inversion_steps=5, steps=4, t_edit=500, batch_size=2)
    assert counted.calls == 5 + 4 + 3 * (4 + 2)  # per prompt it would be 3 * (5 + 4 + 4 + 2)


def test_training_from_a_shared_inversion_is_exact():
    unet, x0, clip = tiny_unet(), images(2), ToyClip()
    cfg = AsyrpConfig(epochs=2, train_steps=4, inversion_steps=5, t_edit=500, lr=0.05)
    alone = train_asyrp(unet, SCHED, x0, clip, "red", "green", cfg, progress=False)
    shared = invert_images(unet, x0, SCHED, cfg)
    assert torch.equal(shared, torch.cat([invert(unet, x0[i:i + 1], SCHED, 5) for i in range(2)]))
    again = train_asyrp(unet, SCHED, x0, clip, "red", "green", cfg, progress=False, inverted=shared)
    assert alone.history == again.history
    for k, v in alone.f_t.state_dict().items():
        assert torch.equal(v, again.f_t.state_dict()[k]), k
    with pytest.raises(ValueError, match="inverted has 1 rows but images 2"):
        train_asyrp(unet, SCHED, x0, clip, "red", "green", cfg, progress=False, inverted=shared[:1])
