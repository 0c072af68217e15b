"""The released SDFT training loop against the project's: one training step each, same weights, same batch.

The released code is the SDFT authors' (github.com/JiwanHur/SDFT, built on
openai/guided-diffusion); it is not part of this project: pass a checkout (or
an exported tree) with ``--released PATH``. Without it, or when PATH holds no
``guided_diffusion/train_util_distill.py``, the benchmark prints one line
saying it is skipped and exits 0.

What runs (on the CPU in fp32 by default; ``--device cuda`` below):

- a guided-diffusion ``UNetModel`` at 64 px (a small config, below; random
  weights from a fixed seed, the zero-initialised output layers included, so
  the outputs are not trivially equal), saved as the released code saves a
  checkpoint (``torch.save(state_dict)``) and converted by ``dt-convert-adm``
  into the project's ``UNet2DModel``; both must give the same output on one
  input (relative L2 below ``--tolerance``) before anything is timed;
- released: ``TrainLoop.run_step`` of ``train_util_distill.py`` (its
  ``training_losses_distill``: the student on x_t and on the noise itself, the
  teacher on both without gradients; backward, AdamW, EMA 0.9999, its logging),
  with the settings of the authors' ``runs/train_ddp_distill_sub.sh``
  (``distill_agnostic`` on, ``distill_feats`` off, gamma 3 / 100, lambda 0.1 /
  0.1, learned sigma with ``rescale_learned_sigmas``). Its loop casts the
  teacher to fp16 (``model_t.convert_to_fp16()``) and trains in fp16 with loss
  scaling when ``use_fp16``; on the CPU both run in fp32 here: the teacher is
  cast back (``convert_to_fp32``), without which its fp32 input meets fp16
  weights and the forward fails;
- project: ``SDFTLoss`` with ``variant: authors_code`` and the same lambdas
  and gammas, teacher in fp32, then backward, grad clipping at 1.0, AdamW and
  the EMA update as ``core/training/loop.py`` runs them; once with its
  defaults (``skip_distill_below`` 1e-6: no forwards for rows whose weight is
  negligible, many auxiliary rows at gamma 100) and once with 0 (the released
  arithmetic).

The released code needs ``mpi4py`` and ``blobfile`` at import; where they are
not installed they are replaced by stand-ins (one process; neither is used by a
training step), and a one-process gloo group stands in for ``setup_dist``.
Steps are timed interleaved (medians; wall clock, or with ``--clock cpu`` this
process's CPU time); the ratio printed is
released / project images per second.

On a GPU (``--device cuda``, issue 35: the project's step at twice the released images/s or more) each
side runs as it would there: the released loop in fp16 with its own loss scaling
(``use_fp16``, its teacher in fp16, as the authors' run script), through its DDP wrapper on a
one-process NCCL group; the project with the ``train`` speed settings named by
``--project-settings`` (``bf16``: autocast student and bf16 teacher, ``channels_last``,
``fused_adamw``, ``tf32``, ``compile``). The weights are compared on the CPU in fp32 first.

    python benchmarks/bench_released.py --released /tmp/released_sdft [--batch 4] [--repeats 5]
    python benchmarks/bench_released.py --released build/released_sdft --device cuda --preset ffhq_p2 \
        --batch 8 --project-settings bf16 channels_last fused_adamw tf32
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import math
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gpu import with_mixed_precision  # noqa: E402
from bench_gpu_mfu import tf32_on  # noqa: E402
from bench_lora import machine_line  # noqa: E402
from bench_steps import ran_as_memory_child, rss_kib, time_interleaved  # noqa: E402

from diffusion_transfer.core.cpu_precision import cpu_bf16  # noqa: E402
from diffusion_transfer.core.methods import build_method  # noqa: E402
from diffusion_transfer.core.models import load_unet, model_output  # noqa: E402
from diffusion_transfer.core.models.adm_cli import main as convert_adm_cli  # noqa: E402
from diffusion_transfer.core.schedule import make_schedule  # noqa: E402
from diffusion_transfer.core.training.ema import ema_update_  # noqa: E402

MARKER = Path("guided_diffusion") / "train_util_distill.py"
#: The released trainer's settings (scripts/image_distill_train.py, runs/train_ddp_distill_sub.sh).
DISTILL = dict(distill_lambda=0.1, distill_p2_gamma=3, distill_feats=False, distill_feats_lambda=0.05,
               distill_agnostic=True, distill_agnostic_gamma=100, distill_agnostic_lambda=0.1,
               last_iter="200k", distill_min_snr=False)
#: The same loss in the project's terms.
PROJECT_SDFT = {"variant": "authors_code", "teacher_dtype": None, "lambda_distill": 0.1, "lambda_aux": 0.1,
                "gamma_distill": 3.0, "gamma_aux": 100.0}
#: ADM arguments of the net (script_util names), beside the ones the command line sets.
FIXED_ADM = dict(learn_sigma=True, num_heads=4, num_heads_upsample=-1, use_scale_shift_norm=True,
                 resblock_updown=True, use_new_attention_order=False, dropout=0.0, class_cond=False,
                 diffusion_steps=1000, noise_schedule="linear", rescale_timesteps=False)
RELEASED_LR, RELEASED_EMA = 1e-4, "0.9999"  # image_distill_train.py's defaults
PROJECT_LR, PROJECT_EMA, PROJECT_CLIP = 1e-4, 0.999, 1.0  # TrainConfig's defaults
#: The project's speed settings a run may turn on (each as the training loop applies its ``train`` key).
SPEED_SETTINGS = ("bf16", "channels_last", "fused_adamw", "tf32", "compile")
#: Architectures by name: the default small 64 px net, and P2-weighting's FFHQ 256 px model (conf/paper's source).
PRESETS = {"small64": dict(image_size=64, num_channels=64, num_res_blocks=1, channel_mult="1,2,3,4",
                           attention_resolutions="16,8", num_head_channels=64),
           "ffhq_p2": dict(image_size=256, num_channels=128, num_res_blocks=1, channel_mult="1,1,2,2,4,4",
                           attention_resolutions="16", num_head_channels=64)}


def skip_reason(released: Path | None) -> str | None:
    """Why the benchmark cannot run (one line), or None when the released code is there."""
    if released is None:
        return ("skipped: no --released PATH given (the SDFT authors' code, e.g. "
                "git clone https://github.com/JiwanHur/SDFT /tmp/released_sdft)")
    if not (released / MARKER).is_file():
        return f"skipped: {released} holds no {MARKER} (not the released SDFT code, or absent)"
    return None


def adm_args(args) -> dict:
    """The ADM architecture: the fixed settings plus the command line's."""
    return {**FIXED_ADM, "image_size": args.image_size, "num_channels": args.num_channels,
            "num_res_blocks": args.num_res_blocks, "channel_mult": args.channel_mult,
            "attention_resolutions": args.attention_resolutions, "num_head_channels": args.num_head_channels}


class _OneProcessComm:
    """mpi4py's COMM_WORLD for one process (what dist_util asks of it)."""
    rank, size = 0, 1

    def Get_rank(self):  # noqa: N802 (mpi4py's name)
        return 0

    def Get_size(self):  # noqa: N802 (mpi4py's name)
        return 1

    def bcast(self, value, root=0):
        return value


def import_released(path: Path, scratch: Path, backend: str = "gloo") -> types.SimpleNamespace:
    """The released modules, importable from ``path``, with a one-process group (NCCL for CUDA)."""
    for name in ("mpi4py", "blobfile"):
        try:
            importlib.import_module(name)
        except ImportError:  # a training step uses neither: stand-ins let the modules import
            stub = types.ModuleType(name)
            if name == "mpi4py":
                stub.MPI = types.SimpleNamespace(COMM_WORLD=_OneProcessComm())
            sys.modules[name] = stub
    sys.path.insert(0, str(path))
    mods = {m: importlib.import_module(f"guided_diffusion.{m}")
            for m in ("script_util", "train_util_distill", "logger", "resample")}
    if not dist.is_initialized():  # TrainLoop asks the world size and broadcasts the weights
        dist.init_process_group(backend, init_method=f"file://{scratch / 'pg'}", rank=0, world_size=1)
    mods["logger"].configure(dir=str(scratch / "log"), format_strs=[])  # its key-values, not printed
    return types.SimpleNamespace(**mods)


def build_released_model(gd, adm: dict, seed: int):
    """The released UNet and its diffusion; the zero-initialised layers get random weights too."""
    kwargs = gd.script_util.model_and_diffusion_defaults()
    kwargs.update(adm, rescale_learned_sigmas=True, use_fp16=False, use_checkpoint=False)
    torch.manual_seed(seed)
    model, diffusion = gd.script_util.create_model_and_diffusion(**kwargs)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1 and not p.any():  # zero_module(...): random, so the output says something
                torch.nn.init.kaiming_uniform_(p, a=math.sqrt(5))
    return model, diffusion


def convert_with_cli(model: torch.nn.Module, adm: dict, scratch: Path) -> torch.nn.Module:
    """Save the released state dict as TrainLoop.save does, convert it with dt-convert-adm, load it."""
    ckpt, cfg = scratch / "model000000.pt", scratch / "adm_config.json"
    torch.save(model.state_dict(), ckpt)
    fields = {k: adm[k] for k in ("image_size", "num_channels", "num_res_blocks", "attention_resolutions",
                                  "num_heads", "num_head_channels", "num_heads_upsample", "use_scale_shift_norm",
                                  "resblock_updown", "learn_sigma", "use_new_attention_order", "dropout",
                                  "class_cond", "diffusion_steps", "noise_schedule", "rescale_timesteps")}
    fields["channel_mult"] = [float(m) if "." in m else int(m) for m in adm["channel_mult"].split(",")]
    cfg.write_text(json.dumps(fields))
    if convert_adm_cli([str(ckpt), str(scratch / "unet"), "--config", str(cfg), "--overwrite"]) != 0:
        raise RuntimeError("dt-convert-adm failed (its message is above)")
    return load_unet(scratch / "unet")


def same_output(released: torch.nn.Module, project: torch.nn.Module, px: int, tolerance: float) -> float:
    """Relative L2 between both nets' outputs on one input; raises above ``tolerance``."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, px, px, generator=gen)
    t = torch.tensor([10, 700])
    released.eval()
    project.eval()
    with torch.no_grad():
        a, b = released(x, t), model_output(project, x, t)
    rel = float((a - b).norm() / a.norm())
    if not rel < tolerance:
        raise AssertionError(f"the converted UNet's output differs from the released one's by {rel:.2e} "
                             f"(relative L2) > {tolerance:.0e}: the two sides would not run the same net")
    return rel


def released_step(gd, model, diffusion, images: torch.Tensor, use_fp16: bool = False) -> dict:
    """``TrainLoop.run_step`` of the released trainer on ``images`` (fp32 on the CPU, fp16 on a GPU)."""
    model.train()
    teacher = copy.deepcopy(model).eval()
    loop = gd.train_util_distill.TrainLoop(
        model=model, model_t=teacher, diffusion=diffusion, data=None, batch_size=images.shape[0],
        microbatch=-1, lr=RELEASED_LR, ema_rate=RELEASED_EMA, log_interval=10, save_interval=10000,
        resume_checkpoint="", use_fp16=use_fp16, schedule_sampler=gd.resample.UniformSampler(diffusion),
        distill_kwargs=dict(DISTILL))
    if not use_fp16:
        teacher.convert_to_fp32()  # its __init__ cast the teacher to fp16, which fp32 inputs cannot meet on the CPU

    def step():
        loop.run_step(images, {})
        loop.step += 1
    return {"step": step, "params": sum(p.numel() for p in model.parameters())}


def project_step(unet: torch.nn.Module, images: torch.Tensor, skip_distill_below: float | None,
                 settings: tuple[str, ...] = ()) -> dict:
    """The project's SDFT step (loss, backward, clip, AdamW, EMA) as ``core/training/loop.py`` runs it,
    with the speed ``settings`` on (``SPEED_SETTINGS``)."""
    params = dict(PROJECT_SDFT, teacher_dtype="bf16" if "bf16" in settings else None)
    if skip_distill_below is not None:
        params["skip_distill_below"] = skip_distill_below
    loss_fn = build_method("sdft", params, make_schedule()).loss_fn
    device = images.device
    layout = torch.channels_last if "channels_last" in settings else torch.contiguous_format
    student = copy.deepcopy(unet).train().requires_grad_(True).to(memory_format=layout)
    teacher = copy.deepcopy(unet).eval().requires_grad_(False).to(memory_format=layout)
    ema = copy.deepcopy(student).eval().requires_grad_(False)
    trained = list(student.parameters())
    if "compile" in settings:
        student.compile()
    student = with_mixed_precision(student, torch.bfloat16 if "bf16" in settings else None, device)
    opt = torch.optim.AdamW(trained, lr=PROJECT_LR, fused=True if "fused_adamw" in settings else None)
    gen = torch.Generator(device=device).manual_seed(0)
    batch = images.contiguous(memory_format=layout)

    def step():
        with tf32_on(device, "tf32" in settings):
            terms = loss_fn(student, batch, teacher=teacher, generator=gen)
            terms["loss"].backward()
            torch.nn.utils.clip_grad_norm_(trained, PROJECT_CLIP)
            opt.step()
            opt.zero_grad(set_to_none=True)
            ema_update_(list(ema.parameters()), trained, PROJECT_EMA)
        {k: float(v.detach()) for k, v in terms.items()}  # noqa: B018 (the loop reads every term each step)
    return {"step": step, "params": sum(p.numel() for p in trained)}


def settings_refusal(device: torch.device, settings: tuple[str, ...]) -> str | None:
    """Why the project's ``settings`` cannot run on ``device`` (one sentence with the fix), or None."""
    if device.type == "cuda" and not torch.cuda.is_available():
        return "--device cuda, but torch sees no CUDA device here: run it on a GPU machine, or leave --device out."
    if device.type == "cpu" and "bf16" in settings and not cpu_bf16().supported:
        return (f"--project-settings bf16 on this CPU, {cpu_bf16().describe()}, which has no native bf16 "
                "(bf16 autocast would be emulated, over ten times slower): leave bf16 out here.")
    return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--released", type=Path, default=None,
                    help="the released SDFT code (a JiwanHur/SDFT checkout); absent: skipped")
    ap.add_argument("--batch", type=int, default=4, help="images per step, the same on both sides")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="small64",
                    help="the architecture; the flags below override its fields")
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--num-channels", type=int, default=None)
    ap.add_argument("--num-res-blocks", type=int, default=None)
    ap.add_argument("--channel-mult", default=None)
    ap.add_argument("--attention-resolutions", default=None)
    ap.add_argument("--num-head-channels", type=int, default=None)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--project-settings", nargs="*", default=[], choices=SPEED_SETTINGS,
                    help="the project's speed settings for its step (bf16 needs a GPU or a CPU with native bf16)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: elapsed time; cpu: this process's CPU time (with --threads 1 the work done, "
                         "little affected by other jobs on a shared machine)")
    ap.add_argument("--tolerance", type=float, default=1e-4, help="max relative L2 between the two nets' outputs")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.memory_child = None  # bench_steps' start-up helper also serves its memory children
    return args


def gpu_peak(device: torch.device) -> str:
    """The CUDA allocator's peak (every model of all three steps resident), or nothing on a CPU."""
    if device.type != "cuda":
        return ""
    return f", peak GPU memory allocated {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB"


def report(medians: dict, runs: dict, batch: int) -> dict[str, float]:
    """Print the table; returns released / project images per second for each project row."""
    print(f"{'step':<34} {'median':>10} {'images/s':>9} {'trained params':>15}")
    for name, sec in medians.items():
        print(f"{name:<34} {sec * 1e3:>7.0f} ms {batch / sec:>9.2f} {runs[name]['params']:>15,}")
    ratios = {name: medians[name] / medians["released"] for name in medians if name != "released"}
    for name, ratio in ratios.items():
        print(f"released / {name} images per second: {ratio:.2f}")
    return ratios


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the comparison; returns the ratios ({} when skipped)."""
    args = parse_args(argv)
    reason = skip_reason(args.released)
    if reason:
        print(reason)
        return {}
    ran_as_memory_child(args, None)  # malloc tuning and --threads, as a Kedro run would
    device = torch.device(args.device)
    refusal = settings_refusal(device, tuple(args.project_settings))
    if refusal:
        raise SystemExit(f"Error: {refusal}")
    print(machine_line(device))
    adm = adm_args(args)
    with tempfile.TemporaryDirectory(prefix="bench_released_") as tmp:
        scratch = Path(tmp)
        gd = import_released(args.released.resolve(), scratch, "nccl" if device.type == "cuda" else "gloo")
        model, diffusion = build_released_model(gd, adm, args.seed)
        unet = convert_with_cli(model, adm, scratch)
        rel = same_output(model, unet, args.image_size, args.tolerance)  # on the CPU, in fp32
        model, unet = model.to(device), unet.to(device)
        images = (torch.rand(args.batch, 3, args.image_size, args.image_size,
                             generator=torch.Generator().manual_seed(args.seed)) * 2 - 1).to(device)
        torch.manual_seed(args.seed)  # the released loop draws t (numpy) and its noise (torch) globally
        np.random.seed(args.seed)
        settings = tuple(args.project_settings)
        runs = {"released": released_step(gd, model, diffusion, images, use_fp16=device.type == "cuda"),
                "project": project_step(unet, images, None, settings),
                "project, skip_distill_below 0": project_step(unet, images, 0.0, settings)}
        clock = time.process_time if args.clock == "cpu" else time.perf_counter
        medians = time_interleaved(runs, args.warmup, args.repeats, device, clock)
    precision = ("fp16 with its loss scaling, teacher fp16" if device.type == "cuda"
                 else "fp32 on the CPU: teacher cast back from fp16, no loss scaling")
    print(f"project settings: {', '.join(settings) or 'none (fp32, contiguous, per-tensor AdamW, eager)'}")
    print(f"released code: {args.released} (TrainLoop.run_step, {precision}); "
          f"ADM {json.dumps({k: adm[k] for k in sorted(adm)})}; converted by dt-convert-adm, "
          f"outputs agree to {rel:.1e} (relative L2)")
    print(f"batch {args.batch} at {args.image_size} px, SDFT as the authors' run script (auxiliary input = the "
          f"noise, gamma 3 / 100, lambda 0.1 / 0.1); {args.clock} time, {args.repeats} interleaved repeats after "
          f"{args.warmup} warm-up; peak RSS {rss_kib('VmHWM') / 1024:.0f} MB{gpu_peak(device)}")
    return report(medians, runs, args.batch)


if __name__ == "__main__":
    main()
