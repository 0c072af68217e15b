"""benchmarks/bench_steps.py's SDFT grid: every configuration gets its ratio
against its bar, the floor measured from its parts, and the peak memory of
SDFT and naive (timings are not asserted: a tiny model on a shared CPU)."""

from __future__ import annotations

import re

from tests._pipeline_helpers import load_script

TINY = dict(sample_size=8, block_out_channels=(8, 16), layers_per_block=1,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=8, norm_num_groups=4)


def _bench():
    return load_script("benchmarks/bench_steps.py")


def test_bars_and_configs():
    bench = _bench()
    assert [bench.bar_for(*bench.parse_config(c)) for c in bench.GRID] == [2.7, 2.8, 2.8, 2.8]
    assert bench.parse_config("64x32") == (64, 32)


def test_grid_prints_ratios_floor_and_memory(capsys, tmp_path):
    from diffusion_transfer.core.models import build_unet, save_unet

    save_unet(build_unet(TINY), tmp_path / "unet")
    bench = _bench()
    code = bench.main(["--model", str(tmp_path / "unet"), "--configs", "2x8", "3x16", "--memory-batch", "3",
                       "--warmup", "1", "--repeats", "1", "--threads", "1", "--max-ratio", "1000"])
    out = capsys.readouterr().out
    assert code == 0
    ratios = re.findall(r"ratio sdft/naive: ([0-9.]+) \(max 1000.0\) at batch (\d+), (\d+) px", out)
    assert [(b, px) for _, b, px in ratios] == [("2", "8"), ("3", "16")]
    floors = re.findall(r"floor: \(teacher forward over 2B [0-9.]+ ms \+ naive step over 2B [0-9.]+ ms\) / "
                        r"naive step [0-9.]+ ms = ([0-9.]+); sdft/floor ([0-9.]+)", out)
    assert len(floors) == 2 and all(float(f) > 0 for f, _ in floors)
    # The ratio over the floor is the ratio divided by the floor. Each is printed to 2 decimals, so the
    # printed quotient lies within what the rounded ratio and floor allow (a small floor widens that).
    half = 0.005
    for (ratio, _, _), (floor, over) in zip(ratios, floors):
        r, f, o = float(ratio), float(floor), float(over)
        assert (r - half) / (f + half) - half <= o <= (r + half) / (f - half) + half, (ratio, floor, over)
    # Peak memory only at --memory-batch: one line, SDFT against naive.
    mem = re.findall(r"peak memory at batch (\d+), (\d+) px .*sdft ([0-9.]+) MB .*naive ([0-9.]+) MB", out)
    assert [(b, px) for b, px, _, _ in mem] == [("3", "16")]
    assert float(mem[0][2]) > 0 and float(mem[0][3]) > 0
    assert "What sets the floor" in out
    assert "wall time" in out
    # A bar below the ratio fails the run (here timed on the process's CPU clock).
    assert bench.main(["--model", str(tmp_path / "unet"), "--configs", "2x8", "--warmup", "0", "--repeats", "1",
                       "--max-ratio", "0", "--memory-batch", "0", "--clock", "cpu"]) == 1
    captured = capsys.readouterr()
    assert "FAIL: ratio" in captured.err and "CPU time" in captured.out
