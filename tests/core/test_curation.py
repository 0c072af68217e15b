"""Curation (CLIP scoring with fake encoders, selection, zero-shot removal,
few-shot splits, embedding cache, reports and contact sheets); ingest
validation is in tests/core/test_image_ingest.py."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_transfer.core.data.contact_sheet import contact_sheet, curation_contact_sheet
from diffusion_transfer.core.data.curation import CurationResult, curate_by_score, curate_zero_shot
from diffusion_transfer.core.data.embeddings import (
    cached_embeddings,
    clip_scores,
    embedding_cache_key,
    image_embeddings,
    scores_from_embeddings,
    text_embeddings,
    zero_shot_probabilities,
)
from diffusion_transfer.core.data.selection import (
    EmptyCurationError,
    apply_exclusions,
    few_shot_split,
    select_by_score,
    zero_shot_remove,
)

# ---------------------------------------------------------------------------
# curation.py: fake CLIP
# ---------------------------------------------------------------------------


RED = [1.0, 0.0, 0.0]


class FakeClip:
    """Image embedding = normalised mean colour in [0, 1]; text embedding fixed."""

    def __init__(self, text_vectors=None):
        self.image_calls = 0
        self.text_calls = 0
        self.text_vectors = text_vectors or {}

    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        self.image_calls += 1
        assert x.ndim == 4 and x.shape[1] == 3 and x.min() >= -1 and x.max() <= 1
        m = (x.mean(dim=(2, 3)) + 1) / 2
        return torch.nn.functional.normalize(m, dim=-1)

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        self.text_calls += 1
        return torch.tensor([self.text_vectors.get(p, RED) for p in prompts])


def _colour_images(colours, size=4):
    return np.stack([np.full((size, size, 3), c, dtype=np.uint8) for c in colours])


COLOURS = [(255, 0, 0), (255, 255, 0), (128, 128, 128), (0, 0, 255), (255, 60, 60), (0, 255, 0)]
NAMES = [f"{i:05d}.png" for i in range(len(COLOURS))]


def _expected(colours):
    out = []
    for c in colours:
        v = np.asarray(c, dtype=float) / 255
        out.append(v[0] / np.linalg.norm(v))
    return np.asarray(out)


def test_clip_scores_with_fake_encoders():
    clip = FakeClip()
    images = _colour_images(COLOURS)
    s = clip_scores(clip.encode_images, clip.encode_text, images, "a red thing", batch_size=4)
    assert s.shape == (6,)
    np.testing.assert_allclose(s, _expected(COLOURS), atol=1e-5)
    assert clip.image_calls == 2 and clip.text_calls == 1  # batched: ceil(6 / 4)
    emb = image_embeddings(clip.encode_images, images, batch_size=256)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-6)
    txt = text_embeddings(clip.encode_text, ["red", "blue"])
    assert scores_from_embeddings(emb, txt).shape == (6, 2)
    with pytest.raises(ValueError, match="empty"):
        clip_scores(clip.encode_images, clip.encode_text, images[:0], "x")


def test_select_by_threshold_and_top_n():
    scores = _expected(COLOURS)  # 1.0, .707, .577, 0, .949, 0
    kept, dropped = select_by_score(NAMES, scores, threshold=0.6)
    assert kept.tolist() == [0, 1, 4] and dropped.tolist() == [2, 3, 5]
    kept, dropped = select_by_score(NAMES, scores, top_n=2)
    assert kept.tolist() == [0, 4] and dropped.tolist() == [1, 2, 3, 5]
    kept, _ = select_by_score(NAMES, [0.5, 0.5, 0.5, 0.1, 0.1, 0.1], top_n=2)
    assert kept.tolist() == [0, 1]  # ties go to the earlier image
    kept, _ = select_by_score(NAMES, scores, top_n=100)
    assert len(kept) == 6
    with pytest.raises(ValueError, match=r"curate\.threshold and curate\.top_n"):
        select_by_score(NAMES, scores, threshold=0.3, top_n=3, param_prefix="curate.")
    with pytest.raises(ValueError, match="exactly one"):
        select_by_score(NAMES, scores)
    with pytest.raises(ValueError, match="top_n must be a positive integer"):
        select_by_score(NAMES, scores, top_n=0)
    with pytest.raises(ValueError, match="NaN"):
        select_by_score(NAMES, [np.nan] * 6, threshold=0.1)


def test_empty_curation_error_names_the_parameter():
    scores = np.asarray([0.21, 0.31, 0.05])
    with pytest.raises(EmptyCurationError) as info:
        select_by_score(["a", "b", "c"], scores, threshold=0.35, param_prefix="curate.")
    msg = str(info.value)
    assert "curate.threshold=0.35" in msg and "max score 0.310" in msg and "curate.top_n" in msg
    assert isinstance(info.value, ValueError)


def test_apply_exclusions_warns_on_unknown_names():
    kept = np.asarray([0, 1, 4])
    res = apply_exclusions(NAMES, kept, ["00001.png", "00004", "missing.png", "00002.png"])
    new_kept, excluded = res
    assert new_kept.tolist() == [0] and excluded == ["00001.png", "00004.png"]
    assert res.missing == ["missing.png"]  # 00002.png exists (already dropped): not a warning
    assert len(res.warnings) == 1 and "missing.png" in res.warnings[0]
    same, none = apply_exclusions(NAMES, kept, None)
    assert same.tolist() == [0, 1, 4] and none == []


def test_curate_by_score_result_and_summary():
    scores = _expected(COLOURS)
    res = curate_by_score(
        NAMES, scores, threshold=0.6, exclude=["00001.png", "ghost.png"],
        skipped=[("bad.txt", "not an image file")], criteria={"prompt": "red"}, param_prefix="curate.",
    )
    assert isinstance(res, CurationResult)
    assert res.kept_names == ["00000.png", "00004.png"]
    reasons = {d.name: d.reason for d in res.dropped}
    assert reasons["00002.png"] == "score 0.577 < threshold 0.600"
    assert reasons["00001.png"] == "excluded by name"
    s = res.summary()
    json.dumps(s)  # serialisable
    assert s["counts"] == {
        "files": 7, "skipped_invalid": 1, "valid": 6, "scored": 6, "kept": 2,
        "dropped_by_score": 3, "dropped_by_zero_shot": 0, "excluded": 1,
    }
    assert s["threshold"] == 0.6 and s["top_n"] is None and s["criteria"]["prompt"] == "red"
    assert s["scores"]["kept"]["min"] == pytest.approx(scores[4])
    assert s["scores"]["dropped"]["max"] == pytest.approx(scores[1])
    assert s["skipped"] == [{"file": "bad.txt", "reason": "not an image file"}]
    assert any("ghost.png" in w for w in s["warnings"])
    assert len(s["dropped"]) == 4
    images = _colour_images(COLOURS)
    assert res.select(images).shape == (2, 4, 4, 3)

    top = curate_by_score(NAMES, scores, top_n=3)
    assert top.summary()["top_n"] == 3 and "not in top 3" in top.dropped[0].reason
    with pytest.raises(EmptyCurationError, match=r"curate\.exclude"):
        curate_by_score(NAMES, scores, top_n=1, exclude=["00000"], param_prefix="curate.")


def test_zero_shot_removal():
    clip = FakeClip({"no glasses": [0, 1, 0], "glasses": [1, 0, 0], "sunglasses": [0, 0, 1]})
    images = _colour_images([(0, 255, 0), (255, 0, 0), (0, 0, 255), (0, 250, 10)])
    emb = image_embeddings(clip.encode_images, images)
    probs = zero_shot_probabilities(emb, text_embeddings(clip.encode_text, ["no glasses", "glasses", "sunglasses"]))
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    kept, dropped, p = zero_shot_remove(probs, [1, 2], threshold=0.5)
    assert kept.tolist() == [0, 3] and dropped.tolist() == [1, 2] and p[1] > 0.9
    names = ["a.png", "b.png", "c.png", "d.png"]
    res = curate_zero_shot(names, probs, [1, 2], threshold=0.5, exclude=["d.png"])
    assert res.kept_names == ["a.png"]
    assert {d.name: d.reason for d in res.dropped}["b.png"] == f"CLIP zero-shot: glasses p={p[1]:.2f}"
    s = res.summary()["counts"]
    assert s["dropped_by_zero_shot"] == 2 and s["excluded"] == 1
    with pytest.raises(ValueError, match="remove_class_indices"):
        zero_shot_remove(probs, [3])
    with pytest.raises(EmptyCurationError, match=r"metfaces\.threshold"):
        zero_shot_remove(np.asarray([[0.1, 0.9], [0.2, 0.8]]), [1], 0.5, param_prefix="metfaces.")


def test_cached_embeddings_reuse_and_invalidation(tmp_path):
    clip = FakeClip()
    images = _colour_images(COLOURS)
    cache = tmp_path / "cache" / "aahq_clip.npy"
    first = cached_embeddings(clip.encode_images, images, cache, key="fake-clip@1")
    assert clip.image_calls == 1 and cache.is_file()
    again = cached_embeddings(clip.encode_images, images, cache, key="fake-clip@1")
    assert clip.image_calls == 1 and np.array_equal(first, again)
    meta = json.loads(cache.with_name(cache.name + ".key.json").read_text())
    assert meta["key"] == embedding_cache_key(images, "fake-clip@1") and meta["n"] == 6
    cached_embeddings(clip.encode_images, images, cache, key="fake-clip@2")  # model changed
    assert clip.image_calls == 2
    cached_embeddings(clip.encode_images, images[::-1].copy(), cache, key="fake-clip@2")  # images changed
    assert clip.image_calls == 3
    cache.write_bytes(b"garbage")  # corrupt cache: recomputed, not a crash
    out = cached_embeddings(clip.encode_images, images[::-1].copy(), cache, key="fake-clip@2")
    assert clip.image_calls == 4 and out.shape == (6, 3)
    assert sorted(p.name for p in cache.parent.iterdir()) == ["aahq_clip.npy", "aahq_clip.npy.key.json"]


def test_few_shot_split_is_deterministic():
    names = [f"{i:03d}.png" for i in range(30)]
    shot, rest = few_shot_split(names, 10, seed=3)
    assert len(shot) == 10 and len(rest) == 20 and not set(shot) & set(rest)
    shuffled = names[::-1]
    shot2, _ = few_shot_split(shuffled, 10, seed=3)
    assert sorted(shuffled[i] for i in shot2) == sorted(names[i] for i in shot)
    with pytest.raises(EmptyCurationError, match="n_shot=40"):
        few_shot_split(names, 40)


# ---------------------------------------------------------------------------
# contact sheets
# ---------------------------------------------------------------------------


def test_contact_sheet_size():
    images = _colour_images([(i * 12, 0, 255 - i * 12) for i in range(20)], size=32)
    sheet = contact_sheet(images, None, columns=16, scale=2)
    assert isinstance(sheet, Image.Image)
    assert sheet.width == 3 + 16 * (64 + 3) and sheet.height == 3 + 2 * (64 + 3)
    # NEAREST upscaling: the first cell is a solid block of the first image's colour
    assert np.all(np.asarray(sheet)[3 : 3 + 64, 3 : 3 + 64] == images[0, 0, 0])
    labelled = contact_sheet(images[:3], [f"{n}\n0.123" for n in NAMES[:3]], columns=16, title="kept")
    assert labelled.width >= 3 + 3 * 67 and labelled.height > 3 + 67
    empty = contact_sheet(images[:0], [], title="dropped")
    assert empty.width > 0 and empty.height > 0


def test_curation_contact_sheet_panels():
    images = _colour_images([(i * 2, 100, 50) for i in range(100)], size=32)
    scores = np.linspace(0, 1, 100)
    kept, dropped = np.arange(50, 100), np.arange(50)
    sheet = curation_contact_sheet(images, kept, dropped, max_each=16, names=[f"{i}.png" for i in range(100)],
                                   scores=scores, title="curation")
    assert sheet.width == 3 + 16 * 67
    one_panel = contact_sheet(images[:16], ["a\nb"] * 16, columns=16, scale=2, title="kept")
    assert sheet.height > 2 * one_panel.height
    custom = curation_contact_sheet(images, kept, dropped, max_each=16, labels=[f"{v:.2f}" for v in scores])
    assert custom.width == sheet.width and custom.height < sheet.height  # one label line instead of two
    res = curate_by_score([f"{i}.png" for i in range(100)], scores, threshold=0.0)  # nothing dropped
    assert res.contact_sheet(images).height > 0
    res = curate_by_score([f"{i}.png" for i in range(100)], scores, top_n=60, exclude=["99.png"])
    tagged = res.contact_sheet(images, max_each=8)
    assert tagged.height > curation_contact_sheet(images, res.kept_idx, res.dropped_idx, max_each=8).height
    assert not math.isnan(res.summary()["scores"]["kept"]["mean"])
