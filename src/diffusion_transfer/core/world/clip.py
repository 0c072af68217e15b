"""The world CLIP: a tiny open_clip model trained contrastively on FaceWorld.

The architecture is an open_clip model config registered under the name
``faceworld-clip`` (``model_configs/faceworld-clip.json``, registered with
``open_clip.add_model_config`` when this module is imported), so the model is
built the ordinary way::

    model = open_clip.create_model("faceworld-clip", pretrained=None)
    tokenizer = open_clip.get_tokenizer("faceworld-clip")  # open_clip's BPE, offline

Image tower: :class:`FaceWorldCNN`, a small full-resolution CNN registered
with timm as ``faceworld_cnn`` and plugged in through open_clip's
``timm_model_name`` vision config (open_clip's ``TimmModel`` adds the linear
projection to the 128-d embedding).  Why not open_clip's own towers: at 32x32
the attributes that matter are 1-2 px strokes (mouth shape, glasses frames).
Measured on this world with the same budget, a ViT (patch 4, width 128, 4
layers) and a small ModifiedResNet both learned eyewear but stayed at chance
on expression and gender after 400 steps (the contrastive signal for subtle
features is weak while the image tower is still blind to them, and the text
tower then learns to ignore those words), while the CNN reaches ~95%
expression zero-shot accuracy in 400 steps at half the ViT's cost per step.
Text tower: open_clip's causal transformer (width 128, 3 layers, 4 heads,
context 32) over open_clip's default BPE vocabulary (shipped inside the
package; no download).

Training (:func:`train_world_clip`) renders a pool of faces of every style
with uniform attributes *in pairs*: both images of a pair share the render
seed and differ in exactly one captioned attribute (eyewear, expression,
gender or style), so every batch holds hard negatives for the attributes the
CLIP must tell apart.  Captions are the canonical caption or a random
:func:`caption_variants` caption, de-duplicated inside each batch so that
open_clip's :class:`ClipLoss` (the only loss) never sees two identical
captions.  AdamW, linear warm-up then cosine decay, light augmentation
(shift, flip, colour jitter, a little noise).

Files (:func:`save_world_clip`): ``weights.safetensors`` (fp16 by default)
and ``world_clip.json`` (model name, format version, open_clip model config,
training config, metrics).  The token embedding is stored compactly: only
the rows of BPE tokens that occurred in training (under a hundred of 49,408);
every other row is zero, in the saved file and in the trained model alike,
so a word the world never used encodes as "nothing".

Held-out convention: training renders use seeds ``>= TRAIN_SEED_OFFSET``;
evaluation renders (tests, :func:`evaluate_world_clip`) use seeds below it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from diffusion_transfer.core.io import require_weights_folder
from diffusion_transfer.core.world.render import (
    ATTRIBUTES,
    EXPRESSION_WORDS,
    EYEWEAR_PHRASES,
    STYLE_PHRASES,
    STYLES,
    FaceAttributes,
    caption,
    caption_variants,
    render_face,
    sample_attributes,
)

MODEL_NAME = "faceworld-clip"
MODEL_CONFIG_DIR = Path(__file__).with_name("model_configs")
FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"
META_FILE = "world_clip.json"
#: Training renders use seeds >= this; held-out evaluation renders use seeds below it.
TRAIN_SEED_OFFSET = 1_000_000
#: The AAHQ curation prompt (DESIGN.md section 3).
AAHQ_PROMPT = "A realistic painting of an expressionless man without glasses"

_TOKEN_IDS_KEY = "token_embedding.ids"
_TOKEN_ROWS_KEY = "token_embedding.rows"
_TOKEN_WEIGHT_KEY = "token_embedding.weight"

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- #
# The image tower: a small CNN registered with timm, used through open_clip's
# ``timm_model_name`` vision config
# --------------------------------------------------------------------------- #
TIMM_TOWER = "faceworld_cnn"


def _conv_bn(cin: int, cout: int) -> torch.nn.Sequential:
    return torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                               torch.nn.BatchNorm2d(cout), torch.nn.ReLU(inplace=True))


class FaceWorldCNN(torch.nn.Module):
    """A small full-resolution CNN with the timm model interface.

    One 3x3 conv at the input resolution, two at 1/2 and two at 1/4, max-pooling
    to a 4x4 grid that is flattened (``num_features = widths[-1] * 16``), so the
    projection sees *where* each feature is (the mouth vs the eyes).  Built by
    ``timm.create_model("faceworld_cnn")``; never pretrained.
    """

    def __init__(self, widths: Sequence[int] = (24, 48, 96), in_chans: int = 3, num_classes: int = 0,
                 global_pool: str = "", grid: int = 4, **_: Any):
        super().__init__()
        w0, w1, w2 = (int(w) for w in widths)
        self.trunk = torch.nn.Sequential(
            _conv_bn(in_chans, w0), torch.nn.MaxPool2d(2),
            _conv_bn(w0, w1), _conv_bn(w1, w1), torch.nn.MaxPool2d(2),
            _conv_bn(w1, w2), _conv_bn(w2, w2), torch.nn.AdaptiveMaxPool2d(grid),
        )
        self.num_features = w2 * grid * grid
        self.default_cfg = self.pretrained_cfg = {"pool_size": None, "num_classes": num_classes,
                                                  "input_size": (in_chans, 32, 32)}
        self.head = torch.nn.Linear(self.num_features, num_classes) if num_classes else torch.nn.Identity()

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.head = torch.nn.Linear(self.num_features, num_classes) if num_classes else torch.nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.flatten(1)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _register_timm_tower() -> None:
    import timm
    from timm.models import register_model

    if TIMM_TOWER in timm.list_models(TIMM_TOWER):
        return

    def faceworld_cnn(pretrained: bool = False, **kwargs: Any) -> FaceWorldCNN:
        if pretrained:
            raise ValueError("faceworld_cnn has no pretrained weights; load a world CLIP folder instead")
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(key, None)
        return FaceWorldCNN(**kwargs)

    faceworld_cnn.__module__ = __name__
    register_model(faceworld_cnn)


# --------------------------------------------------------------------------- #
# Model config registration
# --------------------------------------------------------------------------- #
def register_model_config() -> str:
    """Register ``faceworld-clip`` with open_clip (and its image tower with timm);
    idempotent; returns the name."""
    _register_timm_tower()
    if MODEL_NAME not in open_clip.list_models():
        path = MODEL_CONFIG_DIR / f"{MODEL_NAME}.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"open_clip model config {path} is missing from the package; "
                "reinstall diffusion_transfer with its package data"
            )
        open_clip.add_model_config(path)
    return MODEL_NAME


register_model_config()


class _DropRandomInitWarning(logging.Filter):
    """open_clip warns on every ``pretrained=None`` build; we load weights right after."""

    def filter(self, record: logging.LogRecord) -> bool:  # pragma: no cover - trivial
        return "No pretrained weights loaded" not in record.getMessage()


@contextmanager
def _quiet_open_clip() -> Iterator[None]:
    root = logging.getLogger()
    flt = _DropRandomInitWarning()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


def create_world_clip_model(model_cfg: Mapping[str, Any] | None = None) -> torch.nn.Module:
    """A randomly initialised ``faceworld-clip`` (``model_cfg`` overrides the registered
    config's top-level keys, e.g. a saved config)."""
    register_model_config()
    with _quiet_open_clip():
        return open_clip.create_model(MODEL_NAME, pretrained=None, **dict(model_cfg or {}))


def world_clip_model_config() -> dict[str, Any]:
    """The registered open_clip config of ``faceworld-clip`` (a copy)."""
    register_model_config()
    return open_clip.get_model_config(MODEL_NAME)


# --------------------------------------------------------------------------- #
# Training configuration
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class WorldClipConfig:
    """Hyperparameters of :func:`train_world_clip` (see the module docstring)."""

    steps: int = 900
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 40
    #: image pairs rendered once (2 images each) and reused with augmentation
    pool_pairs: int = 8000
    image_size: int = 32
    styles: tuple[str, ...] = STYLES
    #: probability that an image's caption is the canonical caption (else a variant)
    canonical_p: float = 0.35
    #: which attribute the two images of a pair differ in, with relative weights
    pair_flips: tuple[tuple[str, float], ...] = (
        ("eyewear", 0.3), ("expression", 0.3), ("gender", 0.2), ("style", 0.2),
    )
    augment: bool = True
    max_shift: int = 2
    hflip: bool = True
    colour_jitter: float = 0.08
    noise_std: float = 0.04
    #: torch intra-op threads during training (restored afterwards); None leaves it alone
    num_threads: int | None = 1
    #: open_clip config overrides (e.g. a smaller tower for tests); {} = registered config
    model_cfg: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "pool_pairs", "image_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"clip config: {name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 2 or self.batch_size % 2:
            raise ValueError(f"clip config: batch_size must be even and >= 2, got {self.batch_size}")
        if self.pool_pairs * 2 < self.batch_size:
            raise ValueError(
                f"clip config: pool_pairs ({self.pool_pairs}) must give at least one batch "
                f"({self.batch_size} images)"
            )
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"clip config: lr must be > 0, got {self.lr}")
        if self.weight_decay < 0 or self.warmup_steps < 0:
            raise ValueError("clip config: weight_decay and warmup_steps must be >= 0")
        if not 0.0 <= self.canonical_p <= 1.0:
            raise ValueError(f"clip config: canonical_p must be in [0, 1], got {self.canonical_p}")
        bad = [s for s in self.styles if s not in STYLES]
        if not self.styles or bad:
            raise ValueError(f"clip config: styles must be a non-empty subset of {STYLES}, got {self.styles}")
        flippable = ("eyewear", "expression", "gender", "style")
        for name, w in self.pair_flips:
            if name not in flippable:
                raise ValueError(f"clip config: pair_flips attribute {name!r} not in {flippable}")
            if w < 0:
                raise ValueError(f"clip config: pair_flips weight for {name!r} must be >= 0")
        if sum(w for _, w in self.pair_flips) <= 0:
            raise ValueError("clip config: pair_flips weights sum to zero")
        if any(n == "style" for n, w in self.pair_flips if w > 0) and len(self.styles) < 2:
            raise ValueError("clip config: a 'style' pair flip needs at least two styles")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"clip config: num_threads must be >= 1 or None, got {self.num_threads}")


DEFAULT_CLIP_CONFIG = WorldClipConfig()


def _coerce(config: Any, cls: type, what: str):
    """dataclass instance, mapping (unknown keys rejected, naming them) or None -> ``cls``."""
    if config is None:
        return cls()
    if isinstance(config, cls):
        return config
    if not isinstance(config, Mapping):
        raise TypeError(f"{what} config must be a mapping or {cls.__name__}, got {type(config).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(config) - names)
    if unknown:
        raise ValueError(f"{what} config: unknown parameter(s) {unknown}; expected some of {sorted(names)}")
    kwargs = dict(config)
    for key in ("styles",):
        if key in kwargs:
            kwargs[key] = tuple(kwargs[key])
    if "pair_flips" in kwargs:
        pf = kwargs["pair_flips"]
        items = pf.items() if isinstance(pf, Mapping) else pf
        kwargs["pair_flips"] = tuple((str(k), float(v)) for k, v in items)
    if "model_cfg" in kwargs:
        kwargs["model_cfg"] = dict(kwargs["model_cfg"] or {})
    return cls(**kwargs)


def config_to_dict(config: Any) -> dict[str, Any]:
    """JSON-friendly dict of a config dataclass."""
    d = asdict(config)
    return json.loads(json.dumps(d))


# --------------------------------------------------------------------------- #
# Image helpers (shared with the attribute classifier)
# --------------------------------------------------------------------------- #
def as_float_images(images: Any) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` (numpy or torch) or float ``(B, 3, H, W)`` in [-1, 1] ->
    float32 ``(B, 3, H, W)``.  Anything else raises ``ValueError``: other shapes or
    dtypes, NaN/inf, or float values far outside [-1, 1] (a 0..255 float array);
    a small overshoot (|x| <= 1.5, e.g. unclipped diffusion samples) is accepted."""
    if isinstance(images, np.ndarray):
        if images.dtype == np.uint8:
            images = torch.from_numpy(np.ascontiguousarray(images))
        else:
            images = torch.from_numpy(np.asarray(images, dtype=np.float32))
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a numpy array or torch tensor, got {type(images).__name__}")
    if images.dtype == torch.uint8:
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"uint8 images must be (N, H, W, 3), got shape {tuple(images.shape)}")
        return images.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    if not images.is_floating_point():
        raise ValueError(f"images must be uint8 (N, H, W, 3) or float (B, 3, H, W), got {images.dtype}")
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"float images must be (B, 3, H, W) in [-1, 1], got shape {tuple(images.shape)}")
    if images.numel():
        with torch.no_grad():
            if not bool(torch.isfinite(images).all()):
                raise ValueError("float images contain NaN or inf")
            peak = float(images.detach().abs().max())
        if peak > 1.5:
            raise ValueError(
                f"float images must be in [-1, 1] (max |value| is {peak:.3g}); "
                "pass uint8 (N, H, W, 3) arrays for 0..255 pixels"
            )
    return images.float()


def resize_images(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic (antialiased when shrinking) resize of (B, 3, H, W) to ``size``x``size``."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False,
                         antialias=bool(x.shape[-1] > size or x.shape[-2] > size))


def augment_images(x: torch.Tensor, gen: torch.Generator, *, max_shift: int = 2,
                   hflip: bool = True, colour_jitter: float = 0.08,
                   noise_std: float = 0.04) -> torch.Tensor:
    """Light augmentation of (B, 3, H, W) in [-1, 1]: reflect-pad shift, horizontal flip,
    per-image brightness/contrast jitter and a little Gaussian noise."""
    b, _, h, w = x.shape
    if max_shift > 0:
        p = int(max_shift)
        padded = F.pad(x, (p, p, p, p), mode="reflect")
        dx = torch.randint(0, 2 * p + 1, (b,), generator=gen)
        dy = torch.randint(0, 2 * p + 1, (b,), generator=gen)
        x = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
    if hflip:
        flip = torch.rand(b, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if colour_jitter > 0:
        c = 1.0 + colour_jitter * (2 * torch.rand(b, 1, 1, 1, generator=gen) - 1)
        o = colour_jitter * (2 * torch.rand(b, 1, 1, 1, generator=gen) - 1)
        x = x * c + o
    if noise_std > 0:
        s = noise_std * torch.rand(b, 1, 1, 1, generator=gen)
        x = x + s * torch.randn(x.shape, generator=gen)
    return x.clamp(-1.0, 1.0)


def atomic_write_folder(folder: str | Path, write) -> Path:
    """Call ``write(tmp_dir)`` then move ``tmp_dir`` into place as ``folder``
    (the previous folder, if any, is replaced only once the new one is complete)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    old = None
    try:
        os.chmod(tmp, 0o755)
        write(tmp)
        if folder.exists():
            old = folder.parent / f".{folder.name}.old-{os.getpid()}-{time.time_ns()}"
            os.replace(folder, old)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not folder.exists():
            os.replace(old, folder)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def file_digest(path: str | Path) -> str:
    """First 12 hex digits of a file's sha256."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (None: leave it)."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _progress(iterable, enabled: bool, desc: str, total: int):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return iterable
    return tqdm(iterable, desc=desc, total=total, dynamic_ncols=True)


# --------------------------------------------------------------------------- #
# Prompts
# --------------------------------------------------------------------------- #
def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def zero_shot_prompts(attribute: str, attrs: FaceAttributes | Mapping[str, str]) -> dict[str, str]:
    """Prompts for a zero-shot choice of ``attribute``, one per value (in
    ``ATTRIBUTES`` order), every other attribute fixed at ``attrs``'.

    Templates (``C(a)`` is the canonical caption of ``a``, e.g. "a realistic
    painting of an expressionless man without glasses"):

    - ``eyewear``, ``expression``, ``gender``, ``style``: ``C(attrs with the value)``;
    - ``age``: "<style phrase> of a(n) <expression> <age> <gender> <eyewear>";
    - ``hair_style`` / ``hair_colour``: ``C(attrs) + ", with <style> <colour> hair"``
      (``", bald"`` for bald);
    - ``skin_tone``: ``C(attrs) + ", with <tone> skin"``;
    - ``background``: ``C(attrs) + ", on a plain / gradient / patterned background"``.

    Only eyewear and expression carry a quality bar (DESIGN.md section 2).
    """
    if not isinstance(attrs, FaceAttributes):
        attrs = FaceAttributes.from_dict(attrs)
    if attribute == "style":
        values: tuple[str, ...] = STYLES
    elif attribute in ATTRIBUTES:
        values = ATTRIBUTES[attribute]
    else:
        raise ValueError(f"unknown attribute {attribute!r}; expected one of {(*ATTRIBUTES, 'style')}")
    out: dict[str, str] = {}
    for v in values:
        a = replace(attrs, **{attribute: v})
        if attribute in ("eyewear", "expression", "gender", "style"):
            text = caption(a)
        elif attribute == "age":
            expr = EXPRESSION_WORDS[a.expression]
            text = (f"{STYLE_PHRASES[a.style]} of {_article(expr)} {expr} {a.age} {a.gender} "
                    f"{EYEWEAR_PHRASES[a.eyewear]}")
        elif attribute in ("hair_style", "hair_colour"):
            hair = "bald" if a.hair_style == "bald" else f"with {a.hair_style} {a.hair_colour} hair"
            text = f"{caption(a)}, {hair}"
        elif attribute == "skin_tone":
            text = f"{caption(a)}, with {a.skin_tone} skin"
        else:
            bg = {"plain": "plain", "gradient": "gradient", "pattern": "patterned"}[a.background]
            text = f"{caption(a)}, on a {bg} background"
        out[v] = text
    return out


# --------------------------------------------------------------------------- #
# The loaded model
# --------------------------------------------------------------------------- #
@dataclass
class WorldClip:
    """An open_clip model with its tokenizer and pixel normalisation.

    ``encode_images`` takes float ``(B, 3, H, W)`` in [-1, 1] (or uint8
    ``(N, H, W, 3)``), resizes to the model's input size and applies the
    model's mean/std itself; both encoders return L2-normalised embeddings.
    Gradients flow through ``encode_images`` when the input requires grad
    (directional CLIP losses).
    """

    model: torch.nn.Module
    tokenizer: Any
    preprocess: Any
    name: str
    weights_label: str
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.model.eval()
        cfg = getattr(self.model.visual, "preprocess_cfg", {}) or {}
        mean = cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)
        std = cfg.get("std", open_clip.OPENAI_DATASET_STD)
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        size = self.model.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> WorldClip:
        self.model.to(device)
        return self

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] (B, 3, H, W) -> the model's normalised input at its image size."""
        x = resize_images(x, self.image_size)
        x01 = (x + 1.0) * 0.5
        return (x01 - self._mean.to(x.device)) / self._std.to(x.device)

    @classmethod
    def from_open_clip(cls, model_name: str, pretrained: str | None = None,
                       device: str | torch.device = "cpu") -> WorldClip:
        """Any open_clip model (e.g. ``ViT-B-32`` / ``openai`` in ``conf/paper``), wrapped
        with the same interface.  Fails with a clear message when weights cannot be had."""
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=pretrained, device=device)
        except Exception as exc:  # network / missing file
            raise FileNotFoundError(
                f"could not load open_clip model {model_name!r} with pretrained={pretrained!r}: {exc}. "
                "Offline, pass a local checkpoint path as `pretrained`."
            ) from exc
        return cls(model=model, tokenizer=open_clip.get_tokenizer(model_name), preprocess=preprocess,
                   name=model_name, weights_label=f"{model_name} ({pretrained or 'random init'})")

    def encode_images(self, images: Any, batch_size: int = 512) -> torch.Tensor:
        """L2-normalised image embeddings ``(B, D)`` (float32, on the input's device)."""
        x = as_float_images(images)
        out_device = x.device
        dev = self.device
        if x.requires_grad:
            feats = self.model.encode_image(self.normalise(x.to(dev)))
            return F.normalize(feats.float(), dim=-1).to(out_device)
        chunks = []
        with torch.no_grad():
            for i in range(0, x.shape[0], batch_size):
                xb = self.normalise(x[i:i + batch_size].to(dev))
                chunks.append(F.normalize(self.model.encode_image(xb).float(), dim=-1))
        if not chunks:
            return torch.zeros(0, self.embed_dim, device=out_device)
        return torch.cat(chunks).to(out_device)

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[1]) if hasattr(self.model, "text_projection") \
            else int(self.model.visual.output_dim)

    def encode_text(self, texts: Sequence[str] | str, batch_size: int = 512) -> torch.Tensor:
        """L2-normalised text embeddings ``(len(texts), D)`` (float32, on the model's device)."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            raise ValueError("encode_text needs at least one text")
        chunks = []
        with torch.no_grad():
            for i in range(0, len(texts), batch_size):
                tok = self.tokenizer(texts[i:i + batch_size]).to(self.device)
                chunks.append(F.normalize(self.model.encode_text(tok).float(), dim=-1))
        return torch.cat(chunks)

    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp().clamp(max=100.0))

    def zero_shot(self, images: Any, prompts: Sequence[str]) -> torch.Tensor:
        """Softmax over ``prompts`` for every image: ``(B, P)`` probabilities."""
        img = self.encode_images(images)
        txt = self.encode_text(prompts).to(img.device)
        return (self.logit_scale() * img @ txt.T).softmax(dim=-1)

    def similarity(self, images: Any, text: str) -> torch.Tensor:
        """Cosine similarity ``(B,)`` of each image to one text (CLIP filtering)."""
        img = self.encode_images(images)
        return img @ self.encode_text([text]).to(img.device)[0]

    def predict_attribute(self, images: Any, attrs: Sequence[FaceAttributes | Mapping[str, str]],
                          attribute: str) -> list[str]:
        """Zero-shot choice of ``attribute`` per image with :func:`zero_shot_prompts`
        built from that image's other (true) attributes."""
        x = as_float_images(images)
        if len(attrs) != x.shape[0]:
            raise ValueError(f"{x.shape[0]} images but {len(attrs)} attribute records")
        img = self.encode_images(x)
        prompt_sets = [zero_shot_prompts(attribute, a) for a in attrs]
        values = list(prompt_sets[0].keys()) if prompt_sets else []
        unique = sorted({p for ps in prompt_sets for p in ps.values()})
        index = {p: i for i, p in enumerate(unique)}
        txt = self.encode_text(unique).to(img.device) if unique else None
        out = []
        for i, ps in enumerate(prompt_sets):
            rows = torch.tensor([index[ps[v]] for v in values])
            out.append(values[int((img[i] @ txt[rows].T).argmax())])
        return out


# --------------------------------------------------------------------------- #
# Training
# --------------------------------------------------------------------------- #
def _render_pair_pool(cfg: WorldClipConfig, seed: int, progress: bool):
    """``pool_pairs`` pairs of images (same render seed) differing in one captioned attribute."""
    rng = np.random.default_rng([seed, 7919])
    names = [n for n, _ in cfg.pair_flips]
    weights = np.array([w for _, w in cfg.pair_flips], dtype=np.float64)
    weights = weights / weights.sum()
    n = cfg.pool_pairs
    images = np.empty((2 * n, cfg.image_size, cfg.image_size, 3), np.uint8)
    attrs: list[FaceAttributes] = []
    base_seed = TRAIN_SEED_OFFSET + seed * 10 * n
    for g in _progress(range(n), progress, "world clip: render", n):
        style = cfg.styles[int(rng.integers(len(cfg.styles)))]
        a = sample_attributes(rng, style)
        flip = names[int(rng.choice(len(names), p=weights))]
        choices = cfg.styles if flip == "style" else ATTRIBUTES[flip]
        others = [v for v in choices if v != getattr(a, flip)]
        b = replace(a, **{flip: others[int(rng.integers(len(others)))]})
        rseed = base_seed + g
        images[2 * g] = render_face(a, cfg.image_size, rseed)
        images[2 * g + 1] = render_face(b, cfg.image_size, rseed)
        attrs.extend((a, b))
    return images, attrs


def _batch_captions(attrs: Sequence[FaceAttributes], rng: np.random.Generator,
                    canonical_p: float) -> list[str]:
    """One caption per image, no two identical (ClipLoss treats the diagonal as the only match)."""
    seen: set[str] = set()
    out = []
    for a in attrs:
        text = caption(a) if rng.random() < canonical_p else caption_variants(a, rng)
        tries = 0
        while text in seen and tries < 20:
            text = caption_variants(a, rng)
            tries += 1
        seen.add(text)
        out.append(text)
    return out


def _param_groups(model: torch.nn.Module, weight_decay: float):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name \
                or "embedding" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_at(step: int, cfg: WorldClipConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * min(1.0, (step - cfg.warmup_steps) / span)))


def train_world_clip(config: WorldClipConfig | Mapping[str, Any] | None = None, *, seed: int = 0,
                     progress: bool = True, callback=None) -> torch.nn.Module:
    """Train the world CLIP from scratch on freshly rendered FaceWorld images.

    ``callback(dict(step, loss, model))``, if given, runs after every optimiser step
    (the model is in train mode; switch to eval and back to probe it).

    Returns the open_clip model (eval mode, CPU).  ``model.world_clip_train_info``
    holds the config, wall time and final loss; rows of the token embedding for
    tokens never seen in training are zeroed (see the module docstring)."""
    cfg = _coerce(config, WorldClipConfig, "clip")
    t0, c0 = time.perf_counter(), time.process_time()
    with torch_threads(cfg.num_threads):
        torch.manual_seed(seed)
        model_cfg = {**world_clip_model_config(), **cfg.model_cfg}
        model_cfg["vision_cfg"] = {**model_cfg["vision_cfg"], "image_size": cfg.image_size}
        model = create_world_clip_model(model_cfg)
        model.world_clip_model_cfg = model_cfg
        tokenizer = open_clip.get_tokenizer(MODEL_NAME)
        clip = WorldClip(model, tokenizer, None, MODEL_NAME, "training")

        pool, pool_attrs = _render_pair_pool(cfg, seed, progress)
        pool_t = torch.from_numpy(pool)
        n_pairs = cfg.pool_pairs
        pairs_per_batch = cfg.batch_size // 2

        rng = np.random.default_rng([seed, 104729])
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98),
                                eps=1e-6)
        loss_fn = open_clip.ClipLoss()
        used_tokens: set[int] = set()
        order = rng.permutation(n_pairs)
        cursor = 0
        losses: list[float] = []
        model.train()
        bar = _progress(range(cfg.steps), progress, "world clip: train", cfg.steps)
        for step in bar:
            if cursor + pairs_per_batch > n_pairs:
                order, cursor = rng.permutation(n_pairs), 0
            groups = order[cursor:cursor + pairs_per_batch]
            cursor += pairs_per_batch
            idx = np.stack([2 * groups, 2 * groups + 1], axis=1).reshape(-1)
            x = as_float_images(pool_t[idx])
            if cfg.augment:
                x = augment_images(x, gen, max_shift=cfg.max_shift, hflip=cfg.hflip,
                                   colour_jitter=cfg.colour_jitter, noise_std=cfg.noise_std)
            texts = _batch_captions([pool_attrs[i] for i in idx], rng, cfg.canonical_p)
            tokens = tokenizer(texts)
            used_tokens.update(int(t) for t in torch.unique(tokens))
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, cfg)
            img = model.encode_image(clip.normalise(x), normalize=True)
            txt = model.encode_text(tokens, normalize=True)
            loss = loss_fn(img, txt, model.logit_scale.exp())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"world clip: non-finite loss at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(float(loss.detach()))
            if callback is not None:
                callback({"step": step, "loss": losses[-1], "model": model})
            if progress and hasattr(bar, "set_postfix") and step % 10 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}",
                                scale=f"{float(model.logit_scale.detach().exp()):.1f}")
        model.eval()
        with torch.no_grad():
            emb = model.token_embedding.weight
            keep = torch.zeros(emb.shape[0], dtype=torch.bool)
            keep[torch.tensor(sorted(used_tokens), dtype=torch.long)] = True
            emb[~keep] = 0.0
    model.world_clip_train_info = {
        "config": config_to_dict(cfg),
        "seed": seed,
        "wall_s": round(time.perf_counter() - t0, 1),
        "cpu_s": round(time.process_time() - c0, 1),
        "final_loss": float(np.mean(losses[-20:])) if losses else None,
        "n_tokens_used": len(used_tokens),
    }
    return model


# --------------------------------------------------------------------------- #
# Save / load
# --------------------------------------------------------------------------- #
def save_world_clip(model: torch.nn.Module | WorldClip, folder: str | Path, *,
                    dtype: str = "float16", metrics: Mapping[str, Any] | None = None) -> Path:
    """Write ``weights.safetensors`` (``dtype``: float16 or float32) and ``world_clip.json``
    to ``folder`` atomically (temp dir, then rename).  Returns the folder."""
    if isinstance(model, WorldClip):
        model = model.model
    if dtype not in ("float16", "float32"):
        raise ValueError(f"dtype must be 'float16' or 'float32', got {dtype!r}")
    tdtype = torch.float16 if dtype == "float16" else torch.float32
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    emb = state.pop(_TOKEN_WEIGHT_KEY)
    ids = torch.nonzero(emb.abs().sum(dim=1) > 0).flatten()
    tensors = {k: (v.to(tdtype) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    tensors[_TOKEN_IDS_KEY] = ids.to(torch.int64).contiguous()
    tensors[_TOKEN_ROWS_KEY] = emb[ids].to(tdtype).contiguous()
    model_cfg = getattr(model, "world_clip_model_cfg", None) or world_clip_model_config()
    meta = {
        "name": MODEL_NAME,
        "format_version": FORMAT_VERSION,
        "dtype": dtype,
        "vocab_size": int(emb.shape[0]),
        "model_cfg": model_cfg,
        "train": getattr(model, "world_clip_train_info", None),
        "metrics": dict(metrics or {}),
    }

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"name": MODEL_NAME,
                                                               "format_version": str(FORMAT_VERSION)})
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    return atomic_write_folder(folder, write)


def load_world_clip(folder: str | Path, device: str | torch.device = "cpu") -> WorldClip:
    """Load a folder written by :func:`save_world_clip` (offline; no download)."""
    folder = Path(folder)
    weights, meta_path = require_weights_folder(
        folder, WEIGHTS_FILE, META_FILE, "world CLIP weights",
        "Restore data/06_models/world/clip from git or rebuild it with the `world` pipeline "
        "(train_world_clip + save_world_clip).")
    meta = json.loads(meta_path.read_text())
    if meta.get("name") != MODEL_NAME or int(meta.get("format_version", -1)) != FORMAT_VERSION:
        raise ValueError(
            f"{meta_path} holds {meta.get('name')!r} format {meta.get('format_version')!r}; "
            f"expected {MODEL_NAME!r} format {FORMAT_VERSION}"
        )
    model = create_world_clip_model(meta["model_cfg"])
    model.world_clip_model_cfg = meta["model_cfg"]
    model.world_clip_train_info = meta.get("train")
    tensors = load_file(str(weights))
    ids = tensors.pop(_TOKEN_IDS_KEY)
    rows = tensors.pop(_TOKEN_ROWS_KEY)
    emb = torch.zeros(int(meta["vocab_size"]), rows.shape[1], dtype=torch.float32)
    emb[ids] = rows.float()
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in tensors.items()}
    state[_TOKEN_WEIGHT_KEY] = emb
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{weights} does not match the faceworld-clip config in {meta_path}: {exc}") from exc
    model.to(device).eval()
    cfg = model.visual.preprocess_cfg
    preprocess = open_clip.image_transform(model.visual.image_size, is_train=False,
                                           mean=cfg.get("mean"), std=cfg.get("std"))
    label = f"{MODEL_NAME} (FaceWorld weights {folder.name}/{WEIGHTS_FILE} sha256:{file_digest(weights)})"
    return WorldClip(model=model, tokenizer=open_clip.get_tokenizer(MODEL_NAME), preprocess=preprocess,
                     name=MODEL_NAME, weights_label=label, meta=meta)


# --------------------------------------------------------------------------- #
# Evaluation
# --------------------------------------------------------------------------- #
def render_held_out(n: int, style: str, seed: int = 12345, size: int = 32):
    """``n`` uniform-attribute faces of ``style`` rendered with seeds below
    ``TRAIN_SEED_OFFSET`` (never used in training)."""
    rng = np.random.default_rng([seed, STYLES.index(style)])
    attrs = [sample_attributes(rng, style) for _ in range(n)]
    seeds = rng.integers(0, TRAIN_SEED_OFFSET, size=n)
    images = np.stack([render_face(a, size, int(s)) for a, s in zip(attrs, seeds)])
    return images, attrs


def evaluate_world_clip(clip: WorldClip, n_per_style: int = 200, seed: int = 12345,
                        attributes: Sequence[str] = ("eyewear", "expression"),
                        styles: Sequence[str] = STYLES, size: int = 32) -> dict[str, dict[str, float]]:
    """Zero-shot accuracy ``{attribute: {style: acc, "all": acc}}`` on held-out renders."""
    out: dict[str, dict[str, float]] = {a: {} for a in attributes}
    totals = {a: [0, 0] for a in attributes}
    for style in styles:
        images, attrs = render_held_out(n_per_style, style, seed, size)
        for attribute in attributes:
            pred = clip.predict_attribute(images, attrs, attribute)
            hits = sum(p == getattr(a, attribute) for p, a in zip(pred, attrs))
            out[attribute][style] = hits / len(attrs)
            totals[attribute][0] += hits
            totals[attribute][1] += len(attrs)
    for attribute, (h, t) in totals.items():
        out[attribute]["all"] = h / max(t, 1)
    return out


def ranking_quality(scores: Any, target: Any, top_fraction: float = 0.2) -> dict[str, float]:
    """How well ``scores`` (higher = better match) rank the ``target`` (bool) items first:
    precision and recall of the top ``top_fraction``, R-precision (precision of the top
    ``n_targets``) and ROC AUC."""
    s = torch.as_tensor(scores, dtype=torch.float64).flatten()
    t = torch.as_tensor(np.asarray(target, dtype=bool)).flatten()
    if s.shape != t.shape or s.numel() == 0:
        raise ValueError(f"scores {tuple(s.shape)} and target {tuple(t.shape)} must be equal, non-empty")
    order = torch.argsort(s, descending=True)
    n, n_pos = s.numel(), int(t.sum())
    k = max(1, int(round(top_fraction * n)))
    hits_k = int(t[order[:k]].sum())
    r_prec = float(t[order[:n_pos]].float().mean()) if n_pos else float("nan")
    ranks = torch.empty(n, dtype=torch.float64)
    ranks[torch.argsort(s)] = torch.arange(1, n + 1, dtype=torch.float64)
    n_neg = n - n_pos
    auc = float((ranks[t].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)) if n_pos and n_neg else float("nan")
    return {
        "n": n, "n_targets": n_pos, "base_rate": n_pos / n,
        f"precision_at_top_{int(top_fraction * 100)}pct": hits_k / k,
        f"recall_at_top_{int(top_fraction * 100)}pct": hits_k / n_pos if n_pos else float("nan"),
        "r_precision": r_prec, "auc": auc,
    }


__all__ = [
    "AAHQ_PROMPT",
    "DEFAULT_CLIP_CONFIG",
    "FaceWorldCNN",
    "MODEL_NAME",
    "TRAIN_SEED_OFFSET",
    "WorldClip",
    "WorldClipConfig",
    "as_float_images",
    "create_world_clip_model",
    "evaluate_world_clip",
    "load_world_clip",
    "register_model_config",
    "ranking_quality",
    "render_held_out",
    "save_world_clip",
    "train_world_clip",
    "zero_shot_prompts",
]
