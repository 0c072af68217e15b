"""fp32 against bf16, eager against compiled, and contiguous against channels-last, on this CPU (issue 35).

Four workloads, the ones the precision and compile settings act on:

- ``naive step`` and ``sdft step``: one optimiser step (loss, backward, AdamW)
  of the FaceWorld source UNet (``data/06_models/world/source``, else its
  config at random init), batch ``--batch`` (+ as many auxiliary for SDFT),
  at its 32 px; ``train.mixed_precision`` / ``train.compile``;
- ``DDIM UNet call``: one no-grad UNet call of the sampling loop at batch
  ``--sample-batch`` (``sampling.precision`` / ``sampling.compile``);
- ``Inception pass``: clean-fid features of ``--inception-batch`` 32 px images,
  resize included (``evaluation.precision`` / ``evaluation.compile``).

bf16 is autocast around the forward passes (backward outside), as accelerate
does: in the training steps around the trained model's forward only, so SDFT's
teacher runs in float32, as in a pipeline run with ``teacher_dtype``'s default.
Each table times its arms interleaved in one run (medians of ``--repeats``,
alternating order) and prints the ratios. Compile time, the
first call of a compiled arm less its median call, is shown apart, with a
fresh inductor cache (as a fresh clone compiles) unless ``--warm-cache``.
bf16 is timed only where the CPU does it natively (``core/cpu_precision.py``);
``--force-bf16`` times the emulated kind too, labelled so. The layout table
times the two training steps, a step of the domain classifier (batch
``--classifier-batch``), one UNet call of the sampling loop (contiguous input), the same call with
a channels-last input (translation's: ``to_tensor`` moves the channel axis of
NHWC images, so its contiguous arm is channels-last in activations) and
EGSDE's classifier gradient (batch ``--sample-batch``) with contiguous weights
against channels-last ones (``train.channels_last``, ``sampling.channels_last``,
``translation.channels_last``). The kept-layout table times, all with
channels-last weights, diffusers' own ``Upsample2D`` and ``ResnetBlock2D``
(which convert activations to NCHW: at batch 64 and above, and before the
shortcut in training) against the layout-keeping ones the project runs
(``core/models/layout.py``): the training steps, the classifier step, and
the UNet call at the demo's sampling and translation batches; its middle arm
keeps the layout but divides by an output scale factor of 1 as diffusers
does, so its last column is what skipping that division gains.

    python benchmarks/bench_cpu.py [--repeats 5] [--parts precision compile layout kept] [--force-bf16]
"""

from __future__ import annotations

import argparse
import atexit
import copy
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

if "--warm-cache" not in sys.argv and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    # before torch reads it: compile as on a fresh clone, in a cache removed at exit
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench-cpu-inductor-")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)

import torch  # noqa: E402
import yaml  # noqa: E402
from accelerate.utils import convert_outputs_to_fp32  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_steps import load_model  # noqa: E402

from diffusion_transfer.core.allocator import tune_malloc_at_startup  # noqa: E402
from diffusion_transfer.core.cpu_precision import cpu_bf16  # noqa: E402
from diffusion_transfer.core.methods import build_method  # noqa: E402
from diffusion_transfer.core.models.domain_classifier import DomainClassifier  # noqa: E402
from diffusion_transfer.core.training.domain_classifier import domain_classifier_loss  # noqa: E402
from diffusion_transfer.core.metrics.extractors import inception_extractor  # noqa: E402
from diffusion_transfer.core.models.layout import (  # noqa: E402
    LAYOUT_KEEPING, LayoutKeepingResnetBlock2D, keep_channels_last,
)
from diffusion_transfer.core.sampling import model_eps_fn  # noqa: E402
from diffusion_transfer.core.schedule import make_schedule  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORKLOADS = ("naive step", "sdft step", "DDIM UNet call", "Inception pass")


def train_step(method: str, model, batch: int, dtype: torch.dtype | None, compiled: bool,
               channels_last: bool = False, kept: bool | str = True):
    """One optimiser step of ``method`` as train() runs it (student compiled in place for train.compile,
    student and teacher channels-last for train.channels_last, with their layout kept unless ``kept`` is
    false: diffusers' own layers; ``"dividing"``: kept, the blocks dividing by 1 as before)."""
    schedule = make_schedule()
    spec = build_method(method, {}, schedule)
    torch.manual_seed(0)
    student = spec.build_student(copy.deepcopy(model), None).train()
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    if channels_last:
        student.to(memory_format=torch.channels_last), teacher.to(memory_format=torch.channels_last)
        if kept and not compiled:  # as core/training/run.py
            keep_channels_last(student), keep_channels_last(teacher)
            if kept == "dividing":
                dividing_blocks(student), dividing_blocks(teacher)
    if compiled:
        student.compile()
    if dtype is not None:  # as train.mixed_precision: accelerate autocasts the trained model's forward only
        student.forward = convert_outputs_to_fp32(torch.autocast("cpu", dtype=dtype)(student.forward))
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-6)
    px = int(model.config.sample_size)
    images = torch.rand(batch, 3, px, px, generator=torch.Generator().manual_seed(batch)) * 2 - 1
    gen = torch.Generator().manual_seed(0)

    def step():
        loss = spec.loss_fn(student, images, teacher=teacher, generator=gen)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def classifier_params() -> dict:
    """conf/base/parameters_classifier.yml's ``classifier`` block: the demo's domain classifier."""
    return yaml.safe_load((ROOT / "conf" / "base" / "parameters_classifier.yml").read_text())["classifier"]


def classifier_step(batch: int, channels_last: bool, kept: bool | str = True):
    """One optimiser step of the demo's domain classifier (conf/base/parameters_classifier.yml's network)."""
    params = classifier_params()
    torch.manual_seed(0)
    net = DomainClassifier(sample_size=32, **params["network"]).train()
    if channels_last:
        net.to(memory_format=torch.channels_last)
        if kept:
            keep_channels_last(net)
        if kept == "dividing":
            dividing_blocks(net)
    loss_fn, opt = domain_classifier_loss(make_schedule()), torch.optim.AdamW(net.parameters(), lr=1e-6)
    images = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch)) * 2 - 1
    labels, gen = torch.arange(batch) % 2, torch.Generator().manual_seed(0)

    def step():
        loss_fn(net, images, generator=gen, condition=labels)["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def classifier_gradient(batch: int, channels_last: bool):
    """EGSDE's realism guidance: the gradient of the domain classifier's last features with respect to x_t
    (translation keeps the classifier contiguous, in float32)."""
    params = classifier_params()
    torch.manual_seed(0)
    net = DomainClassifier(sample_size=32, **params["network"]).eval()
    if channels_last:
        net.to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    t = torch.full((batch,), 300)

    def step():
        xg = x.clone().requires_grad_(True)
        torch.autograd.grad(net.features(xg, t)[-1].square().sum(), xg)
    return step


def layout_table(model, args) -> None:
    print(f"\n## contiguous against channels-last weights (train.channels_last, sampling.channels_last, "
          f"translation.channels_last; fp32, eager; {args.repeats} interleaved repeats, medians)")
    print("| workload | contiguous | channels-last | contiguous/channels-last (speed-up) |\n|---|---|---|---|")
    builders = {  # workload -> its arm, given whether the weights are channels-last
        "naive step": lambda last: train_step("naive", model, args.batch, None, False, last),
        "sdft step": lambda last: train_step("sdft", model, args.batch, None, False, last),
        "classifier step": lambda last: classifier_step(args.classifier_batch, last),
        "DDIM UNet call": lambda last: unet_call(model, args.sample_batch, None, False, last),
        # translation's inputs: only the weights' layout differs
        "UNet call, channels-last input": lambda last: unet_call(model, args.sample_batch, None, False, last,
                                                                 input_channels_last=True),
        "classifier gradient": lambda last: classifier_gradient(args.sample_batch, last),
    }
    for name, build_arm in builders.items():
        arms = {k: build_arm(k == "last") for k in ("contiguous", "last")}
        med, _ = interleaved(arms, args.warmup, args.repeats)
        print(f"| {name} | {med['contiguous'] * 1e3:,.1f} ms | {med['last'] * 1e3:,.1f} ms | "
              f"**{med['contiguous'] / med['last']:.2f}** |", flush=True)


def unet_call(model, batch: int, dtype: torch.dtype | None, compiled: bool, channels_last: bool = False,
              input_channels_last: bool = False, kept: bool | str = True):
    """One UNet call of the DDIM loop (sampling.compile compiles exactly this call). ``input_channels_last``:
    x in channels-last layout, as translation's inputs are (``to_tensor`` moves the channel axis of NHWC images).
    ``kept`` false: diffusers' own layers, not the layout-keeping ones model_eps_fn gives a channels-last model."""
    net = copy.deepcopy(model).eval()
    eps_fn = model_eps_fn(net, make_schedule(), autocast_dtype=dtype, compile=compiled, channels_last=channels_last)
    if not kept:
        diffusers_own_layers(net)
    elif kept == "dividing":
        dividing_blocks(net)
    px = int(model.config.sample_size)
    x = torch.randn(batch, 3, px, px, generator=torch.Generator().manual_seed(1))
    if input_channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    t = torch.full((batch,), 500)
    return lambda: eps_fn(x, t)


class DividingResnetBlock2D(LayoutKeepingResnetBlock2D):
    """The layout-keeping block before it skipped the division by an output scale factor of 1 (the kept
    table's middle arm)."""

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.forward_as_diffusers(input_tensor, temb, *args, **kwargs)


def dividing_blocks(model) -> None:
    """Each layout-keeping ResnetBlock2D of ``model`` back to dividing by its output scale factor of 1."""
    for module in model.modules():
        if type(module) is LayoutKeepingResnetBlock2D:
            module.__class__ = DividingResnetBlock2D


def diffusers_own_layers(model) -> None:
    """Undo keep_channels_last: each layout-keeping layer back to the diffusers class it extends."""
    own = {keeping: diffusers_class for diffusers_class, keeping in LAYOUT_KEEPING.items()}
    for module in model.modules():
        module.__class__ = own.get(type(module), type(module))


def demo_batches() -> dict[str, int]:
    """The demo's sampling and translation batches (conf/base)."""
    conf = ROOT / "conf" / "base"
    return {"sampling": yaml.safe_load((conf / "parameters_finetune.yml").read_text())["sampling"]["batch_size"],
            "translation": yaml.safe_load((conf / "parameters_translate.yml").read_text())["translation"]["batch_size"]}


def kept_table(model, args) -> None:
    print(f"\n## diffusers' own layers against layout-keeping ones (core/models/layout.py; channels-last weights, "
          f"fp32, eager; {args.repeats} interleaved repeats, medians)")
    print("| workload | diffusers' own | layout kept, dividing by 1 | kept | own/kept (speed-up) | dividing/kept |"
          "\n|---|---|---|---|---|---|")
    batches = demo_batches()
    builders = {  # workload -> its arm, given whether the layout is kept
        "naive step": lambda kept: train_step("naive", model, args.batch, None, False, True, kept),
        "sdft step": lambda kept: train_step("sdft", model, args.batch, None, False, True, kept),
        "classifier step": lambda kept: classifier_step(args.classifier_batch, True, kept),
        f"DDIM UNet call, batch {batches['sampling']} (sampling)":
            lambda kept: unet_call(model, batches["sampling"], None, False, True, kept=kept),
        f"UNet call, channels-last input, batch {batches['translation']} (translation)":
            lambda kept: unet_call(model, batches["translation"], None, False, True, True, kept),
    }
    for name, build_arm in builders.items():
        arms = {"own": build_arm(False), "dividing": build_arm("dividing"), "kept": build_arm(True)}
        med, _ = interleaved(arms, args.warmup, args.repeats)
        print(f"| {name} | {med['own'] * 1e3:,.1f} ms | {med['dividing'] * 1e3:,.1f} ms | "
              f"{med['kept'] * 1e3:,.1f} ms | **{med['own'] / med['kept']:.2f}** | "
              f"**{med['dividing'] / med['kept']:.3f}** |", flush=True)


def inception_pass(batch: int, dtype: torch.dtype | None, compiled: bool):
    extractor = inception_extractor(autocast_dtype=dtype, compile=compiled)
    images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    return lambda: extractor.fn(images)


def build(name: str, model, args, dtype: torch.dtype | None, compiled: bool):
    if name in ("naive step", "sdft step"):
        return train_step(name.split()[0], model, args.batch, dtype, compiled)
    if name == "DDIM UNet call":
        return unet_call(model, args.sample_batch, dtype, compiled)
    return inception_pass(args.inception_batch, dtype, compiled)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(arms: dict, warmup: int, repeats: int) -> tuple[dict, dict]:
    """Median seconds of each arm, and its first call (a compiled arm compiles there)."""
    first = {k: timed(fn) for k, fn in arms.items()}
    for _ in range(warmup - 1):
        for fn in arms.values():
            fn()
    times: dict = {k: [] for k in arms}
    keys = list(arms)
    for i in range(repeats):
        for k in (keys if i % 2 == 0 else keys[::-1]):
            times[k].append(timed(arms[k]))
    return {k: statistics.median(v) for k, v in times.items()}, first


def precision_table(model, args, workloads: list[str]) -> None:
    cpu = cpu_bf16()
    print(f"\n## fp32 against bf16 autocast ({args.repeats} interleaved repeats, medians)")
    if not cpu.supported and not args.force_bf16:
        print(f"bf16: not supported on this CPU (flags: {' '.join(cpu.flags) or 'none'}; "
              f"torch kernels {cpu.capability}): no avx512_bf16 or amx_bf16, so `precision: bf16` is refused "
              "here. --force-bf16 times the emulated kind.")
        return
    label = "bf16" if cpu.supported else "bf16 (EMULATED: no native bf16 on this CPU)"
    print(f"| workload | fp32 | {label} | fp32/bf16 (speed-up) |\n|---|---|---|---|")
    for name in workloads:
        arms = {d: build(name, model, args, d, False) for d in (None, torch.bfloat16)}
        med, _ = interleaved({"fp32": arms[None], "bf16": arms[torch.bfloat16]}, args.warmup, args.repeats)
        print(f"| {name} | {med['fp32'] * 1e3:,.1f} ms | {med['bf16'] * 1e3:,.1f} ms | "
              f"**{med['fp32'] / med['bf16']:.2f}** |", flush=True)


def compile_table(model, args, workloads: list[str]) -> None:
    cache = "warm (--warm-cache)" if args.warm_cache else "fresh inductor cache"
    print(f"\n## eager against torch.compile (inductor, fp32; {args.repeats} interleaved repeats, medians; "
          f"compile time apart, {cache})")
    print("| workload | eager | compiled | eager/compiled (speed-up) | compile time |\n|---|---|---|---|---|")
    for name in workloads:
        arms = {"eager": build(name, model, args, None, False), "compiled": build(name, model, args, None, True)}
        med, first = interleaved(arms, args.warmup, args.repeats)
        compile_s = first["compiled"] - med["compiled"]
        print(f"| {name} | {med['eager'] * 1e3:,.1f} ms | {med['compiled'] * 1e3:,.1f} ms | "
              f"**{med['eager'] / med['compiled']:.2f}** | {compile_s:,.1f} s |", flush=True)


def add_workload_arguments(ap: argparse.ArgumentParser, inception_batch: int, repeats: int) -> None:
    """The arguments every CPU workload benchmark takes (this one and bench_ops.py)."""
    ap.add_argument("--model", type=Path, default=None, help="UNet folder (default: the FaceWorld source model)")
    ap.add_argument("--batch", type=int, default=16, help="training batch (SDFT adds as many auxiliary)")
    ap.add_argument("--sample-batch", type=int, default=64)
    ap.add_argument("--inception-batch", type=int, default=inception_batch)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=repeats)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--classifier-batch", type=int, default=64, help="the domain classifier's training batch")


def start(args: argparse.Namespace):
    """The process as a Kedro run sets it up (allocator, threads), and the model: (model, what it is)."""
    tune_malloc_at_startup()  # as a Kedro run would (project/startup.py)
    if args.threads:
        torch.set_num_threads(args.threads)
    return load_model(args.model)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_workload_arguments(ap, inception_batch=8, repeats=5)
    ap.add_argument("--parts", nargs="+", choices=("precision", "compile", "layout", "kept"),
                    default=["precision", "compile", "layout", "kept"])
    ap.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    ap.add_argument("--force-bf16", action="store_true", help="time bf16 on a CPU without it (emulated)")
    ap.add_argument("--warm-cache", action="store_true", help="keep the inductor cache of earlier runs")
    args = ap.parse_args(argv)
    model, what = start(args)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"CPU: {cpu_bf16().describe()}; native bf16: {'yes' if cpu_bf16().supported else 'no'}")
    print(f"model: {what} ({n_params / 1e6:.2f}M params), {model.config.sample_size} px; threads "
          f"{torch.get_num_threads()}; torch {torch.__version__}; batch {args.batch} (train), "
          f"{args.sample_batch} (UNet call), {args.inception_batch} (Inception)")
    if "precision" in args.parts:
        precision_table(model, args, args.workloads)
    if "compile" in args.parts:
        compile_table(model, args, args.workloads)
    if "layout" in args.parts:
        layout_table(model, args)
    if "kept" in args.parts:
        kept_table(model, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
