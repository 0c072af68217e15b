"""Editing metrics (core/metrics/editing.py) re-derived by hand on tiny inputs."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from diffusion_transfer.core.editing.losses import text_direction
from diffusion_transfer.core.metrics.editing import (
    PROMPT_ATTRIBUTES,
    directional_similarity,
    edit_success,
    prompt_attribute,
)
from diffusion_transfer.core.world.render import ATTRIBUTES


class ToyClip:
    """E_I(x) = normalise(per-channel mean of x + 1); E_T a lookup."""

    TEXT = {"red": [1.0, 0.0, 0.0], "green": [0.0, 1.0, 0.0]}

    def encode_images(self, x):
        return F.normalize(x.mean(dim=(2, 3)) + 1.0, dim=-1)

    def encode_text(self, texts):
        return F.normalize(torch.tensor([self.TEXT[t] for t in texts]), dim=-1)


def flat(means):
    return torch.tensor(means, dtype=torch.float32)[:, :, None, None].expand(-1, -1, 4, 4).clone()


def test_directional_similarity_by_hand():
    clip = ToyClip()
    direction = text_direction(clip, "red", "green")  # (-1, 1, 0) / sqrt 2
    # image 0: E_I (1, 0, 0) -> (1, 1, 0)/sqrt2, a 22.5 degree angle to Delta T; image 1 unchanged: 0
    inputs = flat([[0.0, -1.0, -1.0], [0.0, -1.0, -1.0]])
    edits = flat([[-0.5, -0.5, -1.0], [0.0, -1.0, -1.0]])
    s = directional_similarity(clip, inputs, edits, direction, batch_size=1)
    assert s[0].item() == pytest.approx(math.cos(math.pi / 8), abs=1e-6)  # 0.923880
    assert s[1].item() == 0.0
    # the reverse edit points away from the text direction
    assert directional_similarity(clip, edits[:1], inputs[:1], direction)[0].item() == pytest.approx(
        -math.cos(math.pi / 8), abs=1e-6)
    with pytest.raises(ValueError, match="pair up"):
        directional_similarity(clip, inputs, edits[:1], direction)


def test_edit_success_and_preservation_by_hand():
    face = lambda e, g="man", a="young", f=True: {"expression": e, "gender": g, "age": a, "is_face": f}  # noqa: E731
    inputs = [face("neutral"), face("smile"), face("sad"), face("neutral", f=False)]
    edits = [face("smile"), face("smile"), face("neutral", g="woman"), face("smile")]
    r = edit_success(inputs, edits, "expression", ("smile", "grin"))
    # eligible: inputs 0 and 2 (input 1 already smiles, input 3 is no face); edit 0 hits, edit 2 misses
    assert r["eligible"] == 2 and r["already"] == 1
    assert r["success"] == 0.5
    # preservation over gender (1 of 2 kept) and age (2 of 2): mean 0.75
    assert r["retention"] == {"gender": 0.5, "age": 1.0}
    assert r["preservation"] == 0.75
    # an edit that is no longer a face fails
    assert edit_success(inputs[:1], [face("smile", f=False)], "expression", ["smile"])["success"] == 0.0
    # nothing eligible: n/a rather than a number
    none = edit_success([face("smile")], [face("smile")], "expression", ["smile"])
    assert none["success"] is None and none["eligible"] == 0


def test_prompt_attributes_name_real_faceworld_values():
    for prompt, spec in PROMPT_ATTRIBUTES.items():
        if spec is None:
            assert prompt == "angry"  # FaceWorld draws no angry face
            continue
        attribute, values = spec
        assert set(values) <= set(ATTRIBUTES[attribute])
    assert prompt_attribute("angry") is None
    assert prompt_attribute("angry", {"attribute": "expression", "values": ["sad"]}) == ("expression", ("sad",))
    with pytest.raises(ValueError, match="angry"):
        prompt_attribute("angry", {"attribute": "expression"})
