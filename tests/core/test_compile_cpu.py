"""torch.compile on the CPU (issue 35: ``train.compile``, ``sampling.compile``,
``evaluation.compile``): the compiled training step, sampling call and
Inception pass give the eager numbers within a stated tolerance. Compiling
takes tens of seconds on a CPU: few, tiny, slow-marked tests. Speed is the
benchmark's business (benchmarks/bench_compile.py), not these tests'."""

from __future__ import annotations

import pytest
import torch

from diffusion_transfer.core.methods import build_method
from diffusion_transfer.core.metrics.extractors import (_load_inception_layers, inception_extractor,
                                                         resolve_inception_path)
from diffusion_transfer.core.metrics.inception_module import python_inception
from diffusion_transfer.core.sampling import model_eps_fn, sample_ddim
from diffusion_transfer.core.training import TrainConfig, train
from tests.core._adapter_helpers import SCHED, tiny_unet

#: Compiled kernels fuse and reorder float32 sums: the same numbers up to
#: rounding. Relative (norm of the difference / norm) for outputs; for
#: training, relative to the weight change of 2 AdamW steps (Adam normalises
#: a gradient that is only rounding noise into a full lr step, so single
#: weights may differ by up to lr); absolute for Inception features (~1).
RELATIVE_TOLERANCE, WEIGHT_TOLERANCE, FEATURE_TOLERANCE = 1e-4, 1e-2, 1e-3


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.slow
def test_a_compiled_training_step_trains_the_eager_weights_and_hands_back_an_eager_model():
    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1
    loss = build_method("naive", {}, SCHED).loss_fn
    start = torch.cat([p.detach().flatten() for p in tiny_unet().parameters()])
    weights, losses = {}, {}
    for compiled in (False, True):
        config = TrainConfig(steps=2, batch_size=2, lr=1e-3, log_every=1, ema_decay=0.5, compile=compiled)
        result = train(tiny_unet(), loss, images, config, progress=False)
        assert "_compiled_call_impl" not in result.model.__dict__  # sampled eagerly afterwards
        assert "_compiled_call_impl" not in result.ema_model.__dict__
        weights[compiled] = torch.cat([p.detach().flatten() for p in result.model.parameters()])
        losses[compiled] = [h["loss"] for h in result.history]
    assert losses[True] == pytest.approx(losses[False], rel=RELATIVE_TOLERANCE)
    change = (weights[False] - start).norm()
    assert (weights[True] - weights[False]).norm() / change < WEIGHT_TOLERANCE


@pytest.mark.slow
def test_a_compiled_sampling_call_gives_the_eager_samples():
    model = tiny_unet()
    noise = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = {c: sample_ddim(model_eps_fn(model, SCHED, compile=c), noise, SCHED, steps=3,
                          generator=torch.Generator().manual_seed(1)) for c in (False, True)}
    assert _relative(out[True], out[False]) < RELATIVE_TOLERANCE
    assert "_compiled_call_impl" not in model.__dict__  # the model itself stays eager


def test_the_python_inception_computes_the_torchscript_features_exactly():
    layers = _load_inception_layers(_inception_file())
    x = torch.randn(1, 3, 299, 299, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), torch.jit.optimized_execution(False):
        assert torch.equal(python_inception(layers)(x), layers.forward(x))


@pytest.mark.slow
def test_the_compiled_inception_pass_gives_the_eager_features():
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    eager, compiled = inception_extractor(), inception_extractor(compile=True)
    assert compiled.weights == eager.weights  # same features to rounding: one cache
    a, b = eager.fn(images), compiled.fn(images)
    assert (a - b).abs().max() < FEATURE_TOLERANCE and _relative(b, a) < RELATIVE_TOLERANCE


def _inception_file():
    try:
        return resolve_inception_path(None)
    except Exception as err:  # noqa: BLE001 - no local Inception: nothing to compare
        pytest.skip(f"no local Inception weights: {err}")
