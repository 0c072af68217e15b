"""The text-to-image comparison's configurations (issue 34): trainable parameters,
step time and peak memory of naive, SDFT and DreamBooth, each full and with LoRA.

The model is the FaceWorld text world (``data/06_models/world/text_source``: a
``UNet2DConditionModel`` on 16x16 latents with its text encoder). One training
step = the method's loss + backward + AdamW over the trained parameters + the
EMA update, as ``train()`` runs it (``bench_lora.build_step`` for SDFT):

- ``naive``: the denoising loss over B latents with their captions' hidden states;
- ``sdft``: SDFT with the AAHQ preset (``method_overrides`` of ``aahq_text``):
  one no-grad teacher forward and one student forward over B + B auxiliary
  inputs, the auxiliary ones with the empty prompt;
- ``dreambooth``: prior preservation, one student forward over 2B (the batch
  and B class examples with the class prompt's hidden states);
- full: the student is a copy of the source model, every UNet weight trained,
  the source stays loaded (SDFT's teacher); ``+lora``: the student is the
  source model itself with LoRA (rank 4, alpha 4 on to_q, to_k, to_v, to_out.0,
  as ``aahq_text_lora``), SDFT's teacher its adapters-disabled view.

The batch is B random latents (fixed seed) with the hidden states of B random
FaceWorld artwork captions. Step times are medians of interleaved repeats in
this process; memory is measured as ``bench_lora.py`` does, one fresh process
per variant: peak RSS over two steps, "training memory" that peak minus the
memory right before the model was loaded. Ratios are to ``naive`` (full).

    python benchmarks/bench_text_to_image.py [--batch 16] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_lora  # noqa: E402
from bench_steps import load_model, ran_as_memory_child, time_interleaved  # noqa: E402

from diffusion_transfer.core.methods import build_method  # noqa: E402
from diffusion_transfer.core.models.lora import FrozenBaseView, LoraSpec, add_lora  # noqa: E402
from diffusion_transfer.core.models.text_to_image import text_conditioning_of  # noqa: E402
from diffusion_transfer.core.training.ema import ema_update_  # noqa: E402
from diffusion_transfer.core.training.run import make_ema  # noqa: E402
from diffusion_transfer.core.world.captions import caption  # noqa: E402
from diffusion_transfer.core.world.render import sample_attributes  # noqa: E402
from diffusion_transfer.pipelines.schedule import model_schedule  # noqa: E402

DEFAULT_MODEL = Path("data/06_models/world/text_source")
METHODS = ("naive", "sdft", "dreambooth")
VARIANTS = tuple(v for m in METHODS for v in (m, m + "+lora"))
# conf/base/parameters_datasets.yml, aahq_text's method_overrides
METHOD_PARAMS = {"naive": {}, "sdft": {"preset": "aahq"}, "dreambooth": {}}
CLASS_PROMPT = "an expressionless man without glasses"
NUM_CLASS_IMAGES = 100  # methods.dreambooth.num_class_images' default
TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def captions(n: int, seed: int = 0) -> list[str]:
    """``n`` canonical FaceWorld captions of random artwork faces."""
    rng = np.random.default_rng(seed)
    return [caption(sample_attributes(rng, "artwork")) for _ in range(n)]


def build_step(variant: str, model: torch.nn.Module, batch: int, rank: int, device: torch.device) -> dict:
    """One variant's training step on ``model`` (the loaded source model: the
    full variants' teacher / reference, the ``+lora`` variants' student base)."""
    method_name, lora = variant.removesuffix("+lora"), variant.endswith("+lora")
    text = text_conditioning_of(model)
    c, px = int(model.config.in_channels), int(model.config.sample_size)
    latents = torch.randn(batch, c, px, px, generator=torch.Generator().manual_seed(batch)).to(device)
    hidden = text.encode(captions(batch)).to(device)
    method = build_method(method_name, METHOD_PARAMS[method_name], model_schedule(model, None))
    if method.needs_class_images:  # as the run binds them: class latents and the class prompt's hidden states
        examples = torch.randn(NUM_CLASS_IMAGES, c, px, px, generator=torch.Generator().manual_seed(1))
        method = method.with_class_examples(examples.to(device), text.encode([CLASS_PROMPT]).to(device))
    gen = torch.Generator(device=device).manual_seed(0)
    if lora:
        student = add_lora(model, LoraSpec(rank=rank, alpha=rank, target_modules=TARGETS), seed=0).to(device)
        teacher = FrozenBaseView(student) if method.needs_teacher else None
    else:
        student = copy.deepcopy(model).to(device).requires_grad_(True)
        teacher = model.to(device).eval().requires_grad_(False) if method.needs_teacher else None
    student.train()
    params = [p for p in student.parameters() if p.requires_grad]
    ema, pairs = make_ema(student, params, 0.999)
    opt = torch.optim.AdamW(params, lr=1e-6)

    def step():
        method.loss_fn(student, latents, teacher=teacher, generator=gen, condition=hidden)["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema_update_([e for e, _ in pairs], [m for _, m in pairs], 0.999)
    return {"step": step, "params": sum(p.numel() for p in params), "ema": ema}


def report(runs: dict, medians: dict, mem: dict | None, n_unet: int) -> dict[str, dict[str, float]]:
    """Print the table; returns each variant's ratios to naive (full)."""
    print(f"{'variant':<16} {'trainable params':>16} {'of UNet':>8} {'median step':>12} {'/ naive':>8}"
          + (f" {'peak RSS':>9} {'training mem':>13} {'/ naive':>8}" if mem else ""))
    out = {}
    for v in VARIANTS:
        n = runs[v]["params"]
        ratios = {"step_time": medians[v] / medians["naive"]}
        line = f"{v:<16} {n:>16,} {100 * n / n_unet:>7.2f}% {medians[v] * 1e3:>9.1f} ms {ratios['step_time']:>8.2f}"
        if mem:
            ratios["training_memory"] = mem[v]["training_mb"] / max(mem["naive"]["training_mb"], 1e-9)
            line += (f" {mem[v]['peak_mb']:>6.0f} MB {mem[v]['training_mb']:>10.0f} MB "
                     f"{ratios['training_memory']:>8.2f}")
        print(line)
        out[v] = ratios
    return out


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Print the machine and the table; returns each variant's ratios to naive."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="Stable Diffusion-layout folder")
    ap.add_argument("--batch", type=int, default=16, help="latents a step (DreamBooth adds as many class examples)")
    ap.add_argument("--rank", type=int, default=4, help="LoRA rank (alpha = rank)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-memory", action="store_true", help="time only (no child processes)")
    ap.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if ran_as_memory_child(args, lambda a: bench_lora.memory_child(a, build_step)):
        return {}
    device = torch.device(args.device)
    print(bench_lora.machine_line(device))
    loaded, what = load_model(args.model)
    # each variant gets its own source model: a +lora variant puts its LoRA into it
    runs = {v: build_step(v, copy.deepcopy(loaded), args.batch, args.rank, device) for v in VARIANTS}
    medians = time_interleaved(runs, args.warmup, args.repeats, device, time.perf_counter)
    n_unet = sum(p.numel() for p in loaded.parameters())
    print(f"model: {what} (UNet {n_unet / 1e6:.2f}M params, {loaded.config.in_channels}x"
          f"{loaded.config.sample_size}x{loaded.config.sample_size} latents), batch {args.batch} (SDFT +"
          f"{args.batch} aux, DreamBooth +{args.batch} class examples), LoRA rank {args.rank} alpha {args.rank} on "
          f"{', '.join(TARGETS)}; wall time, {args.repeats} interleaved repeats after {args.warmup} warm-up")
    mem = None if args.no_memory else {v: bench_lora.measure_memory(args, v, __file__) for v in VARIANTS}
    if mem:
        print(f"memory: {mem['naive']['what']}, one fresh process per variant, two steps; training memory = "
              "peak minus the memory before the model was loaded")
    return report(runs, medians, mem, n_unet)


if __name__ == "__main__":
    main()
