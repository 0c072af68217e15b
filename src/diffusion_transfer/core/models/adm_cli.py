"""``dt-convert-adm``: a guided-diffusion / improved-diffusion (ADM) checkpoint ->
a diffusers ``UNet2DModel`` folder (``save_pretrained``, safetensors) that
``diffusion_transfer.core.models.unet.load_unet`` reads, with a
``scheduler_config.json`` when the schedule is not DDPM's linear T=1000.

    dt-convert-adm data/00_weights/ffhq_p2.pt data/paper/06_models/ffhq_p2_diffusers
    dt-convert-adm data/00_weights/imagenet64_uncond_100M_1500K.pt \
        data/paper/06_models/improved_imagenet64_diffusers --preset improved_imagenet64

The architecture is the ``--preset`` (default ``ffhq_p2``), then the fields of a
``--config`` JSON object, then the single-field flags (``--image-size 64``,
``--channel-mult 1,2,3,4``, ``--resblock-updown false`` ...), each overriding the
one before; the result is validated once. Also runnable as
``python -m diffusion_transfer.core.models.adm_cli``. Exit status: 0 done, 1 error (one message
on stderr, no traceback), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from diffusion_transfer.core.models.adm import PRESETS, ADMConfig, convert_adm_checkpoint
from diffusion_transfer.core.models.scheduler_config import SCHEDULER_FILE, scheduler_config_of
from diffusion_transfer.core.models.unet import save_unet

PROG = "dt-convert-adm"


def _parser(presets: dict[str, Any], fields: dict[str, Any]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        allow_abbrev=False,  # --num-head would silently pick one of --num-heads / --num-head-channels
        description="Convert a guided-diffusion / improved-diffusion (ADM) UNet checkpoint (e.g. P2-weighting's "
        "ffhq_p2.pt, improved-diffusion's imagenet64_uncond_100M_1500K.pt) into a diffusers UNet2DModel folder "
        "(plus scheduler_config.json when the schedule is not DDPM's linear T=1000).",
        epilog="Architecture = --preset, overridden by the --config JSON object (ADMConfig field names, "
        'e.g. {"image_size": 64, "channel_mult": [1, 2, 3, 4]}), overridden by the flags above. '
        "Lists are comma-separated on the command line (--channel-mult 1,1,2,2,4,4), booleans true/false.",
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="ADM .pt (model*.pt / ema_*.pt)")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder to write the UNet2DModel to")
    parser.add_argument(
        "--preset", choices=sorted(presets), default="ffhq_p2", help="base architecture (default: %(default)s)"
    )
    parser.add_argument("--config", metavar="JSON", help="JSON file with an object of ADMConfig fields")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it already holds files")
    group = parser.add_argument_group("architecture overrides (default: the preset's value)")
    # One flag per ADMConfig field, so the CLI never lags behind the config; pydantic parses the strings.
    for name, field in fields.items():
        group.add_argument(f"--{name.replace('_', '-')}", dest=name, metavar=_metavar(field), help=field.description)
    return parser


def _metavar(field: Any) -> str:
    text = str(field.annotation)
    return "LIST" if "tuple" in text else {bool: "BOOL", int: "N", float: "X"}.get(field.annotation, "V")


def _read_json(path: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ValueError(f"cannot read --config {path!r}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"--config {path!r} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"--config {path!r} must hold a JSON object of ADMConfig fields, got {type(data).__name__}")
    return data


def _config(args: argparse.Namespace, presets: dict[str, Any], fields: dict[str, Any]):
    values = presets[args.preset].model_dump()
    if args.config:
        values.update(_read_json(args.config))
    values.update({name: getattr(args, name) for name in fields if getattr(args, name) is not None})
    return ADMConfig(**values)


def _describe(exc: Exception) -> str:
    if isinstance(exc, ValidationError):  # one line per bad field, without pydantic's URLs
        lines = [f"{'.'.join(map(str, err['loc'])) or 'config'}: {err['msg']}" for err in exc.errors()]
        return "invalid ADM config: " + "; ".join(lines)
    return str(exc)


def _convert(args: argparse.Namespace, presets: dict[str, Any], fields: dict[str, Any]) -> str:
    cfg = _config(args, presets, fields)  # before the (large) checkpoint is read
    out = Path(args.out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
        raise ValueError(f"{str(out)!r} already exists and is not empty; pass --overwrite to replace it")
    model = convert_adm_checkpoint(args.checkpoint, cfg)
    save_unet(model, out)
    n_params = sum(p.numel() for p in model.parameters())
    schedule = scheduler_config_of(model)
    said = (f"; {SCHEDULER_FILE}: {schedule['beta_schedule']}, T={schedule['num_train_timesteps']}" if schedule
            else "; no scheduler config (DDPM linear, T=1000)")
    classes = f", {cfg.num_classes} classes (class_labels=)" if cfg.class_cond else ""
    return (f"converted {args.checkpoint} -> {out} (UNet2DModel, {n_params / 1e6:.2f}M parameters, "
            f"{model.config.out_channels} output channels, sample_size {model.config.sample_size}{classes}{said})")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``dt-convert-adm``; returns the exit status."""
    fields = dict(ADMConfig.model_fields)
    args = _parser(PRESETS, fields).parse_args(argv)
    try:
        print(_convert(args, PRESETS, fields))
    except (ValueError, OSError) as exc:  # ValidationError and ADMCheckpointError are ValueErrors
        print(f"{PROG}: error: {_describe(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
