"""Time each method's training step against a naive step at the same batch size.

One optimiser step = loss (forwards) + backward + AdamW step over the method's
trainable parameters. The SDFT step uses an auxiliary batch of the same size
(one student forward and one teacher forward over 2B), so its floor on CPU is
about 2.5x a naive step; the parameter-efficient methods (attn, a3ft, anl,
anl_uncond) run one forward over B with the adapters attached; a TAN step adds
J = 10 adversarial forward+backward passes w.r.t. the noise and one classifier
gradient (about J + 1 passes). Timings of all
methods are interleaved (after warm-up) and the ratio of each median to the
naive median is printed; the script exits non-zero when the SDFT ratio exceeds
``--max-ratio``.

    python benchmarks/bench_steps.py [--model FOLDER] [--batch 16] [--repeats 10] [--methods sdft a3ft]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

from diffusion_transfer.core.methods import build_method, method_names
from diffusion_transfer.core.models.domain_classifier import DomainClassifier
from diffusion_transfer.core.models import build_unet, load_unet
from diffusion_transfer.core.schedule import make_schedule

DEFAULT_MODEL = Path("data/06_models/world/source")
# every method but the two naive-loss baselines, each timed against naive
ALL_METHODS = tuple(m for m in method_names() if m not in ("scratch", "naive"))
CONDITION_DIM = 128  # the world CLIP's embedding size (ANL's condition)
FACEWORLD_SOURCE = dict(
    sample_size=32,
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    attention_head_dim=32,
    norm_num_groups=16,
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help=f"UNet folder (default: {DEFAULT_MODEL} if present)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--teacher-dtype", default=None, help="SDFTLoss teacher_dtype (e.g. bfloat16, half); default: student's")
    ap.add_argument("--max-ratio", type=float, default=2.7, help="bar for the SDFT/naive ratio")
    ap.add_argument("--methods", nargs="+", default=list(ALL_METHODS), choices=ALL_METHODS,
                    help="methods to time against naive (default: all fine-tuning methods)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    folder = args.model or (DEFAULT_MODEL if DEFAULT_MODEL.is_dir() else None)
    if folder is not None:
        model, what = load_unet(folder), str(folder)
    else:
        torch.manual_seed(0)
        model, what = build_unet(FACEWORLD_SOURCE), "FaceWorld source config (random init)"
    device = torch.device(args.device)
    model.to(device).train()
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    size = model.config.sample_size
    images = (torch.rand(args.batch, 3, size, size, device=device) * 2 - 1)
    schedule = make_schedule()
    gen = torch.Generator(device=device).manual_seed(0)
    methods = ["naive"] + [m for m in args.methods if m != "naive"]

    runs = {}
    for name in methods:
        params = {"teacher_dtype": args.teacher_dtype} if name == "sdft" and args.teacher_dtype else {}
        spec = build_method(name, params, schedule)
        if spec.needs_classifier:  # TAN: a domain classifier of the project's default size (random init)
            torch.manual_seed(0)
            spec = spec.with_classifier(DomainClassifier(sample_size=size).to(device))
        torch.manual_seed(0)
        student = spec.build_student(copy.deepcopy(model), CONDITION_DIM if spec.conditional else None).to(device)
        student.train()
        trainable = [p for p in student.parameters() if p.requires_grad]
        cond = torch.randn(args.batch, CONDITION_DIM, device=device) if spec.conditional else None
        runs[name] = (student, spec.loss_fn, torch.optim.AdamW(trainable, lr=1e-6), cond,
                      sum(p.numel() for p in trainable))

    def step(name: str) -> float:
        student, loss_fn, opt, cond, _ = runs[name]
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        kw = {"condition": cond} if cond is not None else {}
        terms = loss_fn(student, images, teacher=teacher, generator=gen, **kw)
        terms["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for _ in range(args.warmup):
        for name in methods:
            step(name)
    times: dict[str, list[float]] = {name: [] for name in methods}
    for i in range(args.repeats):
        for name in (methods if i % 2 == 0 else methods[::-1]):
            times[name].append(step(name))

    medians = {name: statistics.median(ts) for name, ts in times.items()}
    naive = medians["naive"]
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {what} ({n_params / 1e6:.2f}M params, {size}x{size}), device {device}, "
          f"threads {torch.get_num_threads()}, batch {args.batch} (+{args.batch} aux for SDFT), "
          f"{args.repeats} interleaved repeats after {args.warmup} warm-up, teacher dtype {args.teacher_dtype or 'as student'}")
    print(f"{'method':<11} {'median step':>12} {'ratio to naive':>15} {'trainable params':>17}")
    for name in methods:
        print(f"{name:<11} {medians[name] * 1e3:>9.1f} ms {medians[name] / naive:>15.2f} "
              f"{runs[name][4]:>17,}")
    if "sdft" not in medians:
        return 0
    ratio = medians["sdft"] / naive
    print(f"ratio sdft/naive: {ratio:.2f} (max {args.max_ratio})")
    if ratio > args.max_ratio:
        print(f"FAIL: ratio {ratio:.2f} > {args.max_ratio}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
