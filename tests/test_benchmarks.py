"""The benchmark scripts run and report what they claim (timings are not
asserted here: performance bars live in the benchmarks themselves)."""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys

from tests._pipeline_helpers import ROOT, load_script


def _load(name: str):
    return load_script(f"benchmarks/{name}.py")


def test_bench_steps_prints_ratio_and_enforces_bar(capsys, tmp_path):
    from diffusion_transfer.core.models import build_unet, save_unet

    tiny = dict(sample_size=8, block_out_channels=(8, 16), layers_per_block=1,
                down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                attention_head_dim=8, norm_num_groups=4)
    save_unet(build_unet(tiny), tmp_path / "unet")
    bench = _load("bench_steps")
    args = ["--model", str(tmp_path / "unet"), "--batch", "2", "--warmup", "1", "--repeats", "1"]
    assert bench.main(args + ["--max-ratio", "1000"]) == 0
    out = capsys.readouterr().out
    ratio = float(re.search(r"ratio sdft/naive: ([0-9.]+)", out).group(1))
    assert ratio > 0  # its value is timing, not asserted here (one repeat on a shared CPU)
    assert "batch 2 (+2 aux for SDFT)" in out and "8x8" in out
    # every method gets a row: its ratio to naive and its trainable parameters
    rows = {m.group(1): (float(m.group(2)), int(m.group(3).replace(",", "")))
            for m in re.finditer(r"^(\w+)\s+[0-9.]+ ms\s+([0-9.]+)\s+([0-9,]+)$", out, re.M)}
    assert set(rows) == {"naive", "sdft", "attn", "a3ft", "anl", "anl_uncond", "naive_clip", "tan"}
    assert rows["anl"][1] < rows["naive_clip"][1]  # ANL's modules alone < the same modules and the whole UNet
    assert rows["tan"][1] < rows["attn"][1]  # shift adaptors only
    assert rows["naive"][0] == 1.0
    assert rows["attn"][1] < rows["a3ft"][1] < rows["naive"][1]  # attention blocks < + adapters < all
    # The bar is enforced: a ratio above --max-ratio exits non-zero.
    assert bench.main(args + ["--methods", "sdft", "--max-ratio", "0"]) == 1
    assert "FAIL" in capsys.readouterr().err


def test_bench_gpu_tiny_on_cpu_reports_what_it_timed(tmp_path):
    """The GPU benchmark's --tiny run (a 16 px ADM on the CPU), in a fresh interpreter as the
    device runs it: no Kedro import, every run timed, ratios and rates derived from the
    recorded times, and the two DDIM loops computing the same samples."""
    out = tmp_path / "out"
    code = ("import runpy, sys\n"
            f"sys.argv = ['bench_gpu.py', '--tiny', '--device', 'cpu', '--out', {str(out)!r}]\n"
            "try:\n"
            f"    runpy.run_path({str(ROOT / 'benchmarks' / 'bench_gpu.py')!r}, run_name='__main__')\n"
            "except SystemExit as exc:\n"
            "    assert not exc.code, exc.code\n"
            "print('kedro imported:', any(m.split('.')[0] == 'kedro' for m in sys.modules))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "kedro imported: False" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    assert (out / "results.md").read_text() in proc.stdout  # the printed report is the saved one
    assert results["skipped"] == [] and set(results["training"]) == set(results["sampling"]) == {"fp32"}
    assert "random init" in results["model"]["weights"] and results["model"]["sample_size"] == 16

    train = results["training"]["fp32"]
    runs = train["runs"]
    assert set(runs) == {"naive", "sdft_teacher_bf16", "sdft_teacher_fp32", "sdft_teacher_bf16_weights", "diffusers"}
    for run in runs.values():
        assert len(run["times_s"]) == 2 and run["median_s"] == statistics.median(run["times_s"])
        assert run["steps_per_s"] == 1 / run["median_s"]
        assert run["images_per_s"] == 2 / run["median_s"]  # batch 2 target images a step
    naive = runs["naive"]["median_s"]
    assert train["ratios"] == {
        "sdft_teacher_bf16/naive": runs["sdft_teacher_bf16"]["median_s"] / naive,
        "sdft_teacher_fp32/naive": runs["sdft_teacher_fp32"]["median_s"] / naive,
        "sdft_teacher_bf16_weights/naive": runs["sdft_teacher_bf16_weights"]["median_s"] / naive,
        "naive/diffusers": naive / runs["diffusers"]["median_s"],
    }

    sampling = results["sampling"]["fp32"]
    assert sampling["timesteps"] == [750, 500, 250, 0]  # diffusers' "leading" grid, 4 steps of 1000 // 4
    loops = sampling["runs"]
    assert sampling["ratio_project_to_diffusers"] == loops["project"]["median_s"] / loops["diffusers"]["median_s"]
    assert sampling["max_abs_diff"] < 1e-4  # same UNet, noise and grid: the loops compute the same samples


def test_bench_gpu_skips_sections_past_its_budget(tmp_path):
    bench = _load("bench_gpu")
    assert bench.main(["--tiny", "--device", "cpu", "--out", str(tmp_path), "--budget-s", "0"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["training"] == {} and results["sampling"] == {}
    assert [s.split(" (")[0] for s in results["skipped"]] == ["training fp32", "sampling fp32"]


def test_bench_runner_times_three_layouts_of_the_same_two_nodes(capsys, tmp_path):
    import torch

    from diffusion_transfer.core.models import build_unet, save_unet

    tiny = dict(sample_size=32, block_out_channels=(8, 16), layers_per_block=1,
                down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                attention_head_dim=8, norm_num_groups=4)
    save_unet(build_unet(tiny), tmp_path / "unet")
    threads = torch.get_num_threads()
    ratios = _load("bench_runner").main(["--model", str(tmp_path / "unet"), "--sdft-steps", "1",
                                         "--classifier-steps", "1", "--repeats", "1"])
    out = capsys.readouterr().out
    rows = re.findall(r"^(\w+Runner, [^\n]*?)\s+([0-9.]+)s\s+([0-9.]+)s\s+([0-9.]+)s\s+([0-9.]+)$", out, re.M)
    assert [r[0].split(",")[0] for r in rows] == ["SequentialRunner", "ThreadRunner", "ThreadRunner"]
    assert all(float(r[2]) > 0 and float(r[3]) > 0 for r in rows)  # each layout ran both nodes
    for (name, ratio), row in zip(ratios.items(), rows):  # the printed ratio is the returned one, rounded
        assert name == row[0].strip() and abs(float(row[4]) - ratio) <= 0.005 + 1e-9
    assert list(ratios.values())[0] == 1.0  # each layout's wall over the sequential one
    assert torch.get_num_threads() == threads  # the caller's thread count is restored


def test_bench_cpu_times_the_training_steps_contiguous_against_channels_last(capsys):
    import re

    import torch

    bench = _load("bench_cpu")
    threads = torch.get_num_threads()
    assert bench.main(["--parts", "layout", "--repeats", "1", "--warmup", "1", "--batch", "2",
                       "--classifier-batch", "2", "--sample-batch", "2", "--threads", "1"]) == 0
    torch.set_num_threads(threads)
    out = capsys.readouterr().out
    names = "naive step|sdft step|classifier step|DDIM UNet call|UNet call, channels-last input|classifier gradient"
    rows = re.findall(rf"^\| ({names}) \| ([0-9.,]+) ms \| ([0-9.,]+) ms \| \*\*([0-9.]+)\*\* \|$", out, re.M)
    assert [r[0] for r in rows] == ["naive step", "sdft step", "classifier step", "DDIM UNet call",
                                    "UNet call, channels-last input", "classifier gradient"]
    for _, contiguous, last, ratio in rows:  # the printed ratio is the two medians' (rounded)
        a, b = float(contiguous.replace(",", "")), float(last.replace(",", ""))
        assert abs(a / b - float(ratio)) <= 0.005 + float(ratio) * 0.1 / min(a, b)  # 0.05 ms of print rounding each


def test_bench_cpu_times_diffusers_own_layers_against_the_layout_keeping_ones(capsys):
    import torch
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.upsampling import Upsample2D

    from diffusion_transfer.core.models.layout import keep_channels_last
    from tests.core._adapter_helpers import tiny_unet

    bench = _load("bench_cpu")
    model = tiny_unet()
    keep_channels_last(model)
    bench.diffusers_own_layers(model)  # the "own" arm: every layer back to diffusers' class
    assert {type(m) for m in model.modules() if isinstance(m, (Upsample2D, ResnetBlock2D))} == {Upsample2D,
                                                                                               ResnetBlock2D}
    dividing = tiny_unet()
    keep_channels_last(dividing)
    bench.dividing_blocks(dividing)  # the middle arm: layout kept, the division by 1 as diffusers does it
    blocks = [m for m in dividing.modules() if isinstance(m, ResnetBlock2D)]
    assert blocks and {type(m) for m in blocks} == {bench.DividingResnetBlock2D}
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 700])
    with torch.no_grad():
        assert torch.equal(dividing(x, t).sample, tiny_unet()(x, t).sample)
    assert bench.demo_batches() == {"sampling": 128, "translation": 64}  # conf/base's
    threads = torch.get_num_threads()
    assert bench.main(["--parts", "kept", "--repeats", "1", "--warmup", "1", "--batch", "2",
                       "--classifier-batch", "2", "--threads", "1"]) == 0
    torch.set_num_threads(threads)
    out = capsys.readouterr().out
    rows = re.findall(r"^\| ([^|]+) \| ([0-9.,]+) ms \| ([0-9.,]+) ms \| ([0-9.,]+) ms \| \*\*([0-9.]+)\*\* \| "
                      r"\*\*([0-9.]+)\*\* \|$", out, re.M)
    assert [r[0] for r in rows] == ["naive step", "sdft step", "classifier step",
                                    "DDIM UNet call, batch 128 (sampling)",
                                    "UNet call, channels-last input, batch 64 (translation)"]
    for _, own, dividing, kept, ratio, dividing_ratio in rows:  # each printed ratio is its two medians' (rounded)
        a, d, b = (float(v.replace(",", "")) for v in (own, dividing, kept))
        assert abs(a / b - float(ratio)) <= 0.005 + float(ratio) * 0.1 / min(a, b)
        assert abs(d / b - float(dividing_ratio)) <= 0.0005 + float(dividing_ratio) * 0.1 / min(d, b)


def test_bench_cpu_removes_its_fresh_inductor_cache_at_exit(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    env["TMPDIR"] = str(tmp_path)  # where tempfile puts the fresh cache
    code = ("import os, runpy, sys; sys.argv = ['bench_cpu.py']; "
            "runpy.run_path('benchmarks/bench_cpu.py', run_name='bench'); "
            "print(os.environ['TORCHINDUCTOR_CACHE_DIR'])")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=True)
    cache = done.stdout.strip().splitlines()[-1]
    assert cache.startswith(str(tmp_path / "bench-cpu-inductor-"))
    assert not os.path.exists(cache) and not list(tmp_path.glob("bench-cpu-inductor-*"))


def test_bench_cpu_bf16_step_autocasts_the_trained_model_only_as_accelerate_does():
    import torch

    from tests.core._adapter_helpers import tiny_unet

    bench = _load("bench_cpu")
    model = tiny_unet()
    seen = []  # (trained?, output dtype) of the first convolution, student's and teacher's copies
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda m, i, o: seen.append((m.weight.requires_grad, o.dtype)))
    bench.train_step("sdft", model, 2, torch.bfloat16, compiled=False)()
    assert set(seen) == {(True, torch.bfloat16), (False, torch.float32)}  # SDFT's teacher stays float32
    seen.clear()
    bench.train_step("naive", model, 2, None, compiled=False)()
    assert set(seen) == {(True, torch.float32)}


def test_bench_ops_counts_each_op_once_in_its_outermost_family():
    import torch
    from torch.profiler import ProfilerActivity, profile

    bench = _load("bench_ops")
    conv, x = torch.nn.Conv2d(3, 8, 3), torch.randn(2, 3, 16, 16)
    q = torch.randn(1, 2, 8, 4)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        torch.relu(conv(x))  # one convolution, one activation
        torch.nn.functional.scaled_dot_product_attention(q, q, q)  # attention: its inner products count once
        torch.nn.functional.group_norm(x, 3)
    events = prof.events()
    seconds = bench.family_seconds(events, wall_s=10.0)
    outermost = [e for e in events if bench.family_of(e.name) == "matrix"
                 and not any(bench.family_of(p.name) for p in _ancestors(e))]
    assert {e.name for e in outermost} >= {"aten::convolution"}
    assert abs(seconds["matrix"] - sum(e.cpu_time_total for e in outermost) / 1e6) < 1e-9
    assert seconds["norm"] > 0 and seconds["optimizer"] == 0
    assert abs(sum(seconds.values()) - 10.0) < 1e-9  # other: the wall less the families


def test_bench_ops_lists_other_by_own_time_leaving_out_what_a_family_holds():
    import torch
    from torch.profiler import ProfilerActivity, profile

    bench = _load("bench_ops")
    conv, x = torch.nn.Conv2d(3, 8, 3), torch.randn(2, 3, 16, 16)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        torch.relu(conv(x))
        torch.nn.functional.group_norm(x, 3)
    events = prof.events()
    inside_conv = {e.name for e in events if any(p.name == "aten::convolution" for p in _ancestors(e))}
    outside = [e for e in events if not bench.in_family(e)]
    listed = dict(bench.other_ops(events, calls=2, other_s=1.0, top=100))
    assert "aten::relu" in listed and "aten::convolution" not in listed and "aten::group_norm" not in listed
    assert all(name in {e.name for e in outside} for name in listed if name != "(outside any op)")
    only_inside = inside_conv - {e.name for e in outside}  # ops the convolution runs, and nothing else
    assert only_inside and not only_inside & set(listed)
    by_hand = sum(e.self_cpu_time_total for e in outside if e.name == "aten::relu") / 1e6 / 2
    assert abs(listed["aten::relu"] - by_hand) < 1e-12
    assert abs(sum(listed.values()) - 1.0) < 1e-9  # the ops' own time and the rest make up 'other'
    assert len(bench.other_ops(events, calls=2, other_s=1.0, top=1)) == 1


def test_bench_ops_times_the_classifier_step_in_the_training_loop_and_bare():
    in_loop, bare = _load("bench_ops").loop_against_bare(batch=4, steps=2, runs=1)
    assert 0 < bare < 60 and 0 < in_loop < 60


def _ancestors(event):
    parent = event.cpu_parent
    while parent is not None:
        yield parent
        parent = parent.cpu_parent


def test_bench_ops_prints_a_row_per_workload_with_its_matrix_floor(capsys):
    import re

    import torch

    threads = torch.get_num_threads()
    assert _load("bench_ops").main(["--workloads", "naive step", "DDIM UNet call", "--repeats", "1", "--warmup", "1",
                                    "--batch", "2", "--sample-batch", "2", "--threads", "1", "--top", "3"]) == 0
    torch.set_num_threads(threads)
    out = capsys.readouterr().out
    rows = re.findall(r"^\| (naive step|DDIM UNet call) \| [0-9.,]+ ms \| ([0-9.,]+) ms \| ([0-9]+)% \| ([0-9]+)% \| "
                      r"([0-9]+)% \| ([0-9]+)% \| ([0-9.,]+) \| ([0-9.,]+) \| ([0-9.,]+) \| ([0-9.]+) \| "
                      r"\*\*([0-9.]+)\*\* \|$", out, re.M)
    assert [r[0] for r in rows] == ["naive step", "DDIM UNet call"]
    for name, profiled_ms, matrix_share, *shares, gflop, rate, peak, _, matrix_over_floor in rows:
        peak = float(peak.replace(",", ""))
        assert 95 <= int(matrix_share) + sum(map(int, shares)) <= 105 and float(gflop) > 0
        matrix_s = float(gflop) / float(rate.replace(",", ""))  # the matrix ops' own time, re-derived
        assert abs(matrix_s / (float(profiled_ms.replace(",", "")) / 1e3) - int(matrix_share) / 100) <= 0.01
        assert abs(float(matrix_over_floor) - matrix_s * peak / float(gflop)) <= 0.01 * float(matrix_over_floor)
    assert int(rows[0][4]) > 0 and int(rows[1][4]) == 0  # only the training step runs the optimiser
    for name in ("naive step", "DDIM UNet call"):  # --top 3: each workload's three costliest parts of 'other'
        block = out.split(f"\n{name}, 'other' (")[1].split("\n\n")[0].splitlines()[1:]
        assert len(block) == 3 and all(re.match(r"^ +[0-9.]+ ms +[0-9]+% +\S", line) for line in block)


def test_bench_ops_times_each_workload_with_the_flop_counter_off_and_on(capsys):
    import re

    import torch
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    bench = _load("bench_ops")
    modes = []

    def fn():
        modes.append(type(_get_current_dispatch_mode()).__name__)
        torch.mm(torch.ones(4, 4), torch.ones(4, 4))

    plain, counted = bench.counter_cost(fn, warmup=1, repeats=3)
    assert plain > 0 and counted > 0
    assert modes.count("MatrixFlopCounter") == modes.count("NoneType") == 4  # a first call and 3 repeats each
    threads = torch.get_num_threads()
    assert bench.main(["--workloads", "DDIM UNet call", "--repeats", "1", "--warmup", "1", "--sample-batch", "2",
                       "--threads", "1", "--counter-cost"]) == 0
    torch.set_num_threads(threads)
    rows = re.findall(r"^\| DDIM UNet call \| ([0-9.,]+) ms \| ([0-9.,]+) ms \| \*\*([0-9.]+)\*\* \|$",
                      capsys.readouterr().out, re.M)
    assert len(rows) == 1
    plain_ms, counted_ms, ratio = (float(v.replace(",", "")) for v in rows[0])
    assert abs(ratio - counted_ms / plain_ms) <= 0.01 * ratio + 0.005  # the ratio of the two columns
