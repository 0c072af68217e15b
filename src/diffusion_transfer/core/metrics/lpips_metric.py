"""LPIPS (Zhang et al., 2018) that says which weights it runs on and touches
the network only when its backbone is given by release id.

The ``lpips`` package ships its trained linear-layer weights (v0.1) but takes
the AlexNet / VGG / SqueezeNet backbone from torchvision's ImageNet download.
Here the backbone is always built untrained (``pnet_rand=True``, which makes
lpips call torchvision with ``pretrained=False``, i.e. ``weights=None``), then:

- with ``backbone_weights`` (a local file: a torchvision state dict such as
  ``alexnet-owt-7be5be79.pth``, just its ``features`` part, or an lpips
  ``net.sliceN`` state dict; or the release id ``alexnet`` / ``vgg16`` /
  ``squeezenet1_1``, fetched online, see :mod:`diffusion_transfer.core.weights`) the ImageNet backbone is loaded from it and the
  metric is the real LPIPS (``is_real`` True);
- without, the backbone keeps a seeded random initialisation and the metric is
  labelled "LPIPS-substitute (untrained ... backbone ...)" (``is_real`` False).
  It is deterministic across runs, but it is not LPIPS and must not be
  reported as such.

Images are float tensors (B, 3, H, W) in [-1, 1], the lpips convention. Small
images (e.g. 32x32) are fed at their own size, not upsampled.
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import torch

from diffusion_transfer.core.weights import resolve_weights

_CHANNELS = {"alex": 5, "vgg": 5, "squeeze": 7}


def _remap_backbone_state(state: dict[str, torch.Tensor], net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Map a torchvision ``features.N.*`` (or bare ``N.*``) or lpips
    ``[net.]sliceK.N.*`` state dict onto the lpips backbone's own keys."""
    index_to_slice: dict[str, str] = {}
    for slice_name, child in net.named_children():
        for idx, _ in child.named_children():
            index_to_slice[idx] = slice_name
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        k = key[len("module."):] if key.startswith("module.") else key
        if k.startswith("net."):
            k = k[len("net."):]
        if k.startswith("slice"):
            out[k] = value
            continue
        if k.startswith("features."):
            k = k[len("features."):]
        idx, _, rest = k.partition(".")
        if idx in index_to_slice and rest:
            out[f"{index_to_slice[idx]}.{idx}.{rest}"] = value
        # anything else (classifier.*, lpips lin layers, ...) is not backbone
    return out


class LPIPSMetric:
    """``LPIPSMetric(net, backbone_weights, lin_weights)(a, b) -> (B,)`` distances.

    Attributes: ``label`` (what it is, for reports), ``is_real`` (True only
    with a trained backbone and the trained linear layers), ``net``.
    """

    def __init__(
        self,
        net: str = "alex",
        backbone_weights: str | os.PathLike | None = None,
        lin_weights: bool = True,
        device: str | torch.device = "cpu",
        seed: int = 0,
    ) -> None:
        import lpips

        if net not in _CHANNELS:
            raise ValueError(f"net must be one of {sorted(_CHANNELS)}, got {net!r}")
        if backbone_weights is not None:
            # a local file, or a release id (``alexnet``, ``vgg16``, ``squeezenet1_1``) fetched online
            backbone_weights = resolve_weights(
                backbone_weights, f"a torchvision {net} ImageNet state dict (unset: the labelled substitute)")
        self.net = net
        self.device = torch.device(device)
        # Seeded, isolated RNG: the untrained backbone is the same on every run.
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            torch.manual_seed(seed)
            warnings.simplefilter("ignore")  # torchvision's `pretrained` deprecation notices
            self.model = lpips.LPIPS(
                pretrained=lin_weights, net=net, version="0.1", pnet_rand=True, verbose=False
            )
        if backbone_weights is not None:
            state = torch.load(str(backbone_weights), map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
                state = state["state_dict"]
            mapped = _remap_backbone_state(state, self.model.net)
            expected = set(self.model.net.state_dict())
            missing = sorted(expected - set(mapped))
            if missing:
                raise ValueError(
                    f"LPIPS backbone_weights {backbone_weights} does not hold a full {net} backbone; "
                    f"missing {missing[:6]}{' ...' if len(missing) > 6 else ''}"
                )
            self.model.net.load_state_dict({k: mapped[k] for k in expected}, strict=True)
        self.model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

        lin = "trained LPIPS v0.1 linear layers" if lin_weights else "random linear layers"
        self.is_real = backbone_weights is not None and lin_weights
        if backbone_weights is not None:
            prefix = "LPIPS" if lin_weights else "LPIPS-substitute"
            self.label = f"{prefix} ({net} backbone from {Path(backbone_weights).name}, {lin})"
        else:
            self.label = f"LPIPS-substitute (untrained {net} backbone, seed {seed}; {lin}) - not LPIPS"

    def __repr__(self) -> str:
        return f"LPIPSMetric({self.label!r})"

    @staticmethod
    def _check(a: torch.Tensor, b: torch.Tensor) -> None:
        for name, x in (("a", a), ("b", b)):
            if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3:
                shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise ValueError(f"LPIPS input {name} must be a (B, 3, H, W) tensor in [-1, 1], got {shape}")
        if a.shape != b.shape:
            raise ValueError(f"LPIPS inputs must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per-pair distances (B,) between images ``a`` and ``b`` in [-1, 1]."""
        self._check(a, b)
        with torch.no_grad():
            d = self.model(a.to(self.device, torch.float32), b.to(self.device, torch.float32))
        return d.reshape(a.shape[0]).cpu()

    def mean_paired(self, a: torch.Tensor, b: torch.Tensor, batch_size: int = 64) -> float:
        """Mean distance over the pairs (a[i], b[i]) (e.g. LPIPS src-trg)."""
        self._check(a, b)
        if a.shape[0] == 0:
            raise ValueError("LPIPS mean_paired needs at least one pair")
        total = 0.0
        for s in range(0, a.shape[0], batch_size):
            total += float(self(a[s : s + batch_size], b[s : s + batch_size]).double().sum())
        return total / a.shape[0]

    def mean_pairwise(self, images: torch.Tensor, batch_size: int = 64) -> float:
        """Mean distance over all unordered pairs i < j of ``images`` (N, 3, H, W)
        (the diversity measure inside an intra-LPIPS cluster)."""
        n = images.shape[0] if isinstance(images, torch.Tensor) else 0
        if n < 2:
            raise ValueError(f"mean_pairwise needs at least 2 images, got {n}")
        ii, jj = torch.triu_indices(n, n, offset=1)
        total = 0.0
        for s in range(0, ii.numel(), batch_size):
            i, j = ii[s : s + batch_size], jj[s : s + batch_size]
            total += float(self(images[i], images[j]).double().sum())
        return total / ii.numel()


@functools.lru_cache(maxsize=None)
def smallest_input_size(net: str = "alex", largest: int = 256) -> int:
    """The smallest square image side that LPIPS with backbone ``net`` accepts
    (smaller inputs shrink to nothing in its pooling layers: "Output size is
    too small"), found by running the backbone on the meta device (shapes
    only: nothing is initialised or computed)."""
    from lpips import pretrained_networks

    backbone = {"alex": pretrained_networks.alexnet, "vgg": pretrained_networks.vgg16,
                "squeeze": pretrained_networks.squeezenet}[net]
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")  # torchvision's `pretrained` deprecation notices
        model = backbone(requires_grad=False, pretrained=False).eval()
    for side in range(1, largest + 1):
        try:
            with torch.no_grad():
                model(torch.zeros(1, 3, side, side, device="meta"))
            return side
        except RuntimeError:
            continue
    raise ValueError(f"LPIPS {net} accepts no image side up to {largest}")
