"""bench_floor.py: each node's FLOPs through a Kedro hook, the floor at the
peak rate (the run's and the one measured beside each node), compiled runs
timed with a counted run's FLOPs, and the run from inside the project
(timings are not asserted here)."""

from __future__ import annotations

import json
import os

from tests._pipeline_helpers import ROOT, load_script


def _load(name: str):
    return load_script(f"benchmarks/{name}.py")


def test_bench_floor_counts_each_nodes_flops_through_a_kedro_hook():
    import torch
    from kedro.framework.hooks.manager import _create_hook_manager
    from kedro.io import DataCatalog, MemoryDataset
    from kedro.pipeline import Pipeline, node
    from kedro.runner import SequentialRunner

    bench = _load("bench_floor")

    def matmul():
        return torch.mm(torch.ones(64, 32), torch.ones(32, 16))

    def conv(x):
        return torch.nn.functional.conv2d(torch.ones(2, 3, 8, 8), torch.ones(5, 3, 3, 3))  # no padding: 6x6 out

    hook = bench.NodeFlopsHook()
    manager = _create_hook_manager()
    manager.register(hook)
    pipe = Pipeline([node(matmul, None, "a", name="matmul"), node(conv, "a", "b", name="conv")])
    catalog = DataCatalog({k: MemoryDataset(copy_mode="assign") for k in ("a", "b")})
    SequentialRunner().run(pipe, catalog, hook_manager=manager)
    flops = {r["node"]: r["gflop"] * 1e9 for r in hook.rows}
    # 2 FLOPs per multiply-add: m*k*n for the product, batch*out*in*k*k per output pixel for the convolution
    assert flops == {"matmul": 2 * 64 * 32 * 16, "conv": 2 * 2 * 5 * 3 * 3 * 3 * 6 * 6}
    assert all(r["wall_s"] > 0 for r in hook.rows)


def test_bench_floor_times_a_compiled_run_with_a_counted_runs_flops(tmp_path):
    import pytest
    import torch

    bench = _load("bench_floor")
    hook = bench.NodeFlopsHook(count=False)  # walls only: under the counter Dynamo would not compile
    hook.before_node_run(type("Node", (), {"name": "conv"})())
    torch.nn.functional.conv2d(torch.ones(1, 3, 8, 8), torch.ones(4, 3, 3, 3))
    hook.after_node_run(type("Node", (), {"name": "conv"})())
    assert hook.rows[0]["node"] == "conv" and hook.rows[0]["gflop"] == 0 and hook.rows[0]["wall_s"] > 0
    rows = bench.with_saved_flops(hook.rows, [{"node": "conv", "wall_s": 9.0, "gflop": 2.5}], "eager.json")
    assert rows[0]["gflop"] == 2.5 and rows[0]["wall_s"] == hook.rows[0]["wall_s"]  # this run's wall, saved GFLOP
    with pytest.raises(SystemExit, match="eager.json has no GFLOP for the node"):
        bench.with_saved_flops(hook.rows, [{"node": "other", "wall_s": 1.0, "gflop": 1.0}], "eager.json")
    params = bench.runtime_params("train.compile=true,classifier.train.compile=true,sampling.compile=false")
    assert bench.compiles(params) == ["train.compile", "classifier.train.compile"]
    with pytest.raises(SystemExit, match=r"^Error: --params turns on sampling.compile, .* --flops-from eager.json"):
        bench.main(["--project", str(tmp_path), "--params", "sampling.compile=true"])  # refused before any run


def test_bench_floor_runs_the_pipeline_from_inside_the_project(tmp_path, monkeypatch):
    import kedro.framework.session
    import kedro.framework.startup

    bench = _load("bench_floor")
    seen = {}

    class Session:  # stands in for KedroSession: records where the run would resolve data/...
        _hook_manager = type("Manager", (), {"register": lambda self, hook: None})()

        @classmethod
        def create(cls, project_path, env, runtime_params):
            seen["project"], seen["cwd"] = project_path, os.getcwd()
            return cls()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def run(self, pipeline_name):
            seen["pipeline"] = pipeline_name

    monkeypatch.setattr(kedro.framework.startup, "bootstrap_project", lambda path: None)
    monkeypatch.setattr(kedro.framework.session, "KedroSession", Session)
    monkeypatch.setattr(bench, "matmul_peak_gflops", lambda **kw: 1.0)
    monkeypatch.chdir(ROOT)
    project = tmp_path / "clone"
    project.mkdir()
    bench.main(["--project", str(project), "--save", str(tmp_path / "rows.json")])
    assert seen == {"project": project, "cwd": str(project), "pipeline": "sdft_aahq"}
    assert os.getcwd() == str(ROOT)  # the caller's folder back: a relative --save lands where it was asked
    assert json.loads((tmp_path / "rows.json").read_text())["rows"] == []  # the saved rows of this (empty) run


def test_bench_floor_rows_divide_the_flops_by_the_peak():
    import torch

    bench = _load("bench_floor")
    rows = bench.floor_rows([{"node": "a", "wall_s": 4.0, "gflop": 200.0},
                             {"node": "b", "wall_s": 1.0, "gflop": 0.0}], peak_gflops=100.0)
    assert rows[0]["floor_s"] == 2.0 and rows[0]["gflops"] == 50.0 and rows[0]["wall_over_floor"] == 2.0
    assert rows[1]["floor_s"] == 0.0 and rows[1]["wall_over_floor"] == float("inf")
    total = bench.format_table(rows, 100.0).splitlines()[-1].split()
    assert total[:3] == ["total", "5.0s", "200.0"] and total[-2:] == ["2.0s", "2.50"]
    assert bench.matmul_peak_gflops(n=64, repeats=1) > 0
    assert bench.matmul_peak_gflops(n=64, repeats=1, dtype=torch.bfloat16) > 0


def test_bench_floor_takes_each_nodes_floor_at_the_peak_measured_beside_it():
    bench = _load("bench_floor")
    peaks = iter([100.0, 50.0, 20.0, 40.0])  # before and after node a, then node b
    hook = bench.NodeFlopsHook(count=False, peak=lambda: next(peaks))
    for name in ("a", "b"):
        hook.before_node_run(type("Node", (), {"name": name})())
        hook.after_node_run(type("Node", (), {"name": name})())
    assert [r["peak_gflops"] for r in hook.rows] == [100.0, 40.0]  # the better of before and after
    rows = [{**hook.rows[0], "wall_s": 4.0, "gflop": 200.0}, {**hook.rows[1], "wall_s": 6.0, "gflop": 80.0}]
    assert bench.beside_floor(rows) == (4.0, 2.5)  # 200 / 100 + 80 / 40 seconds; 10 s of wall
    lines = bench.format_table(rows, 200.0).splitlines()
    assert lines[2].split()[-2:] == ["100.0", "2.00"] and lines[3].split()[-2:] == ["40.0", "3.00"]
    assert lines[4].split()[-2:] == ["1.4s", "7.14"]  # the total at the run's peak: 280 GFLOP / 200
    assert lines[-1].endswith("4.0 s; wall / floor 2.50")
    assert "beside" not in bench.format_table([{"node": "a", "wall_s": 1.0, "gflop": 1.0}], 1.0)


def test_bench_floor_reads_params_as_kedro_run_does():
    bench = _load("bench_floor")
    assert bench.runtime_params("train.channels_last=false,classifier.train.channels_last=false,sampling.steps=5") == {
        "train": {"channels_last": False}, "classifier": {"train": {"channels_last": False}}, "sampling": {"steps": 5}}


def test_bench_floor_states_the_bf16_floor_or_why_there_is_none():
    bench = _load("bench_floor")
    line = bench.bf16_floor_line(total_wall_s=300.0, total_gflop=1000.0, bf16_peak=10.0, why_not="")
    assert line.endswith("10.0 GFLOP/s (2048 x 2048 bf16 matrix product), 100.0 s; wall / bf16 floor 3.00")
    assert bench.bf16_floor_line(300.0, 1000.0, None, "no bf16 here") == "floor at the bf16 rate: none, no bf16 here"
    # a run that counted nothing (as the stand-in session above) on a CPU with bf16: no division by zero
    assert bench.bf16_floor_line(0.0, 0.0, 10.0, "").endswith("0.0 s; wall / bf16 floor inf")


def test_bench_floor_counts_in_one_fresh_clone_and_times_the_walls_in_another(tmp_path, monkeypatch, capsys):
    import pytest

    bench = _load("bench_floor")
    calls, clones = [], iter([tmp_path / "first", tmp_path / "second"])

    def run_once(project, pipeline, env, extra, count):  # the counted run is slower: the counter's own cost
        calls.append((project.name, count))
        wall = 12.0 if count else 10.0
        return [{"node": "train", "wall_s": wall, "gflop": 40.0 if count else 0.0, "peak_gflops": 4.0}], 4.0

    monkeypatch.setattr(bench, "run_once", run_once)
    monkeypatch.setattr(bench, "_fresh_clone", lambda: next(clones))
    monkeypatch.setattr(bench, "matmul_peak_gflops", lambda **kw: 4.0)
    rows = bench.main(["--fresh-clone", "--uncounted-walls", "--save", str(tmp_path / "rows.json")])
    assert calls == [("first", True), ("second", False)]  # counted first, each run in a clone of its own
    assert rows[0]["wall_s"] == 10.0 and rows[0]["gflop"] == 40.0  # the plain run's wall, the counted GFLOP
    assert rows[0]["wall_over_floor"] == 10.0 / (40.0 / 4.0)
    out = capsys.readouterr().out
    assert "walls uncounted, GFLOP from the counted run before it" in out
    assert "train" in out and "12.0s /    10.0s = 1.20" in out  # the counter's cost, node by node
    saved = json.loads((tmp_path / "rows.json").read_text())
    assert saved["rows"][0]["wall_s"] == 10.0 and saved["counted_rows"][0]["wall_s"] == 12.0
    with pytest.raises(SystemExit, match="^Error: --uncounted-walls needs --fresh-clone"):
        bench.main(["--uncounted-walls"])
    with pytest.raises(SystemExit, match="^Error: --uncounted-walls counts the GFLOP in its own first run"):
        bench.main(["--fresh-clone", "--uncounted-walls", "--flops-from", "eager.json"])
    assert len(calls) == 2  # both refused before any run
    clones = iter([tmp_path / "third", tmp_path / "fourth"])
    bench.main(["--fresh-clone", "--uncounted-walls", "--params", "train.compile=true"])  # eager count, compiled walls
    assert calls[2:] == [("third", True), ("fourth", False)]
    assert "the counter's own cost" not in capsys.readouterr().out  # compiling, not counting, would set that ratio
