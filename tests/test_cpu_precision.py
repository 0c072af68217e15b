"""bf16 on the CPU (issue 35): detected from /proc/cpuinfo and torch, refused
naming the YAML key and the fix where the CPU lacks native bf16, and, where
it has it (monkeypatched here: autocast bf16 runs on any x86 CPU, slowly),
within a stated tolerance of float32 on a tiny UNet."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from diffusion_transfer.core import cpu_precision
from diffusion_transfer.core.cpu_precision import CpuBf16, cpu_bf16
from diffusion_transfer.core.methods import build_method
from diffusion_transfer.core.sampling import model_eps_fn, sample_ddim
from diffusion_transfer.core.training import TrainConfig, train
from diffusion_transfer.pipelines.utils import inference_setup
from diffusion_transfer.project.preflight_precision import check_cpu_precision
from diffusion_transfer.project.schema import EvaluationParams, InvalidParametersError, SamplingParams, TrainParams
from tests.core._adapter_helpers import SCHED, tiny_unet

AVX2_ONLY = CpuBf16("AMD EPYC", ("avx2",), "AVX2", False)
WITH_AMX = CpuBf16("Intel Xeon", ("avx2", "avx512f", "avx512_bf16", "amx_bf16"), "AVX512", True)
#: bf16 keeps 8 mantissa bits (relative rounding 2^-9). Against float32, on the
#: tiny UNet: one UNet call's relative error (norm of the difference / norm),
#: the mean absolute difference of 5-step DDIM samples in [-1, 1] (a clipped
#: pixel may flip sign: no max), and the largest weight change after 3 steps.
EPS_TOLERANCE, SAMPLE_TOLERANCE, WEIGHT_TOLERANCE = 0.03, 0.01, 0.01


@pytest.fixture
def cpu_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _cpu(monkeypatch, cpu: CpuBf16) -> None:
    monkeypatch.setattr(cpu_precision, "cpu_bf16", lambda: cpu)


@pytest.mark.parametrize(("flags", "capability", "supported"), [
    ({"fpu", "avx2"}, "AVX2", False),
    ({"avx2", "avx512f", "avx512_bf16"}, "AVX512", True),  # AMD EPYC (Zen 4) and Intel: AVX-512 BF16
    ({"avx2", "amx_tile", "amx_bf16"}, "AVX512", True),
    (set(), "AMX", True),  # torch's kernels built for AMX, flags unreadable
])
def test_native_bf16_is_read_from_the_cpu_flags_and_torch(monkeypatch, flags, capability, supported):
    monkeypatch.setattr(cpu_precision, "_cpuinfo", lambda: ("Some CPU", flags))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    cpu_bf16.cache_clear()
    try:
        cpu = cpu_bf16()
        assert cpu.supported is supported and cpu.name == "Some CPU"
        assert set(cpu.flags) <= flags and "Some CPU" in cpu.describe()
    finally:
        cpu_bf16.cache_clear()


def test_this_machine_is_described_with_its_name_and_flags():
    cpu = cpu_bf16()
    assert cpu.name and cpu.capability in cpu.describe()


def test_bf16_is_refused_naming_the_key_and_the_fix_where_the_cpu_lacks_it(monkeypatch, cpu_only):
    _cpu(monkeypatch, AVX2_ONLY)
    for key in ("sampling.precision", "translation.precision", "evaluation.precision"):
        with pytest.raises(InvalidParametersError, match=key) as err:
            inference_setup("bf16", key)
        text = str(err.value.message)
        assert f"'{key}: \"no\"'" in text and "AMD EPYC" in text and "avx512_bf16" in text
    # float32 and fp16 (float32 on a CPU, as before) are never refused
    assert inference_setup("no") == inference_setup("fp16") == (torch.device("cpu"), None)


def test_the_pre_run_check_lists_every_bf16_key_the_pipeline_reads(monkeypatch, cpu_only):
    _cpu(monkeypatch, AVX2_ONLY)
    run = SimpleNamespace(name="sdft_toy", method="sdft", dataset="toy", hyperparameters={},
                          train=TrainConfig(steps=1, mixed_precision="bf16"))
    resolved = SimpleNamespace(
        runs={"sdft_toy": run}, sampling={}, classifiers={},
        blocks={"evaluation": EvaluationParams(precision="bf16"), "sampling": SamplingParams(n_samples=2)})
    pipeline = SimpleNamespace(nodes=[SimpleNamespace(inputs=["params:train", "params:evaluation"])])
    with pytest.raises(InvalidParametersError) as err:
        check_cpu_precision(pipeline, resolved)
    text = err.value.message
    assert text.startswith("Invalid parameters in 'train.mixed_precision'") and "- evaluation.precision" in text
    assert "run sdft_toy" in text and "Nothing was computed" in text
    check_cpu_precision(SimpleNamespace(nodes=[SimpleNamespace(inputs=["params:sampling"])]), resolved)  # fp32
    _cpu(monkeypatch, WITH_AMX)
    check_cpu_precision(pipeline, resolved)  # supported: nothing to refuse


def test_the_pre_run_check_refuses_a_bf16_domain_classifier(monkeypatch, cpu_only):
    _cpu(monkeypatch, AVX2_ONLY)
    classifier = SimpleNamespace(train={"steps": 1, "mixed_precision": "bf16"})
    resolved = SimpleNamespace(runs={}, sampling={}, blocks={}, classifiers={"aahq": classifier})
    pipeline = SimpleNamespace(nodes=[SimpleNamespace(inputs=["params:classifier"])])
    with pytest.raises(InvalidParametersError) as err:
        check_cpu_precision(pipeline, resolved)
    text = err.value.message
    assert text.startswith("Invalid parameters in 'classifier.train.mixed_precision'")
    assert "classifier.datasets.aahq" in text and "Nothing was computed" in text
    classifier.train["mixed_precision"] = "no"
    check_cpu_precision(pipeline, resolved)  # float32: nothing to refuse


@pytest.mark.parametrize(("method", "hyperparameters", "refused"), [
    ("sdft", {"teacher_dtype": "bfloat16"}, True),
    ("sdft", {"teacher_dtype": "half"}, True),  # bfloat16 on a CPU
    ("sdft", {"variant": "authors_code"}, True),  # its teacher_dtype is 'half'
    ("sdft", {"variant": "authors_code", "teacher_dtype": "float32"}, False),
    ("sdft", {"variant": "paper"}, False),
    ("tan", {"variant": "authors_code"}, False),  # TAN's variant has no teacher dtype
])
def test_the_pre_run_check_refuses_a_bf16_sdft_teacher(monkeypatch, cpu_only, method, hyperparameters, refused):
    _cpu(monkeypatch, AVX2_ONLY)
    run = SimpleNamespace(name=f"{method}_toy", method=method, dataset="toy", hyperparameters=hyperparameters,
                          train=TrainConfig(steps=1))
    resolved = SimpleNamespace(runs={run.name: run}, sampling={}, blocks={}, classifiers={})
    pipeline = SimpleNamespace(nodes=[SimpleNamespace(inputs=["params:train"])])
    if not refused:
        check_cpu_precision(pipeline, resolved)
        return
    with pytest.raises(InvalidParametersError) as err:
        check_cpu_precision(pipeline, resolved)
    text = err.value.message
    assert text.startswith("Invalid parameters in 'methods.sdft.teacher_dtype'")
    assert "'methods.sdft.teacher_dtype: float32'" in text and "run sdft_toy" in text


def test_bf16_sampling_on_a_cpu_with_it_is_within_tolerance_of_float32(monkeypatch, cpu_only):
    _cpu(monkeypatch, WITH_AMX)
    device, dtype = inference_setup("bf16", "sampling.precision")
    assert (device, dtype) == (torch.device("cpu"), torch.bfloat16)
    model = tiny_unet()
    noise = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    eps = {d: model_eps_fn(model, SCHED, autocast_dtype=d)(noise, torch.full((4,), 500)) for d in (None, dtype)}
    assert 0 < (eps[dtype] - eps[None]).norm() / eps[None].norm() < EPS_TOLERANCE
    out = {d: sample_ddim(model_eps_fn(model, SCHED, autocast_dtype=d), noise, SCHED, steps=5,
                          generator=torch.Generator().manual_seed(1)) for d in (None, dtype)}
    assert out[dtype].dtype == torch.float32
    assert (out[dtype] - out[None]).abs().mean() < SAMPLE_TOLERANCE


def test_bf16_training_on_a_cpu_with_it_is_within_tolerance_of_float32(monkeypatch, cpu_only):
    _cpu(monkeypatch, WITH_AMX)
    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1
    loss = build_method("naive", {}, SCHED).loss_fn
    weights, losses = {}, {}
    for precision in ("no", "bf16"):
        config = TrainConfig(steps=3, batch_size=2, lr=1e-3, log_every=1, ema_decay=0, mixed_precision=precision)
        result = train(tiny_unet(), loss, images, config, progress=False)
        weights[precision] = torch.cat([p.detach().flatten() for p in result.model.parameters()])
        losses[precision] = [h["loss"] for h in result.history]
    assert 0 < (weights["bf16"] - weights["no"]).abs().max() < WEIGHT_TOLERANCE
    assert losses["bf16"] == pytest.approx(losses["no"], rel=0.05)


def test_the_compile_keys_are_validated_and_off_by_default():
    assert not SamplingParams(n_samples=2).compile and not EvaluationParams().compile
    for model, data in ((SamplingParams, {"n_samples": 2}), (EvaluationParams, {}), (TrainParams, {"steps": 1})):
        with pytest.raises(ValueError, match="compile"):
            model(**data, compile="sometimes")
    # an eager run's checkpoint key is what it was before the setting existed
    assert "compile" not in TrainParams(steps=1).run_config()
    assert TrainParams(steps=1, compile=True).run_config()["compile"] is True


def test_a_kedro_run_with_bf16_on_a_cpu_without_it_stops_before_any_node(tmp_path, monkeypatch, cpu_only):
    # imported here: the Kedro project helpers are only for this end-to-end check
    from tests._pipeline_helpers import _run, _scratch_project

    _cpu(monkeypatch, AVX2_ONLY)
    proj = _scratch_project(tmp_path)
    with pytest.raises(InvalidParametersError) as err:
        _run(proj, "smoke", "__default__", runtime_params={"sampling": {"precision": "bf16"}})
    assert "'sampling.precision: \"no\"'" in err.value.message and "Nothing was computed" in err.value.message
    assert not any((proj / "data").glob("smoke*/0[1-8]_*/*"))  # no node wrote anything
