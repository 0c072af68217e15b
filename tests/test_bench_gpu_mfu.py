"""benchmarks/bench_gpu_mfu.py on the CPU (--tiny): every arm and batch entry timed, the rates and
MFU derived from the recorded times and the flop count, and the peak looked up by the card's name.
The compile arm is left to the GPU run (compiling on a CPU takes minutes)."""

from __future__ import annotations

import json

import pytest
import torch

from tests._pipeline_helpers import load_script


def test_the_tiny_mfu_benchmark_times_each_arm_and_batch_and_derives_its_rates(tmp_path, capsys):
    bench = load_script("benchmarks/bench_gpu_mfu.py")
    arms = ["base", "fused_adamw"]  # cumulative: the second has tf32 and channels_last too
    assert bench.main(["--tiny", "--device", "cpu", "--out", str(tmp_path), "--warmup", "0", "--arms", *arms]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert capsys.readouterr().out.strip() == (tmp_path / "results.md").read_text().strip()
    gflop, runs = results["forward_gflop"], results["arms"]["runs"]
    assert set(runs) == {f"{m}/{a}" for m in ("naive", "sdft") for a in arms}
    for name, run in runs.items():
        method = name.split("/")[0]
        assert len(run["times_s"]) == 2 and run["images_per_s"] == 2 / run["median_s"]
        # naive: forward + backward over B = 3 forwards; SDFT: 3 over 2B and a teacher forward over 2B = 8
        assert run["model_tflop_per_s"] == pytest.approx({"naive": 3, "sdft": 8}[method] * 2 * gflop
                                                         / run["median_s"] / 1e3)
        assert run["mfu"] is None and run["first_call_s"] > 0  # no peak known on a CPU
    for arm in arms:
        assert results["arms"]["sdft_over_naive"][arm] == runs[f"sdft/{arm}"]["median_s"] / runs[f"naive/{arm}"][
            "median_s"]
    entry = results["batches"]["entries"]["4x2"]  # 4 images a step as 2 accumulated micro-batches of 2
    assert results["batches"]["arm"] == "fused_adamw" and entry["naive"]["images_per_s"] == 4 / entry["naive"][
        "median_s"]


def test_a_step_accumulates_its_micro_batches_into_one_optimiser_step(monkeypatch):
    bench = load_script("benchmarks/bench_gpu_mfu.py")
    from diffusion_transfer.core.models import build_unet
    from diffusion_transfer.core.models.adm import adm_unet_config

    torch.manual_seed(0)
    model = build_unet(adm_unet_config(bench.TINY_ADM))
    calls, real = [], torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: (calls.append(1), real(self, *a, **k))[1])
    bench.make_step(model, "naive", 4, 2, "fused_adamw", torch.device("cpu"), 16)()
    assert len(calls) == 1


def test_the_peak_is_the_cards_dense_bf16_rate_by_name(monkeypatch):
    bench = load_script("benchmarks/bench_gpu_mfu.py")
    cuda = torch.device("cuda")
    for name, peak in (("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H200", 989.4),
                       ("Some New GPU", None)):
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, n=name: n)
        assert bench.peak_tflops(cuda, None) == peak
    assert bench.peak_tflops(cuda, 500.0) == 500.0 and bench.peak_tflops(torch.device("cpu"), None) is None
