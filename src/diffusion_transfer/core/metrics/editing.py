"""Text-guided editing metrics (SDFT Table 2, Asyrp).

- **S_dir**, the directional CLIP similarity of StyleGAN-NADA / SDFT Table 2:
  per edit cos(E_I(edit) - E_I(input), Delta T) with Delta T the text
  direction (``core.editing.losses.text_direction``: the normalised mean of
  E_T(target_k) - E_T(source_k)), averaged over the edits. Embeddings are
  L2-normalised first; an unchanged image scores 0.
- **Edit success** (FaceWorld only): the share of edits whose attribute
  classifier reading moved to the prompt's attribute value, over the inputs
  that are faces and do not already show it (those cannot move toward it).
  An edit that stops being a face fails.
- **Preservation** (FaceWorld only): over the same inputs, attribute
  retention (``attributes.attribute_retention``) of every other attribute.

Which FaceWorld attribute each of SDFT's five prompts moves toward
(:data:`PROMPT_ATTRIBUTES`), from the FaceWorld renderer's attributes
(``core/world/render.py``: expression neutral / smile / grin / sad; age
young / old) and the world CLIP's captions (expression words "smiling",
"happy", "grinning", "laughing", "sad", "unhappy", "frowning"; age words
"young", "youthful", "old", "elderly", "aged"):

- smiling -> expression in {smile, grin} (both are smiles: "smiling",
  "grinning" / "laughing" in the captions);
- sad -> expression sad;
- young -> age young; old -> age old;
- angry -> none: FaceWorld draws no angry face and the captions never say
  "angry", so edit success is n/a. The world CLIP's closest caption word is
  "frowning" (a synonym of the sad expression); a run may use it as the
  prompt's text, and must label that stand-in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch.nn import functional as F

from diffusion_transfer.core.metrics.attributes import attribute_retention

#: prompt -> (attribute, values it moves toward); ``None``: no FaceWorld attribute.
PROMPT_ATTRIBUTES: dict[str, tuple[str, tuple[str, ...]] | None] = {
    "smiling": ("expression", ("smile", "grin")),
    "sad": ("expression", ("sad",)),
    "angry": None,
    "young": ("age", ("young",)),
    "old": ("age", ("old",)),
}

#: The attributes compared for preservation (those of the generation report).
ATTRIBUTES = ("expression", "eyewear", "gender", "age", "hair_colour", "hair_style", "skin_tone")


def directional_similarity(clip: Any, inputs: torch.Tensor, edits: torch.Tensor, direction: torch.Tensor,
                           batch_size: int = 256) -> torch.Tensor:
    """Per-edit S_dir, shape (B,): cos(E_I(edit) - E_I(input), direction) with
    ``clip``'s image encoder (L2-normalised embeddings; images float in
    [-1, 1] or uint8 (N, H, W, 3), as the encoder takes them)."""
    if len(inputs) != len(edits):
        raise ValueError(f"inputs and edits must pair up: {len(inputs)} vs {len(edits)} images")
    if len(inputs) == 0:
        raise ValueError("directional_similarity needs at least one edit")
    out = []
    with torch.no_grad():
        for i in range(0, len(inputs), batch_size):
            e_in = F.normalize(clip.encode_images(inputs[i:i + batch_size]).float(), dim=-1)
            e_ed = F.normalize(clip.encode_images(edits[i:i + batch_size]).float(), dim=-1)
            d = direction.to(e_in.device, e_in.dtype).expand_as(e_in)
            out.append(F.cosine_similarity(e_ed - e_in, d, dim=-1, eps=1e-8).cpu())
    return torch.cat(out)


def _is_face(d: Mapping[str, Any]) -> bool:
    return bool(d.get("is_face", True))


def edit_success(inputs: Sequence[Mapping[str, Any]], edits: Sequence[Mapping[str, Any]], attribute: str,
                 values: Iterable[str]) -> dict[str, Any]:
    """Edit success and preservation over paired attribute readings.

    Eligible pairs: the input is a face whose ``attribute`` is not one of
    ``values``. ``success``: the share of eligible pairs whose edit is a face
    showing one of ``values``; ``preservation``: the mean retention of the
    other :data:`ATTRIBUTES` over the eligible pairs (``None`` when there is
    no eligible pair, with ``eligible`` 0)."""
    if len(inputs) != len(edits):
        raise ValueError(f"inputs and edits must pair up: {len(inputs)} vs {len(edits)} readings")
    wanted = set(values)
    if not wanted:
        raise ValueError(f"values must name at least one value of {attribute!r}")
    pairs = [(a, b) for a, b in zip(inputs, edits) if _is_face(a) and a.get(attribute) not in wanted]
    out: dict[str, Any] = {"attribute": attribute, "values": sorted(wanted), "eligible": len(pairs),
                           "already": sum(1 for a in inputs if _is_face(a) and a.get(attribute) in wanted)}
    if not pairs:
        return {**out, "success": None, "preservation": None}
    hits = sum(1 for _, b in pairs if _is_face(b) and b.get(attribute) in wanted)
    others = [k for k in ATTRIBUTES if k != attribute and k in pairs[0][0]]
    kept = attribute_retention([a for a, _ in pairs], [b for _, b in pairs], attributes=others) if others else {}
    return {**out, "success": hits / len(pairs), "preservation": kept.get("mean"),
            "retention": {k: v for k, v in kept.items() if k != "mean"}}


def prompt_attribute(prompt: str, override: Mapping[str, Any] | None = None) -> tuple[str, tuple[str, ...]] | None:
    """The (attribute, values) a prompt moves toward: ``override`` (a mapping
    with ``attribute`` and ``values``, e.g. from parameters) or
    :data:`PROMPT_ATTRIBUTES`; ``None`` when FaceWorld has no such attribute."""
    if override:
        if "attribute" not in override or not override.get("values"):
            raise ValueError(f"the attribute override for prompt {prompt!r} needs 'attribute' and 'values', "
                             f"got {dict(override)!r}")
        return str(override["attribute"]), tuple(override["values"])
    return PROMPT_ATTRIBUTES.get(prompt)
