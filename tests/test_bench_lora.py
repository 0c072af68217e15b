"""benchmarks/bench_lora.py (issue 34) runs and reports what it claims: the
machine, both variants' steps with their trained parameters, and the ratio
derived from the printed medians (timings themselves are not asserted)."""

from __future__ import annotations

import re

from tests._pipeline_helpers import load_script


def test_bench_lora_times_both_variants_and_prints_their_ratio(capsys, tmp_path):
    from diffusion_transfer.core.models import build_unet, save_unet

    tiny = dict(sample_size=8, block_out_channels=(8, 16), layers_per_block=1,
                down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                attention_head_dim=8, norm_num_groups=4)
    save_unet(build_unet(tiny), tmp_path / "unet")
    bench = load_script("benchmarks/bench_lora.py")
    ratios = bench.main(["--model", str(tmp_path / "unet"), "--batch", "2", "--warmup", "1", "--repeats", "1",
                         "--rank", "2", "--no-memory"])
    out = capsys.readouterr().out
    assert re.match(r"device cpu \(.+\), \d+ CPU core\(s\), torch threads \d+, load average at start ", out)
    rows = {m.group(1): (float(m.group(2)), int(m.group(3).replace(",", "")))
            for m in re.finditer(r"^(sdft\S*)\s+([0-9.]+) ms\s+([0-9,]+)$", out, re.M)}
    assert set(rows) == {"sdft", "sdft+lora"}
    # trained: every weight of the tiny UNet, against rank 2 on q/k/v/out of its 4 attention blocks (down 1,
    # mid 1, up 2; all 16 wide)
    assert rows["sdft"][1] == sum(p.numel() for p in build_unet(tiny).parameters())
    assert rows["sdft+lora"][1] == 4 * 4 * (2 * 16 + 16 * 2)
    printed = float(re.search(r"step time sdft\+lora / sdft: ([0-9.]+)", out).group(1))
    assert abs(printed - ratios["step_time"]) < 0.006 and abs(ratios["step_time"] - rows["sdft+lora"][0] / rows[
        "sdft"][0]) < 0.01 * ratios["step_time"] + 1e-3
