"""Time each method's training step against a naive step at the same batch size.

One optimiser step = loss (forwards) + backward + AdamW step over the method's
trainable parameters. Two modes:

- the SDFT grid (default; ``make bench``): SDFT against naive at batch 16 and
  64, 32 px and 64 px (``--configs``), all configurations timed side by side
  in one run, interleaved, each ratio printed against its bar (2.7 at batch 16,
  32 px; 2.8 at batch 64 or 64 px), with the peak memory of SDFT and naive at
  batch 64 (one process per configuration) and the floor that the two-model
  structure of SDFT sets, measured from its parts in the same run;
- one batch, every method (``--batch B``): the parameter-efficient methods
  (attn, a3ft, anl, anl_uncond) run one forward over B with the adapters
  attached; a TAN step adds J = 10 adversarial forward+backward passes w.r.t.
  the noise and one classifier gradient (about J + 1 passes).

The model is the FaceWorld source UNet (``data/06_models/world/source``, else
its config at random init); 64 px runs the same network on 64 px inputs. The
script exits non-zero when an SDFT ratio exceeds its bar.

    python benchmarks/bench_steps.py [--configs 16x32 64x32 16x64 64x64] [--repeats 5] [--sdft-preset aahq]
    python benchmarks/bench_steps.py --batch 16 [--methods sdft a3ft]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from diffusion_transfer.core.allocator import tune_malloc_at_startup
from diffusion_transfer.core.methods import build_method
from diffusion_transfer.core.methods.registry import methods_for
from diffusion_transfer.core.models import build_unet, load_unet, model_output
from diffusion_transfer.core.models.domain_classifier import DomainClassifier
from diffusion_transfer.core.schedule import make_schedule

DEFAULT_MODEL = Path("data/06_models/world/source")
# every method of a pixel model but the two naive-loss baselines, each timed against naive
# (DreamBooth trains text-to-image models only: benchmarks/bench_text_to_image.py times it)
ALL_METHODS = tuple(m for m in methods_for(text_to_image=False) if m not in ("scratch", "naive"))
CONDITION_DIM = 128  # the world CLIP's embedding size (ANL's condition)
GRID = ("16x32", "64x32", "16x64", "64x64")
FACEWORLD_SOURCE = dict(
    sample_size=32,
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    attention_head_dim=32,
    norm_num_groups=16,
)
FLOOR_NOTE = """\
What sets the floor: an SDFT step runs the frozen teacher forward over 2B
(x_t and the auxiliary pure-noise batch, no autograd) and the student forward
and backward over 2B; a naive step runs the student forward and backward over
B. Both end with the same AdamW step. So SDFT's floor is
    (teacher forward over 2B + naive step over 2B) / naive step over B,
measured above from those parts in the same interleaved run: about 8/3 when
cost is linear in the batch and a backward costs two forwards, less where a
small batch leaves the cores idle, more where a larger batch spills the
caches. skip_distill_below removes the teacher and auxiliary rows whose weight
is negligible (3.5% of timesteps with MetFaces' gamma 3, 37% with AAHQ's
gamma 50), which moves SDFT below that floor by as much."""


def bar_for(batch: int, px: int) -> float:
    """The issue's bars: 2.7 at batch 16 and 32 px, 2.8 at batch 64 or 64 px."""
    return 2.7 if batch <= 16 and px <= 32 else 2.8


def parse_config(text: str) -> tuple[int, int]:
    try:
        batch, px = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"a configuration is BATCHxPIXELS, e.g. 16x32; got {text!r}") from exc
    return batch, px


def load_model(folder: Path | None) -> tuple[torch.nn.Module, str]:
    folder = folder or (DEFAULT_MODEL if DEFAULT_MODEL.is_dir() else None)
    if folder is not None:
        return load_unet(folder), str(folder)
    torch.manual_seed(0)
    return build_unet(FACEWORLD_SOURCE), "FaceWorld source config (random init)"


def build_run(name: str, model, teacher, batch: int, px: int, device, sdft_params: dict) -> dict:
    """One timed thing: a method's optimiser step, or a part of SDFT's floor
    (``naive@2B``: a naive step over 2B; ``teacher@2B``: the teacher forward)."""
    images = torch.rand(batch, 3, px, px, generator=torch.Generator().manual_seed(batch + px)).to(device) * 2 - 1
    gen = torch.Generator(device=device).manual_seed(0)
    schedule = make_schedule()
    if name == "teacher@2B":
        x2 = torch.cat([images, images])
        t2 = torch.randint(0, schedule.num_timesteps, (2 * batch,), generator=torch.Generator().manual_seed(1))

        def teacher_forward():
            with torch.no_grad():
                model_output(teacher, x2, t2.to(device))
        return {"step": teacher_forward, "params": 0}
    method = "naive" if name == "naive@2B" else name
    spec = build_method(method, sdft_params if method == "sdft" else {}, schedule)
    if spec.needs_classifier:  # TAN: a domain classifier of the project's default size (random init)
        torch.manual_seed(0)
        spec = spec.with_classifier(DomainClassifier(sample_size=px).to(device))
    torch.manual_seed(0)
    student = spec.build_student(copy.deepcopy(model), CONDITION_DIM if spec.conditional else None).to(device)
    student.train()
    trainable = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-6)
    cond = torch.randn(batch, CONDITION_DIM, device=device) if spec.conditional else None
    kw = {"condition": cond} if cond is not None else {}
    x = torch.cat([images, images]) if name == "naive@2B" else images

    def step():
        terms = spec.loss_fn(student, x, teacher=teacher, generator=gen, **kw)
        terms["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {"step": step, "params": sum(p.numel() for p in trainable)}


def time_interleaved(runs: dict, warmup: int, repeats: int, device, clock=time.perf_counter) -> dict:
    """Median seconds of each run; every repeat visits all runs, in alternating order."""
    def timed(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = clock()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return clock() - t0

    keys = list(runs)
    for _ in range(warmup):
        for k in keys:
            runs[k]["step"]()
    times: dict = {k: [] for k in keys}
    for i in range(repeats):
        for k in (keys if i % 2 == 0 else keys[::-1]):
            times[k].append(timed(runs[k]["step"]))
    return {k: statistics.median(ts) for k, ts in times.items()}


def rss_kib(field: str) -> int:
    """A memory field of this process from /proc/self/status (VmRSS, VmHWM), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def ran_as_memory_child(args, measure) -> bool:
    """Set the process up as a Kedro run would (malloc tuning, ``--threads``);
    for ``--memory-child``, print ``measure(args)`` as JSON and say so."""
    tune_malloc_at_startup()  # as a Kedro run would (project/startup.py)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        print(json.dumps(measure(args)))
        return True
    return False


def memory_child(args) -> dict:
    """One process, one configuration: peak memory of a method's steps."""
    device = torch.device(args.device)
    model, _ = load_model(args.model)
    model.to(device).train()
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    run = build_run(args.memory_child, model, teacher, args.batch, args.px, device, sdft_params(args))
    before = rss_kib("VmRSS")
    for _ in range(2):
        run["step"]()
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else rss_kib("VmHWM") / 1024
    return {"peak_mb": peak, "step_mb": peak - (0 if device.type == "cuda" else before / 1024),
            "what": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "peak RSS (VmHWM)"}


def measure_memory(args, batch: int, px: int, name: str) -> dict:
    cmd = [sys.executable, __file__, "--memory-child", name, "--batch", str(batch), "--px", str(px),
           "--device", args.device] + (["--model", str(args.model)] if args.model else []) + \
          (["--threads", str(args.threads)] if args.threads else []) + \
          (["--sdft-preset", args.sdft_preset] if args.sdft_preset else []) + \
          (["--teacher-dtype", args.teacher_dtype] if args.teacher_dtype else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory measurement of {name} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def sdft_params(args) -> dict:
    params = {"teacher_dtype": args.teacher_dtype} if args.teacher_dtype else {}
    return {**params, "preset": args.sdft_preset} if args.sdft_preset else params


def report_config(batch, px, methods, medians, runs, max_ratio, grid) -> list[str]:
    """Print one configuration's table; returns the failures."""
    naive = medians[(batch, px, "naive")]
    print(f"\nbatch {batch} (+{batch} aux for SDFT), {px}x{px}")
    print(f"{'method':<11} {'median step':>12} {'ratio to naive':>15} {'trainable params':>17}")
    for name in ["naive"] + methods:
        m = medians[(batch, px, name)]
        print(f"{name:<11} {m * 1e3:>9.1f} ms {m / naive:>15.2f} {runs[(batch, px, name)]['params']:>17,}")
    if "sdft" not in methods:
        return []
    ratio = medians[(batch, px, "sdft")] / naive
    bar = max_ratio if max_ratio is not None else bar_for(batch, px)
    print(f"ratio sdft/naive: {ratio:.2f} (max {bar}) at batch {batch}, {px} px")
    if grid:
        floor = (medians[(batch, px, "teacher@2B")] + medians[(batch, px, "naive@2B")]) / naive
        print(f"floor: (teacher forward over 2B {medians[(batch, px, 'teacher@2B')] * 1e3:.1f} ms + naive step "
              f"over 2B {medians[(batch, px, 'naive@2B')] * 1e3:.1f} ms) / naive step {naive * 1e3:.1f} ms "
              f"= {floor:.2f}; sdft/floor {ratio / floor:.2f}")
    return [f"ratio {ratio:.2f} > {bar} at batch {batch}, {px} px"] if ratio > bar else []


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help=f"UNet folder (default: {DEFAULT_MODEL} if present)")
    ap.add_argument("--configs", nargs="+", type=parse_config, default=None,
                    help=f"BATCHxPIXELS configurations for the SDFT grid (default: {' '.join(GRID)})")
    ap.add_argument("--batch", type=int, default=None, help="one batch at the model's size, every method")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--teacher-dtype", default=None, help="SDFTLoss teacher_dtype (e.g. bfloat16, half); default: student's")
    ap.add_argument("--sdft-preset", default=None, help="SDFT Table 5 preset (metfaces, aahq); default: SDFTLoss's (MetFaces)")
    ap.add_argument("--max-ratio", type=float, default=None, help="one bar for every SDFT/naive ratio (default: 2.7 / 2.8)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: elapsed time; cpu: this process's CPU time (with --threads 1 the work done, "
                         "little affected by other jobs on a shared machine)")
    ap.add_argument("--memory-batch", type=int, default=64, help="configurations at this batch get a peak-memory row")
    ap.add_argument("--methods", nargs="+", default=None, choices=ALL_METHODS,
                    help="methods to time against naive (default: sdft in the grid, all with --batch)")
    ap.add_argument("--memory-child", help=argparse.SUPPRESS)
    ap.add_argument("--px", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if ran_as_memory_child(args, memory_child):
        return 0

    model, what = load_model(args.model)
    device = torch.device(args.device)
    model.to(device).train()
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    grid = args.batch is None
    configs = (args.configs or [parse_config(c) for c in GRID]) if grid else [(args.batch, model.config.sample_size)]
    methods = args.methods or (["sdft"] if grid else list(ALL_METHODS))
    names = ["naive"] + methods + (["naive@2B", "teacher@2B"] if grid and "sdft" in methods else [])
    runs = {(b, px, n): build_run(n, model, teacher, b, px, device, sdft_params(args))
            for b, px in configs for n in names}
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    medians = time_interleaved(runs, args.warmup, args.repeats, device, clock)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {what} ({n_params / 1e6:.2f}M params), device {device}, threads {torch.get_num_threads()}, "
          f"{'CPU time' if args.clock == 'cpu' else 'wall time'}, "
          f"{args.repeats} interleaved repeats after {args.warmup} warm-up, teacher dtype "
          f"{args.teacher_dtype or 'as student'}, sdft {sdft_params(args) or 'defaults (MetFaces preset)'}")
    failures = []
    for b, px in configs:
        failures += report_config(b, px, methods, medians, runs, args.max_ratio, grid)
    if grid and "sdft" in methods:
        for b, px in [c for c in configs if c[0] == args.memory_batch]:
            mem = {n: measure_memory(args, b, px, n) for n in ("naive", "sdft")}
            print(f"peak memory at batch {b}, {px} px ({mem['sdft']['what']}, one process each): sdft "
                  f"{mem['sdft']['peak_mb']:.0f} MB (+{mem['sdft']['step_mb']:.0f} MB for the steps), naive "
                  f"{mem['naive']['peak_mb']:.0f} MB (+{mem['naive']['step_mb']:.0f} MB); "
                  f"sdft/naive step memory {mem['sdft']['step_mb'] / max(mem['naive']['step_mb'], 1e-9):.2f}")
        print("\n" + FLOOR_NOTE)
    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
