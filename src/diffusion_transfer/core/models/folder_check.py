"""What would stop a UNet folder from loading, found before any compute.

``config.json`` must parse; a weights file must be there, whole (a truncated
safetensors file is caught from its header) and hold tensors of the shapes
the config describes (the channel counts included). Nothing is initialised
or read in full: the UNet is built on the meta device, the weights are read
by their header (safetensors) or memory-mapped (``.bin``)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from diffusion_transfer.core.models.class_labels import CLASS_CONTEXT_KEY
from diffusion_transfer.core.models.latent import AUTOENCODER_FOLDERS
from diffusion_transfer.core.models.text_to_image import TEXT_PARTS, is_text_to_image_folder
from diffusion_transfer.core.models.unet import CONFIG_NAME, WEIGHT_NAMES

_FIX = "copy the model folder again (config.json and the weights written together by save_pretrained)"


def unet_folder_problems(path: str | Path) -> list[str]:
    """Why ``load_unet(path)`` would fail for the local folder ``path`` (a
    model folder, or a pipeline folder with ``unet/``); empty when it loads."""
    folder = Path(path)
    if not (folder / CONFIG_NAME).is_file() and (folder / "unet" / CONFIG_NAME).is_file():
        folder = folder / "unet"
    config_file = folder / CONFIG_NAME
    if not config_file.is_file():
        return [f"{folder} has no {CONFIG_NAME}: {_FIX}"]
    try:
        config = json.loads(config_file.read_text())
    except ValueError as err:
        return [f"{config_file} is not valid JSON ({err}): {_FIX}"]
    if not isinstance(config, dict):
        return [f"{config_file} holds a {type(config).__name__}, not the UNet's settings: {_FIX}"]
    weights = next((folder / name for name in WEIGHT_NAMES if (folder / name).is_file()), None)
    if weights is None:
        return [f"{folder} has no weights file ({' or '.join(WEIGHT_NAMES)}): {_FIX}"]
    try:
        shapes = weight_shapes(weights)
    except Exception as err:  # noqa: BLE001 - any reader failure means the file is damaged
        return [f"{weights} cannot be read ({err}); it is truncated or damaged: {_FIX}"]
    try:
        expected = config_shapes(config)
    except Exception as err:  # noqa: BLE001 - diffusers rejects the settings
        cls = config.get("_class_name") or "UNet2DModel"
        return [f"{config_file} does not describe a diffusers {cls} that this diffusers version can build "
                f"({err}): check its settings, or copy the model folder again if it was damaged"]
    common = sorted(set(shapes) & set(expected))
    if not common:
        return [f"{weights} holds none of the tensors {config_file} describes: they are not this model's weights"]
    differ = [f"{k} {shapes[k]} in the weights, {expected[k]} in the config" for k in common if shapes[k] != expected[k]]
    if differ:
        return [f"{weights} does not match {config_file}: {len(differ)} tensor shape(s) differ, e.g. "
                f"{'; '.join(differ[:3])} (in_channels {config.get('in_channels')}, out_channels "
                f"{config.get('out_channels')}, block_out_channels {config.get('block_out_channels')}): {_FIX}"]
    return []


#: The parts of a diffusers pipeline folder this project trains and samples with
#: (the autoencoder of a latent model: core/models/latent.py).
USED_PARTS = ("unet", "scheduler", *AUTOENCODER_FOLDERS)
#: What an unused part is, by its folder name, when model_index.json does not say.
_PART_KINDS = {"text_encoder": "a text encoder", "text_encoder_2": "a text encoder", "tokenizer": "a tokenizer",
               "image_encoder": "an image encoder", "safety_checker": "a safety checker"}
#: A Stable Diffusion pipeline's parts that filter or describe its outputs, not the model: a
#: text-to-image folder may keep them (they are not used, and not saved with the fine-tuned model).
_OUTPUT_FILTERS = ("safety_checker", "feature_extractor")


def is_text_to_image_model(path: str | Path) -> bool:
    """A Stable Diffusion-layout folder this project trains: text_encoder/ and
    tokenizer/ beside a UNet2DConditionModel that attends to a context."""
    folder = Path(path)
    config = _json_or_none(folder / "unet" / CONFIG_NAME)
    return (is_text_to_image_folder(folder) and config is not None
            and config.get("_class_name") == "UNet2DConditionModel" and config.get("cross_attention_dim") is not None)


def unsupported_parts(path: str | Path) -> list[str]:
    """The parts of the model folder ``path`` that this project would ignore:
    pipeline components other than the UNet, the scheduler and the
    autoencoder (a text encoder: ``model_index.json`` or their folders), an
    autoencoder of a class the project cannot use, and a UNet conditioned
    other than by a class embedding (cross-attention, a class embedding that
    is not a lookup table). Training it without them would silently be
    wrong, so each is named; empty for a model this project supports."""
    folder = Path(path)
    text = is_text_to_image_model(folder)
    used = (*USED_PARTS, *TEXT_PARTS, *_OUTPUT_FILTERS) if text else USED_PARTS
    found: dict[str, str] = {}
    index = folder / "model_index.json"
    if index.is_file():
        try:
            components = json.loads(index.read_text())
        except ValueError as err:
            return [f"{index} is not valid JSON ({err})"]
        for name, spec in components.items():
            if name.startswith("_") or name in used or not isinstance(spec, list) or spec[-1] is None:
                continue  # settings, the parts used, and components saved as null
            found[name] = f"{_PART_KINDS.get(name, 'a component')} ({name}/: {spec[-1]})"
    for name, kind in _PART_KINDS.items():
        if name not in found and name not in used and (folder / name).is_dir():
            found[name] = f"{kind} ({name}/)"
    problems = [f"it has {what}" for what in found.values()]
    for part, cls in AUTOENCODER_FOLDERS.items():
        config = _json_or_none(folder / part / CONFIG_NAME)
        if config is not None and config.get("_class_name", cls) != cls:
            problems.append(f"its autoencoder {part}/ is a {config.get('_class_name')}, not a {cls}")
    unet = folder / "unet" / CONFIG_NAME if (folder / "unet" / CONFIG_NAME).is_file() else folder / CONFIG_NAME
    config = _json_or_none(unet)
    if config is not None and config_class_labels(config) and config.get("_class_name") == "UNet2DConditionModel":
        return problems
    if text:  # a Stable Diffusion layout: its UNet attends to the text encoder's hidden states
        return problems  # cross-attention to a one-hot class: the LDM ImageNet form (core/models/class_labels.py)
    if config is not None:
        cls = config.get("_class_name")
        if cls not in (None, "UNet2DModel"):
            problems.append(f"its UNet is a {cls} ({unet}), not a UNet2DModel")
        if config.get("class_embed_type") is not None:
            problems.append(f"its UNet has a class embedding of type {config['class_embed_type']!r} ({unet}); "
                            "only a lookup table (num_class_embeds, class_embed_type null) is supported")
        if config.get("cross_attention_dim") is not None:
            problems.append(f"its UNet attends to a context (cross_attention_dim {config['cross_attention_dim']} "
                            f"in {unet})")
    return problems


def config_class_labels(config: dict) -> int | None:
    """The class labels a UNet's ``config.json`` says it takes: ``num_class_embeds``,
    or the one-hot width of a class context (``_class_context``); None: unconditional."""
    if config.get(CLASS_CONTEXT_KEY) and config.get("encoder_hid_dim_type") == "text_proj":
        return int(config.get("encoder_hid_dim") or 0) or None
    return config.get("num_class_embeds") or None


def _json_or_none(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text()) if path.is_file() else None
    except ValueError:
        return None  # unet_folder_problems names a bad config.json
    return value if isinstance(value, dict) else None


def weight_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape in a safetensors or PyTorch weights file."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    return {k: tuple(v.shape) for k, v in state.items()}


def meta_unet(config: dict) -> torch.nn.Module:
    """The UNet ``config`` describes, built on the meta device (no memory, no init)."""
    import diffusers  # deferred: diffusers takes ~3 s to import, and the pre-run check may not reach here

    cls = getattr(diffusers, "UNet2DConditionModel" if config.get("_class_name") == "UNet2DConditionModel"
                  else "UNet2DModel")
    with torch.device("meta"):
        return cls.from_config(config)


def config_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """The tensor shapes of the UNet ``config`` describes (built on the meta device)."""
    return {k: tuple(v.shape) for k, v in meta_unet(config).state_dict().items()}
