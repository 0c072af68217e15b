"""SDFT with LoRA against full SDFT: step time and peak memory, as ratios in one run.

One training step of each = the SDFT loss (one no-grad teacher forward and one
student forward over B + B auxiliary inputs) + backward + AdamW over the
trained parameters + the EMA update, as ``train()`` runs it:

- ``sdft``: the student is a copy of the source model, every weight trained;
  the teacher is the source model, frozen; the EMA is a copy of the student;
- ``sdft+lora``: the student is the source model itself, frozen, with LoRA on
  its attention projections (``train.adapter``, rank 4 by default); the
  teacher is the same UNet with its adapters disabled (``FrozenBaseView``);
  the EMA shares the frozen weights and averages the LoRA only.

Step times are medians of interleaved repeats in this process (ratio
``sdft+lora / sdft``). Peak memory is measured in one fresh process per
variant: the peak RSS (``VmHWM``) on the CPU, ``torch.cuda.max_memory_allocated``
on a GPU, after the source model is loaded and two steps are run; "training
memory" is that peak minus the memory right before the source model was
loaded (the imports), so the ratio compares what each variant adds.

    python benchmarks/bench_lora.py [--batch 16] [--rank 4] [--repeats 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_steps import load_model, ran_as_memory_child, rss_kib, time_interleaved  # noqa: E402

from diffusion_transfer.core.methods import build_method  # noqa: E402
from diffusion_transfer.core.models.lora import FrozenBaseView, LoraSpec, add_lora  # noqa: E402
from diffusion_transfer.core.provenance import device_name  # noqa: E402
from diffusion_transfer.core.schedule import make_schedule  # noqa: E402
from diffusion_transfer.core.training.ema import ema_update_  # noqa: E402
from diffusion_transfer.core.training.run import make_ema  # noqa: E402

VARIANTS = ("sdft", "sdft+lora")


def build_step(variant: str, model: torch.nn.Module, batch: int, rank: int, device: torch.device) -> dict:
    """One variant's training step on ``model`` (the loaded source model, used as
    the teacher by ``sdft`` and as the student's base by ``sdft+lora``)."""
    px = int(model.config.sample_size)
    images = torch.rand(batch, 3, px, px, generator=torch.Generator().manual_seed(batch)).to(device) * 2 - 1
    gen = torch.Generator(device=device).manual_seed(0)
    loss_fn = build_method("sdft", {}, make_schedule()).loss_fn
    if variant == "sdft":
        student = copy.deepcopy(model).to(device).train().requires_grad_(True)
        teacher = model.to(device).eval().requires_grad_(False)
    else:
        student = add_lora(model, LoraSpec(rank=rank), seed=0).to(device).train()
        teacher = FrozenBaseView(student)
    params = [p for p in student.parameters() if p.requires_grad]
    ema, pairs = make_ema(student, params, 0.999)
    opt = torch.optim.AdamW(params, lr=1e-6)

    def step():
        loss_fn(student, images, teacher=teacher, generator=gen)["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema_update_([e for e, _ in pairs], [m for _, m in pairs], 0.999)
    return {"step": step, "params": sum(p.numel() for p in params), "ema": ema}


def memory_child(args, build=build_step) -> dict:
    """One fresh process, one variant: its peak memory over two steps (``build``:
    a script's step builder with ``build_step``'s signature)."""
    device = torch.device(args.device)
    before = torch.cuda.memory_allocated() / 2**20 if device.type == "cuda" else rss_kib("VmRSS") / 1024
    model, _ = load_model(args.model)
    run = build(args.memory_child, model, args.batch, args.rank, device)
    for _ in range(2):
        run["step"]()
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else rss_kib("VmHWM") / 1024
    return {"peak_mb": peak, "training_mb": peak - before,
            "what": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "peak RSS (VmHWM)"}


def measure_memory(args, variant: str, script: str = __file__) -> dict:
    """``variant``'s peak memory, from ``script --memory-child`` run with ``args``' options."""
    cmd = [sys.executable, script, "--memory-child", variant, "--batch", str(args.batch), "--rank",
           str(args.rank), "--device", args.device] + (["--model", str(args.model)] if args.model else []) + \
          (["--threads", str(args.threads)] if args.threads else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory measurement of {variant} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine_line(device: torch.device) -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (f"device {device} ({device_name()}), {cores} CPU core(s), torch threads {torch.get_num_threads()}, "
            f"load average at start {load}")


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Print the table; returns the ratios (sdft+lora / sdft)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="UNet folder (default: the FaceWorld source model)")
    ap.add_argument("--batch", type=int, default=16, help="batch (+ as many auxiliary inputs)")
    ap.add_argument("--rank", type=int, default=4, help="LoRA rank (train.adapter.rank)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-memory", action="store_true", help="time only (no child processes)")
    ap.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if ran_as_memory_child(args, memory_child):
        return {}
    device = torch.device(args.device)
    print(machine_line(device))
    loaded, what = load_model(args.model)
    # each variant gets its own source model: sdft+lora puts its LoRA into it
    runs = {v: build_step(v, copy.deepcopy(loaded), args.batch, args.rank, device) for v in VARIANTS}
    medians = time_interleaved(runs, args.warmup, args.repeats, device, time.perf_counter)
    n_params = sum(p.numel() for p in loaded.parameters())
    print(f"model: {what} ({n_params / 1e6:.2f}M params), batch {args.batch} (+{args.batch} aux), LoRA rank "
          f"{args.rank} on to_q, to_k, to_v, to_out.0, wall time, {args.repeats} interleaved repeats after "
          f"{args.warmup} warm-up")
    print(f"{'variant':<10} {'median step':>12} {'trained params':>15}")
    for v in VARIANTS:
        print(f"{v:<10} {medians[v] * 1e3:>9.1f} ms {runs[v]['params']:>15,}")
    ratios = {"step_time": medians["sdft+lora"] / medians["sdft"]}
    print(f"step time sdft+lora / sdft: {ratios['step_time']:.2f}")
    if not args.no_memory:
        mem = {v: measure_memory(args, v) for v in VARIANTS}
        for v in VARIANTS:
            print(f"peak memory {v}: {mem[v]['peak_mb']:.0f} MB ({mem[v]['what']}, one process), "
                  f"of which training {mem[v]['training_mb']:.0f} MB")
        ratios["peak_memory"] = mem["sdft+lora"]["peak_mb"] / mem["sdft"]["peak_mb"]
        ratios["training_memory"] = mem["sdft+lora"]["training_mb"] / max(mem["sdft"]["training_mb"], 1e-9)
        print(f"peak memory sdft+lora / sdft: {ratios['peak_memory']:.2f}; training memory (peak minus the "
              f"imports): {ratios['training_memory']:.2f}")
    return ratios


if __name__ == "__main__":
    main()
