"""benchmarks/bench_released.py (issue 35): skipped with one line without the released
code, its arguments as documented, and (slow, only where a JiwanHur/SDFT checkout is
named by DT_RELEASED_SDFT) a tiny run through the released TrainLoop."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests._pipeline_helpers import ROOT, load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/bench_released.py")


def test_skips_with_one_line_without_the_released_code(bench, capsys, tmp_path):
    assert bench.main([]) == {}
    assert bench.main(["--released", str(tmp_path / "absent")]) == {}
    (tmp_path / "guided_diffusion").mkdir()  # guided-diffusion without the SDFT trainer: not the released code
    assert bench.main(["--released", str(tmp_path)]) == {}
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(line.startswith("skipped: ") for line in lines)
    assert "no --released PATH given" in lines[0]
    assert "absent holds no guided_diffusion/train_util_distill.py" in lines[1]
    assert "train_util_distill.py" in lines[2]


def test_arguments_default_to_64_px_at_batch_4(bench):
    args = bench.parse_args(["--released", "/x", "--batch", "2", "--threads", "1"])
    assert args.released == Path("/x") and args.batch == 2 and args.threads == 1 and args.clock == "wall"
    assert (args.image_size, args.num_channels, args.channel_mult, args.attention_resolutions) == (
        64, 64, "1,2,3,4", "16,8")
    assert bench.parse_args([]).batch == 4
    adm = bench.adm_args(args)
    assert adm["learn_sigma"] and adm["resblock_updown"] and adm["image_size"] == 64
    with pytest.raises(SystemExit):
        bench.parse_args(["--batch", "four"])


def test_a_preset_fills_the_architecture_and_flags_override_it(bench):
    args = bench.parse_args(["--preset", "ffhq_p2", "--image-size", "128"])
    assert (args.image_size, args.num_channels, args.channel_mult, args.attention_resolutions) == (
        128, 128, "1,1,2,2,4,4", "16")
    assert args.device == "cpu" and args.project_settings == []
    assert bench.parse_args(["--project-settings", "bf16", "compile"]).project_settings == ["bf16", "compile"]
    with pytest.raises(SystemExit):
        bench.parse_args(["--project-settings", "fp8"])


def test_settings_the_device_cannot_run_are_refused_in_one_sentence(bench, monkeypatch):
    import torch  # the refusal depends on what torch sees

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "no CUDA device" in bench.settings_refusal(torch.device("cuda"), ())
    cpu = bench.cpu_bf16()
    monkeypatch.setattr(bench, "cpu_bf16", lambda: dataclasses.replace(cpu, supported=False))
    assert "leave bf16 out" in bench.settings_refusal(torch.device("cpu"), ("bf16", "channels_last"))
    assert bench.settings_refusal(torch.device("cpu"), ("channels_last", "fused_adamw", "tf32")) is None
    monkeypatch.setattr(bench, "cpu_bf16", lambda: dataclasses.replace(cpu, supported=True))
    assert bench.settings_refusal(torch.device("cpu"), ("bf16",)) is None


@pytest.mark.slow
def test_tiny_run_checks_the_weights_and_prints_the_ratio(bench):
    released = os.environ.get("DT_RELEASED_SDFT")
    if not released or not (Path(released) / bench.MARKER).is_file():
        pytest.skip("set DT_RELEASED_SDFT to a JiwanHur/SDFT checkout")
    # its own process: the run starts a process group and puts stand-ins in sys.modules
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_released.py"), "--released", released,
                           "--image-size", "16", "--num-channels", "32", "--channel-mult", "1,2",
                           "--num-head-channels", "32", "--batch", "2", "--warmup", "0", "--repeats", "1",
                           "--project-settings", "channels_last", "fused_adamw"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "project settings: channels_last, fused_adamw" in proc.stdout
    assert re.search(r"outputs agree to [0-9.e-]+ \(relative L2\)", proc.stdout)
    rows = dict(re.findall(r"^(released|project\S*) +([0-9]+) ms", proc.stdout, re.M))
    assert set(rows) == {"released", "project"}
    printed = float(re.search(r"^released / project images per second: ([0-9.]+)$", proc.stdout, re.M).group(1))
    assert abs(printed - int(rows["project"]) / int(rows["released"])) < 0.01 + 0.02 * printed
