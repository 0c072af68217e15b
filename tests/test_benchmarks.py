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


def test_bench_steps_prints_ratio_and_enforces_bar(capsys, tmp_path):
    from diffusion_transfer.core.models import build_unet, save_unet

    tiny = dict(sample_size=8, block_out_channels=(8, 16), layers_per_block=1,
                down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                attention_head_dim=8, norm_num_groups=4)
    save_unet(build_unet(tiny), tmp_path / "unet")
    bench = _load("bench_steps")
    args = ["--model", str(tmp_path / "unet"), "--batch", "2", "--warmup", "1", "--repeats", "1"]
    assert bench.main(args + ["--max-ratio", "1000"]) == 0
    out = capsys.readouterr().out
    ratio = float(re.search(r"ratio sdft/naive: ([0-9.]+)", out).group(1))
    assert ratio > 0  # its value is timing, not asserted here (one repeat on a shared CPU)
    assert "batch 2 (+2 aux for SDFT)" in out and "8x8" in out
    # every method gets a row: its ratio to naive and its trainable parameters
    rows = {m.group(1): (float(m.group(2)), int(m.group(3).replace(",", "")))
            for m in re.finditer(r"^(\w+)\s+[0-9.]+ ms\s+([0-9.]+)\s+([0-9,]+)$", out, re.M)}
    assert set(rows) == {"naive", "sdft", "attn", "a3ft", "anl", "anl_uncond", "tan"}
    assert rows["tan"][1] < rows["attn"][1]  # shift adaptors only
    assert rows["naive"][0] == 1.0
    assert rows["attn"][1] < rows["a3ft"][1] < rows["naive"][1]  # attention blocks < + adapters < all
    # The bar is enforced: a ratio above --max-ratio exits non-zero.
    assert bench.main(args + ["--methods", "sdft", "--max-ratio", "0"]) == 1
    assert "FAIL" in capsys.readouterr().err
