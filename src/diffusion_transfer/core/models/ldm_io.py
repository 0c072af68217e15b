"""Reading CompVis latent-diffusion checkpoints (``model.ckpt``, PyTorch
Lightning files) safely: ``torch.load(weights_only=True)``, with inert
stand-ins for the training-state classes pickled next to the weights.

Lightning checkpoints of 2021-22 pickle classes such as
``pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint`` in their
``callbacks`` entry, which ``weights_only=True`` refuses and which need
Lightning to unpickle for real. Those globals are listed without loading
(``torch.serialization.get_unsafe_globals_in_checkpoint``) and each is
replaced by an empty class that runs no code; the weights are plain tensors
and load as usual. Nothing in the file is executed.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .ldm_config import LDMCheckpointError, LDMCheckpointNotFoundError

_UNSUPPORTED = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
_MAX_STAND_INS = 32

DOWNLOAD_HINT = (
    "Expected a CompVis latent-diffusion checkpoint such as cin256-v2's model.ckpt "
    "(https://ommer-lab.com/files/latent-diffusion/nitro/cin/model.ckpt, the class-conditional ImageNet "
    "LDM of CompVis/latent-diffusion's scripts/latent_imagenet_diffusion.ipynb); download it and pass its path."
)


class _StandIn:
    """An inert replacement for a pickled class the weights do not need."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def _stand_in(path: str) -> tuple[type, str]:
    module, _, name = path.rpartition(".")
    cls = type(name, (_StandIn,), {"__module__": module, "__qualname__": name})
    return cls, path


def _unsafe_globals(file: Path) -> list[str]:
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(file))
    except Exception:  # a legacy (non-zip) file: found one at a time by _load below
        return []


def _load(file: Path) -> Any:
    names = _unsafe_globals(file)
    for _ in range(_MAX_STAND_INS):
        stand_ins = [_stand_in(name) for name in names]
        try:
            with torch.serialization.safe_globals(stand_ins):
                return torch.load(file, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            match = _UNSUPPORTED.search(str(exc))
            if not match or match.group(1) in names:
                raise
            names.append(match.group(1))
    raise LDMCheckpointError(f"{str(file)!r} pickles more than {_MAX_STAND_INS} classes; not a weights checkpoint")


def state_dict_of(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """The LatentDiffusion state dict inside a loaded checkpoint (``source`` names it in errors)."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):  # a Lightning checkpoint
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
        raise LDMCheckpointError(f"{source} holds a {type(obj).__name__}, not a state dict of named tensors")
    return dict(obj)


def load_ldm_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a LatentDiffusion ``model.ckpt`` on the CPU (see the module docstring).

    Raises :class:`LDMCheckpointNotFoundError` for a missing file and
    :class:`LDMCheckpointError` for a file that is not a weights checkpoint."""
    file = Path(path).expanduser()
    if not file.is_file():
        what = "is a directory, not a checkpoint file" if file.is_dir() else "does not exist"
        raise LDMCheckpointNotFoundError(f"LDM checkpoint {str(file)!r} {what}. {DOWNLOAD_HINT}")
    try:
        obj = _load(file)
    except LDMCheckpointError:
        raise
    except Exception as exc:  # truncated file, not a torch file, pickled code, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise LDMCheckpointError(
            f"could not read {str(file)!r} as a PyTorch checkpoint ({type(exc).__name__}: {first}). {DOWNLOAD_HINT}"
        ) from exc
    return state_dict_of(obj, repr(str(file)))
