"""``core/models/layout.py`` (issue 35): a channels-last UNet on the CPU keeps
its activations channels-last where diffusers' own layers convert them to
NCHW (``Upsample2D`` at batch 64 and above, ``ResnetBlock2D``'s shortcut in
training), and its outputs and gradients are the same bit for bit."""

from __future__ import annotations

import copy
import pickle

import torch
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.upsampling import Upsample2D

from diffusion_transfer.core.models.layout import (
    LayoutKeepingResnetBlock2D,
    LayoutKeepingUpsample2D,
    keep_channels_last,
)
from diffusion_transfer.core.sampling import model_eps_fn
from tests.core._adapter_helpers import SCHED, tiny_unet

BATCH = 64  # diffusers' Upsample2D makes its input contiguous from this batch on


def _conv_inputs_channels_last(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor,
                               convs: list[torch.nn.Module]) -> list[bool]:
    """For each of ``convs``, whether the tensor it received in ``model(x, t)`` was channels-last."""
    seen: list[bool] = []
    hooks = [c.register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last))) for c in convs]
    with torch.no_grad():
        model(x, t)
    for h in hooks:
        h.remove()
    return seen


def _upsampler_convs(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m.conv for m in model.modules() if isinstance(m, Upsample2D)]


def _shortcut_convs(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m.conv_shortcut for m in model.modules() if isinstance(m, ResnetBlock2D) and m.conv_shortcut is not None]


def test_the_upsampling_keeps_channels_last_at_a_large_batch_and_changes_no_bit():
    x = torch.randn(BATCH, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.full((BATCH,), 500)
    own = tiny_unet().to(memory_format=torch.channels_last)
    kept = copy.deepcopy(own)
    assert keep_channels_last(kept) >= 1
    assert keep_channels_last(kept) == 0  # already changed
    xl = x.contiguous(memory_format=torch.channels_last)
    assert set(_conv_inputs_channels_last(own, xl, t, _upsampler_convs(own))) == {False}  # diffusers converted it
    assert set(_conv_inputs_channels_last(kept, xl, t, _upsampler_convs(kept))) == {True}
    with torch.no_grad():
        assert torch.equal(kept(x, t).sample, own(x, t).sample)
    assert kept.state_dict().keys() == own.state_dict().keys()
    assert all(torch.equal(kept.state_dict()[k], v) for k, v in own.state_dict().items())


def test_copies_keep_the_class_and_an_explicit_output_size_gives_diffusers_result():
    model = tiny_unet()
    keep_channels_last(model)
    ups = [m for m in model.modules() if isinstance(m, Upsample2D)]
    assert ups and all(type(m) is LayoutKeepingUpsample2D for m in ups)
    assert all(type(m) is LayoutKeepingResnetBlock2D for m in model.modules() if isinstance(m, ResnetBlock2D))
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert all(type(m) is LayoutKeepingUpsample2D for m in clone.modules() if isinstance(m, Upsample2D))
    up = ups[0].to(memory_format=torch.channels_last)
    h = torch.randn(2, up.channels, 4, 4)
    with torch.no_grad():
        assert torch.equal(up(h, (6, 6)), Upsample2D.forward(up, h, (6, 6)))  # an explicit output size
        assert up(h, (6, 6)).shape[-2:] == (6, 6)


def test_training_keeps_the_shortcut_input_channels_last_with_the_same_outputs_and_gradients():
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10, 200, 500, 900])
    own = tiny_unet().to(memory_format=torch.channels_last).train()
    kept = copy.deepcopy(own)
    keep_channels_last(kept)
    assert _shortcut_convs(own)
    assert set(_conv_inputs_channels_last(own, x, t, _shortcut_convs(own))) == {False}  # diffusers converted it
    assert set(_conv_inputs_channels_last(kept, x, t, _shortcut_convs(kept))) == {True}
    grads = []
    for model in (own, kept):
        out = model(x, t).sample
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    assert torch.equal(grads[0][0], grads[1][0])
    assert all(torch.equal(a, b) for a, b in zip(grads[0][1], grads[1][1]))
    assert kept.training and all(m.training for m in kept.modules())  # the flag is back after the forward


def test_a_kept_block_still_drops_out_in_training():
    own = ResnetBlock2D(in_channels=8, out_channels=16, temb_channels=4, groups=4, dropout=0.5)
    own.to(memory_format=torch.channels_last).train()
    kept = copy.deepcopy(own)
    keep_channels_last(kept)
    h = torch.randn(2, 8, 4, 4).contiguous(memory_format=torch.channels_last)
    temb = torch.randn(2, 4)
    torch.manual_seed(7)
    dropped = own(h, temb)
    torch.manual_seed(7)
    assert torch.equal(kept(h, temb), dropped)
    with torch.no_grad():
        assert not torch.equal(kept.eval()(h, temb), dropped)


def test_model_eps_fn_changes_the_upsampling_only_with_channels_last():
    plain, last = tiny_unet(), tiny_unet()
    model_eps_fn(plain, SCHED)
    model_eps_fn(last, SCHED, channels_last=True)
    assert not any(isinstance(m, LayoutKeepingUpsample2D) for m in plain.modules())
    assert any(isinstance(m, LayoutKeepingUpsample2D) for m in last.modules())


def test_a_channels_last_training_run_keeps_the_layout_of_the_model_and_the_teacher():
    from diffusion_transfer.core.methods import build_method
    from diffusion_transfer.core.training import TrainConfig, train

    sdft = build_method("sdft", {}, SCHED).loss_fn
    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1
    for layout in (False, True):
        model, teacher = tiny_unet(), tiny_unet()
        train(model, sdft, images, TrainConfig(steps=1, batch_size=2, channels_last=layout), teacher=teacher,
              progress=False)
        for net in (model, teacher):
            kept = {type(m) for m in net.modules() if isinstance(m, ResnetBlock2D)}
            assert kept == ({LayoutKeepingResnetBlock2D} if layout else {ResnetBlock2D})


def _block_pair(layout: bool, **kwargs) -> tuple[ResnetBlock2D, ResnetBlock2D]:
    torch.manual_seed(11)
    own = ResnetBlock2D(temb_channels=6, groups=4, **kwargs)
    if layout:
        own.to(memory_format=torch.channels_last)
    kept = copy.deepcopy(own)
    keep_channels_last(kept)
    assert type(kept) is LayoutKeepingResnetBlock2D
    return own, kept


BLOCKS = [  # every branch of the kept forward: time-embedding norms, shortcut, scale factor, resampling
    dict(in_channels=8, out_channels=8),
    dict(in_channels=8, out_channels=12, output_scale_factor=2.0),
    dict(in_channels=8, out_channels=8, time_embedding_norm="scale_shift", skip_time_act=True),
    dict(in_channels=8, out_channels=12, time_embedding_norm="scale_shift", output_scale_factor=1.5),
    dict(in_channels=8, out_channels=8, down=True),
    dict(in_channels=8, out_channels=12, up=True),
]


def test_the_kept_block_gives_diffusers_outputs_and_gradients_bit_for_bit_in_every_branch():
    for layout in (False, True):
        for kwargs in BLOCKS:
            own, kept = _block_pair(layout, **kwargs)
            h = torch.randn(3, 8, 4, 4, generator=torch.Generator().manual_seed(2))
            if layout:
                h = h.contiguous(memory_format=torch.channels_last)
            temb = torch.randn(3, 6, generator=torch.Generator().manual_seed(3))
            results = []
            for block in (own.train(), kept.train()):
                x, e = h.clone().requires_grad_(True), temb.clone().requires_grad_(True)
                out = block(x, e)
                (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
                results.append([out.detach(), x.grad, e.grad, *[p.grad for p in block.parameters()]])
                with torch.no_grad():
                    results[-1].append(block.eval()(h, temb))
            assert len(results[0]) == len(results[1])
            for a, b in zip(*results):
                assert torch.equal(a, b), (layout, kwargs)


def test_the_kept_block_divides_by_a_scale_factor_other_than_one():
    own, kept = _block_pair(False, in_channels=8, out_channels=8, output_scale_factor=2.0)
    h, temb = torch.randn(2, 8, 4, 4), torch.randn(2, 6)
    with torch.no_grad():
        halved = kept(h, temb)
        kept.output_scale_factor = 1.0
        assert torch.equal(kept(h, temb), 2 * halved)
