"""The benchmark scripts run and report what they claim (timings are not
asserted here: performance bars live in the benchmarks themselves)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_steps_prints_ratio_and_enforces_bar(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    bench = _load("bench_steps")
    args = ["--batch", "2", "--warmup", "1", "--repeats", "1"]
    assert bench.main(args + ["--max-ratio", "1000"]) == 0
    out = capsys.readouterr().out
    ratio = float(re.search(r"ratio sdft/naive: ([0-9.]+)", out).group(1))
    assert ratio > 1.0  # an SDFT step does strictly more work than a naive one
    assert "batch 2 (+2 aux for SDFT)" in out
    # The bar is enforced: a ratio above --max-ratio exits non-zero.
    assert bench.main(args + ["--max-ratio", "0.01"]) == 1
    assert "FAIL" in capsys.readouterr().err
