"""Two independent nodes: one after the other on every core, or side by side.

The demo's two longest nodes are independent: SDFT fine-tuning (batch 16 + 16
auxiliary, AAHQ preset) and the noisy domain classifier (batch 64). This
times ``steps`` optimiser steps of each as a two-node Kedro pipeline in three
layouts, alternating ``--repeats`` times:

- Kedro's ``SequentialRunner``, each node on every core (``kedro run``'s default);
- Kedro's ``ThreadRunner``, both nodes at once on every core each (the cores
  oversubscribed);
- ``ThreadRunner`` with each node on ``cores // 2`` threads (set by the node;
  a different thread count adds float sums in another order, so the numbers
  move in the last digits and training carries that into the metrics).

It prints the median walls, each node's own time, and each layout's ratio to
the sequential one: what running the demo's branches side by side could save.

    python benchmarks/bench_runner.py [--sdft-steps 40] [--classifier-steps 120] [--repeats 2]
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Pipeline, node
from kedro.runner import SequentialRunner, ThreadRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_steps import build_run, load_model  # noqa: E402

from diffusion_transfer.core.allocator import tune_malloc_at_startup  # noqa: E402
from diffusion_transfer.core.models.domain_classifier import DomainClassifier  # noqa: E402

CLASSIFIER_CONF = Path(__file__).resolve().parents[1] / "conf" / "base" / "parameters_classifier.yml"


def classifier_step_fn():
    """One optimiser step of the demo's domain classifier (its network, batch and lr from base)."""
    clf_conf = yaml.safe_load(CLASSIFIER_CONF.read_text())["classifier"]
    batch = clf_conf["train"]["batch_size"]
    torch.manual_seed(0)
    clf = DomainClassifier(sample_size=32, **clf_conf["network"])
    opt = torch.optim.AdamW(clf.parameters(), lr=clf_conf["train"]["lr"])
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, 32, 32, generator=gen) * 2 - 1
    t = torch.randint(0, 1000, (batch,), generator=gen)
    y = torch.randint(0, 2, (batch,), generator=gen)

    def step():
        torch.nn.functional.cross_entropy(clf(x, t), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def steps_node(step, n: int, threads: int):
    def run() -> float:
        torch.set_num_threads(threads)  # this thread's own setting
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        return time.perf_counter() - t0
    return run


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Print the table; returns each layout's ratio to the sequential one."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="UNet folder (default: the FaceWorld source model)")
    ap.add_argument("--sdft-steps", type=int, default=40)
    ap.add_argument("--classifier-steps", type=int, default=120)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    tune_malloc_at_startup()  # as a Kedro run would (project/startup.py)
    logging.getLogger("kedro").setLevel(logging.WARNING)  # the table, not the runners' node logs
    cores, before = os.cpu_count() or 1, torch.get_num_threads()
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    half = max(1, cores // 2)
    model, where = load_model(args.model)
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    sdft = build_run("sdft", model, teacher, 16, 32, torch.device("cpu"), {"preset": "aahq"})["step"]
    clf = classifier_step_fn()
    for step in (sdft, clf):  # warm-up at both thread counts
        for threads in (cores, half):
            torch.set_num_threads(threads)
            step()
    layouts = {  # name: (runner, torch threads per node)
        f"SequentialRunner, {cores} thread(s)": (SequentialRunner, cores),
        f"ThreadRunner, 2 x {cores} thread(s)": (lambda: ThreadRunner(max_workers=2), cores),
        f"ThreadRunner, 2 x {half} thread(s)": (lambda: ThreadRunner(max_workers=2), half),
    }
    walls: dict[str, list[float]] = {name: [] for name in layouts}
    parts: dict[str, dict[str, list[float]]] = {name: {"sdft_s": [], "classifier_s": []} for name in layouts}
    for i in range(args.repeats):
        for name in (list(layouts) if i % 2 == 0 else list(layouts)[::-1]):
            make_runner, threads = layouts[name]
            pipe = Pipeline([node(steps_node(sdft, args.sdft_steps, threads), None, "sdft_s", name="finetune"),
                             node(steps_node(clf, args.classifier_steps, threads), None, "classifier_s",
                                  name="classifier")])
            catalog = DataCatalog({k: MemoryDataset(copy_mode="assign") for k in ("sdft_s", "classifier_s")})
            t0 = time.perf_counter()
            make_runner().run(pipe, catalog)
            walls[name].append(time.perf_counter() - t0)
            for k in ("sdft_s", "classifier_s"):
                parts[name][k].append(catalog[k].load())
    torch.set_num_threads(before)
    medians = {name: statistics.median(w) for name, w in walls.items()}
    base = medians[next(iter(layouts))]
    print(f"model: {where}; {cores} cores; {args.sdft_steps} SDFT steps (batch 16, AAHQ preset) and "
          f"{args.classifier_steps} classifier steps (batch 64); median of {args.repeats}, alternating")
    print(f"{'layout':<34} {'wall':>8} {'finetune node':>14} {'classifier node':>16} {'ratio':>6}")
    for name, wall in medians.items():
        own = {k: statistics.median(v) for k, v in parts[name].items()}
        print(f"{name:<34} {wall:>7.1f}s {own['sdft_s']:>13.1f}s {own['classifier_s']:>15.1f}s "
              f"{wall / base:>6.2f}")
    return {name: wall / base for name, wall in medians.items()}


if __name__ == "__main__":
    main()
