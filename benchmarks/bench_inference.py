"""Time CPU inference at a large and a small batch, with glibc's malloc as it
starts and as the package tunes it (``diffusion_transfer.core.allocator``).

Two workloads, each configuration in its own process (malloc settings are
process-wide and must precede the big allocations), alternating A/B order:

- sampling: DDIM, ``--steps`` steps, ``--n-samples`` images of the FaceWorld
  source model (``data/06_models/world/source``, else its config at random
  init), at ``--sample-batches`` (default 128 and 8);
- inception: Inception-v3 features (clean-fid preprocessing) of
  ``--n-images`` random 32 px images at ``--inception-batches`` (64 and 4).

For each: wall seconds, user and system CPU seconds of the child, minor page
faults, and the largest difference of its output from the first
configuration's (0 when bit-identical; a change of batch may change the
reduction order).

    python benchmarks/bench_inference.py [--repeats 1] [--workloads sampling inception]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_MODEL = Path("data/06_models/world/source")


def _child(workload: str, batch: int, out: Path, n: int, steps: int) -> dict:
    """Run one workload in this process; save its output to ``out``."""
    import torch

    from diffusion_transfer.core import allocator

    allocator.tune_malloc_at_startup()  # before the workload's allocations; DT_MALLOC_TUNING picks the arm
    t0 = time.perf_counter()
    if workload == "sampling":
        from diffusion_transfer.core.models import build_unet, load_unet
        from diffusion_transfer.core.sampling import make_noise_bank, model_eps_fn, sample_ddim
        from diffusion_transfer.core.schedule import make_schedule

        if DEFAULT_MODEL.is_dir():
            model = load_unet(DEFAULT_MODEL)
        else:
            sys.path.insert(0, str(Path(__file__).parent))
            from bench_steps import FACEWORLD_SOURCE

            torch.manual_seed(0)
            model = build_unet(FACEWORLD_SOURCE)
        model.eval()
        size = int(model.config.sample_size)
        noise = make_noise_bank(n, (3, size, size), seed=1234)
        eps_fn, sched = model_eps_fn(model, make_schedule()), make_schedule()
        t0 = time.perf_counter()
        with torch.no_grad():
            result = torch.cat([sample_ddim(eps_fn, noise[i:i + batch], sched, steps=steps)
                                for i in range(0, n, batch)]).numpy()
    else:
        from diffusion_transfer.core.metrics.extractors import inception_extractor
        from diffusion_transfer.core.metrics.features import extract_features

        extractor = inception_extractor()
        images = np.random.default_rng(0).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        t0 = time.perf_counter()
        result = extract_features(extractor, images, batch_size=batch)
    wall = time.perf_counter() - t0
    np.save(out, result)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"wall_s": wall, "user_s": usage.ru_utime, "sys_s": usage.ru_stime, "minflt": usage.ru_minflt,
            "max_rss_mb": usage.ru_maxrss / 1024, "malloc": allocator.applied_settings()}


def _run(workload: str, batch: int, tuned: bool, args, tmp: Path) -> tuple[dict, np.ndarray]:
    out = tmp / f"{workload}_{batch}_{int(tuned)}.npy"
    env = {**os.environ, "DT_MALLOC_TUNING": "1" if tuned else "0"}
    n = args.n_samples if workload == "sampling" else args.n_images
    cmd = [sys.executable, __file__, "--child", workload, "--batch", str(batch), "--out", str(out),
           "--n", str(n), "--steps", str(args.steps)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{workload} child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), np.load(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", nargs="+", default=["sampling", "inception"], choices=["sampling", "inception"])
    ap.add_argument("--sample-batches", nargs=2, type=int, default=[128, 8])
    ap.add_argument("--inception-batches", nargs=2, type=int, default=[64, 4])
    ap.add_argument("--n-samples", type=int, default=256)
    ap.add_argument("--n-images", type=int, default=256)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--child", choices=["sampling", "inception"], help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, args.batch, args.out, args.n, args.steps)))
        return 0

    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
    print(f"{'workload':<10} {'batch':>5} {'malloc':<7} {'wall s':>7} {'user s':>7} {'sys s':>7} "
          f"{'minor faults':>13} {'max RSS MB':>10} {'max |diff|':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for workload in args.workloads:
            batches = args.sample_batches if workload == "sampling" else args.inception_batches
            configs = [(b, tuned) for tuned in (False, True) for b in batches]
            first = None
            for r in range(args.repeats):
                for batch, tuned in (configs if r % 2 == 0 else configs[::-1]):
                    res, out = _run(workload, batch, tuned, args, Path(tmp))
                    first = out if first is None else first
                    diff = float(np.abs(out.astype(np.float64) - first).max())
                    print(f"{workload:<10} {batch:>5} {'tuned' if tuned else 'glibc':<7} {res['wall_s']:>7.1f} "
                          f"{res['user_s']:>7.1f} {res['sys_s']:>7.1f} {res['minflt']:>13,} "
                          f"{res['max_rss_mb']:>10.0f} {diff:>10.2g}", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} at end; malloc 'tuned': "
          "diffusion_transfer.core.allocator (applied at the child's start; DT_MALLOC_TUNING=0 turns it off)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
