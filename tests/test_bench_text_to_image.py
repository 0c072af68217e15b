"""benchmarks/bench_text_to_image.py (issue 34) builds a working step for each
of its six configurations and trains what it reports: every UNet weight in
full, only the LoRA with it (timings are not asserted)."""

from __future__ import annotations

import copy

import torch

from tests._pipeline_helpers import load_script
from tests.core._sd_helpers import tiny_sd_folder


def test_each_configuration_steps_and_trains_its_stated_parameters(tmp_path):
    from diffusion_transfer.core.models import load_unet

    source = load_unet(tiny_sd_folder(tmp_path / "sd", tmp_path / "tok"))
    bench = load_script("benchmarks/bench_text_to_image.py")
    n_unet = sum(p.numel() for p in source.parameters())
    # rank 4 on q/k/v/out of the tiny UNet's 4 transformer blocks (down 1, mid 1, up 2; all 64 wide): self-
    # attention 4 x (64 + 64), cross-attention q and out (64 + 64), k and v from the 32-wide text (32 + 64)
    lora = 4 * 4 * (4 * 128 + 2 * 128 + 2 * 96)
    assert bench.VARIANTS == ("naive", "naive+lora", "sdft", "sdft+lora", "dreambooth", "dreambooth+lora")
    for variant in bench.VARIANTS:
        model = copy.deepcopy(source)
        run = bench.build_step(variant, model, 2, 4, torch.device("cpu"))
        trained = [(n, p.detach().clone()) for n, p in model.named_parameters() if p.requires_grad]
        run["step"]()
        assert run["params"] == (lora if variant.endswith("+lora") else n_unet), variant
        if variant.endswith("+lora"):  # the student is the source model itself: only its LoRA trains
            assert trained and all("lora_" in n for n, _ in trained), variant
            now = dict(model.named_parameters())
            assert any(not torch.equal(now[n], before) for n, before in trained if "lora_B" in n), variant
        else:  # the source model stays the untouched teacher / reference
            assert all(torch.equal(p, q) for p, q in zip(model.parameters(), source.parameters())), variant
