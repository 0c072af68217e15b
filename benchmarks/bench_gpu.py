"""Time the paper's 256 px source model on a GPU: SDFT against naive with a bf16 and an fp32
teacher, and the project's training step and DDIM sampler against bare diffusers loops.

The model is the P2-weighting FFHQ 256 px ADM UNet (``models.adm.FFHQ_P2``, 94M parameters,
learned variance) built as ``convert_adm_checkpoint`` builds it, with RANDOM weights: timing
does not depend on the weights. The schedule is the paper's (linear 1e-4..0.02, T = 1000).

Training (one optimiser step = loss + backward + AdamW, lr 2e-5, batch ``--batch`` target
images; SDFT adds as many auxiliary inputs). Each student precision ``--precisions`` is a
``train.mixed_precision`` setting: ``bf16`` runs the student's forward under bf16 autocast with
float32 outputs, as accelerate's ``prepare`` does in the project's training loop; ``fp32`` runs
it without autocast (PyTorch's default TF32 flags, printed). Runs, interleaved after warm-up:

* ``naive``: the project's ``DenoisingLoss`` (L_simple + 1e-3 L_vlb for the learned variance);
* ``sdft_teacher_bf16`` / ``sdft_teacher_fp32``: ``SDFTLoss`` (MetFaces preset) with
  ``teacher_dtype`` bf16 (autocast) / fp32;
* ``sdft_teacher_bf16_weights``: ``teacher_dtype`` unset and the teacher's weights cast to bf16;
* ``diffusers``: a bare diffusers step: ``DDPMScheduler.add_noise``, UNet, MSE on eps, AdamW.

Sampling: the project's ``sample_ddim`` over ``model_eps_fn`` against a bare diffusers loop
(``DDIMScheduler.step``, as ``DDIMPipeline`` runs it) on the same UNet, noise, batch and
timesteps (diffusers' "leading" grid, passed to the project's sampler as ``t_start``), eta 0,
clipped x0 in both; their outputs are compared.

Sections run in priority order (training then sampling in bf16, then fp32) and a section is
skipped when ``--budget-s`` would be exceeded; results are rewritten after every section as
``results.json`` and ``results.md`` in ``--out``, and printed.

    python benchmarks/bench_gpu.py --out DIR [--batch 8] [--sample-batch 16] [--tiny]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import diffusers
import torch
import torch.nn.functional as F
from accelerate.utils import convert_outputs_to_fp32
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from torch.utils.flop_counter import FlopCounterMode

from diffusion_transfer.core.allocator import tune_malloc_at_startup
from diffusion_transfer.core.methods import build_method
from diffusion_transfer.core.models import build_unet
from diffusion_transfer.core.models.adm import FFHQ_P2, ADMConfig, adm_unet_config
from diffusion_transfer.core.sampling import model_eps_fn, sample_ddim
from diffusion_transfer.core.schedule import make_schedule

#: ``--tiny``: the same ADM architecture family at 16 px (0.07 GFLOP a forward), for a CPU test.
TINY_ADM = ADMConfig(image_size=16, num_channels=32, channel_mult=(1, 1), attention_resolutions=(8,),
                     num_head_channels=32)
PRECISIONS: dict[str, torch.dtype | None] = {"bf16": torch.bfloat16, "fp32": None}
LR = 2e-5  # conf/paper train.lr
FP32_SLOWDOWN = 4.0  # assumed fp32/bf16 time when deciding whether an fp32 section fits the budget
FLOOR = ("SDFT's floor in FLOPs: one student forward+backward over 2B (2x a naive step) plus one teacher "
         "forward over 2B (2/3 of a naive step, a backward costing about two forwards) = 2.67x naive.")
MEMORY_NOTE = ("images/s counts target images (not SDFT's auxiliary inputs); peak MiB is "
               "torch.cuda.max_memory_allocated during a step with every run's model and AdamW state resident; "
               "step peak MiB is that peak minus what was allocated before the step (its activations and temporaries).")
SDFT_RUNS = {  # run name -> (SDFTLoss teacher_dtype, teacher weights' dtype)
    "sdft_teacher_bf16": ("bf16", torch.float32),
    "sdft_teacher_fp32": ("fp32", torch.float32),
    "sdft_teacher_bf16_weights": (None, torch.bfloat16),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for results.json and results.md")
    ap.add_argument("--tiny", action="store_true", help="a 16 px ADM with small defaults; CPU allowed")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precisions", nargs="+", default=None, choices=list(PRECISIONS),
                    help="student / sampling precisions (default: bf16 fp32; fp32 on the CPU, where bf16 is slow)")
    ap.add_argument("--batch", type=int, default=None, help="training batch (default 8 = conf/paper; tiny 2)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up rounds (default 3; tiny 1)")
    ap.add_argument("--repeats", type=int, default=None, help="timed interleaved rounds (default 10; tiny 2)")
    ap.add_argument("--sample-batch", type=int, default=None, help="sampling batch (default 16; tiny 2)")
    ap.add_argument("--sample-steps", type=int, default=None, help="DDIM steps (default 40 = conf/paper; tiny 4)")
    ap.add_argument("--sample-repeats", type=int, default=None, help="timed sampling rounds (default 3; tiny 1)")
    ap.add_argument("--budget-s", type=float, default=300.0, help="skip sections that would end after this")
    args = ap.parse_args(argv)
    small = dict(batch=2, warmup=1, repeats=2, sample_batch=2, sample_steps=4, sample_repeats=1)
    full = dict(batch=8, warmup=3, repeats=10, sample_batch=16, sample_steps=40, sample_repeats=3)
    for key, value in (small if args.tiny else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
        if getattr(args, key) < (0 if key == "warmup" else 1):
            raise SystemExit(f"--{key.replace('_', '-')} must be positive, got {getattr(args, key)}")
    if args.precisions is None:
        args.precisions = ["fp32"] if args.device == "cpu" else list(PRECISIONS)
    if not args.tiny and args.device == "cpu":
        raise SystemExit("the 256 px model is for a GPU: pass --tiny to run on the CPU")
    return args


def forward_gflop(config: dict[str, Any]) -> float:
    """GFLOP of one single-image forward (torch's flop counter, on the meta device: no memory)."""
    with torch.device("meta"):
        model = UNet2DModel(**config)
        size = config["sample_size"]
        x, t = torch.zeros(1, 3, size, size), torch.zeros(1, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        model(x, t)
    return counter.get_total_flops() / 1e9


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, int | None, int | None]:
    """Seconds of ``fn()`` (synchronised), the peak allocated bytes during it and that peak
    minus the bytes allocated before it (None off CUDA)."""
    sync(device)
    base = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    fn()
    sync(device)
    seconds = time.perf_counter() - start
    if base is None:
        return seconds, None, None
    peak = torch.cuda.max_memory_allocated(device)
    return seconds, peak, peak - base


def interleaved(fns: dict[str, Callable[[], Any]], warmup: int, repeats: int,
                device: torch.device) -> dict[str, dict[str, Any]]:
    """Each run's times over ``repeats`` rounds (alternating order) after ``warmup`` rounds,
    its median, and its largest peak memory (MiB)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    names = list(fns)
    stats: dict[str, dict[str, Any]] = {n: {"times_s": [], "peak_mib": None, "step_peak_mib": None} for n in names}
    for i in range(repeats):
        for name in names if i % 2 == 0 else names[::-1]:
            seconds, peak, extra = timed(fns[name], device)
            entry = stats[name]
            entry["times_s"].append(seconds)
            if peak is not None:
                entry["peak_mib"] = max(entry["peak_mib"] or 0.0, peak / 2**20)
                entry["step_peak_mib"] = max(entry["step_peak_mib"] or 0.0, extra / 2**20)
    for entry in stats.values():
        entry["median_s"] = statistics.median(entry["times_s"])
    return stats


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def with_mixed_precision(model: torch.nn.Module, dtype: torch.dtype | None, device: torch.device) -> torch.nn.Module:
    """``model`` whose forward runs under autocast with float32 outputs: what accelerate's
    ``prepare`` does for ``mixed_precision`` in the project's training loop (no-op for fp32)."""
    if dtype is None:
        return model
    forward = model.forward

    def autocast_forward(*args: Any, **kwargs: Any) -> Any:
        with autocast(device, dtype):
            return forward(*args, **kwargs)

    model.forward = convert_outputs_to_fp32(autocast_forward)
    return model


def optimiser_step(loss: torch.Tensor, opt: torch.optim.Optimizer) -> None:
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def training_steps(model: UNet2DModel, images: torch.Tensor, dtype: torch.dtype | None,
                   device: torch.device) -> dict[str, Callable[[], None]]:
    """One step function per run, each with its own student copy, AdamW and generator."""
    schedule = make_schedule()  # conf/paper: linear 1e-4..0.02, T = 1000
    teachers = {torch.float32: copy.deepcopy(model).eval().requires_grad_(False)}
    teachers[torch.bfloat16] = copy.deepcopy(teachers[torch.float32]).to(torch.bfloat16)
    specs = {"naive": (build_method("naive", {}, schedule), None)}
    for name, (teacher_dtype, weights) in SDFT_RUNS.items():
        params = {"preset": "metfaces", **({"teacher_dtype": teacher_dtype} if teacher_dtype else {})}
        specs[name] = (build_method("sdft", params, schedule), teachers[weights])
    steps: dict[str, Callable[[], None]] = {}
    for seed, (name, (spec, teacher)) in enumerate(specs.items()):
        student = with_mixed_precision(spec.build_student(copy.deepcopy(model)).train(), dtype, device)
        opt = torch.optim.AdamW(student.parameters(), lr=LR)
        gen = torch.Generator(device=device).manual_seed(seed)

        def step(student=student, loss_fn=spec.loss_fn, teacher=teacher, opt=opt, gen=gen) -> None:
            optimiser_step(loss_fn(student, images, teacher=teacher, generator=gen)["loss"], opt)

        steps[name] = step
    steps["diffusers"] = bare_diffusers_step(model, images, dtype, device)
    return steps


def bare_diffusers_step(model: UNet2DModel, images: torch.Tensor, dtype: torch.dtype | None,
                        device: torch.device) -> Callable[[], None]:
    """The training step of diffusers' unconditional example: add_noise, UNet, MSE on eps, AdamW."""
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    student = with_mixed_precision(copy.deepcopy(model).train(), dtype, device)
    opt = torch.optim.AdamW(student.parameters(), lr=LR)
    gen = torch.Generator(device=device).manual_seed(99)

    def step() -> None:
        noise = torch.randn(images.shape, generator=gen, device=device)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (images.shape[0],), generator=gen, device=device)
        pred = student(scheduler.add_noise(images, noise, t), t).sample
        optimiser_step(F.mse_loss(pred[:, :3].float(), noise), opt)  # eps channels (6 = learned variance)

    return step


def bench_training(model: UNet2DModel, args: argparse.Namespace, dtype: torch.dtype | None,
                   device: torch.device, gflop: float) -> dict[str, Any]:
    size = model.config.sample_size
    images = torch.rand(args.batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device) * 2 - 1
    runs = interleaved(training_steps(model, images, dtype, device), args.warmup, args.repeats, device)
    # model FLOPs per step in single-image forwards: forward + backward (2 forwards) over B for naive,
    # over 2B plus a teacher forward over 2B for SDFT
    forwards = {name: (8 if name.startswith("sdft") else 3) * args.batch for name in runs}
    for name, entry in runs.items():
        entry["steps_per_s"] = 1 / entry["median_s"]
        entry["images_per_s"] = args.batch / entry["median_s"]
        entry["model_tflop_per_s"] = forwards[name] * gflop / entry["median_s"] / 1e3
    naive = runs["naive"]["median_s"]
    ratios = {f"{name}/naive": runs[name]["median_s"] / naive for name in runs if name.startswith("sdft")}
    ratios["naive/diffusers"] = naive / runs["diffusers"]["median_s"]
    return {"batch": args.batch, "aux_batch_sdft": args.batch, "warmup": args.warmup, "repeats": args.repeats,
            "runs": runs, "ratios": ratios}


def diffusers_ddim(unet: UNet2DModel, scheduler: DDIMScheduler, noise: torch.Tensor,
                   dtype: torch.dtype | None) -> torch.Tensor:
    """DDIMPipeline's loop without the pipeline: UNet, then ``scheduler.step``."""
    x = noise
    with torch.no_grad():
        for t in scheduler.timesteps:
            with autocast(noise.device, dtype):
                eps = unet(x, t).sample[:, :3]
            # the project's sampler recomputes eps from the clipped x0 (guided-diffusion's update)
            x = scheduler.step(eps, t, x, eta=0.0, use_clipped_model_output=True).prev_sample
    return x


def bench_sampling(model: UNet2DModel, args: argparse.Namespace, dtype: torch.dtype | None,
                   device: torch.device, gflop: float) -> dict[str, Any]:
    unet = model.eval()  # both loops run under no_grad; training copies the model and sets .train()
    size, schedule = unet.config.sample_size, make_schedule()
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                              clip_sample=True, set_alpha_to_one=True)
    scheduler.set_timesteps(args.sample_steps)  # "leading": (steps-1)*k, ..., k, 0 with k = 1000 // steps
    t_start = int(scheduler.timesteps[0])  # the project's linspace(t_start, 0, steps) is the same grid
    noise = torch.randn(args.sample_batch, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    eps_fn = model_eps_fn(unet, schedule, autocast_dtype=dtype)
    outputs: dict[str, torch.Tensor] = {}

    def project() -> None:
        outputs["project"] = sample_ddim(eps_fn, noise, schedule, steps=args.sample_steps, eta=0.0, t_start=t_start)

    def bare() -> None:
        outputs["diffusers"] = diffusers_ddim(unet, scheduler, noise, dtype)

    runs = interleaved({"project": project, "diffusers": bare}, 1, args.sample_repeats, device)
    for entry in runs.values():
        entry["images_per_s"] = args.sample_batch / entry["median_s"]
        entry["model_tflop_per_s"] = args.sample_steps * args.sample_batch * gflop / entry["median_s"] / 1e3
    diff = (outputs["project"].float() - outputs["diffusers"].float()).abs().max().item()
    return {"batch": args.sample_batch, "steps": args.sample_steps, "timesteps": [int(t) for t in scheduler.timesteps],
            "repeats": args.sample_repeats, "runs": runs, "max_abs_diff": diff,
            "ratio_project_to_diffusers": runs["project"]["median_s"] / runs["diffusers"]["median_s"]}


def environment(device: torch.device) -> dict[str, Any]:
    env = {"device": str(device), "python": platform.python_version(), "torch": torch.__version__,
           "diffusers": diffusers.__version__, "cuda_matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
           "cudnn_tf32": torch.backends.cudnn.allow_tf32, "cudnn_benchmark": torch.backends.cudnn.benchmark,
           "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env


def _fmt(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def to_markdown(results: dict[str, Any]) -> str:
    m, env = results["model"], results["environment"]
    lines = [f"# GPU benchmark: {m['name']}", "",
             f"{m['params_m']:.2f}M parameters, {m['sample_size']} px, {m['forward_gflop']:.1f} GFLOP per image "
             f"forward; {m['weights']}. Device: {env.get('gpu', env['device'])}, torch {env['torch']}, "
             f"diffusers {env['diffusers']}, TF32 matmul {env['cuda_matmul_tf32']} / cuDNN {env['cudnn_tf32']}.", ""]
    for precision, res in results["training"].items():
        lines += [f"## Training step, student {precision}, batch {res['batch']} (+{res['aux_batch_sdft']} aux for "
                  f"SDFT), median of {res['repeats']} interleaved after {res['warmup']} warm-up", "",
                  "| run | median ms | steps/s | images/s | model TFLOP/s | peak MiB | step peak MiB |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {name} | {_fmt(r['median_s'] * 1e3, 1)} | {_fmt(r['steps_per_s'])} | {_fmt(r['images_per_s'], 1)}"
                  f" | {_fmt(r['model_tflop_per_s'], 1)} | {_fmt(r['peak_mib'], 0)} | {_fmt(r['step_peak_mib'], 0)} |"
                  for name, r in res["runs"].items()]
        lines += [""] + [f"- {key}: **{value:.3f}**" for key, value in res["ratios"].items()] + [""]
    if results["training"]:
        lines += [MEMORY_NOTE, ""]
    for precision, res in results["sampling"].items():
        lines += [f"## DDIM sampling, {precision}, batch {res['batch']}, {res['steps']} steps, median of "
                  f"{res['repeats']}", "", "| loop | median s | images/s | model TFLOP/s |", "|---|---|---|---|"]
        lines += [f"| {name} | {_fmt(r['median_s'], 3)} | {_fmt(r['images_per_s'], 1)} | "
                  f"{_fmt(r['model_tflop_per_s'], 1)} |" for name, r in res["runs"].items()]
        lines += ["", f"- project/diffusers: **{res['ratio_project_to_diffusers']:.3f}**; max |difference| of the "
                  f"samples: {res['max_abs_diff']:.2e}", ""]
    lines += [f"- skipped: {', '.join(results['skipped']) or 'nothing'}", f"- {FLOOR}",
              f"- total wall time {results['wall_s']:.0f} s"]
    return "\n".join(lines) + "\n"


def write(results: dict[str, Any], out: Path, started: float) -> str:
    results["wall_s"] = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    text = to_markdown(results)
    (out / "results.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tune_malloc_at_startup()  # as a Kedro run would (project/startup.py)
    started = time.perf_counter()
    device = torch.device(args.device)
    adm = TINY_ADM if args.tiny else FFHQ_P2
    config = adm_unet_config(adm)
    torch.manual_seed(0)
    model = build_unet(config).to(device)
    name = "tiny ADM, 16 px (--tiny)" if args.tiny else "ADM FFHQ 256 px (P2-weighting ffhq_p2 architecture)"
    results: dict[str, Any] = {
        "model": {"name": name, "adm_config": adm.model_dump(mode="json"), "sample_size": config["sample_size"],
                  "params_m": sum(p.numel() for p in model.parameters()) / 1e6, "forward_gflop": forward_gflop(config),
                  "weights": "random init (timing does not depend on the weights)"},
        "environment": environment(device), "training": {}, "sampling": {}, "skipped": [], "floor": FLOOR,
    }
    sections = [(kind, p) for p in args.precisions for kind in ("training", "sampling")]
    durations: dict[tuple[str, str], float] = {}
    for kind, precision in sections:
        elapsed = time.perf_counter() - started
        guess = FP32_SLOWDOWN * durations.get((kind, "bf16"), 0.0) if precision == "fp32" else 0.0
        if elapsed + guess > args.budget_s:
            results["skipped"].append(f"{kind} {precision} (budget {args.budget_s:.0f} s, at {elapsed:.0f} s)")
            continue
        bench = bench_training if kind == "training" else bench_sampling
        print(f"[{elapsed:6.1f} s] {kind} {precision} ...", flush=True)
        results[kind][precision] = bench(model, args, PRECISIONS[precision], device, results["model"]["forward_gflop"])
        durations[(kind, precision)] = time.perf_counter() - started - elapsed
        write(results, args.out, started)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(write(results, args.out, started), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
