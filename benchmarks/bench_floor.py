"""The floor under a pipeline's wall time: its matrix arithmetic at this machine's peak.

Runs a registered pipeline (default ``sdft_aahq``, what ``make demo`` runs)
through Kedro with a hook that counts each node's floating-point operations
in convolutions, matrix products and attention, forward and backward (with
the formulas of torch's ``FlopCounterMode``; elementwise work such as
normalisation and pooling is not counted). In the same run it times a
2048 x 2048 float32 matrix product on every core, the best rate this machine
reaches (before and after the pipeline; the higher is used). Per node it
prints the wall, the GFLOP, the rate achieved, and the floor: the time those
GFLOP take at the peak rate. Elementwise work, and any rate below the peak,
come on top of the floor. The cores' speed drifts within a run (the product
at 142-184 GFLOP/s on one machine within an hour), so the hook also times the
product right before and right after each node, outside its wall, and prints
each node's floor at the better of those two rates ("peak beside") and the
demo's floor as their sum: a ratio that follows the drift.

The counter passes every torch call through Python, which lengthens the
nodes with many small ops, the training ones most (docs/BENCHMARK.md, "The
counter's own cost"), so walls measured with it on overstate the demo's.
``--uncounted-walls`` runs the pipeline twice, each in a fresh clone: once
counted, for the GFLOP, then without the counter, for the walls and the
peaks beside each node; it prints both tables and each node's counted wall
over its plain one (``make bench`` runs it so):

    python benchmarks/bench_floor.py --fresh-clone --uncounted-walls

Run it where nothing is computed yet (a fresh clone, as the demo is timed):
training nodes resume from their checkpoints and the evaluation reuses cached
features, and both would then count only what is left.

    python benchmarks/bench_floor.py [--pipeline sdft_aahq] [--env base] [--fresh-clone] [--params k=v,...]

It also prints the floor at the bf16 matrix-product rate, measured in the
same run, on a CPU with native bf16 (AVX-512 BF16 or AMX); elsewhere it says
there is none.

A compiled run cannot be counted: Dynamo does not compile while a dispatch
mode is active, so under the counter ``compile: true`` runs eager. Count an
eager run once (``--save eager.json``), then time the compiled one without the
counter, taking each node's GFLOP from that file (compiling does not change
the arithmetic):

    python benchmarks/bench_floor.py --fresh-clone --params train.compile=true,... --flops-from eager.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from kedro.framework.hooks import hook_impl
from omegaconf import OmegaConf
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from diffusion_transfer.core.cpu_precision import cpu_bf16

ROOT = Path(__file__).resolve().parents[1]


class MatrixFlopCounter(TorchDispatchMode):
    """Sums the FLOPs of every op torch has a formula for (convolutions, matrix
    products, attention; forward and backward) run while it is entered."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.flops += int(formula(*args, **kwargs, out_val=out))
        return out


class NodeFlopsHook:
    """Each node's wall and its FLOPs in convolutions, matrix products and attention; with ``peak``, also the
    peak rate measured right before and right after the node (the better of the two, outside its wall)."""

    def __init__(self, echo: bool = False, count: bool = True, peak: Callable[[], float] | None = None) -> None:
        self.echo = echo
        self.count = count  # False: walls only (a compiled run; see the module's docstring)
        self.peak = peak
        self.rows: list[dict[str, Any]] = []
        self._open: tuple[str, MatrixFlopCounter | None, float, float | None] | None = None

    @hook_impl
    def before_node_run(self, node) -> None:
        peak_before = self.peak() if self.peak is not None else None
        counter = MatrixFlopCounter() if self.count else None
        if counter is not None:
            counter.__enter__()
        self._open = (node.name, counter, time.perf_counter(), peak_before)

    @hook_impl
    def after_node_run(self, node) -> None:
        self._close()

    @hook_impl
    def on_node_error(self, node) -> None:
        self._close()

    def _close(self) -> None:
        if self._open is None:
            return
        name, counter, t0, peak_before = self._open
        wall = time.perf_counter() - t0
        if counter is not None:
            counter.__exit__(None, None, None)
        row = {"node": name, "wall_s": wall, "gflop": counter.flops / 1e9 if counter else 0.0}
        if peak_before is not None:
            row["peak_gflops"] = max(peak_before, self.peak())
        self.rows.append(row)
        self._open = None
        if self.echo:  # each row as its node ends: a long run's partial results survive
            print(f"node {name}: {wall:.1f} s, {row['gflop']:.1f} GFLOP"
                  + (f", peak beside it {row['peak_gflops']:.1f} GFLOP/s" if "peak_gflops" in row else ""), flush=True)


def matmul_peak_gflops(n: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """The best rate of an n x n matrix product of ``dtype`` on torch's threads, in GFLOP/s."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def floor_rows(rows: list[dict[str, Any]], peak_gflops: float) -> list[dict[str, Any]]:
    """Each row with its achieved rate, its floor (GFLOP at the peak rate) and wall / floor."""
    out = []
    for r in rows:
        floor = r["gflop"] / peak_gflops
        out.append({**r, "gflops": r["gflop"] / r["wall_s"] if r["wall_s"] > 0 else 0.0, "floor_s": floor,
                    "wall_over_floor": r["wall_s"] / floor if floor > 0 else float("inf")})
    return out


def beside_floor(rows: list[dict[str, Any]]) -> tuple[float, float]:
    """(floor, wall / floor) of ``rows`` with each node's GFLOP at the peak measured beside it."""
    floor = sum(r["gflop"] / r["peak_gflops"] for r in rows if r["gflop"] > 0)
    wall = sum(r["wall_s"] for r in rows)
    return floor, wall / floor if floor > 0 else float("inf")


def format_table(rows: list[dict[str, Any]], peak_gflops: float) -> str:
    """The table at the run's peak; where each node has its own peak (``peak_gflops``), two more columns:
    that peak and the node's wall over its floor there, and a last line with the demo's floor at them."""
    beside = bool(rows) and all("peak_gflops" in r for r in rows)
    lines = [f"peak: {peak_gflops:.1f} GFLOP/s (2048 x 2048 float32 matrix product, {torch.get_num_threads()} "
             "threads); floor = the node's convolution, matrix-product and attention GFLOP at that rate",
             f"{'node':<44} {'wall':>8} {'GFLOP':>10} {'GFLOP/s':>8} {'floor':>8} {'wall/floor':>10}"
             + (f" {'peak beside':>11} {'w/f beside':>10}" if beside else "")]
    total = {"node": "total", "wall_s": sum(r["wall_s"] for r in rows), "gflop": sum(r["gflop"] for r in rows)}
    for r in [*floor_rows(rows, peak_gflops), *floor_rows([total], peak_gflops)]:
        line = (f"{r['node'][:44]:<44} {r['wall_s']:>7.1f}s {r['gflop']:>10.1f} {r['gflops']:>8.1f} "
                f"{r['floor_s']:>7.1f}s {r['wall_over_floor']:>10.2f}")
        if beside and "peak_gflops" in r:
            _, ratio = beside_floor([r])
            line += f" {r['peak_gflops']:>11.1f} {ratio:>10.2f}"
        lines.append(line)
    if beside:
        floor, ratio = beside_floor(rows)
        lines.append(f"floor at the peak measured beside each node (before and after it, the better): {floor:.1f} s; "
                     f"wall / floor {ratio:.2f}")
    return "\n".join(lines)


def bf16_floor_line(total_wall_s: float, total_gflop: float, bf16_peak: float | None, why_not: str) -> str:
    """The demo's floor at the bf16 matrix-product rate of this CPU, and wall over it; or why there is none."""
    if bf16_peak is None:
        return f"floor at the bf16 rate: none, {why_not}"
    floor = total_gflop / bf16_peak
    return (f"floor at the bf16 rate: {bf16_peak:.1f} GFLOP/s (2048 x 2048 bf16 matrix product), "
            f"{floor:.1f} s; wall / bf16 floor {total_wall_s / floor if floor > 0 else float('inf'):.2f}")


def runtime_params(text: str) -> dict[str, Any]:
    """``k.j=v,...`` as `kedro run --params` reads it: dotted keys into nested blocks, YAML values."""
    return OmegaConf.to_container(OmegaConf.from_dotlist(text.split(",")))


def compiles(params: dict[str, Any] | None) -> list[str]:
    """The dotted keys of ``params`` that turn torch.compile on."""
    found: list[str] = []

    def walk(block: dict[str, Any], prefix: str) -> None:
        for key, value in block.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            elif key == "compile" and value is True:
                found.append(f"{prefix}{key}")

    walk(params or {}, "")
    return found


def with_saved_flops(rows: list[dict[str, Any]], saved: list[dict[str, Any]], source: str) -> list[dict[str, Any]]:
    """``rows`` (walls of an uncounted run) with each node's GFLOP from a counted run's saved rows."""
    gflop = {r["node"]: r["gflop"] for r in saved}
    missing = [r["node"] for r in rows if r["node"] not in gflop]
    if missing:
        raise SystemExit(f"Error: {source} has no GFLOP for the node(s) {', '.join(missing)}. Save it from a "
                         "counted run of the same pipeline (--save) and pass that file to --flops-from.")
    return [{**r, "gflop": gflop[r["node"]]} for r in rows]


def _fresh_clone() -> Path:
    """A clone of this checkout's HEAD in a temporary folder: a project where nothing is computed yet."""
    folder = Path(tempfile.mkdtemp(prefix="bench_floor_")) / "project"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(folder)], check=True)
    return folder


def counter_cost_lines(counted: list[dict[str, Any]], plain: list[dict[str, Any]]) -> str:
    """Each computing node's wall with the counter on over its wall without, and the same for the total."""
    plain_wall = {r["node"]: r["wall_s"] for r in plain}
    lines = ["the counter's own cost: each node's counted wall over its uncounted one"]
    both = [r for r in counted if r["gflop"] > 0 and plain_wall.get(r["node"], 0) > 0]
    for r in both:
        lines.append(f"  {r['node'][:44]:<44} {r['wall_s']:>7.1f}s / {plain_wall[r['node']]:>7.1f}s = "
                     f"{r['wall_s'] / plain_wall[r['node']]:.2f}")
    total_c, total_p = sum(r["wall_s"] for r in counted), sum(r["wall_s"] for r in plain)
    lines.append(f"  {'total':<44} {total_c:>7.1f}s / {total_p:>7.1f}s = {total_c / total_p:.2f}")
    return "\n".join(lines)


def run_once(project: Path, pipeline: str, env: str, extra: dict[str, Any] | None,
             count: bool) -> tuple[list[dict[str, Any]], float]:
    """One Kedro run of ``pipeline`` in ``project`` with the hook (counting or not): its rows and the better of
    the peaks measured before and after it."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)
    peak = matmul_peak_gflops()
    hook = NodeFlopsHook(echo=True, count=count, peak=matmul_peak_gflops)
    # The catalog's and parameters' relative paths (data/...) resolve against the working folder, not
    # project_path: run elsewhere, a fresh clone's run would read the caller's checkpoints and caches.
    with contextlib.chdir(project), KedroSession.create(project_path=project, env=env,
                                                        runtime_params=extra) as session:
        session._hook_manager.register(hook)  # Kedro has no public way to add a hook to one session
        session.run(pipeline_name=pipeline)
    return hook.rows, max(peak, matmul_peak_gflops())


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipeline", default="sdft_aahq")
    ap.add_argument("--env", default="base")
    ap.add_argument("--project", type=Path, default=ROOT, help="the Kedro project's folder")
    ap.add_argument("--params", default=None, help="Kedro's --params, e.g. train.channels_last=false (a comparison)")
    ap.add_argument("--fresh-clone", action="store_true",
                    help="run in a clone of this checkout's HEAD made for it (what `make bench` does)")
    ap.add_argument("--save", type=Path, default=None, help="write the rows (node, wall_s, gflop) to this JSON file")
    ap.add_argument("--flops-from", type=Path, default=None,
                    help="time without the counter, each node's GFLOP from a counted run's --save file")
    ap.add_argument("--uncounted-walls", action="store_true",
                    help="two runs, each in a fresh clone: counted for the GFLOP, then uncounted for the walls")
    args = ap.parse_args(argv)
    if args.uncounted_walls and args.flops_from is not None:
        raise SystemExit("Error: --uncounted-walls counts the GFLOP in its own first run; drop --flops-from "
                         f"{args.flops_from} (or drop --uncounted-walls to take them from that file).")
    if args.uncounted_walls and not args.fresh_clone:
        raise SystemExit("Error: --uncounted-walls needs --fresh-clone: a second run in the same project would "
                         "resume the first one's checkpoints and reuse its caches, and time only what is left.")
    args.extra = runtime_params(args.params) if args.params else None  # parsed once, for every run
    args.compiled = compiles(args.extra)
    if args.compiled and args.flops_from is None and not args.uncounted_walls:
        raise SystemExit(f"Error: --params turns on {', '.join(args.compiled)}, but under the FLOP counter "
                         "Dynamo does not compile, so the walls would be eager ones. Count an eager run first "
                         "(--save eager.json) and time this one with --flops-from eager.json, or use "
                         "--fresh-clone --uncounted-walls.")
    return args


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the pipeline with the counting hook (or twice: ``--uncounted-walls``); print and return the rows."""
    args = _arguments(argv)
    extra = args.extra
    saved = json.loads(args.flops_from.read_text())["rows"] if args.flops_from else None
    for key, value in (("KEDRO_DISABLE_TELEMETRY", "true"), ("DO_NOT_TRACK", "1"), ("HF_HUB_OFFLINE", "1"),
                       ("MLFLOW_DISABLE_TELEMETRY", "true")):
        os.environ.setdefault(key, value)
    cpu = cpu_bf16()
    counted_run = None
    if args.uncounted_walls:  # the GFLOP first (eager under the counter), in a clone of its own
        project = _fresh_clone()
        print(f"counted run: a fresh clone of {ROOT} at {project}")
        counted_run, counted_peak = run_once(project, args.pipeline, args.env, extra, count=True)
        print(f"pipeline {args.pipeline} (env {args.env}), walls with the FLOP counter on; CPU: {cpu.describe()}")
        print(format_table(counted_run, counted_peak))
        saved = counted_run
    if args.fresh_clone:
        args.project = _fresh_clone()
        print(f"project: a fresh clone of {ROOT} at {args.project}")
    walls, peak = run_once(args.project, args.pipeline, args.env, extra, count=saved is None)
    bf16_peak = matmul_peak_gflops(dtype=torch.bfloat16) if cpu.supported else None
    source = "the counted run before it" if counted_run is not None else str(args.flops_from)
    counted = walls if saved is None else with_saved_flops(walls, saved, source)
    rows = floor_rows(counted, peak)
    if args.save:
        args.save.write_text(json.dumps({"pipeline": args.pipeline, "params": args.params, "peak_gflops": peak,
                                         "rows": counted, "counted_rows": counted_run}, indent=1))
    how = "with the FLOP counter on" if saved is None else f"uncounted, GFLOP from {source}"
    print(f"pipeline {args.pipeline} (env {args.env}), walls {how}; CPU: {cpu.describe()}")
    print(format_table(counted, peak))
    print(bf16_floor_line(sum(r["wall_s"] for r in rows), sum(r["gflop"] for r in rows), bf16_peak,
                          "this CPU has no native bf16 (neither avx512_bf16 nor amx_bf16)"))
    if counted_run is not None and not args.compiled:  # compiled, the two walls differ by more than counting
        print(counter_cost_lines(counted_run, walls))
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
