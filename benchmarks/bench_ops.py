"""Where the demo's steps spend their time on this CPU, by op family, and the floor the matrix ops alone set (issue 35).

``bench_floor.py`` divides a node's wall by its FLOPs in convolutions, matrix
products and attention at the rate of a 2048 x 2048 float32 matrix product.
This benchmark splits one call of each of the demo's workloads (``bench_cpu``'s:
naive and SDFT steps, the domain classifier's step, a DDIM UNet call, an
Inception pass) into op families with torch's profiler:

- ``matrix``: convolutions, matrix products and attention, forward and backward
  (the ops the floor counts);
- ``norm``: group, layer and batch normalisation, forward and backward;
- ``optimizer``: everything inside ``Optimizer.step``;
- ``other``: the rest (activations, elementwise arithmetic, copies, the loss).

Each family's time is the inclusive time of its outermost op (a matrix product
inside attention counts once). The ``matrix / floor`` column is the matrix
ops' own time over their floor: with every other op free, a workload could not
get below it, so it bounds what fusing elementwise work can reach. The floor's
rate is measured between the workload's timed calls. The profiler adds a few
microseconds an op; the profiled wall is printed beside the unprofiled median.

    python benchmarks/bench_ops.py [--repeats 3] [--workloads "naive step" ...] [--top 12] [--loop-steps 60]
                                   [--counter-cost]

``--top N`` then lists, per workload, the N ops of ``other`` with the most time of their own (ops nested in a
family's op are that family's), to show what fusing could remove. ``--loop-steps N`` times the domain
classifier's step inside core's ``train()`` against the same step bare: what the loop adds around a step.
``--counter-cost`` times each workload with ``bench_floor.py``'s FLOP counter off and on: what counting adds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cpu import (  # noqa: E402
    add_workload_arguments, classifier_params, classifier_step, inception_pass, interleaved, start, train_step,
    unet_call,
)
from bench_floor import MatrixFlopCounter, matmul_peak_gflops  # noqa: E402

from diffusion_transfer.core.cpu_precision import cpu_bf16  # noqa: E402
from diffusion_transfer.core.models.domain_classifier import DomainClassifier  # noqa: E402
from diffusion_transfer.core.schedule import make_schedule  # noqa: E402
from diffusion_transfer.core.training.config import TrainConfig  # noqa: E402
from diffusion_transfer.core.training.domain_classifier import domain_classifier_loss  # noqa: E402
from diffusion_transfer.core.training.loop import train  # noqa: E402

WORKLOADS = ("naive step", "sdft step", "classifier step", "DDIM UNet call", "Inception pass")
FAMILIES = ("matrix", "norm", "optimizer", "other")
MATRIX_OPS = frozenset({
    "aten::convolution", "aten::convolution_backward", "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm",
    "aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
    "aten::_scaled_dot_product_attention_math",
})
NORM_OPS = frozenset({
    "aten::group_norm", "aten::native_group_norm", "aten::native_group_norm_backward", "aten::layer_norm",
    "aten::native_layer_norm", "aten::native_layer_norm_backward", "aten::batch_norm",
    "aten::native_batch_norm", "aten::native_batch_norm_backward",
})


def family_of(name: str) -> str | None:
    if name in MATRIX_OPS:
        return "matrix"
    if name in NORM_OPS:
        return "norm"
    if name.startswith("Optimizer.step#"):
        return "optimizer"
    return None


def family_seconds(events, wall_s: float) -> dict[str, float]:
    """Seconds in each family: the inclusive time of each event whose family is set and whose ancestors'
    are not; ``other`` is the wall less the rest."""
    out = dict.fromkeys(FAMILIES, 0.0)
    for event in events:
        family = family_of(event.name)
        if family is None:
            continue
        parent, nested = event.cpu_parent, False
        while parent is not None and not nested:
            nested, parent = family_of(parent.name) is not None, parent.cpu_parent
        if not nested:
            out[family] += event.cpu_time_total / 1e6
    out["other"] = max(wall_s - sum(out[f] for f in FAMILIES if f != "other"), 0.0)
    return out


def in_family(event) -> bool:
    """Whether ``event`` or one of its ancestors belongs to a family (its time is counted there)."""
    while event is not None:
        if family_of(event.name) is not None:
            return True
        event = event.cpu_parent
    return False


def other_ops(events, calls: int, other_s: float, top: int) -> list[tuple[str, float]]:
    """The ``top`` parts of ``other`` (``other_s`` seconds a call) by seconds a call: each op outside every
    family by its own (self) time, and what no op accounts for (Python, the loop, the profiler's own cost) as
    ``(outside any op)``."""
    own: dict[str, float] = {}
    for event in events:
        if not in_family(event):
            own[event.name] = own.get(event.name, 0.0) + event.self_cpu_time_total / 1e6 / calls
    own["(outside any op)"] = max(other_s - sum(own.values()), 0.0)
    return sorted(own.items(), key=lambda item: -item[1])[:top]


def matrix_gflop(fn) -> float:
    """GFLOP of one call in the ops the floor counts."""
    counter = MatrixFlopCounter()
    with counter:
        fn()
    return counter.flops / 1e9


def measure(fn, warmup: int, repeats: int, top: int = 0) -> dict:
    """Unprofiled median wall, with the median of the matrix-product rates measured between its calls (the
    cores' speed drifts within minutes on a shared machine), then ``repeats`` calls under the profiler: per
    call, the profiled wall and each family's seconds."""
    for _ in range(warmup):
        fn()
    walls, peaks = [], []
    for _ in range(repeats):
        peaks.append(matmul_peak_gflops(repeats=3))
        t0 = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        profiled = (time.perf_counter() - t0) / repeats
    events = prof.events()
    seconds = family_seconds(events, profiled * repeats)
    return {"wall_s": statistics.median(walls), "peak_gflops": statistics.median(peaks), "profiled_s": profiled,
            **{f: s / repeats for f, s in seconds.items()},
            "other_ops": other_ops(events, repeats, seconds["other"] / repeats, top) if top else []}


def row(name: str, m: dict[str, float], gflop: float) -> str:
    floor = gflop / m["peak_gflops"]
    shares = " | ".join(f"{m[f] / m['profiled_s']:.0%}" for f in FAMILIES)
    return (f"| {name} | {m['wall_s'] * 1e3:,.1f} ms | {m['profiled_s'] * 1e3:,.1f} ms | {shares} | {gflop:,.2f} | "
            f"{gflop / m['matrix']:,.1f} | {m['peak_gflops']:,.1f} | {m['wall_s'] / floor:.2f} | "
            f"**{m['matrix'] / floor:.2f}** |")


def loop_against_bare(batch: int, steps: int, runs: int) -> tuple[float, float]:
    """Median seconds a step of the domain classifier inside core's ``train()`` (the demo's network and
    settings, ``steps`` steps on random images, no checkpoints) and bare (``classifier_step``), in ``runs``
    interleaved runs after one of each: what the loop adds around a step (batch sampling, clipping, the lr,
    logging)."""
    params = classifier_params()
    n = max(2 * batch, 64)
    images = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    labels = (torch.arange(n) >= n // 2).float()
    config = TrainConfig(**{"hflip": True, **params["train"], "batch_size": batch, "steps": steps,  # hflip: the
                            "seed": 0, "checkpoint_every": steps + 1})  # node's default

    def in_loop() -> float:
        torch.manual_seed(0)
        net = DomainClassifier(sample_size=32, **params["network"])
        t0 = time.perf_counter()
        train(net, domain_classifier_loss(make_schedule()), images, config, conditions=labels, progress=False)
        return (time.perf_counter() - t0) / steps

    def bare() -> float:
        step = classifier_step(batch, params["train"].get("channels_last", False))
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        return (time.perf_counter() - t0) / steps

    in_loop(), bare()
    timed = [(in_loop(), bare()) for _ in range(runs)]
    return statistics.median(t for t, _ in timed), statistics.median(b for _, b in timed)


def counter_cost(fn, warmup: int, repeats: int) -> tuple[float, float]:
    """Median seconds of ``fn`` without and with bench_floor's FLOP counter, interleaved: what counting adds
    to the walls of a counted bench_floor run."""
    def counted():
        with MatrixFlopCounter():
            fn()
    med, _ = interleaved({"plain": fn, "counted": counted}, warmup, repeats)
    return med["plain"], med["counted"]


def build(name: str, model, args):
    if name in ("naive step", "sdft step"):
        return train_step(name.split()[0], model, args.batch, None, False, args.channels_last)
    if name == "classifier step":
        return classifier_step(args.classifier_batch, args.channels_last)
    if name == "DDIM UNet call":
        return unet_call(model, args.sample_batch, None, False, args.channels_last)
    return inception_pass(args.inception_batch, None, False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_workload_arguments(ap, inception_batch=64, repeats=3)  # evaluation's Inception batch
    ap.add_argument("--contiguous", dest="channels_last", action="store_false",
                    help="contiguous weights (the demo's default is channels-last)")
    ap.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    ap.add_argument("--top", type=int, default=0, metavar="N",
                    help="after the table, each workload's N costliest ops of 'other' by their own time")
    ap.add_argument("--loop-steps", type=int, default=0, metavar="N",
                    help="also time N classifier steps inside train() against N bare ones (3 interleaved runs)")
    ap.add_argument("--counter-cost", action="store_true",
                    help="also time each workload with bench_floor's FLOP counter on and off, interleaved")
    args = ap.parse_args(argv)
    model, what = start(args)
    print(f"CPU: {cpu_bf16().describe()}; threads {torch.get_num_threads()}; torch {torch.__version__}; "
          f"model: {what}; weights {'channels-last' if args.channels_last else 'contiguous'}, fp32, eager")
    print("peak: the fp32 2048 x 2048 matrix product's rate (the floor's), median of its runs between the "
          "workload's timed calls\n")
    print("| workload | wall | profiled | " + " | ".join(FAMILIES) + " | GFLOP | matrix GFLOP/s | peak GFLOP/s "
          "| wall / floor | matrix / floor |\n|" + "---|" * (8 + len(FAMILIES)))
    breakdowns = []
    for name in args.workloads:
        fn = build(name, model, args)
        m = measure(fn, args.warmup, args.repeats, args.top)
        print(row(name, m, matrix_gflop(fn)), flush=True)
        breakdowns.append((name, m))
    for name, m in breakdowns:
        if args.top:
            print(f"\n{name}, 'other' ({m['other'] * 1e3:,.1f} ms a call): its {args.top} costliest ops by own time")
        for op, op_s in m["other_ops"]:  # empty without --top
            print(f"  {op_s * 1e3:9.2f} ms  {op_s / m['profiled_s']:4.0%}  {op}")
    if args.loop_steps:
        in_loop, bare = loop_against_bare(args.classifier_batch, args.loop_steps, runs=3)
        print(f"\nclassifier step inside train(): {in_loop * 1e3:,.1f} ms against {bare * 1e3:,.1f} ms bare "
              f"(ratio {in_loop / bare:.3f}; medians of 3 interleaved runs of {args.loop_steps} steps)")
    if args.counter_cost:
        print(f"\n## bench_floor's FLOP counter: each workload with it off and on ({args.repeats} interleaved "
              "repeats, medians)\n| workload | plain | counted | counted / plain |\n|---|---|---|---|")
        for name in args.workloads:
            plain, counted = counter_cost(build(name, model, args), args.warmup, args.repeats)
            print(f"| {name} | {plain * 1e3:,.1f} ms | {counted * 1e3:,.1f} ms | **{counted / plain:.2f}** |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
