"""``train.channels_last`` (issue 35): the trained model and the teacher are
channels-last while the loop runs (oneDNN's and cuDNN's faster convolutions),
the same numbers within float rounding, and both are handed back contiguous,
as safetensors needs them, even when a step fails."""

from __future__ import annotations

import copy

import pytest
import torch

from diffusion_transfer.core.methods import build_method
from diffusion_transfer.core.training import NonFiniteLossError, TrainConfig, train
from tests.core._adapter_helpers import SCHED, tiny_unet

#: Tolerances of tests/core/test_compile_cpu.py: another kernel, the same sums up to rounding.
RELATIVE_TOLERANCE, WEIGHT_TOLERANCE = 1e-4, 1e-2


def _images() -> torch.Tensor:
    return torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _all_contiguous(model: torch.nn.Module) -> bool:
    return all(p.is_contiguous() for p in model.parameters())


def test_sdft_trains_the_contiguous_weights_in_channels_last_and_hands_both_models_back_contiguous():
    sdft = build_method("sdft", {"lambda_aux": 0.3, "lambda_distill": 0.1}, SCHED).loss_fn
    start = _flat(tiny_unet())
    seen, weights, losses = {}, {}, {}
    for layout in (False, True):
        def loss_fn(model, images, teacher=None, generator=None):
            seen[layout] = (model.conv_in.weight.is_contiguous(memory_format=torch.channels_last),
                            teacher.conv_in.weight.is_contiguous(memory_format=torch.channels_last))
            return sdft(model, images, teacher=teacher, generator=generator)

        teacher = tiny_unet()
        config = TrainConfig(steps=3, batch_size=2, lr=1e-3, log_every=1, ema_decay=0.5, channels_last=layout)
        result = train(tiny_unet(), loss_fn, _images(), config, teacher=teacher, progress=False)
        assert _all_contiguous(result.model) and _all_contiguous(result.ema_model) and _all_contiguous(teacher)
        weights[layout], losses[layout] = _flat(result.model), [h["loss"] for h in result.history]
    assert seen == {False: (False, False), True: (True, True)}  # the 3x3 convolutions' weights, in the loop
    assert losses[True] == pytest.approx(losses[False], rel=RELATIVE_TOLERANCE)
    assert (weights[True] - weights[False]).norm() / (weights[False] - start).norm() < WEIGHT_TOLERANCE


def test_a_failed_step_still_hands_the_models_back_contiguous():
    def failing(model, images, teacher=None, generator=None):
        return {"loss": (model(images, torch.zeros(images.shape[0], dtype=torch.long)).sample * float("nan")).mean()}

    model, teacher = tiny_unet(), tiny_unet()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(NonFiniteLossError):
        train(model, failing, _images(), TrainConfig(steps=2, batch_size=2, channels_last=True), teacher=teacher,
              progress=False)
    assert _all_contiguous(model) and _all_contiguous(teacher)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # no update was applied


def test_the_checkpoint_key_of_a_run_without_it_is_unchanged():
    from diffusion_transfer.project.schema import TrainParams

    assert "channels_last" not in TrainParams(steps=10, batch_size=2).run_config()
    assert TrainParams(steps=10, batch_size=2, channels_last=True).run_config()["channels_last"] is True


def test_a_channels_last_sampling_call_gives_the_contiguous_samples_in_their_own_layout():
    """``sampling.channels_last`` / ``translation.channels_last``: the model's weights are
    converted in place, the eps (and the DDIM samples) equal the contiguous model's to rounding."""
    from diffusion_transfer.core.sampling import model_eps_fn, sample_ddim

    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.full((3,), 500)
    plain, last = tiny_unet(), tiny_unet()
    eps = model_eps_fn(plain, SCHED)(x, t)
    eps_fn = model_eps_fn(last, SCHED, channels_last=True)
    assert last.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    eps_last = eps_fn(x, t)
    assert eps_last.is_contiguous() and not torch.equal(eps_last, torch.zeros_like(eps_last))
    assert float((eps_last - eps).norm() / eps.norm()) < RELATIVE_TOLERANCE
    samples = [sample_ddim(fn, x, SCHED, steps=5) for fn in (model_eps_fn(plain, SCHED), eps_fn)]
    assert samples[1].is_contiguous()
    assert float((samples[1] - samples[0]).norm() / samples[0].norm()) < RELATIVE_TOLERANCE
