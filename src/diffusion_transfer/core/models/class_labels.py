"""The class label a class-conditional UNet is trained and sampled with.

A ``UNet2DModel`` with ``num_class_embeds`` (a class embedding added to the
time embedding, as in improved-diffusion / ADM ``num_classes`` and DiT) needs
``class_labels`` at every call. A dataset is trained and sampled with one
label (``datasets.<d>.class_label``), so the label is bound to the UNet once
(:func:`set_class_label`), and a forward pre-hook passes it to every call
that does not give its own: the methods, samplers, translators and editing
call the model as ``model(x_t, t)`` for every kind of model.

The null label (classifier-free guidance's "no class", Ho & Salimans 2022)
is the last embedding, ``num_class_embeds - 1``, as in DiT (1000 classes +
1) and CompVis' ``cin256-v2`` (``n_classes: 1001``).
:func:`guided_eps` mixes the two predictions.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from .wrapping import unwrap

__all__ = [
    "CLASS_CONTEXT_KEY",
    "UNCONDITIONAL",
    "class_label_of",
    "freeze_class_context_bias",
    "guided_eps",
    "has_class_context",
    "LABEL_FILE",
    "is_class_conditional",
    "read_class_label",
    "write_class_label",
    "label_index",
    "null_label",
    "num_class_embeds",
    "set_class_label",
    "using_class_label",
]

#: ``class_label: unconditional`` in YAML: the null label.
UNCONDITIONAL = "unconditional"
_HOOKED = "_class_label_hook"
#: Config key of a ``UNet2DConditionModel`` whose context is a class: CompVis' ``ClassEmbedder`` as
#: ``encoder_hid_proj`` (``text_proj``, zero bias) over a one-hot ``encoder_hidden_states`` (core/models/ldm.py).
CLASS_CONTEXT_KEY = "_class_context"


def has_class_context(model: torch.nn.Module) -> bool:
    """A cross-attention UNet whose context is a one-hot class (the LDM ImageNet model's form)."""
    config = getattr(_unet(model), "config", None)
    return bool(config is not None and config.get(CLASS_CONTEXT_KEY) and config.get("encoder_hid_dim"))


def freeze_class_context_bias(model: torch.nn.Module) -> torch.nn.Module:
    """CompVis' class embedder has no bias: keep the projection's zero bias out of training."""
    if has_class_context(model):
        _unet(model).encoder_hid_proj.bias.requires_grad_(False)
    return model


def _unet(model: torch.nn.Module) -> torch.nn.Module:
    model = unwrap(model)
    return getattr(model, "unet", model)


def num_class_embeds(model: torch.nn.Module) -> int | None:
    """How many class embeddings the UNet has (None: not class-conditional):
    ``num_class_embeds``, or the one-hot width of a class context."""
    config = getattr(_unet(model), "config", None)
    if config is None:
        return None
    n = config.get("encoder_hid_dim") if has_class_context(model) else config.get("num_class_embeds")
    return int(n) if n else None


def is_class_conditional(model: torch.nn.Module) -> bool:
    return num_class_embeds(model) is not None


def null_label(model: torch.nn.Module) -> int:
    n = num_class_embeds(model)
    if n is None:
        raise ValueError("the model is not class-conditional: it has no null label")
    return n - 1


def label_index(model: torch.nn.Module, label: int | str, where: str) -> int:
    """``label`` (an int or ``"unconditional"``) as an embedding index, checked
    against the model; ``where`` names the parameter in errors."""
    n = num_class_embeds(model)
    if n is None:
        raise ValueError(f"{where} is {label!r} but the model has no class embedding (num_class_embeds is "
                         "unset): remove the setting")
    index = n - 1 if label == UNCONDITIONAL else label
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < n:
        raise ValueError(f"{where} is {label!r}: the model has {n} class embeddings (0..{n - 1}, the last being "
                         f"the null label); use one of them or {UNCONDITIONAL!r}")
    return index


def _pass_label(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    context = has_class_context(module)
    key = "encoder_hidden_states" if context else "class_labels"
    if kwargs.get(key) is not None or len(args) > 2:
        return None  # the caller gave its own labels (or context)
    label = getattr(module, "class_label", None)
    if label is None:
        raise ValueError("this class-conditional UNet has no class label bound: set the dataset's or the "
                         "source's class_label (conf/README.md, 'Which models work')")
    sample = args[0] if args else kwargs["sample"]
    labels = torch.full((sample.shape[0],), int(label), dtype=torch.long, device=sample.device)
    if context:  # one-hot (B, 1, n): the projection picks the class's embedding row
        n = int(module.config.encoder_hid_dim)
        return args, {**kwargs, key: torch.nn.functional.one_hot(labels, n).to(sample.dtype)[:, None, :]}
    return args, {**kwargs, key: labels}


def set_class_label(model: torch.nn.Module, label: int | None) -> torch.nn.Module:
    """Bind ``label`` (an embedding index) to the class-conditional UNet inside
    ``model``; every later call without ``class_labels`` uses it. The binding
    is a plain attribute and a hook, so deep copies (the student, the EMA
    copy) keep it; nothing is saved with the weights."""
    unet = _unet(model)
    object.__setattr__(unet, "class_label", label)
    if not getattr(unet, _HOOKED, False):
        unet.register_forward_pre_hook(_pass_label, with_kwargs=True)
        object.__setattr__(unet, _HOOKED, True)
    return model


def class_label_of(model: torch.nn.Module) -> int | None:
    return getattr(_unet(model), "class_label", None)


@contextlib.contextmanager
def using_class_label(model: torch.nn.Module, label: int) -> Iterator[None]:
    """Calls inside the block use ``label``; the bound label comes back after."""
    before = class_label_of(model)
    set_class_label(model, label)
    try:
        yield
    finally:
        set_class_label(model, before)


def guided_eps(eps_fn: Callable, model: torch.nn.Module, scale: float) -> Callable:
    """Classifier-free guidance: ``eps_null + scale * (eps_label - eps_null)``
    with the bound label and the null label; ``scale`` 1 is the plain model."""
    if scale == 1.0:
        return eps_fn
    null = null_label(model)

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps_label = eps_fn(x, t)
        with using_class_label(model, null):
            eps_null = eps_fn(x, t)
        return eps_null + scale * (eps_label - eps_null)

    return guided


#: Beside a saved class-conditional model: the label it was trained with.
LABEL_FILE = "class_label.json"


def write_class_label(model: torch.nn.Module, folder) -> None:
    """Record the bound label beside a saved model (diffusers ignores the
    file; :func:`read_class_label` and the report read it)."""
    label = class_label_of(model)
    if label is not None and is_class_conditional(model):
        text = json.dumps({"class_label": int(label), "null_label": null_label(model)}, indent=2)
        (Path(folder) / LABEL_FILE).write_text(text)


def read_class_label(folder) -> int | None:
    path = Path(folder) / LABEL_FILE
    if not path.is_file():
        return None
    try:
        return int(json.loads(path.read_text())["class_label"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a class label record ({exc}); delete it and set class_label") from None
