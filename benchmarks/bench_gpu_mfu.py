"""Model FLOP utilisation (MFU) of the naive and SDFT training steps at 256 px on a GPU, with the
project's speed settings added one at a time (issue 35: from about 8% of the dense bf16 peak
towards 35%).

The model is ``bench_gpu.py``'s: the P2-weighting FFHQ 256 px ADM UNet with random weights
(timing does not depend on them). Every arm is a bf16 student (``train.mixed_precision: bf16``),
SDFT with a bf16-autocast teacher (MetFaces preset), AdamW at conf/paper's lr. Arms, cumulative,
each the previous plus one ``train`` setting as the training loop applies it (core/training/run.py):

* ``base``: AdamW's per-tensor loop, contiguous layout, float32 matmuls at "highest";
* ``tf32``: ``train.tf32`` (``enable_tf32``: the float32 work left outside autocast in TF32);
* ``channels_last``: ``train.channels_last`` (student, teacher and inputs);
* ``fused_adamw``: ``train.fused_optimizer``;
* ``compile``: ``train.compile`` (``model.compile()``; the first step's time, compiling included,
  is reported apart and not in the median).

The last arm then runs at each ``--batches`` entry ``BxA``: A micro-batches of B/A images
accumulated into one optimiser step of B (``train.gradient_accumulation_steps``); one that runs
out of memory is recorded as such. MFU = model FLOPs of a step (convolutions, matrix products and
attention by torch's flop counter: forward + backward = 3 forwards over B for naive; 2B through
the student and a teacher forward over 2B for SDFT: 8 forwards over B) / median step time / the
card's dense bf16 peak (``PEAKS`` by device name, or ``--peak-tflops``; none on a CPU).

    python benchmarks/bench_gpu_mfu.py --out DIR [--batch 8] [--batches 16x1 32x1 32x2] [--tiny]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_gpu, a sibling script
from bench_gpu import LR, TINY_ADM, environment, forward_gflop, interleaved, sync, with_mixed_precision  # noqa: E402

from diffusion_transfer.core.allocator import tune_malloc_at_startup  # noqa: E402
from diffusion_transfer.core.methods import build_method  # noqa: E402
from diffusion_transfer.core.models import build_unet  # noqa: E402
from diffusion_transfer.core.models.adm import FFHQ_P2, adm_unet_config  # noqa: E402
from diffusion_transfer.core.schedule import make_schedule  # noqa: E402
from diffusion_transfer.core.training.run import enable_tf32, restore_tf32  # noqa: E402

ARMS = ["base", "tf32", "channels_last", "fused_adamw", "compile"]
#: Dense bf16 peak TFLOP/s (no sparsity) by a substring of torch.cuda.get_device_name, first match wins.
PEAKS = [("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("A100", 312.0), ("L40S", 362.1)]
#: Single-image forwards per target image in a step: naive 1 fwd + bwd (2 fwd) = 3; SDFT 3 over 2B + teacher 2B.
FORWARDS = {"naive": 3, "sdft": 8}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for results.json and results.md")
    ap.add_argument("--tiny", action="store_true", help="a 16 px ADM, batch 2; CPU allowed")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=None, help="batch of the arms (default 8 = conf/paper; tiny 2)")
    ap.add_argument("--batches", nargs="*", default=None, help="BxA entries for the last arm (default 16x1 32x1 32x2)")
    ap.add_argument("--arms", nargs="+", default=ARMS, choices=ARMS, help="arms to run, cumulative in ARMS order")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up rounds (default 3; tiny 1)")
    ap.add_argument("--repeats", type=int, default=None, help="timed interleaved rounds (default 10; tiny 2)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16 peak, if not in PEAKS")
    ap.add_argument("--budget-s", type=float, default=420.0, help="skip the batch sweep entries past this")
    args = ap.parse_args(argv)
    tiny = {"batch": 2, "batches": ["4x2"], "warmup": 1, "repeats": 2}
    full = {"batch": 8, "batches": ["16x1", "32x1", "32x2"], "warmup": 3, "repeats": 10}
    for key, value in (tiny if args.tiny else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if not args.tiny and args.device == "cpu":
        raise SystemExit("the 256 px model is for a GPU: pass --tiny to run on the CPU")
    return args


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override is not None or device.type != "cuda":
        return override
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAKS if key in name), None)


@contextlib.contextmanager
def tf32_on(device: torch.device, enabled: bool) -> Iterator[None]:
    """TF32 for the duration of one step, as ``train.tf32`` sets it for a run: arms are interleaved."""
    saved = enable_tf32(device) if enabled else None
    try:
        yield
    finally:
        restore_tf32(saved)


def make_step(model: torch.nn.Module, method: str, batch: int, accumulate: int, arm: str,
              device: torch.device, size: int) -> Callable[[], None]:
    """One optimiser step of ``method`` with every setting up to ``arm``, on its own model copy."""
    on = ARMS[:ARMS.index(arm) + 1]
    spec = build_method(method, {"preset": "metfaces", "teacher_dtype": "bf16"} if method == "sdft" else {},
                        make_schedule())
    student = spec.build_student(copy.deepcopy(model)).train()
    teacher = copy.deepcopy(model).eval().requires_grad_(False) if method == "sdft" else None
    layout = torch.channels_last if "channels_last" in on else torch.contiguous_format
    for net in (student, teacher):
        if net is not None:
            net.to(memory_format=layout)
    if "compile" in on:
        student.compile()
    student = with_mixed_precision(student, torch.bfloat16, device)
    opt = torch.optim.AdamW(student.parameters(), lr=LR, fused=True if "fused_adamw" in on else None)
    gen = torch.Generator(device=device).manual_seed(0)
    micro = batch // accumulate
    images = (torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(device)
    chunks = [c.contiguous(memory_format=layout) for c in images.split(micro)]

    def step() -> None:
        with tf32_on(device, "tf32" in on):
            for chunk in chunks:
                loss = spec.loss_fn(student, chunk, teacher=teacher, generator=gen)["loss"] / accumulate
                loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    return step


def first_call_s(step: Callable[[], None], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    step()
    sync(device)
    return time.perf_counter() - start


def rates(entry: dict[str, Any], method: str, batch: int, gflop: float, peak: float | None) -> dict[str, Any]:
    tflops = FORWARDS[method] * batch * gflop / entry["median_s"] / 1e3
    return {**entry, "images_per_s": batch / entry["median_s"], "model_tflop_per_s": tflops,
            "mfu": tflops / peak if peak else None}


def bench_arms(model, args, device, gflop, peak, size) -> dict[str, Any]:
    steps, first = {}, {}
    for arm in args.arms:
        for method in FORWARDS:
            step = make_step(model, method, args.batch, 1, arm, device, size)
            first[f"{method}/{arm}"] = first_call_s(step, device)  # compiling, for the compile arm
            steps[f"{method}/{arm}"] = step
    runs = interleaved(steps, args.warmup, args.repeats, device)
    out = {name: {**rates(entry, name.split("/")[0], args.batch, gflop, peak), "first_call_s": first[name]}
           for name, entry in runs.items()}
    ratios = {arm: out[f"sdft/{arm}"]["median_s"] / out[f"naive/{arm}"]["median_s"] for arm in args.arms}
    return {"batch": args.batch, "runs": out, "sdft_over_naive": ratios}


def bench_batches(model, args, device, gflop, peak, size, started) -> dict[str, Any]:
    arm, out = args.arms[-1], {}
    for entry in args.batches:
        batch, accumulate = (int(v) for v in entry.split("x"))
        if time.perf_counter() - started > args.budget_s:
            out[entry] = {"skipped": f"budget {args.budget_s:.0f} s"}
            continue
        try:
            steps = {m: make_step(model, m, batch, accumulate, arm, device, size) for m in FORWARDS}
            runs = interleaved(steps, args.warmup, args.repeats, device)
            out[entry] = {m: rates(r, m, batch, gflop, peak) for m, r in runs.items()}
        except torch.OutOfMemoryError:
            out[entry] = {"skipped": "out of memory"}
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {"arm": arm, "entries": out}


def to_markdown(results: dict[str, Any]) -> str:
    env, peak = results["environment"], results["peak_tflops"]
    pct = (lambda r: "-" if r.get("mfu") is None else f"{100 * r['mfu']:.1f}%")
    lines = [f"# Training-step MFU: {results['model']}", "", f"Device: {env.get('gpu', env['device'])}, torch "
             f"{env['torch']}; dense bf16 peak {peak if peak else 'unknown'} TFLOP/s; bf16 autocast student.", "",
             f"## Settings added one at a time, batch {results['arms']['batch']}", "",
             "| step / arm | median ms | images/s | model TFLOP/s | MFU | first call s |", "|---|---|---|---|---|---|"]
    lines += [f"| {name} | {r['median_s'] * 1e3:.1f} | {r['images_per_s']:.1f} | {r['model_tflop_per_s']:.1f} | "
              f"{pct(r)} | {r['first_call_s']:.1f} |" for name, r in results["arms"]["runs"].items()]
    lines += ["", "SDFT / naive: " + ", ".join(f"{a} {v:.2f}" for a, v in results["arms"]["sdft_over_naive"].items()),
              "", f"## Batch (x micro-batches accumulated), arm {results['batches']['arm']}", "",
              "| batch | step | median ms | images/s | model TFLOP/s | MFU |", "|---|---|---|---|---|---|"]
    for entry, res in results["batches"]["entries"].items():
        if "skipped" in res:
            lines.append(f"| {entry} | - | {res['skipped']} | | | |")
            continue
        lines += [f"| {entry} | {m} | {r['median_s'] * 1e3:.1f} | {r['images_per_s']:.1f} | "
                  f"{r['model_tflop_per_s']:.1f} | {pct(r)} |" for m, r in res.items()]
    return "\n".join(lines + ["", f"Total wall time {results['wall_s']:.0f} s.", ""])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tune_malloc_at_startup()
    started, device = time.perf_counter(), torch.device(args.device)
    config = adm_unet_config(TINY_ADM if args.tiny else FFHQ_P2)
    torch.manual_seed(0)
    model = build_unet(config).to(device)
    gflop, peak = forward_gflop(config), peak_tflops(device, args.peak_tflops)
    results: dict[str, Any] = {"model": f"ADM {config['sample_size']} px, random init, {gflop:.1f} GFLOP a forward",
                               "environment": environment(device), "peak_tflops": peak, "forward_gflop": gflop}
    results["arms"] = bench_arms(model, args, device, gflop, peak, config["sample_size"])
    results["batches"] = bench_batches(model, args, device, gflop, peak, config["sample_size"], started)
    results["wall_s"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    text = to_markdown(results)
    (args.out / "results.md").write_text(text)
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
