"""Time an SDFT training step against a naive step at the same batch size.

One optimiser step = loss (forwards) + backward + AdamW step. The SDFT step
uses an auxiliary batch of the same size (one student forward and one teacher
forward over 2B), so its floor on CPU is about 2.5x a naive step. Timings of
the two kinds are interleaved (after warm-up) and the ratio of the medians is
printed; the script exits non-zero when it exceeds ``--max-ratio``.

    python benchmarks/bench_steps.py [--model FOLDER] [--batch 16] [--repeats 10]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

from diffusion_transfer.core.methods import DenoisingLoss, SDFTLoss
from diffusion_transfer.core.models import build_unet, load_unet
from diffusion_transfer.core.schedule import make_schedule

DEFAULT_MODEL = Path("data/06_models/world/source")
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
    ap.add_argument("--max-ratio", type=float, default=2.7)
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
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    losses = {"naive": DenoisingLoss(schedule), "sdft": SDFTLoss(schedule, teacher_dtype=args.teacher_dtype)}
    gen = torch.Generator(device=device).manual_seed(0)

    def step(kind: str) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        terms = losses[kind](model, images, teacher=teacher, generator=gen)
        terms["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for _ in range(args.warmup):
        step("naive")
        step("sdft")
    times: dict[str, list[float]] = {"naive": [], "sdft": []}
    for i in range(args.repeats):
        for kind in (("naive", "sdft") if i % 2 == 0 else ("sdft", "naive")):
            times[kind].append(step(kind))

    naive, sdft = statistics.median(times["naive"]), statistics.median(times["sdft"])
    ratio = sdft / naive
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {what} ({n_params / 1e6:.2f}M params, {size}x{size}), device {device}, "
          f"threads {torch.get_num_threads()}, batch {args.batch} (+{args.batch} aux for SDFT), "
          f"{args.repeats} interleaved repeats after {args.warmup} warm-up, teacher dtype {args.teacher_dtype or 'as student'}")
    print(f"naive step: median {naive * 1e3:.1f} ms")
    print(f"sdft  step: median {sdft * 1e3:.1f} ms")
    print(f"ratio sdft/naive: {ratio:.2f} (max {args.max_ratio})")
    if ratio > args.max_ratio:
        print(f"FAIL: ratio {ratio:.2f} > {args.max_ratio}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
