"""``dt-convert-ldm``: a CompVis latent-diffusion checkpoint (the class-conditional
ImageNet LDM ``cin256-v2``) -> a diffusers pipeline folder (``unet/``
UNet2DConditionModel, ``vqvae/`` VQModel, ``scheduler/`` DDIMScheduler,
``model_index.json``; :mod:`.ldm` says how each part matches the original).

    dt-convert-ldm models/ldm/cin256-v2/model.ckpt data/paper/06_models/cin256_v2_diffusers

Also runnable as ``python -m diffusion_transfer.core.models.ldm_cli``. Exit
status: 0 done, 1 error (one message on stderr, no traceback), 2 bad usage.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from diffusion_transfer.core.models.ldm import PRESETS, convert_ldm_checkpoint, save_ldm_pipeline

PROG = "dt-convert-ldm"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        allow_abbrev=False,
        description="Convert a CompVis latent-diffusion checkpoint (cin256-v2's model.ckpt: class-conditional "
        "ImageNet LDM with its VQ-f4 autoencoder) into a diffusers pipeline folder.",
        epilog="The UNet takes the class as encoder_hidden_states = one-hot (B, 1, n_classes) "
        "(diffusion_transfer.core.models.ldm.class_context); cin256-v2's class 1000 is the 'no class' "
        "row used for classifier-free guidance.",
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="LatentDiffusion model.ckpt (PyTorch Lightning)")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder to write the pipeline to")
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default="cin256_v2", help="architecture (default: %(default)s)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it already holds files")
    return parser


def _convert(args: argparse.Namespace) -> str:
    cfg = PRESETS[args.preset]
    out = Path(args.out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
        raise ValueError(f"{str(out)!r} already exists and is not empty; pass --overwrite to replace it")
    parts = convert_ldm_checkpoint(args.checkpoint, cfg)
    if out.exists() and not out.is_dir():  # --overwrite of a file: the folder takes its place
        out.unlink()
    save_ldm_pipeline(parts, out)
    n_unet = sum(p.numel() for p in parts.unet.parameters())
    n_vq = sum(p.numel() for p in parts.vqvae.parameters())
    return (f"converted {args.checkpoint} -> {out} (UNet2DConditionModel {n_unet / 1e6:.2f}M parameters, "
            f"{parts.n_classes} classes as one-hot context; VQModel {n_vq / 1e6:.2f}M parameters, "
            f"scaling_factor {parts.vqvae.config.scaling_factor}; DDIMScheduler)")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``dt-convert-ldm``; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        print(_convert(args))
    except (ValueError, OSError) as exc:  # LDMCheckpointError is a ValueError
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
